"""``python -m caffecompress``: see :mod:`caffecompress.cli`."""

import sys

from .cli import main

sys.exit(main())
