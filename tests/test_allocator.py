import pytest

from torchrepro import allocator


@pytest.mark.skipif(not allocator.is_glibc(), reason="mallopt is glibc's")
def test_thresholds_are_set_on_glibc():
    assert allocator.fix_malloc_thresholds()


def test_other_c_libraries_are_left_alone(monkeypatch):
    def musl_confstr(name):  # what os.confstr does where the C library lacks the name
        raise ValueError("unrecognized configuration name")

    monkeypatch.setattr(allocator.os, "confstr", musl_confstr)
    assert not allocator.is_glibc()
    assert allocator.fix_malloc_thresholds() is False
