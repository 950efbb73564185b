"""Whether the compiled hot path (``make compile``, mypyc) is older than its source.

The extensions sit next to their ``.py`` files and are imported first, so after an
edit without ``make`` the old code would run, silently. In a checkout built by
``make`` (``src/.compiled`` exists), importing duplex warns instead. An installed
wheel has no marker and is not scanned.
"""

from __future__ import annotations

import warnings
from pathlib import Path

__all__ = ["stale_extensions", "warn_if_stale"]

MARKER = ".compiled"
"""The file ``make compile`` touches beside the package, in ``src/``."""


def stale_extensions(package: Path) -> list[Path]:
    """The sources under ``package`` whose compiled module is older than they are
    (none unless ``package``'s parent holds the :data:`MARKER`)."""
    if not (package.parent / MARKER).exists():
        return []
    stale = []
    for ext in package.rglob("*.so"):
        source = ext.with_name(ext.name.split(".", 1)[0] + ".py")
        if source.is_file() and source.stat().st_mtime > ext.stat().st_mtime:
            stale.append(source)
    return sorted(stale)


def warn_if_stale(package: Path = Path(__file__).parent) -> None:
    """Warns (RuntimeWarning) when a compiled module is older than its source."""
    stale = stale_extensions(package)
    if stale:
        names = ", ".join(str(p.relative_to(package.parent)) for p in stale)
        warnings.warn(
            f"compiled modules are older than their source ({names}): the old code "
            "runs until `make compile` rebuilds them (or `make pure` removes them)",
            RuntimeWarning,
            stacklevel=2,
        )
