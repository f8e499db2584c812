"""MNIST and Fashion-MNIST: four IDX files from a local directory or the web, verified.

fetch puts the four files into raw_dir as they came (gzipped or not), each
checked against a digest pinned below; load reads them back as 70,000 images
with `is_test` marking the official 10,000 t10k ones.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import zlib
from pathlib import Path
from typing import Annotated, ClassVar

import numpy as np
from pydantic import Field

from torchrepro.core.errors import DataError
from torchrepro.core.io import file_digest
from torchrepro.download.http import download
from torchrepro.download.idx import is_gzip, open_content, read_images_labels
from torchrepro.download.sources import Options, Table, image_table, register_source

SPLITS = ("train", "t10k")  # t10k is the official test split
FILES = tuple(f"{split}-{kind}" for split in SPLITS for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"))
IMAGE_SHAPE = (28, 28)

LOCAL_DIR_HINT = (
    "To use copies you already have, put the four files (gzipped or not) in one directory"
    " and add `local_dir: /that/directory` to this dataset's `source:` block in params.yaml."
)


@dataclasses.dataclass(frozen=True)
class Pin:
    """What a good copy of one file hashes to."""

    sha256: str  # of the decompressed IDX bytes: holds for plain and recompressed copies too
    gz_md5: str | None = None  # of the official .gz, as its maintainers publish it

    def check(self, path: Path) -> str | None:
        """None if `path` (gzipped or not) is a good copy, else what is wrong."""
        if self.gz_md5 and is_gzip(path) and file_digest(path, algorithm="md5") == self.gz_md5:
            return None
        try:
            with open_content(path) as file:
                actual = hashlib.file_digest(file, "sha256").hexdigest()
        except (OSError, EOFError, zlib.error) as error:
            return f"not readable as gzip ({error})"
        if actual != self.sha256:
            also = f" (or MD5 {self.gz_md5} of the official .gz)" if self.gz_md5 else ""
            return f"checksum mismatch: expected SHA-256 {self.sha256} of the decompressed content{also}, got {actual}"
        return None


# Provenance of the pins:
# - gz_md5: the MD5s the maintainers publish, as listed in torchvision.datasets.MNIST.resources
#   and FashionMNIST.resources (torchvision 0.x), and in the Fashion-MNIST README's table.
# - sha256 (Fashion-MNIST): computed here from the files of Debian's dataset-fashion-mnist
#   0.0~git20200523.55506a9-1, which are recompressed (their MD5s differ from the official
#   ones); the same four values are pinned independently by several public projects that
#   derived them from the official archives.
# - sha256 (MNIST): values that several independent public projects agree on for the
#   decompressed official files; not recomputed here (no copy of MNIST was at hand offline).
MNIST_PINS = {
    "train-images-idx3-ubyte": Pin(
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db", "f68b3c2dcbeaaa9fbdd348bbdeb94873"
    ),
    "train-labels-idx1-ubyte": Pin(
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5", "d53e105ee54ea40749a09fcbcd1e9432"
    ),
    "t10k-images-idx3-ubyte": Pin(
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7", "9fb629c4189551a2d022fa330f9573f3"
    ),
    "t10k-labels-idx1-ubyte": Pin(
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2", "ec29112dd5afa0611ce80d1b7f02629c"
    ),
}
FASHION_MNIST_PINS = {
    "train-images-idx3-ubyte": Pin(
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"
    ),
    "train-labels-idx1-ubyte": Pin(
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9", "25c81989df183df01b3e8a0aad5dffbe"
    ),
    "t10k-images-idx3-ubyte": Pin(
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b", "bef4ecab320f06d8554ea6380940ec79"
    ),
    "t10k-labels-idx1-ubyte": Pin(
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34", "bb300cfdad3c16e7a12a480ee83cd310"
    ),
}

# The mirrors torchvision uses, in its order.
MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
# Zalando's S3 site (what torchvision uses; it serves no HTTPS), then the maintainers' repository.
FASHION_MNIST_MIRRORS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
)
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


Mirror = Annotated[str, Field(pattern=r"^(https?|file)://\S+$")]  # a URL urllib can open


class IdxOptions(Options):
    """Where to get the four files: `local_dir` if set, else the mirrors in order."""

    mirrors: list[Mirror]
    local_dir: str | None = None  # a directory holding the four files, gzipped or not
    timeout_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
    retries: Annotated[int, Field(ge=0, le=20)] = 3  # per mirror; the waits between tries double


class MnistOptions(IdxOptions):
    mirrors: list[Mirror] = list(MNIST_MIRRORS)


class FashionMnistOptions(IdxOptions):
    mirrors: list[Mirror] = list(FASHION_MNIST_MIRRORS)


class IdxSource:
    """Fetch and load for MNIST-style sources; a subclass sets the pins (tests swap them)."""

    pins: ClassVar[dict[str, Pin]]
    system_dir: ClassVar[Path | None] = None  # where an OS package installs the files, if any
    classes: ClassVar[list[str] | None] = None  # class names, when not the digits 0-9

    @classmethod
    def fetch(cls, options: IdxOptions, raw_dir: Path) -> None:
        """Copy the four files from a local directory, or download them; all verified."""
        local = _local_dir(options) or cls.system_dir
        for name in FILES:
            found = _find(local, name) if local and local.is_dir() else None
            if found:
                _copy_verified(found, raw_dir / found.name, cls.pins[name])
            elif options.local_dir:
                raise DataError(f"{local}: no {name} or {name}.gz here (local_dir in params.yaml)")
            else:
                urls = [mirror.rstrip("/") + f"/{name}.gz" for mirror in options.mirrors]
                download(
                    urls,
                    raw_dir / f"{name}.gz",
                    cls.pins[name].check,
                    timeout=options.timeout_s,
                    retries=options.retries,
                    hint=LOCAL_DIR_HINT,
                )

    @classmethod
    def load(cls, options: IdxOptions, raw_dir: Path) -> Table:
        """All 70,000 images; `is_test` marks the 10,000 of the official t10k split."""
        train_x, train_y = _read_split(raw_dir, "train")
        test_x, test_y = _read_split(raw_dir, "t10k")
        is_test = np.repeat([False, True], [len(train_x), len(test_x)])
        table = image_table(np.concatenate([train_x, test_x]), np.concatenate([train_y, test_y]), raw_dir, is_test)
        return dataclasses.replace(table, classes=list(cls.classes)) if cls.classes else table


@register_source("mnist", MnistOptions)
class MnistSource(IdxSource):
    """LeCun, Cortes and Burges's handwritten digits: 60,000 train + 10,000 test."""

    pins = MNIST_PINS


@register_source("fashion-mnist", FashionMnistOptions)
class FashionMnistSource(IdxSource):
    """Zalando's clothing images in MNIST's format: 60,000 train + 10,000 test."""

    pins = FASHION_MNIST_PINS
    system_dir = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
    classes = FASHION_MNIST_CLASSES


def _local_dir(options: IdxOptions) -> Path | None:
    if options.local_dir is None:
        return None
    local = Path(options.local_dir)
    if not local.is_dir():
        raise DataError(f"{local}: local_dir (in params.yaml) is not a directory")
    return local


def _find(directory: Path, name: str) -> Path | None:
    """The file `name` in `directory`, gzipped (preferred) or plain; None if neither."""
    for candidate in (directory / f"{name}.gz", directory / name):
        if candidate.is_file():
            return candidate
    return None


def _copy_verified(source: Path, dest: Path, pin: Pin) -> None:
    shutil.copyfile(source, dest)
    problem = pin.check(dest)  # check the copy: it is what load will read
    if problem:
        raise DataError(f"{source}: {problem}")


def _read_split(raw_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    paths = []
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        found = _find(raw_dir, f"{split}-{kind}")
        if found is None:
            raise DataError(f"{raw_dir}: no {split}-{kind}(.gz); run the download stage first")
        paths.append(found)
    images, labels = read_images_labels(*paths)
    if images.shape[1:] != IMAGE_SHAPE:
        raise DataError(f"{paths[0]}: images are {images.shape[1]}x{images.shape[2]}, expected 28x28")
    return images, labels
