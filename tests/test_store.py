"""The processed-data store: what normalize writes and every later stage reads."""

import json
import tracemalloc

import numpy as np
import pytest

from torchrepro.core.errors import DataError
from torchrepro.download.sources import image_table
from torchrepro.normalize import prepare, store


def test_save_load_roundtrip(tmp_path, digits):
    prepared = prepare.prepare(digits, 0.2, 0, "global")
    store.save(prepared, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["meta.json", *sorted(store.FILES)]
    loaded = store.load(tmp_path / "out")
    for name in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(prepared, name))
        assert getattr(loaded, name).dtype == getattr(prepared, name).dtype
        assert isinstance(getattr(loaded, name), np.memmap)  # mapped, not read
    assert loaded.x_train.dtype == np.uint8  # images: their pixels, a quarter of float32's bytes
    assert set(loaded.meta.pop("sha256")) == set(store.FILES)
    assert loaded.meta == json.loads(json.dumps(prepared.meta))
    in_memory = store.load(tmp_path / "out", mmap=False)
    assert not isinstance(in_memory.x_train, np.memmap)
    np.testing.assert_array_equal(in_memory.x_train, loaded.x_train)


def test_tables_are_stored_normalized_as_float32(tmp_path, regression):
    prepared = prepare.prepare(regression, 0.25, 0, "per_feature")
    store.save(prepared, tmp_path / "out")
    loaded = store.load(tmp_path / "out")
    assert loaded.x_train.dtype == np.float32 and loaded.y_train.dtype == np.float32
    np.testing.assert_allclose(loaded.x_train.mean(axis=0), 0, atol=1e-6)


def test_loading_a_split_does_not_read_it_into_memory(tmp_path):
    """The digests are checked a block at a time and the arrays are mapped: loading 20 MB of
    images allocates next to nothing."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (26_000, 28, 28), dtype=np.uint8)
    table = image_table(images, np.arange(26_000) % 10, tmp_path)
    store.save(prepare.prepare(table, None, 0, "unit"), tmp_path / "out")
    tracemalloc.start()
    try:
        loaded = store.load(tmp_path / "out")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert loaded.x_train.nbytes > 20e6 and peak < 4e6


def test_load_can_leave_the_training_split_on_disk(tmp_path, digits):
    prepared = prepare.prepare(digits, 0.2, 0, "global")
    store.save(prepared, tmp_path / "out")
    (tmp_path / "out" / "x_train.npy").unlink()  # proves it is not even opened
    loaded = store.load(tmp_path / "out", train=False)
    assert len(loaded.x_train) == len(loaded.y_train) == 0
    np.testing.assert_array_equal(loaded.x_test, prepared.x_test)


def test_save_replaces_the_directory(tmp_path, regression):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "stale.txt").write_text("old")
    store.save(prepare.prepare(regression, None, 0, "none"), tmp_path / "out")
    assert not (tmp_path / "out" / "stale.txt").exists()


def test_load_before_normalize(tmp_path):
    with pytest.raises(DataError, match="meta.json: not found; run the normalize stage first"):
        store.load(tmp_path)


def resign(saved) -> None:
    """Record the files' current digests in meta.json: a store that is consistent but whose
    arrays are malformed, so the checks behind the digest are reached."""
    from torchrepro.core.io import file_digest

    meta = json.loads((saved / "meta.json").read_text())
    meta["sha256"] = {name: file_digest(saved / name) for name in store.FILES}
    (saved / "meta.json").write_text(json.dumps(meta))


@pytest.fixture
def saved(tmp_path, regression):
    store.save(prepare.prepare(regression, 0.25, 0, "per_feature"), tmp_path / "d")
    return tmp_path / "d"


@pytest.mark.parametrize("keep", [0.5, 0.1, 0.9])
def test_truncated_npy(saved, keep):
    path = saved / "x_train.npy"
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(DataError, match="x_train.npy: its SHA-256 does not match"):
        store.load(saved)


@pytest.mark.parametrize("mmap", [True, False], ids=["mapped", "read"])
@pytest.mark.parametrize(
    "content",
    [b"this is not an array file at all", b"\x93NUMPY\x01\x00"],  # garbage; a header cut short
    ids=["garbage", "short-header"],
)
def test_garbage_npy(saved, content, mmap):
    (saved / "x_test.npy").write_bytes(content)
    resign(saved)
    with pytest.raises(DataError, match="x_test.npy: corrupt or truncated"):
        store.load(saved, mmap=mmap)


@pytest.mark.parametrize("mmap", [True, False], ids=["mapped", "read"])
def test_npy_with_pickled_object_is_refused(saved, mmap):
    np.save(saved / "x_train.npy", np.array([object(), object()]), allow_pickle=True)
    resign(saved)
    with pytest.raises(DataError, match="x_train.npy: corrupt or truncated"):
        store.load(saved, mmap=mmap)


def test_npy_with_mismatched_lengths(saved):
    np.save(saved / "y_train.npy", np.zeros(2, np.float32))
    resign(saved)
    with pytest.raises(DataError, match="y_train.npy: 2 targets for 15 inputs"):
        store.load(saved)


def test_meta_json_missing_or_corrupt(saved):
    (saved / "meta.json").write_text("{not json")
    with pytest.raises(DataError, match="meta.json: not valid JSON"):
        store.load(saved)
    (saved / "meta.json").unlink()
    with pytest.raises(DataError, match="meta.json: not found; run the normalize stage first"):
        store.load(saved)


@pytest.mark.parametrize("name", store.FILES)
def test_a_changed_byte_is_caught_by_the_digest(saved, name):
    """A damaged file that still parses would be trained on: the digest catches it."""
    path = saved / name
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # inside the array's data
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=rf"{name}: its SHA-256 does not match meta.json.*dvc checkout --force"):
        store.load(saved)


def test_meta_without_digests_is_refused(saved):
    meta = json.loads((saved / "meta.json").read_text())
    del meta["sha256"]
    (saved / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="no sha256 digests"):
        store.load(saved)
