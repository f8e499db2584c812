import pytest

from torchrepro import allocator


@pytest.mark.skipif(not allocator.is_glibc(), reason="mallopt is glibc's")
def test_thresholds_are_set_on_glibc():
    assert allocator.fix_malloc_thresholds()


def test_other_c_libraries_are_left_alone(monkeypatch):
    monkeypatch.setattr(allocator.os, "confstr", lambda name: (_ for _ in ()).throw(ValueError(name)))
    assert not allocator.is_glibc()
    assert allocator.fix_malloc_thresholds() is False
