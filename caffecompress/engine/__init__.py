"""The array engine: pure functions over arrays taking ``xp`` (numpy or cupy).

Nothing here sees a file, a layer name or protobuf. See DESIGN.md, "The
engine: principles".
"""

from ._jitcache import invalidate_stale as _invalidate_stale

# before any engine module loads compiled code from numba's cache
_invalidate_stale()
