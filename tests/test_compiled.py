"""The hub's hot path runs compiled, and never from a build older than its source.

``make`` compiles the modules listed in the Makefile's ``HOT`` with mypyc, next to
their sources (the editable install imports an extension before a ``.py``). Two ways
that can go wrong silently: the build did not happen (the hub runs a fifth slower than
the figures say), or a source changed after it (tests and the hub run the old code).
``DUPLEX_COMPILE=0`` is the deliberate pure-Python run (``make pure``): then no module
may be compiled, so that the pure modules are what gets tested.
"""

from __future__ import annotations

import importlib
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _hot_modules() -> list[str]:
    text = (ROOT / "Makefile").read_text()
    match = re.search(r"^HOT := (.*?)(?<!\\)\n", text, re.MULTILINE | re.DOTALL)
    assert match, "the Makefile has no HOT list"
    paths = match.group(1).replace("\\\n", " ").split()
    assert paths, "the Makefile's HOT list is empty"
    return [p.removesuffix(".py").replace("/", ".") for p in paths]


def test_the_hot_list_names_modules_that_exist() -> None:
    for name in _hot_modules():
        assert (ROOT / "src" / (name.replace(".", "/") + ".py")).is_file(), name


def test_hot_modules_are_compiled_from_their_current_source() -> None:
    pure = os.environ.get("DUPLEX_COMPILE") == "0"
    for name in _hot_modules():
        module = importlib.import_module(name)
        origin = Path(str(module.__file__))
        source = ROOT / "src" / (name.replace(".", "/") + ".py")
        if pure:
            assert origin.suffix == ".py", f"{name} is compiled ({origin}); run `make pure`"
            continue
        assert origin.suffix == ".so", (
            f"{name} runs from {origin.name}, not compiled: run `make compile` "
            "(or set DUPLEX_COMPILE=0 to test the pure-Python modules)"
        )
        assert origin.stat().st_mtime >= source.stat().st_mtime, (
            f"{origin.name} is older than {source.name}: run `make compile`"
        )


def test_a_source_newer_than_its_build_warns_at_import(tmp_path: Path) -> None:
    from duplex._build import stale_extensions, warn_if_stale

    package = tmp_path / "src" / "pkg"
    (package / "sub").mkdir(parents=True)
    fresh, old = package / "a.py", package / "sub" / "b.py"
    for source in (fresh, old):
        source.write_text("x = 1\n")
        ext = source.with_name(source.stem + ".cpython-311-x86_64-linux-gnu.so")
        ext.write_bytes(b"")
        os.utime(ext, (1000, 1000))
        os.utime(source, (900, 900))
    os.utime(old, (2000, 2000))  # edited after the build
    assert stale_extensions(package) == []  # no marker: not a `make` build, not scanned
    (tmp_path / "src" / ".compiled").touch()
    assert stale_extensions(package) == [old]
    with pytest.warns(RuntimeWarning, match=r"older than their source \(pkg/sub/b.py\)"):
        warn_if_stale(package)


def test_no_interpreted_class_subclasses_a_compiled_one() -> None:
    """A class outside the compiled modules that subclasses one inside them keeps the
    compiled base's behaviour where it overrides (mypyc binds the base's methods and
    class attributes early): the peer sessions once kept the hub's state table, and
    the direct path timed out. Such a subclass belongs in the HOT list too."""
    import inspect
    import pkgutil

    import duplex

    hot = set(_hot_modules())
    offenders = []
    for info in pkgutil.walk_packages(duplex.__path__, "duplex."):
        if info.name in hot:
            continue
        module = importlib.import_module(info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ != info.name:
                continue
            bases = [b for b in cls.__mro__[1:] if b.__module__ in hot]
            if bases:
                offenders.append(f"{info.name}.{cls.__name__} <- {bases[0].__qualname__}")
    assert offenders == []
