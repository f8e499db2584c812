import json

import numpy as np
import pytest

from torchrepro import normalize
from torchrepro.datasets import Table
from torchrepro.errors import DataError
from torchrepro.params import parse_params


def labelled(y: list[int] | np.ndarray) -> Table:
    """A tabular classification Table whose single feature is the row number."""
    y = np.asarray(y, dtype=np.int64)
    x = np.arange(len(y), dtype=np.float64)[:, None]
    return Table(x=x, y=y, task="classification", feature_names=["i"], target_name="c",
                 classes=[str(c) for c in range(y.max() + 1)])  # fmt: skip


# --- split -----------------------------------------------------------------------


def test_split_is_stratified():
    table = labelled([0] * 70 + [1] * 20 + [2] * 10)
    train, test = normalize.split_indices(table, 0.2, seed=0)
    assert len(test) == 20 and len(train) == 80
    # 20% of each class in test: 14 of 70, 4 of 20, 2 of 10.
    assert np.bincount(table.y[test]).tolist() == [14, 4, 2]
    assert np.bincount(table.y[train]).tolist() == [56, 16, 8]


def test_split_is_a_partition():
    table = labelled(np.arange(50) % 5)
    train, test = normalize.split_indices(table, 0.3, seed=4)
    assert sorted([*train, *test]) == list(range(50))
    assert list(train) == sorted(train) and list(test) == sorted(test)


def test_split_is_reproducible_and_follows_the_seed():
    table = labelled(np.arange(100) % 4)
    a = normalize.split_indices(table, 0.25, seed=1)
    b = normalize.split_indices(table, 0.25, seed=1)
    c = normalize.split_indices(table, 0.25, seed=2)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_regression_split_is_not_stratified_but_seeded(regression):
    train, test = normalize.split_indices(regression, 0.25, seed=0)
    assert len(test) == 5 and len(train) == 15
    np.testing.assert_array_equal(test, normalize.split_indices(regression, 0.25, seed=0)[1])


def test_too_few_rows_for_the_split():
    table = labelled(np.arange(15) % 10)  # 10 classes, 15 rows: a 20% test split has 3 rows
    with pytest.raises(DataError, match="15 rows are too few for test_size 0.2: need at least 10 rows in each"):
        normalize.split_indices(table, 0.2, seed=0)
    with pytest.raises(DataError, match="too few"):
        normalize.split_indices(labelled([0, 1, 0, 1]), 0.9, seed=0)  # train would have 0 rows


def test_no_split_uses_every_row_for_both(regression):
    train, test = normalize.split_indices(regression, None, seed=0)
    np.testing.assert_array_equal(train, np.arange(20))
    np.testing.assert_array_equal(test, np.arange(20))


def test_source_defined_split_is_kept():
    table = labelled([0, 1, 0, 1, 0, 1])
    table.is_test = np.array([False, False, False, False, True, True])
    train, test = normalize.split_indices(table, 0.5, seed=0)
    assert train.tolist() == [0, 1, 2, 3] and test.tolist() == [4, 5]


# --- standardization ----------------------------------------------------------------


def test_tabular_standardization_uses_training_statistics(regression):
    prepared = normalize.prepare(regression, 0.25, 0, "standardize")
    train, test = normalize.split_indices(regression, 0.25, 0)
    mean = regression.x[train].mean(axis=0)
    std = regression.x[train].std(axis=0)
    np.testing.assert_allclose(prepared.meta["normalize"]["mean"], mean)
    np.testing.assert_allclose(prepared.meta["normalize"]["std"], std)
    # The training split comes out centred and scaled; the test split uses the *training* mean/std.
    np.testing.assert_allclose(prepared.x_train.mean(axis=0), 0, atol=1e-6)
    np.testing.assert_allclose(prepared.x_train.std(axis=0), 1, atol=1e-5)
    np.testing.assert_allclose(prepared.x_test, (regression.x[test] - mean) / std, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(prepared.y_test, regression.y[test], rtol=1e-6)  # targets are not scaled
    assert prepared.x_train.dtype == np.float32 and prepared.y_train.dtype == np.float32


def test_test_rows_do_not_change_the_statistics(regression):
    before = normalize.prepare(regression, 0.25, 0, "standardize")
    _, test = normalize.split_indices(regression, 0.25, 0)
    regression.x[test] = regression.x[test] * 100 + 1e3  # wildly different test inputs
    after = normalize.prepare(regression, 0.25, 0, "standardize")
    assert after.meta["normalize"] == before.meta["normalize"]
    np.testing.assert_array_equal(after.x_train, before.x_train)
    assert not np.allclose(after.x_test, before.x_test)


def test_constant_feature_is_centred_not_divided_by_zero():
    table = Table(x=np.array([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0]]), y=np.zeros(3), task="regression",
                  feature_names=["a", "b"], target_name="y")  # fmt: skip
    prepared = normalize.prepare(table, None, 0, "standardize")
    assert prepared.meta["normalize"]["std"][1] == 1.0
    np.testing.assert_array_equal(prepared.x_train[:, 1], [0, 0, 0])


def test_method_none_keeps_raw_values(regression):
    prepared = normalize.prepare(regression, None, 0, "none")
    np.testing.assert_allclose(prepared.x_train, regression.x, rtol=1e-6)
    assert prepared.meta["normalize"]["mean"] == [0.0, 0.0] and prepared.meta["normalize"]["std"] == [1.0, 1.0]


def test_images_are_scaled_to_unit_range_then_standardized_with_one_scalar(digits):
    prepared = normalize.prepare(digits, 0.2, 0, "standardize")
    train, test = normalize.split_indices(digits, 0.2, 0)
    pixels = digits.x[train].astype(np.float64) / 255  # in [0, 1]
    norm = prepared.meta["normalize"]
    assert norm["scale"] == 1 / 255
    assert isinstance(norm["mean"], float) and isinstance(norm["std"], float)  # global scalars
    assert norm["mean"] == pytest.approx(pixels.mean(), rel=1e-6)
    assert norm["std"] == pytest.approx(pixels.std(), rel=1e-6)
    assert prepared.x_train.shape == (48, 1, 28, 28) and prepared.x_test.shape == (12, 1, 28, 28)
    assert prepared.x_train.dtype == np.float32 and prepared.y_train.dtype == np.int64
    expected = (digits.x[test].astype(np.float64) / 255 - norm["mean"]) / norm["std"]
    np.testing.assert_allclose(prepared.x_test[:, 0], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(prepared.y_test, digits.y[test])


def test_meta_describes_the_dataset(digits):
    meta = normalize.prepare(digits, 0.2, 0, "standardize").meta
    assert meta["task"] == "classification" and meta["kind"] == "image"
    assert meta["input_shape"] == [1, 28, 28] and meta["classes"] == [str(i) for i in range(10)]
    assert meta["n_train"] == 48 and meta["n_test"] == 12 and meta["split"] == 0.2


@pytest.mark.parametrize("kind", ["image", "tabular"])
def test_apply_on_raw_inputs_matches_prepare(kind, digits, regression):
    table = digits if kind == "image" else regression
    prepared = normalize.prepare(table, 0.2, 3, "standardize")
    _, test = normalize.split_indices(table, 0.2, 3)
    again = normalize.apply(table.x[test], prepared.meta)
    np.testing.assert_allclose(again.reshape(prepared.x_test.shape), prepared.x_test, rtol=1e-5, atol=1e-5)
    assert again.dtype == np.float32


# --- files ------------------------------------------------------------------------------


def test_save_load_roundtrip(tmp_path, digits):
    prepared = normalize.prepare(digits, 0.2, 0, "standardize")
    normalize.save(prepared, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["meta.json", "test.npz", "train.npz"]
    loaded = normalize.load(tmp_path / "out")
    for name in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(prepared, name))
        assert getattr(loaded, name).dtype == getattr(prepared, name).dtype
    assert loaded.meta == json.loads(json.dumps(prepared.meta))
    with np.load(tmp_path / "out" / "train.npz", allow_pickle=False) as npz:  # plain arrays, no pickle
        assert sorted(npz.files) == ["x", "y"]


def test_load_can_leave_the_training_split_on_disk(tmp_path, digits):
    prepared = normalize.prepare(digits, 0.2, 0, "standardize")
    normalize.save(prepared, tmp_path / "out")
    (tmp_path / "out" / "train.npz").unlink()  # proves it is not even opened
    loaded = normalize.load(tmp_path / "out", train=False)
    assert len(loaded.x_train) == len(loaded.y_train) == 0
    np.testing.assert_array_equal(loaded.x_test, prepared.x_test)


def test_save_replaces_the_directory(tmp_path, regression):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "stale.txt").write_text("old")
    normalize.save(normalize.prepare(regression, None, 0, "none"), tmp_path / "out")
    assert not (tmp_path / "out" / "stale.txt").exists()


def test_load_before_normalize(tmp_path):
    with pytest.raises(DataError, match="train.npz: not found; run the normalize stage first"):
        normalize.load(tmp_path)


@pytest.fixture
def saved(tmp_path, regression):
    normalize.save(normalize.prepare(regression, 0.25, 0, "standardize"), tmp_path / "d")
    return tmp_path / "d"


@pytest.mark.parametrize("keep", [0.5, 0.1, 0.9])
def test_truncated_npz(saved, keep):
    path = saved / "train.npz"
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(DataError, match="train.npz: corrupt or truncated"):
        normalize.load(saved)


def test_garbage_npz(saved):
    (saved / "test.npz").write_bytes(b"this is not a zip file at all")
    with pytest.raises(DataError, match="test.npz: corrupt or truncated"):
        normalize.load(saved)


def test_npz_with_pickled_object_is_refused(saved):
    np.savez(saved / "train.npz", x=np.array([object(), object()]), y=np.zeros(2))
    with pytest.raises(DataError, match="train.npz: corrupt or truncated"):
        normalize.load(saved)


def test_npz_missing_an_array(saved):
    np.savez(saved / "train.npz", x=np.zeros((2, 2)))
    with pytest.raises(DataError, match="train.npz: corrupt or truncated"):
        normalize.load(saved)


def test_npz_with_mismatched_lengths(saved):
    np.savez(saved / "train.npz", x=np.zeros((3, 2)), y=np.zeros(2))
    with pytest.raises(DataError, match="train.npz: 3 inputs but 2 targets"):
        normalize.load(saved)


def test_meta_json_missing_or_corrupt(saved):
    (saved / "meta.json").write_text("{not json")
    with pytest.raises(DataError, match="meta.json: not valid JSON"):
        normalize.load(saved)
    (saved / "meta.json").unlink()
    with pytest.raises(DataError, match="meta.json: not found; run the normalize stage first"):
        normalize.load(saved)


def test_normalize_stage_function(tmp_path, params_dict):
    """normalize.run reads data/raw/<dataset> and writes data/processed/<dataset> from params paths."""
    (tmp_path / "raw" / "line").mkdir(parents=True)
    (tmp_path / "raw" / "line" / "data.csv").write_text("x,y\n0,1\n2,5\n4,9\n")
    meta = normalize.run(parse_params(params_dict), "line")
    loaded = normalize.load(tmp_path / "processed" / "line")
    assert meta == loaded.meta and meta["split"] == "none"
    np.testing.assert_allclose(loaded.x_train[:, 0], np.array([-1, 0, 1]) * np.sqrt(1.5), rtol=1e-6)
    np.testing.assert_array_equal(loaded.y_test, [1, 5, 9])

