"""The processed-data store: what normalize writes and every later stage reads."""

import json

import numpy as np
import pytest

from torchrepro.core.errors import DataError
from torchrepro.normalize import prepare, store


def test_save_load_roundtrip(tmp_path, digits):
    prepared = prepare.prepare(digits, 0.2, 0, "global")
    store.save(prepared, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["meta.json", "test.npz", "train.npz"]
    loaded = store.load(tmp_path / "out")
    for name in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(prepared, name))
        assert getattr(loaded, name).dtype == getattr(prepared, name).dtype
    assert set(loaded.meta.pop("sha256")) == {"train.npz", "test.npz"}
    assert loaded.meta == json.loads(json.dumps(prepared.meta))
    with np.load(tmp_path / "out" / "train.npz", allow_pickle=False) as npz:  # plain arrays, no pickle
        assert sorted(npz.files) == ["x", "y"]


def test_load_can_leave_the_training_split_on_disk(tmp_path, digits):
    prepared = prepare.prepare(digits, 0.2, 0, "global")
    store.save(prepared, tmp_path / "out")
    (tmp_path / "out" / "train.npz").unlink()  # proves it is not even opened
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
    meta["sha256"] = {name: file_digest(saved / name) for name in store.SPLITS}
    (saved / "meta.json").write_text(json.dumps(meta))


@pytest.fixture
def saved(tmp_path, regression):
    store.save(prepare.prepare(regression, 0.25, 0, "per_feature"), tmp_path / "d")
    return tmp_path / "d"


@pytest.mark.parametrize("keep", [0.5, 0.1, 0.9])
def test_truncated_npz(saved, keep):
    path = saved / "train.npz"
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(DataError, match="train.npz: its SHA-256 does not match"):
        store.load(saved)


def test_garbage_npz(saved):
    (saved / "test.npz").write_bytes(b"this is not a zip file at all")
    resign(saved)
    with pytest.raises(DataError, match="test.npz: corrupt or truncated"):
        store.load(saved)


def test_npz_with_pickled_object_is_refused(saved):
    np.savez(saved / "train.npz", x=np.array([object(), object()]), y=np.zeros(2))
    resign(saved)
    with pytest.raises(DataError, match="train.npz: corrupt or truncated"):
        store.load(saved)


def test_npz_missing_an_array(saved):
    np.savez(saved / "train.npz", x=np.zeros((2, 2)))
    resign(saved)
    with pytest.raises(DataError, match="train.npz: corrupt or truncated"):
        store.load(saved)


def test_npz_with_mismatched_lengths(saved):
    np.savez(saved / "train.npz", x=np.zeros((3, 2)), y=np.zeros(2))
    resign(saved)
    with pytest.raises(DataError, match="train.npz: 3 inputs but 2 targets"):
        store.load(saved)


def test_meta_json_missing_or_corrupt(saved):
    (saved / "meta.json").write_text("{not json")
    with pytest.raises(DataError, match="meta.json: not valid JSON"):
        store.load(saved)
    (saved / "meta.json").unlink()
    with pytest.raises(DataError, match="meta.json: not found; run the normalize stage first"):
        store.load(saved)


@pytest.mark.parametrize("name", ["train.npz", "test.npz"])
def test_a_changed_byte_is_caught_by_the_digest(saved, name):
    """A damaged file that still parses as a zip would be trained on: the digest catches it."""
    path = saved / name
    data = bytearray(path.read_bytes())
    data[-30] ^= 0xFF  # inside the zip's central directory padding or data: any flip counts
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=rf"{name}: its SHA-256 does not match meta.json.*dvc checkout --force"):
        store.load(saved)


def test_meta_without_digests_is_refused(saved):
    meta = json.loads((saved / "meta.json").read_text())
    del meta["sha256"]
    (saved / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="no sha256 digests"):
        store.load(saved)
