import subprocess
import sys

import pytest

import caffecompress
from caffecompress import errors


def test_import_is_lazy():
    # `import caffecompress` must not pull in the heavy optional modules.
    code = (
        "import sys, caffecompress; "
        "bad = [m for m in ('google.protobuf', 'h5py', 'cupy', 'cv2', 'matplotlib') if m in sys.modules]; "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


@pytest.mark.parametrize(
    "cls, builtin",
    [
        (errors.FormatError, ValueError),
        (errors.TruncatedFileError, EOFError),
        (errors.SchemaMismatchError, ValueError),
        (errors.CorruptDataError, ValueError),
        (errors.OutputExistsError, FileExistsError),
        (errors.BackendUnavailableError, RuntimeError),
    ],
)
def test_errors_inherit_root_and_builtin(cls, builtin):
    assert issubclass(cls, errors.CaffeCompressError)
    assert issubclass(cls, builtin)


def test_error_message_names_file_and_layer():
    e = errors.FormatError("bad varint", path="m.caffemodel", layer="conv1")
    assert "m.caffemodel" in str(e) and "conv1" in str(e)
    assert e.path == "m.caffemodel" and e.layer == "conv1"


def test_unknown_attribute():
    with pytest.raises(AttributeError):
        caffecompress.no_such_thing  # noqa: B018
