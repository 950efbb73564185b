"""The physical reference: a single-threaded C epoll echo server, built on demand.

``benchmarks/reference/echo_epoll.c`` is what a concurrency model would cost if the
model cost nothing: one epoll loop, no allocation per request. ``--reference`` builds
it with the machine's C compiler (``$CC``, else ``cc``, else ``gcc``) into the user's
cache directory, keyed by a hash of the source and the compiler, so it is compiled
once and never committed. Every report can then give each model as a ratio of it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import platformdirs

import duplex
from duplex.bench.spec import BenchError

__all__ = ["build_reference", "find_reference_source"]

SOURCE_ENV = "DUPLEX_REFERENCE_SOURCE"
"""An environment variable that names the C source, for installs outside the checkout."""

CFLAGS = ("-O2", "-Wall")
"""Compiler flags of the reference build."""


def find_reference_source() -> Path:
    """Returns the path of ``echo_epoll.c``.

    Looks at ``$DUPLEX_REFERENCE_SOURCE``, then at ``benchmarks/reference/`` of the
    checkout that holds this duplex package.

    Raises:
        BenchError: the source cannot be found.
    """
    override = os.environ.get(SOURCE_ENV)
    if override:
        path = Path(override)
        if path.is_file():
            return path
        raise BenchError(f"${SOURCE_ENV} names {override}, which is not a file")
    here = Path(duplex.__file__).resolve()
    for parent in here.parents:
        candidate = parent / "benchmarks" / "reference" / "echo_epoll.c"
        if candidate.is_file():
            return candidate
    raise BenchError(
        "cannot find benchmarks/reference/echo_epoll.c next to the duplex package; "
        f"set ${SOURCE_ENV} to its path"
    )


def _compiler() -> str:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    raise BenchError("--reference needs a C compiler (cc, gcc or clang; or set $CC)")


def build_reference(cache_dir: Path | None = None, source: Path | None = None) -> Path:
    """Compiles the C reference server unless an up-to-date build is cached.

    Args:
        cache_dir: where to keep the binary; by default the user's cache directory.
        source: the C file; by default :func:`find_reference_source`.

    Returns:
        The path of the executable.

    Raises:
        BenchError: no compiler, no source, or the build failed.
    """
    source = source or find_reference_source()
    compiler = _compiler()
    code = source.read_bytes()
    key = hashlib.sha256(code + compiler.encode() + " ".join(CFLAGS).encode()).hexdigest()[:16]
    cache = cache_dir or Path(platformdirs.user_cache_dir("duplex")) / "reference"
    cache.mkdir(parents=True, exist_ok=True)
    binary = cache / f"echo_epoll-{key}"
    if binary.is_file() and os.access(binary, os.X_OK):
        return binary
    # Build beside the final name and rename: two benches building at once never run
    # a half-written binary.
    fd, tmp = tempfile.mkstemp(prefix=".echo_epoll-", dir=cache)
    os.close(fd)
    try:
        done = subprocess.run(
            [compiler, *CFLAGS, "-o", tmp, str(source)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            detail = (done.stderr or done.stdout).strip().splitlines()
            raise BenchError(
                f"building the C reference failed ({compiler}): {detail[-1] if detail else '?'}"
            )
        os.chmod(tmp, 0o755)
        os.replace(tmp, binary)
    except (OSError, subprocess.SubprocessError) as exc:
        raise BenchError(f"building the C reference failed: {exc}") from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return binary
