"""Compress every Caffe model under some folders: a thin wrapper over `caffecompress batch`.

    .venv/bin/python tools/batch_convert.py MODELS_DIR [MORE...] -o OUT_DIR [--jobs N | --scheduler ADDRESS] [compress options]

Same options and exit codes as ``python -m caffecompress batch`` (0 all ok,
1 some model failed, 2 usage); prototxts are found beside each model when
named alike, outputs that are newer than their inputs are skipped. ``--scheduler`` (or
``DASK_SCHEDULER_ADDRESS``) runs the jobs on a Dask cluster whose workers share
the paths; from Python, ``caffecompress.batch(...)`` does the same.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from caffecompress.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["batch", *sys.argv[1:]]))
