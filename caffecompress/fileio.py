"""Atomic output: write to a temporary name beside the target, then rename.

Every writer (``.caffemodel``, ``.caffemodel.h5``, the compressed container,
``.npz``) goes through :func:`atomic_write`, so an interrupted or failed run
never leaves a half-written file under the final name.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write"]


def _umask() -> int:
    """The process umask, read without changing it where the OS allows (threads)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)  # elsewhere: the classic read-by-setting (not thread-safe)
    os.umask(old)
    return old


def atomic_write(path, write, *, suffix: str = "") -> None:
    """Call ``write(tmp_path)``, then rename the finished file onto ``path``.

    Parameters
    ----------
    path : path-like
        Final name; its folder is created when missing.
    write : callable
        Writes the whole file at the temporary path it is given.
    suffix : str
        Extra suffix for the temporary name (some writers pick the format
        from the extension).

    The temporary file gets the permissions a plain ``open(path, "w")``
    would give (mkstemp makes it 0600); on any error it is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
