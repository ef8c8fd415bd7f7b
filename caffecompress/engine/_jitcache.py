"""Keep numba's on-disk cache of the engine consistent across modules.

numba caches a compiled function in ``__pycache__`` and checks only the
timestamp of the file that defines it. A cached function that calls
compiled code from another module (the fused small-blob clustering in
``kmeans.py`` calls ``lloyd.py`` and ``grid.py``) would keep the old machine
code after an edit or ``git pull`` that touched only that other module.
So the engine stamps its sources as a whole: when any ``*.py`` file of the
engine changed since the cache was written, every cached entry of the
engine is dropped and rebuilt on first use.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["invalidate_stale"]

_STAMP = "caffecompress-sources.stamp"


def invalidate_stale(folder: Path | None = None) -> bool:
    """Drop ``folder/__pycache__/*.nbi|*.nbc`` when the ``*.py`` files of
    ``folder`` (name, size, modification time) differ from the stamp left
    by the last call; write the new stamp.

    Returns True when entries were dropped. Never raises for a read-only or
    missing cache folder (numba then caches elsewhere, by file, as usual).
    """
    folder = Path(__file__).parent if folder is None else Path(folder)
    cache = folder / "__pycache__"
    try:
        h = hashlib.sha256()
        for p in sorted(folder.glob("*.py")):
            st = p.stat()
            h.update(f"{p.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        stamp = h.hexdigest()
        marker = cache / _STAMP
        if marker.is_file() and marker.read_text() == stamp:
            return False
        dropped = False
        for f in list(cache.glob("*.nbi")) + list(cache.glob("*.nbc")):
            f.unlink(missing_ok=True)
            dropped = True
        cache.mkdir(exist_ok=True)
        marker.write_text(stamp)
        return dropped
    except OSError:
        return False
