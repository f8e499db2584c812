import numpy as np
import pytest
import torch

from torchrepro import predict
from torchrepro.core.errors import DataError
from torchrepro.core.params import parse_params
from torchrepro.download.sources import Table
from torchrepro.models.inference import Pixels, Split
from torchrepro.normalize import prepare, store


def inputs(prepared: store.Prepared, split: str = "test") -> np.ndarray:
    """What the network is fed for a prepared split: stored pixels normalized as a batch is."""
    x, y = getattr(prepared, f"x_{split}"), getattr(prepared, f"y_{split}")
    return Split.from_numpy(x, y, torch.device("cpu"), prepared.meta).take(slice(None))[0].numpy()


def labelled(y: list[int] | np.ndarray) -> Table:
    """A tabular classification Table whose single feature is the row number."""
    y = np.asarray(y, dtype=np.int64)
    x = np.arange(len(y), dtype=np.float64)[:, None]
    return Table(
        x=x,
        y=y,
        task="classification",
        feature_names=["i"],
        target_name="c",
        classes=[str(c) for c in range(y.max() + 1)],
    )


# --- split -----------------------------------------------------------------------


def test_split_is_stratified():
    table = labelled([0] * 70 + [1] * 20 + [2] * 10)
    train, test = prepare.split_indices(table, 0.2, seed=0)
    assert len(test) == 20 and len(train) == 80
    # 20% of each class in test: 14 of 70, 4 of 20, 2 of 10.
    assert np.bincount(table.y[test]).tolist() == [14, 4, 2]
    assert np.bincount(table.y[train]).tolist() == [56, 16, 8]


def test_split_is_a_partition():
    table = labelled(np.arange(50) % 5)
    train, test = prepare.split_indices(table, 0.3, seed=4)
    assert sorted([*train, *test]) == list(range(50))
    assert list(train) == sorted(train) and list(test) == sorted(test)


def test_split_is_reproducible_and_follows_the_seed():
    table = labelled(np.arange(100) % 4)
    a = prepare.split_indices(table, 0.25, seed=1)
    b = prepare.split_indices(table, 0.25, seed=1)
    c = prepare.split_indices(table, 0.25, seed=2)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_regression_split_is_not_stratified_but_seeded(regression):
    train, test = prepare.split_indices(regression, 0.25, seed=0)
    assert len(test) == 5 and len(train) == 15
    np.testing.assert_array_equal(test, prepare.split_indices(regression, 0.25, seed=0)[1])


def test_too_few_rows_for_the_split():
    table = labelled(np.arange(15) % 10)  # 10 classes, 15 rows: a 20% test split has 3 rows
    with pytest.raises(DataError, match="15 rows are too few for test_size 0.2: need at least 10 rows in each"):
        prepare.split_indices(table, 0.2, seed=0)
    with pytest.raises(DataError, match="too few"):
        prepare.split_indices(labelled([0, 1, 0, 1]), 0.9, seed=0)  # train would have 0 rows


def test_no_split_uses_every_row_for_both(regression):
    train, test = prepare.split_indices(regression, None, seed=0)
    np.testing.assert_array_equal(train, np.arange(20))
    np.testing.assert_array_equal(test, np.arange(20))


def test_source_defined_split_is_kept():
    table = labelled([0, 1, 0, 1, 0, 1])
    table.is_test = np.array([False, False, False, False, True, True])
    train, test = prepare.split_indices(table, 0.5, seed=0)
    assert train.tolist() == [0, 1, 2, 3] and test.tolist() == [4, 5]


# --- standardization ----------------------------------------------------------------


def test_per_feature_standardization_uses_training_statistics(regression):
    prepared = prepare.prepare(regression, 0.25, 0, "per_feature")
    train, test = prepare.split_indices(regression, 0.25, 0)
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
    before = prepare.prepare(regression, 0.25, 0, "per_feature")
    _, test = prepare.split_indices(regression, 0.25, 0)
    regression.x[test] = regression.x[test] * 100 + 1e3  # wildly different test inputs
    after = prepare.prepare(regression, 0.25, 0, "per_feature")
    assert after.meta["normalize"] == before.meta["normalize"]
    np.testing.assert_array_equal(after.x_train, before.x_train)
    assert not np.allclose(after.x_test, before.x_test)


def test_constant_feature_is_centred_not_divided_by_zero():
    table = Table(
        x=np.array([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0]]),
        y=np.zeros(3),
        task="regression",
        feature_names=["a", "b"],
        target_name="y",
    )
    prepared = prepare.prepare(table, None, 0, "per_feature")
    assert prepared.meta["normalize"]["std"][1] == 1.0
    np.testing.assert_array_equal(prepared.x_train[:, 1], [0, 0, 0])


def test_method_none_keeps_raw_values(regression):
    prepared = prepare.prepare(regression, None, 0, "none")
    np.testing.assert_allclose(prepared.x_train, regression.x, rtol=1e-6)
    assert prepared.meta["normalize"]["mean"] == [0.0, 0.0] and prepared.meta["normalize"]["std"] == [1.0, 1.0]


def test_global_on_images_scales_to_unit_range_then_standardizes_with_one_scalar(digits):
    prepared = prepare.prepare(digits, 0.2, 0, "global")
    train, test = prepare.split_indices(digits, 0.2, 0)
    pixels = digits.x[train].astype(np.float64) / 255  # in [0, 1]
    norm = prepared.meta["normalize"]
    assert norm["scale"] == 1 / 255
    assert isinstance(norm["mean"], float) and isinstance(norm["std"], float)  # global scalars
    assert norm["mean"] == pytest.approx(pixels.mean(), rel=1e-6)
    assert norm["std"] == pytest.approx(pixels.std(), rel=1e-6)
    assert prepared.x_train.shape == (48, 1, 28, 28) and prepared.x_test.shape == (12, 1, 28, 28)
    assert prepared.x_train.dtype == np.uint8 and prepared.y_train.dtype == np.int64  # pixels, as they came
    np.testing.assert_array_equal(prepared.x_test[:, 0], digits.x[test])
    expected = (digits.x[test].astype(np.float64) / 255 - norm["mean"]) / norm["std"]
    np.testing.assert_allclose(inputs(prepared)[:, 0], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(prepared.y_test, digits.y[test])


def test_meta_describes_the_dataset(digits):
    meta = prepare.prepare(digits, 0.2, 0, "global").meta
    assert meta["task"] == "classification" and meta["kind"] == "image"
    assert meta["input_shape"] == [1, 28, 28] and meta["classes"] == [str(i) for i in range(10)]
    assert meta["n_train"] == 48 and meta["n_test"] == 12
    assert meta["split"] == {"test_size": 0.2, "stratified": True}


@pytest.mark.parametrize("method", ["none", "unit", "global", "per_feature"])
@pytest.mark.parametrize("kind", ["image", "tabular"])
def test_predict_normalizes_raw_inputs_bit_for_bit_as_training_does(kind, method, digits, regression):
    table = digits if kind == "image" else regression
    prepared = prepare.prepare(table, 0.2, 3, method)
    _, test = prepare.split_indices(table, 0.2, 3)
    raw = table.x[test].astype(np.float64).reshape(prepared.x_test.shape)  # as predict reads them
    again = predict.model_inputs(raw, prepared.meta)
    assert again.dtype == torch.float32
    np.testing.assert_array_equal(again.numpy(), inputs(prepared))


def test_without_stratify_the_split_is_scikit_learns_plain_one():
    from sklearn.model_selection import train_test_split

    table = labelled([0] * 12 + [1] * 12 + [2] * 12)
    train, test = prepare.split_indices(table, 1 / 3, seed=1, stratify=False)
    _, expected = train_test_split(np.arange(36), test_size=1 / 3, random_state=1)
    assert test.tolist() == sorted(expected.tolist())
    stratified = prepare.split_indices(table, 1 / 3, seed=1)[1]
    assert sorted(np.bincount(table.y[stratified])) == [4, 4, 4]  # the stratified one differs
    assert test.tolist() != stratified.tolist()


def test_global_on_tables_uses_one_mean_and_std_of_the_whole_training_matrix(regression):
    """As `(X_train - np.mean(X_train)) / np.std(X_train)` does (the Iris tutorial)."""
    prepared = prepare.prepare(regression, 0.25, 0, "global")
    train, test = prepare.split_indices(regression, 0.25, 0)
    mean, std = regression.x[train].mean(), regression.x[train].std()
    assert prepared.meta["normalize"]["mean"] == pytest.approx(mean) and prepared.meta["normalize"][
        "std"
    ] == pytest.approx(std)
    np.testing.assert_allclose(prepared.x_test, (regression.x[test] - mean) / std, rtol=1e-5, atol=1e-6)


def test_unit_on_images_is_pixels_over_255_without_standardizing(digits):
    prepared = prepare.prepare(digits, 0.2, 0, "unit")
    _, test = prepare.split_indices(digits, 0.2, 0)
    assert prepared.meta["normalize"] == {"method": "unit", "scale": 1 / 255, "mean": 0.0, "std": 1.0}
    np.testing.assert_allclose(inputs(prepared)[:, 0], digits.x[test] / 255, rtol=1e-6)
    assert inputs(prepared, "train").min() >= 0 and inputs(prepared, "train").max() <= 1


def test_unit_on_tables_maps_the_training_range_to_zero_one(regression):
    prepared = prepare.prepare(regression, 0.25, 0, "unit")
    np.testing.assert_allclose(prepared.x_train.min(axis=0), 0, atol=1e-7)
    np.testing.assert_allclose(prepared.x_train.max(axis=0), 1, atol=1e-6)


def test_none_on_images_keeps_pixels_0_to_255(digits):
    prepared = prepare.prepare(digits, 0.2, 0, "none")
    assert prepared.meta["normalize"]["scale"] == 1.0 and inputs(prepared, "train").max() == 250


def test_per_feature_on_images_standardizes_each_pixel(digits):
    prepared = prepare.prepare(digits, 0.2, 0, "per_feature")
    train, _ = prepare.split_indices(digits, 0.2, 0)
    mean = np.asarray(prepared.meta["normalize"]["mean"])
    assert mean.shape == (28, 28)
    np.testing.assert_allclose(mean, (digits.x[train] / 255).mean(axis=0), rtol=1e-6)


def test_normalize_stage_function(tmp_path, params_dict):
    """normalize.run reads data/raw/<dataset> and writes data/processed/<dataset> from params paths."""
    (tmp_path / "raw" / "line").mkdir(parents=True)
    (tmp_path / "raw" / "line" / "data.csv").write_text("x,y\n0,1\n2,5\n4,9\n")
    meta = prepare.run(parse_params(params_dict), "line")
    loaded = store.load(tmp_path / "processed" / "line")
    assert meta == {k: v for k, v in loaded.meta.items() if k != "sha256"} and meta["split"] == "none"
    np.testing.assert_allclose(loaded.x_train[:, 0], np.array([-1, 0, 1]) * np.sqrt(1.5), rtol=1e-6)
    np.testing.assert_array_equal(loaded.y_test, [1, 5, 9])


def test_per_feature_on_images_divides_no_pixel_by_less_than_the_global_std(digits):
    """A pixel that is almost always dark has a std near 0; dividing by it would blow up test
    images that light it. Each pixel's divisor is at least the std of all training pixels."""
    x = digits.x.copy()
    x[:, 0, 0] = 0
    x[0, 0, 0] = 255  # one training image lights the corner
    table = Table(x=x, y=digits.y, task="classification", feature_names=[], target_name="label", classes=digits.classes)
    prepared = prepare.prepare(table, 0.2, 0, "per_feature")
    train, _ = prepare.split_indices(table, 0.2, 0)
    std = np.asarray(prepared.meta["normalize"]["std"])
    overall = (x[train] / 255).std()
    assert std.min() == pytest.approx(overall, rel=1e-6)
    bright = (x[train] / 255).std(axis=0) > overall  # the row bands the classes light
    np.testing.assert_allclose(std[bright], (x[train] / 255).std(axis=0)[bright], rtol=1e-6)


@pytest.mark.parametrize("method", ["none", "unit", "global", "per_feature"])
@pytest.mark.parametrize("channels", [(), (3,)], ids=["gray", "rgb"])
def test_a_batch_is_normalized_to_the_bits_of_the_whole_split_in_float32(method, channels):
    """Pixels become inputs a batch at a time on the device; each of every pixel's 256 values
    gives the float32 that normalizing the whole split at once (pixels / 255, minus the mean,
    over the std, each in float32) gives: the models are those the float32 store made."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (300, *channels, 6, 5), dtype=np.uint8)
    pixels[:256] = np.arange(256, dtype=np.uint8).reshape(256, *[1] * (len(channels) + 2))
    table = Table(
        x=pixels, y=np.arange(300) % 2, task="classification", feature_names=[], target_name="c", classes=["a", "b"]
    )
    prepared = prepare.prepare(table, None, 0, method)
    norm = prepared.meta["normalize"]
    whole = pixels.astype(np.float32)
    if method != "none":
        whole /= np.float32(255)
    whole -= np.asarray(norm["mean"], np.float32)
    whole /= np.asarray(norm["std"], np.float32)
    pixels_fn = Pixels.from_meta(norm, torch.device("cpu"))
    stored = torch.from_numpy(prepared.x_train)
    batches = torch.cat([pixels_fn(stored[i : i + 64]) for i in range(0, 300, 64)]).numpy()
    np.testing.assert_array_equal(batches.reshape(whole.shape).view(np.uint32), whole.view(np.uint32))


@pytest.mark.parametrize(("name", "method"), [("digits", "unit"), ("line", "per_feature")])
def test_a_dataset_without_normalize_gets_the_tutorials_choice_for_its_kind(tmp_path, params_dict, name, method):
    params_dict["datasets"][name].pop("normalize")
    if name == "line":
        (tmp_path / "raw" / "line").mkdir(parents=True)
        (tmp_path / "raw" / "line" / "data.csv").write_text("x,y\n0,1\n2,5\n4,9\n")
    else:
        from torchrepro import download

        download.run(parse_params(params_dict), "digits")
    assert prepare.run(parse_params(params_dict), name)["normalize"]["method"] == method


def test_classification_needs_two_classes():
    table = Table(
        x=np.ones((6, 2)),
        y=np.zeros(6, np.int64),
        task="classification",
        feature_names=["a", "b"],
        target_name="kind",
        classes=["only"],
    )
    with pytest.raises(DataError, match="target 'kind' has one class \\('only'\\).*at least two"):
        prepare.prepare(table, 0.5, 0, "per_feature")
