"""The error hierarchy.

Every error raised on purpose by caffecompress derives from
:class:`CaffeCompressError`; each subclass also inherits the builtin it
resembles, so ``except ValueError`` in a legacy pipeline still catches a bad
file. Messages name the file and, where one is involved, the layer.
"""

from __future__ import annotations

__all__ = [
    "CaffeCompressError",
    "FormatError",
    "TruncatedFileError",
    "SchemaMismatchError",
    "CorruptDataError",
    "UnsupportedVersionError",
    "BackendUnavailableError",
    "NonFiniteWeightsError",
    "OutputExistsError",
    "MissingDependencyError",
    "CalibrationError",
    "UnreachablePathError",
]


class CaffeCompressError(Exception):
    """Root of every error caffecompress raises on purpose."""


def _where(msg: str, path=None, layer=None) -> str:
    parts = []
    if path is not None:
        parts.append(f"{path}")
    if layer is not None:
        parts.append(f"layer {layer!r}")
    return f"{': '.join(parts)}: {msg}" if parts else msg


class _Located(CaffeCompressError):
    """An error that knows which file and layer it is about."""

    def __init__(self, msg: str, *, path=None, layer=None):
        self.path = None if path is None else str(path)
        self.layer = layer
        self.reason = msg
        super().__init__(_where(msg, self.path, layer))


class FormatError(_Located, ValueError):
    """The file is not what it claims to be (not Caffe, wrong type, bad wire data)."""


class TruncatedFileError(FormatError, EOFError):
    """The file ends before a field or blob it declares."""


class SchemaMismatchError(_Located, ValueError):
    """Weights and prototxt disagree (missing layer, blob count, shape)."""


class CorruptDataError(_Located, ValueError):
    """A checksum, offset or stream check failed: the data was damaged."""


class UnsupportedVersionError(_Located, ValueError):
    """A compressed file from a newer major format version."""


class NonFiniteWeightsError(_Located, ValueError):
    """NaN or Inf weights given to a lossy path."""


class OutputExistsError(_Located, FileExistsError):
    """Refusing to overwrite an existing file (or the input) without ``force``."""


class BackendUnavailableError(CaffeCompressError, RuntimeError):
    """The GPU backend was asked for and no usable CuPy/CUDA device exists."""


class MissingDependencyError(CaffeCompressError, ImportError):
    """An optional package a feature needs is not installed (the message says which extra)."""


class CalibrationError(_Located, ValueError):
    """Calibration inputs that cannot be used (empty folder, unreadable images, wrong shape, NaN)."""


class UnreachablePathError(CaffeCompressError, FileNotFoundError):
    """A cluster worker cannot see an input or write the output folder.

    Batch jobs on a cluster read and write the paths themselves, so they
    must be on a filesystem every worker shares.
    """

    def __init__(self, worker, path):
        self.worker = str(worker)
        self.path = str(path)
        super().__init__(f"worker {self.worker} cannot reach {self.path} (batch on a cluster needs "
                         "the inputs and the output folder on a filesystem the workers share)")

    def __reduce__(self):  # crosses process boundaries (Dask) with its two fields
        return type(self), (self.worker, self.path)
