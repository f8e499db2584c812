import hashlib
import re

import numpy as np
import pytest
from http_server import FileServer, dead_url
from idx_files import write_idx

import torchrepro.download.mnist as webdata
from torchrepro import download as datasets
from torchrepro.core.errors import DataError, ParamsError
from torchrepro.core.params import Named as Source
from torchrepro.download.idx import open_content
from torchrepro.download.mnist import FILES, Pin

SOURCES = {"mnist": webdata.MnistSource, "fashion-mnist": webdata.FashionMnistSource}
COUNTS = {"train": 6, "t10k": 4}  # tiny stand-ins for 60,000 and 10,000
FAST = {"retries": 0, "timeout_s": 5.0}


def make_files(directory, gz: bool) -> dict[str, np.ndarray]:
    """Write the four IDX files (named as the real ones) and return their arrays."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in COUNTS.items():
        arrays[f"{split}-images-idx3-ubyte"] = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        arrays[f"{split}-labels-idx1-ubyte"] = rng.integers(0, 10, size=n, dtype=np.uint8)
    for name, array in arrays.items():
        write_idx(directory / (f"{name}.gz" if gz else name), array, gzip=gz)
    return arrays


def pin_files(directory) -> dict[str, Pin]:
    """Pins for generated files: SHA-256 of each file's decompressed content."""
    pins = {}
    for name in FILES:
        path = next(directory.glob(f"{name}*"))
        with open_content(path) as file:
            pins[name] = Pin(hashlib.file_digest(file, "sha256").hexdigest())
    return pins


@pytest.fixture(params=sorted(SOURCES))
def source_name(request, monkeypatch):
    monkeypatch.setattr(SOURCES[request.param], "system_dir", None)  # never pick up the OS's copy
    return request.param


def fetch_and_load(name, raw_dir, **options):
    source = Source(name=name, **options)
    datasets.fetch(name, source, raw_dir)
    return datasets.load(name, source, raw_dir)


def assert_table_matches(table, arrays):
    images = np.concatenate([arrays["train-images-idx3-ubyte"], arrays["t10k-images-idx3-ubyte"]])
    labels = np.concatenate([arrays["train-labels-idx1-ubyte"], arrays["t10k-labels-idx1-ubyte"]])
    np.testing.assert_array_equal(table.x, images)
    np.testing.assert_array_equal(table.y, labels)
    assert table.is_test.tolist() == [False] * COUNTS["train"] + [True] * COUNTS["t10k"]
    assert table.kind == "image" and table.task == "classification" and len(table.classes) == 10


@pytest.mark.parametrize("gz", [True, False])
def test_local_dir(tmp_path, monkeypatch, source_name, gz):
    local = tmp_path / "local"
    arrays = make_files(local, gz)
    monkeypatch.setattr(SOURCES[source_name], "pins", pin_files(local))
    table = fetch_and_load(source_name, tmp_path / "raw", local_dir=str(local))
    assert_table_matches(table, arrays)
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == sorted(p.name for p in local.iterdir())


def test_fashion_mnist_has_class_names(tmp_path, monkeypatch):
    make_files(tmp_path / "local", gz=True)
    monkeypatch.setattr(webdata.FashionMnistSource, "pins", pin_files(tmp_path / "local"))
    table = fetch_and_load("fashion-mnist", tmp_path / "raw", local_dir=str(tmp_path / "local"))
    assert table.classes[0] == "T-shirt/top" and table.classes[9] == "Ankle boot"


def test_recompressed_copy_still_verifies(tmp_path, monkeypatch, source_name):
    """A pin holds for the content, so a plain copy verifies against pins made from .gz files."""
    make_files(tmp_path / "gz", gz=True)
    arrays = make_files(tmp_path / "plain", gz=False)
    monkeypatch.setattr(SOURCES[source_name], "pins", pin_files(tmp_path / "gz"))
    assert_table_matches(fetch_and_load(source_name, tmp_path / "raw", local_dir=str(tmp_path / "plain")), arrays)


def test_wrong_local_file_fails_and_leaves_no_raw_dir(tmp_path, monkeypatch, source_name):
    local = tmp_path / "local"
    make_files(local, gz=True)
    monkeypatch.setattr(SOURCES[source_name], "pins", pin_files(local))
    write_idx(local / "t10k-labels-idx1-ubyte.gz", np.zeros(4, dtype=np.uint8), gzip=True)  # not the pinned file
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz: checksum mismatch: expected SHA-256 [0-9a-f]{64}"):
        fetch_and_load(source_name, tmp_path / "raw", local_dir=str(local))
    assert not (tmp_path / "raw").exists()


def test_local_dir_missing_a_file(tmp_path, monkeypatch, source_name):
    local = tmp_path / "local"
    make_files(local, gz=False)
    monkeypatch.setattr(SOURCES[source_name], "pins", pin_files(local))
    (local / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match=r"local: no train-labels-idx1-ubyte or train-labels-idx1-ubyte.gz here"):
        fetch_and_load(source_name, tmp_path / "raw", local_dir=str(local))


def test_local_dir_that_does_not_exist(tmp_path, source_name):
    with pytest.raises(DataError, match=r"nowhere: local_dir \(in params.yaml\) is not a directory"):
        fetch_and_load(source_name, tmp_path / "raw", local_dir=str(tmp_path / "nowhere"))


def test_download_from_mirrors(tmp_path, monkeypatch, source_name):
    served = tmp_path / "served"
    arrays = make_files(served, gz=True)
    monkeypatch.setattr(SOURCES[source_name], "pins", pin_files(served))
    files = {p.name: p.read_bytes() for p in served.iterdir()}
    with FileServer(files) as server:
        table = fetch_and_load(source_name, tmp_path / "raw", mirrors=[dead_url(""), server.url("")], **FAST)
    assert_table_matches(table, arrays)


def test_all_mirrors_down_says_how_to_use_local_files(tmp_path, source_name):
    with pytest.raises(DataError) as error:
        fetch_and_load(source_name, tmp_path / "raw", mirrors=[dead_url("a/"), dead_url("b/")], **FAST)
    message = str(error.value)
    assert message.startswith("train-images-idx3-ubyte.gz: no mirror gave a good copy")
    assert len(re.findall(r"http://127\.0\.0\.1:\d+/[ab]/train-images-idx3-ubyte\.gz \(", message)) == 2
    assert "local_dir: /that/directory" in message
    assert not (tmp_path / "raw").exists()


def test_system_dir_is_used_when_no_local_dir(tmp_path, monkeypatch):
    system = tmp_path / "usr-share"
    arrays = make_files(system, gz=True)
    monkeypatch.setattr(webdata.FashionMnistSource, "pins", pin_files(system))
    monkeypatch.setattr(webdata.FashionMnistSource, "system_dir", system)
    assert_table_matches(fetch_and_load("fashion-mnist", tmp_path / "raw", mirrors=[]), arrays)


def test_load_before_fetch_says_to_download(tmp_path, source_name):
    with pytest.raises(DataError, match=r"no train-images-idx3-ubyte\(.gz\); run the download stage first"):
        datasets.load(source_name, Source(name=source_name), tmp_path)


def test_images_must_be_28x28(tmp_path, monkeypatch, source_name):
    local = tmp_path / "local"
    make_files(local, gz=True)
    write_idx(local / "train-images-idx3-ubyte.gz", np.zeros((6, 32, 32), dtype=np.uint8), gzip=True)
    monkeypatch.setattr(SOURCES[source_name], "pins", pin_files(local))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz: images are 32x32, expected 28x28"):
        fetch_and_load(source_name, tmp_path / "raw", local_dir=str(local))


def test_unknown_option_is_a_params_error(source_name):
    with pytest.raises(ParamsError, match=r"datasets.d.source.mirror: unknown option .* allowed: local_dir, mirrors"):
        datasets.resolve_source("d", Source(name=source_name, mirror="http://example.org/"))


def test_default_mirrors():
    assert webdata.MnistOptions().mirrors[0] == "https://ossci-datasets.s3.amazonaws.com/mnist/"
    assert webdata.FashionMnistOptions().mirrors[0] == "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_pinned_digests_look_right(name):
    pins = SOURCES[name].pins
    assert sorted(pins) == sorted(FILES)
    for pin in pins.values():
        assert re.fullmatch(r"[0-9a-f]{64}", pin.sha256) and re.fullmatch(r"[0-9a-f]{32}", pin.gz_md5)


DEBIAN_DIR = webdata.FashionMnistSource.system_dir


@pytest.mark.skipif(not DEBIAN_DIR.is_dir(), reason=f"{DEBIAN_DIR} absent (apt-get install dataset-fashion-mnist)")
def test_debian_fashion_mnist_verifies_and_loads(tmp_path):
    table = fetch_and_load("fashion-mnist", tmp_path / "raw", mirrors=[])  # mirrors=[]: never the web
    assert table.x.shape == (70000, 28, 28) and table.x.dtype == np.uint8
    assert int(table.is_test.sum()) == 10000 and not table.is_test[:60000].any()
    assert np.bincount(table.y).tolist() == [7000] * 10
