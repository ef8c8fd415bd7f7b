"""Atomic output: write to a temporary name beside the target, then rename.

Every writer (``.caffemodel``, ``.caffemodel.h5``, the compressed container,
``.npz``) goes through :func:`atomic_write`, so an interrupted or failed run
never leaves a half-written file under the final name.

Temporaries are named ``.NAME.cc<host>-<pid>-<random>.tmp[suffix]`` (``host``:
six hex digits of the host name's CRC32): a process killed by a signal
(nothing in it can clean up) leaves one behind, and the next write to
``NAME`` from the same host removes those whose process is gone
(:func:`remove_stale`); another host's temporaries on a shared filesystem
are left alone, since their writers cannot be checked from here. A writer nested inside another's ``write`` callback
(e.g. a library writer called on the temporary path it was handed) writes
that path directly instead of making a temporary of the temporary.

HDF5 writers pass ``fileobj=True`` and get a file object that never reports
a failed write to HDF5: when the disk fills up, libhdf5 fails inside its
close and h5py crashes the process (SIGSEGV after hundreds of lines of
``_dealloc`` tracebacks). The object records the first error, swallows the
rest of the writes, and :func:`atomic_write` raises that error once HDF5 has
closed the file cleanly.
"""

from __future__ import annotations

import errno
import io
import os
import re
import secrets
import socket
import threading
import zlib
from pathlib import Path

__all__ = ["atomic_write", "remove_stale", "same_file", "host_key", "GuardedFile"]

_TMP = re.compile(r"\.cc(?P<host>[0-9a-f]{6})-(?P<pid>[0-9]+)-[0-9a-f]+\.tmp")
_local = threading.local()


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


def same_file(a, b) -> bool:
    """Whether ``a`` and ``b`` name one file: the same path after symlinks, or one inode (a hard link)."""
    try:
        if Path(a).resolve() == Path(b).resolve():
            return True
        return os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop on old Pythons
        return False


def host_key() -> str:
    """Six hex digits naming this host in temporaries' names."""
    return "%06x" % (zlib.crc32(socket.gethostname().encode("utf-8", "replace")) & 0xFFFFFF)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0  # another user's live process (or an absurd number: not ours to judge)
    return True


def remove_stale(path) -> list:
    """Delete temporaries of ``path`` left by writers that are no longer running.

    Returns the removed paths. Temporaries of live processes (another run
    writing the same name right now) are kept.
    """
    path = Path(path)
    removed = []
    prefix = f".{path.name}."
    host = host_key()
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    for e in entries:
        if not e.name.startswith(prefix):
            continue
        m = _TMP.match(e.name, len(prefix) - 1)
        if m is None or m.group("host") != host or _alive(int(m.group("pid"))):
            continue
        try:
            os.unlink(e.path)
            removed.append(e.path)
        except OSError:
            pass
    return removed


class GuardedFile(io.RawIOBase):
    """A read/write file that records a failed write instead of raising it.

    For libhdf5 (through h5py's file-object driver), which cannot survive a
    write error at close. ``error`` holds the first OSError; later writes
    are dropped and reported as done.
    """

    def __init__(self, path):
        super().__init__()
        self._f = open(path, "w+b", buffering=0)  # noqa: SIM115  (closed by close())
        self.error: OSError | None = None

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    # After close (a libhdf5 handle the writer abandoned on an exception can
    # still flush from h5py's finaliser) every call is a silent no-op.

    def readinto(self, b) -> int:
        return 0 if self._f.closed else self._f.readinto(b)

    def write(self, b) -> int:
        n = memoryview(b).nbytes
        if self.error is None and not self._f.closed:
            try:
                view = memoryview(b).cast("B")
                done = 0
                while done < n:
                    done += self._f.write(view[done:])
            except OSError as exc:
                self.error = exc
        return n

    def seek(self, pos, whence=0) -> int:
        return 0 if self._f.closed else self._f.seek(pos, whence)

    def tell(self) -> int:
        return 0 if self._f.closed else self._f.tell()

    def truncate(self, size=None) -> int:
        if self.error is None and not self._f.closed:
            try:
                return self._f.truncate(size)
            except OSError as exc:
                self.error = exc
        return self.tell() if size is None else size

    def flush(self) -> None:
        if self.error is None and not self._f.closed:
            try:
                self._f.flush()
            except OSError as exc:
                self.error = exc

    def close(self) -> None:
        if not self.closed:
            super().close()  # flushes first
            self._f.close()


def _reserve(tmp: str, nbytes: int) -> None:
    """Fail early and cleanly when ``nbytes`` cannot fit where ``tmp`` lives."""
    fd = os.open(tmp, os.O_WRONLY)
    try:
        os.posix_fallocate(fd, 0, nbytes)
        os.ftruncate(fd, 0)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise
        # EOPNOTSUPP, EINVAL (filesystems without fallocate): the write will tell
    except AttributeError:  # no posix_fallocate on this OS
        pass
    finally:
        os.close(fd)


def atomic_write(path, write, *, suffix: str = "", fileobj: bool = False, size_hint: int | None = None) -> None:
    """Call ``write(tmp)``, then rename the finished file onto ``path``.

    Parameters
    ----------
    path : path-like
        Final name; its folder is created when missing.
    write : callable
        Writes the whole file at the temporary path it is given (a
        :class:`GuardedFile` on it with ``fileobj=True``).
    suffix : str
        Extra suffix for the temporary name (some writers pick the format
        from the extension).
    fileobj : bool
        Hand ``write`` a :class:`GuardedFile` instead of a path (HDF5).
    size_hint : int, optional
        Bytes the file will take about: reserved first, so a full disk fails
        before anything is written.

    Raises
    ------
    OSError
        The write failed (``ENOSPC``: no space left; the message names ``path``).

    The temporary file gets the permissions a plain ``open(path, "w")``
    would give; on any error (or interruption) it is removed. Stale
    temporaries of ``path`` from killed runs are removed first.
    """
    path = Path(path)
    outer = getattr(_local, "tmp", None)
    if outer is not None and os.fspath(path) == outer:
        # called from inside another atomic_write on its temporary: write it in place
        if size_hint:
            _reserve(outer, int(size_hint))
        _write_at(outer, write, fileobj, path)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path)
    tmp = os.fspath(path.parent / f".{path.name}.cc{host_key()}-{os.getpid()}-{secrets.token_hex(4)}.tmp{suffix}")
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    os.close(fd)
    try:
        if size_hint:
            try:
                _reserve(tmp, int(size_hint))
            except OSError as exc:
                raise OSError(exc.errno, exc.strerror, os.fspath(path)) from None
        _local.tmp = tmp
        try:
            _write_at(tmp, write, fileobj, path)
        finally:
            _local.tmp = outer
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _write_at(tmp: str, write, fileobj: bool, final: Path) -> None:
    if not fileobj:
        try:
            write(tmp)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT) and os.fspath(final) not in str(exc):
                raise OSError(exc.errno, os.strerror(exc.errno), os.fspath(final)) from None
            raise
        return
    f = GuardedFile(tmp)
    try:
        write(f)
    finally:
        f.close()
    if f.error is not None:
        e = f.error
        raise OSError(e.errno, e.strerror or str(e), os.fspath(final))
