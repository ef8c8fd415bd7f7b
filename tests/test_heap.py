"""heap.kept_heap: glibc's thresholds raised for the outermost ``with`` only, then set and trimmed."""

from __future__ import annotations

import platform
import threading

import pytest

from caffecompress import heap


class _FakeLibc:
    def __init__(self):
        self.calls = []

    def mallopt(self, k, v):
        self.calls.append(("mallopt", k, v))
        return 1

    def malloc_trim(self, pad):
        self.calls.append(("trim", pad))
        return 1


@pytest.fixture
def fake(monkeypatch):
    lib = _FakeLibc()
    monkeypatch.setattr(heap, "_libc", lib)
    monkeypatch.setattr(heap, "_depth", 0)
    return lib


def test_the_outermost_with_raises_then_sets_and_trims(fake):
    with heap.kept_heap():
        assert fake.calls == [("mallopt", -3, 2**31 - 1), ("mallopt", -1, 2**31 - 1)]
        with heap.kept_heap():  # nested (another thread's pass, say): nothing more
            pass
        assert len(fake.calls) == 2
    assert fake.calls[2:] == [("mallopt", -3, 32 << 20), ("mallopt", -1, 64 << 20), ("trim", 0)]
    assert heap._depth == 0


def test_an_error_inside_still_restores(fake):
    with pytest.raises(KeyError):
        with heap.kept_heap():
            raise KeyError("x")
    assert fake.calls[-1] == ("trim", 0) and heap._depth == 0


def test_threads_share_one_count(fake):
    inside, go = threading.Barrier(3), threading.Event()

    def work():
        with heap.kept_heap():
            inside.wait()
            go.wait()

    ts = [threading.Thread(target=work) for _ in range(2)]
    for t in ts:
        t.start()
    inside.wait()
    assert heap._depth == 2 and len(fake.calls) == 2
    go.set()
    for t in ts:
        t.join()
    assert heap._depth == 0 and [c[0] for c in fake.calls].count("trim") == 1


def test_without_glibc_it_does_nothing(monkeypatch):
    monkeypatch.setattr(heap, "_libc", False)
    assert not heap.available()
    with heap.kept_heap():
        pass


def test_on_this_machine_it_runs(monkeypatch):
    """The real mallopt/malloc_trim where glibc is (the CI machines): no error, the count back at 0."""
    monkeypatch.setattr(heap, "_libc", None)
    assert heap.available() == (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")
    with heap.kept_heap():
        big = bytearray(64 << 20)
        del big
    assert heap._depth == 0
