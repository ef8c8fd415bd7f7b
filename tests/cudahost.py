"""Raw CUDA kernel sources built for the host with the system C++ compiler.

Under the shim in ``cuda_host_shim.h`` (launch coordinates become globals set
by a serial loop over every block and thread, ``__ldg`` a plain load), a raw
kernel source compiles as ordinary C++; ctypes loads the result. A
:class:`HostDevice` hands such kernels to code that builds them with
``xp.RawKernel``, so the engine's own launch code (argument order, dtypes,
grid) runs unchanged on host arrays.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np

from fakedevice import NumpyAsDevice

SHIM = Path(__file__).with_name("cuda_host_shim.h")

# No fast-math and no contraction (the host twin of nvcc's --fmad=false):
# float and integer semantics stay those of the source as written.
FLAGS = ("-std=c++17", "-O2", "-shared", "-fPIC", "-fno-fast-math", "-ffp-contract=off",
         "-Wall", "-Wno-unknown-pragmas")

#: Byte written after every array a HostDevice uploads, so a read past an
#: array's end sees junk instead of whatever the heap held.
POISON = 0xA5
PAD = 64

_KERNEL_NAME = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(')


class CompileError(RuntimeError):
    """The compiler rejected a kernel source (stderr in the message)."""


def find_compiler() -> tuple[str | None, str]:
    """A C++ compiler that builds a shared library here, and why not if none.

    Tries ``$CXX``, then g++, c++ and clang++; each is probed by compiling a
    trivial library under :data:`FLAGS`.
    """
    tried = []
    for name in [os.environ.get("CXX"), "g++", "c++", "clang++"]:
        path = shutil.which(name) if name else None
        if not path or path in tried:
            continue
        tried.append(path)
        probe = Path(os.environ.get("TMPDIR", "/tmp")) / f"cudahost-probe-{os.getpid()}"
        probe.mkdir(exist_ok=True)
        src, lib = probe / "p.cpp", probe / "p.so"
        src.write_text('extern "C" int cc_probe() { return 7; }\n')
        try:
            r = subprocess.run([path, *FLAGS, str(src), "-o", str(lib)], capture_output=True,
                               text=True, timeout=120)
            ok = r.returncode == 0 and ctypes.CDLL(str(lib)).cc_probe() == 7
        except (OSError, subprocess.SubprocessError):
            ok = False
        finally:
            shutil.rmtree(probe, ignore_errors=True)
        if ok:
            return path, ""
    if not tried:
        return None, "no C++ compiler found ($CXX, g++, c++, clang++)"
    return None, f"no working C++ compiler (tried {', '.join(tried)})"


class HostBuild:
    """Compiles kernel sources into ``workdir``, each distinct source once.

    Parameters
    ----------
    cxx : str
        The compiler (see :func:`find_compiler`).
    workdir : pathlib.Path
        Where sources and libraries go (a per-session temporary folder).
    """

    def __init__(self, cxx: str, workdir: Path):
        self.cxx, self.workdir = cxx, Path(workdir)
        self._modules: dict[str, HostModule] = {}
        # huffman_cuda caches built kernels by id(xp): devices stay alive
        # for the session so no id is ever reused by a device with other code
        self.devices: list[HostDevice] = []

    def module(self, source: str) -> "HostModule":
        """The library built from ``source`` (compiled on first request)."""
        names = _KERNEL_NAME.findall(source)
        if not names:
            raise CompileError('no extern "C" __global__ kernel in the source')
        key = hashlib.sha256("\0".join([self.cxx, *FLAGS, SHIM.read_text(), source]).encode()).hexdigest()[:16]
        mod = self._modules.get(key)
        if mod is None:
            src, lib = self.workdir / f"k{key}.cpp", self.workdir / f"k{key}.so"
            exports = "".join(f"CC_EXPORT({n})\n" for n in names)
            src.write_text(f'#include "{SHIM}"\n#line 1 "KERNEL_SOURCE"\n{source}\n#line 1 "exports"\n{exports}')
            r = subprocess.run([self.cxx, *FLAGS, str(src), "-o", str(lib)], capture_output=True, text=True,
                               timeout=300)
            if r.returncode != 0:
                raise CompileError(f"{self.cxx} failed on the kernel source:\n{r.stderr}")
            mod = self._modules[key] = HostModule(ctypes.CDLL(str(lib)), names, r.stderr)
        return mod


class HostModule:
    """A loaded kernel library: ``kernel(name)`` gives a launchable kernel."""

    def __init__(self, lib, names, warnings: str):
        self.lib, self.names, self.warnings = lib, tuple(names), warnings

    def kernel(self, name: str) -> "HostKernel":
        if name not in self.names:
            raise KeyError(f"kernel {name!r} not in the source ({', '.join(self.names)})")
        return HostKernel(self.lib, name)


class HostKernel:
    """One kernel: called like CuPy's RawKernel, ``k(grid, block, args)``.

    Every argument is checked against the kernel's C++ signature first (the
    checks a GPU does not make): arrays for pointer parameters, C-contiguous,
    of the pointee's size and kind, writable unless the pointee is const;
    NumPy scalars of the parameter's exact size and kind for the others.
    """

    def __init__(self, lib, name: str):
        self.name = name
        self._launch = getattr(lib, f"cc_launch_{name}")
        self._launch.restype = None
        self._launch.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
        desc = getattr(lib, f"cc_describe_{name}")
        desc.restype = ctypes.c_int
        buf = np.zeros(4 * 64, np.int64)
        nparams = desc(ctypes.c_void_p(buf.ctypes.data), 64)
        if nparams > 64:
            raise CompileError(f"{name}: {nparams} parameters")
        self.params = [tuple(int(v) for v in buf[4 * i : 4 * i + 4]) for i in range(nparams)]
        self.launches = 0

    def __call__(self, grid, block, args, *, reverse: bool = False) -> None:
        grid = tuple(grid) + (1,) * (3 - len(grid))
        block = tuple(block) + (1,) * (3 - len(block))
        if min(grid + block) < 1 or block[0] * block[1] * block[2] > 1024 or max(grid[1:]) > 65535:
            raise ValueError(f"{self.name}: launch grid {grid} x block {block} is not a valid CUDA launch")
        args = tuple(args)
        if len(args) != len(self.params):
            raise TypeError(f"{self.name}: {len(args)} arguments for {len(self.params)} parameters")
        keep, ptrs = [], (ctypes.c_void_p * max(len(args), 1))()
        for i, (a, (is_ptr, size, kind, const)) in enumerate(zip(args, self.params)):
            where = f"{self.name} argument {i}"
            if is_ptr:
                if not isinstance(a, np.ndarray):
                    raise TypeError(f"{where}: a pointer parameter needs an array, got {type(a).__name__}")
                if not a.flags.c_contiguous or (not const and not a.flags.writeable):
                    raise TypeError(f"{where}: the array must be C-contiguous (and writable unless const)")
                if size and (a.dtype.itemsize != size or a.dtype.kind != chr(kind)):
                    raise TypeError(f"{where}: {a.dtype} for a pointer to a {size}-byte {chr(kind)!r}")
                cell = np.array([a.ctypes.data], np.uintp)
            else:
                if not isinstance(a, np.generic):
                    raise TypeError(f"{where}: scalar parameters take NumPy scalars, got {type(a).__name__}")
                if a.dtype.itemsize != size or a.dtype.kind != chr(kind):
                    raise TypeError(f"{where}: {a.dtype} for a {size}-byte {chr(kind)!r} parameter")
                cell = np.array(a)
            keep.append(cell)
            ptrs[i] = cell.ctypes.data
        g = (ctypes.c_uint * 3)(*grid)
        b = (ctypes.c_uint * 3)(*block)
        self._launch(g, b, int(bool(reverse)), ptrs)
        self.launches += 1


class HostDevice(NumpyAsDevice):
    """NumPy posing as cupy, with ``RawKernel`` built on the host.

    Parameters
    ----------
    build : HostBuild
        The compiler cache.
    patch : callable, optional
        Applied to every source handed to ``RawKernel`` before it is compiled
        (the mutation tests break a check on purpose this way).
    reverse : bool
        Run the threads of every launch in reverse order.
    """

    def __init__(self, build: HostBuild, patch=None, reverse: bool = False):
        self._build, self._patch, self._reverse = build, patch, reverse
        self.options: list[tuple] = []  # compile options of every RawKernel asked for
        self.kernels: list[HostKernel] = []
        self._made: dict = {}
        build.devices.append(self)

    def RawKernel(self, code: str, name: str, options=(), **_kw):  # noqa: N802  (cupy's name)
        self.options.append(tuple(options))
        k = self._made.get((code, name))
        if k is None:
            src = self._patch(code) if self._patch else code
            k = self._made[code, name] = self._build.module(src).kernel(name)
            self.kernels.append(k)
        reverse = self._reverse

        def launch(grid, block, args):
            k(grid, block, args, reverse=reverse)
            check_tails(args, k.name)

        return launch

    @property
    def launches(self) -> int:
        """Kernel launches made so far through this device."""
        return sum(k.launches for k in self.kernels)

    # Every array made here is followed by PAD bytes of POISON: a read past
    # its end sees junk, and a write past it is found after the launch.

    def asarray(self, a, dtype=None):
        """A contiguous copy of ``a``, padded (see :func:`padded`)."""
        a = np.ascontiguousarray(a, dtype=dtype)
        out = padded(a.shape, a.dtype)
        out[...] = a
        return out

    def empty(self, shape, dtype=float):
        """A padded array (its contents junk, as on a device)."""
        return padded(shape, dtype)

    def zeros(self, shape, dtype=float):
        """A padded array of zeros."""
        out = padded(shape, dtype)
        out[...] = 0
        return out


class OutOfBoundsWrite(AssertionError):
    """A kernel wrote into the padding after one of its arrays."""


def padded(shape, dtype) -> np.ndarray:
    """An array whose buffer goes on for :data:`PAD` bytes of :data:`POISON`
    (its contents are POISON bytes too)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.full(nbytes + PAD, POISON, np.uint8)
    return raw[:nbytes].view(dtype).reshape(shape)


def check_tails(args, name: str = "kernel") -> None:
    """Raise :class:`OutOfBoundsWrite` if the padding after any array argument
    made by :func:`padded` no longer holds POISON."""
    for i, a in enumerate(args):
        if not isinstance(a, np.ndarray):
            continue
        raw = a.base
        if (isinstance(raw, np.ndarray) and raw.dtype == np.uint8 and raw.ndim == 1
                and raw.size == a.nbytes + PAD and raw.ctypes.data == a.ctypes.data):
            tail = raw[a.nbytes :]
            if (tail != POISON).any():
                raise OutOfBoundsWrite(f"{name} wrote past the end of argument {i} "
                                       f"(padding byte {int(np.argmax(tail != POISON))})")
