import gzip

import numpy as np
import pytest
from idx_files import write_idx

from torchrepro.core.errors import DataError
from torchrepro.download.idx import is_gzip, read_idx, read_images_labels


def tiny_images(n: int = 5) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(n, 28, 28), dtype=np.uint8)


def tiny_labels(n: int = 5) -> np.ndarray:
    return (np.arange(n) % 10).astype(np.uint8)


@pytest.mark.parametrize("gz", [False, True])
def test_round_trip(tmp_path, gz):
    images, labels = tiny_images(), tiny_labels()
    write_idx(tmp_path / "images", images, gzip=gz)
    write_idx(tmp_path / "labels", labels, gzip=gz)
    got_images, got_labels = read_images_labels(tmp_path / "images", tmp_path / "labels")
    assert is_gzip(tmp_path / "images") == gz
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)
    assert got_images.dtype == np.uint8 and got_images.shape == (5, 28, 28)


def test_gzip_is_detected_by_content_not_name(tmp_path):
    write_idx(tmp_path / "really-gzipped", tiny_labels(), gzip=True)
    write_idx(tmp_path / "plain.gz", tiny_labels(), gzip=False)
    np.testing.assert_array_equal(read_idx(tmp_path / "really-gzipped", ndim=1), tiny_labels())
    np.testing.assert_array_equal(read_idx(tmp_path / "plain.gz", ndim=1), tiny_labels())


def test_gzip_output_is_reproducible(tmp_path):
    write_idx(tmp_path / "a", tiny_images(), gzip=True)
    write_idx(tmp_path / "b", tiny_images(), gzip=True)
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes()


def test_labels_file_read_as_images_names_both_magic_numbers(tmp_path):
    write_idx(tmp_path / "labels", tiny_labels())
    with pytest.raises(DataError, match=r"labels: IDX magic number is 0x00000801, expected 0x00000803"):
        read_idx(tmp_path / "labels", ndim=3)


def test_not_an_idx_file(tmp_path):
    (tmp_path / "notes.txt").write_bytes(b"hello, this is text and not IDX at all")
    with pytest.raises(DataError, match=r"notes.txt: IDX magic number is 0x68656c6c"):
        read_idx(tmp_path / "notes.txt", ndim=1)


def test_wrong_number_of_dimensions(tmp_path):
    write_idx(tmp_path / "flat", tiny_images().reshape(5, 784))  # 2-d: magic 0x802
    with pytest.raises(DataError, match=r"flat: .*0x00000802.*3 dimension"):
        read_idx(tmp_path / "flat", ndim=3)


def test_header_dimensions_disagree_with_size(tmp_path):
    path = tmp_path / "images"
    write_idx(path, tiny_images(5))
    data = bytearray(path.read_bytes())
    data[4:8] = (6).to_bytes(4, "big")  # claim 6 images, hold 5
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"images: header says shape \(6, 28, 28\), so 4720 bytes, but .* 3936 bytes"):
        read_idx(path, ndim=3)


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_file(tmp_path, gz):
    path = tmp_path / "images"
    write_idx(path, tiny_images(), gzip=gz)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"images: .*(truncated|corrupt)"):
        read_idx(path, ndim=3)


def test_trailing_bytes_are_an_error(tmp_path):
    path = tmp_path / "labels"
    write_idx(path, tiny_labels())
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(DataError, match=r"labels: .*but the content has 14 bytes"):
        read_idx(path, ndim=1)


def test_header_too_short(tmp_path):
    (tmp_path / "stub").write_bytes(gzip.compress(b"\0\0\x08\x03\0\0"))
    with pytest.raises(DataError, match=r"stub: 6 bytes is too short"):
        read_idx(tmp_path / "stub", ndim=3)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nowhere: IDX file not found"):
        read_idx(tmp_path / "nowhere", ndim=1)


def test_image_and_label_counts_must_agree(tmp_path):
    write_idx(tmp_path / "images", tiny_images(5))
    write_idx(tmp_path / "labels", tiny_labels(4))
    with pytest.raises(DataError, match=r"labels: 4 labels, but .*images has 5 images"):
        read_images_labels(tmp_path / "images", tmp_path / "labels")
