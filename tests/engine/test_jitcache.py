"""numba's per-file cache is dropped as a whole when any engine source changes."""

from __future__ import annotations

import os

from caffecompress.engine import _jitcache


def _tree(tmp_path):
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "b.py").write_text("y = 2\n")
    cache = tmp_path / "__pycache__"
    cache.mkdir()
    return cache


def _entries(cache):
    for name in ("a.f-1.py311.nbi", "a.f-1.py311.1.nbc", "b.cpython-311.pyc"):
        (cache / name).write_bytes(b"x")


def test_unchanged_sources_keep_the_cache(tmp_path):
    cache = _tree(tmp_path)
    _entries(cache)
    assert _jitcache.invalidate_stale(tmp_path)  # no stamp yet: dropped once
    _entries(cache)
    assert not _jitcache.invalidate_stale(tmp_path)
    assert sorted(p.name for p in cache.iterdir() if p.suffix != ".stamp") == [
        "a.f-1.py311.1.nbc", "a.f-1.py311.nbi", "b.cpython-311.pyc"]


def test_an_edit_to_another_module_drops_every_compiled_entry(tmp_path):
    cache = _tree(tmp_path)
    _jitcache.invalidate_stale(tmp_path)
    _entries(cache)
    b = tmp_path / "b.py"
    b.write_text("y = 3\n")  # same size: the timestamp tells
    st = b.stat()
    os.utime(b, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert _jitcache.invalidate_stale(tmp_path)
    left = sorted(p.name for p in cache.iterdir() if p.suffix != ".stamp")
    assert left == ["b.cpython-311.pyc"]  # bytecode is Python's business


def test_a_missing_folder_is_left_alone(tmp_path):
    assert not _jitcache.invalidate_stale(tmp_path / "absent")
