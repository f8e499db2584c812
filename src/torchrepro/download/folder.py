"""The image_folder source: your own labelled images, one folder per class.

  data/images/<name>/<class>/*.png|jpg|jpeg|bmp|webp             the dataset's split: param splits it
  data/images/<name>/{train,test}/<class>/*.png|...             this split, as MNIST's official one

Class names are the folder names, sorted (numbers as numbers); files are read in name order,
so the arrays are the same on every host. Names starting with a dot are ignored (.DS_Store).
The folder must lie under data/images/, which every download stage depends on: `dvc add` it
and adding an image reruns what it must.

fetch decodes every image (images.read_pixels: upright, transparency on white, resized to
`size`, grayscale or RGB) in parallel processes, a few batches at a time, and streams the
pixels to disk: memory holds the batches in flight, not the dataset. It writes images.npy
(N, H, W) or (N, 3, H, W) uint8, labels.npy, is_test.npy (train/test layout only) and
index.json (classes, options, and the files skipped under `skip_bad: true`).
"""

from __future__ import annotations

import collections
import errno
import os
import shutil
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Annotated, Any

import numpy as np
from pydantic import Field, model_validator

from torchrepro.core.errors import DataError, warn
from torchrepro.core.io import read_json, require_regular_file, write_json
from torchrepro.download.images import SUFFIXES, Color, TooManyPixels, read_pixels
from torchrepro.download.sources import Options, Table, _class_sort_key, _load_npy, register_source

IMAGES_ROOT = PurePosixPath("data/images")
MAX_PIXELS = 50_000_000  # as predict's default: a 48-megapixel photo fits
BATCH = 64  # files per task sent to a decoding process
PARALLEL_FROM = 4 * BATCH  # fewer files are decoded in this process: starting workers costs more
MAX_WORKERS = 8
Side = Annotated[int, Field(ge=1, le=4096)]


class ImageFolderOptions(Options):
    path: str  # data/images/<name>
    size: Side | Annotated[list[Side], Field(min_length=2, max_length=2)] = 28  # side, or [height, width]
    color: Color = "grayscale"
    skip_bad: bool = False  # skip (and count) files that are not images or do not decode
    max_pixels: Annotated[int, Field(ge=1, le=2**32)] = MAX_PIXELS  # refused before decoding

    @model_validator(mode="after")
    def _under_images(self) -> ImageFolderOptions:
        path = PurePosixPath(self.path)
        inside = not path.is_absolute() and ".." not in path.parts and path.parts[:2] == IMAGES_ROOT.parts
        if not inside or len(path.parts) < 3:
            name = path.name if path.name not in ("", ".", "..", "images") else "my-images"
            raise ValueError(
                f"path: {self.path!r} is not a folder under {IMAGES_ROOT}/ in the repository, where DVC tracks "
                f"images; bring it in with `cp -r {self.path} {IMAGES_ROOT}/{name} && dvc add {IMAGES_ROOT}/{name}` "
                f"and set path: {IMAGES_ROOT}/{name}"
            )
        return self

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) the images are resized to."""
        return (self.size, self.size) if isinstance(self.size, int) else (self.size[0], self.size[1])


@dataclass
class Layout:
    """What a folder holds: class names, and each image file with its label and split."""

    classes: list[str]
    files: list[Path] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    is_test: list[bool] | None = None  # None: no train/test folders
    skipped: list[dict[str, str]] = field(default_factory=list)


def _entries(folder: Path) -> list[Path]:
    """The visible entries of a folder, in name order."""
    return sorted((p for p in folder.iterdir() if not p.name.startswith(".")), key=lambda p: p.name)


def _kind(path: Path) -> str:
    """'folder', 'file' or 'other', links followed; a link that loops or leads nowhere is an error."""
    try:
        mode = path.stat().st_mode
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise DataError(f"{path}: a symbolic link loop (it leads back to itself); remove it") from None
        if error.errno == errno.ENOENT and path.is_symlink():
            raise DataError(f"{path}: a symbolic link to {os.readlink(path)!r}, which does not exist") from None
        raise
    return "folder" if stat.S_ISDIR(mode) else "file" if stat.S_ISREG(mode) else "other"


def _class_folders(folder: Path) -> list[Path]:
    """The class folders directly in `folder`; anything else there is an error."""
    folders = []
    for entry in _entries(folder):
        kind = _kind(entry)
        if kind != "folder":
            raise DataError(
                f"{entry}: a {'file' if kind == 'file' else 'non-folder entry'} beside the class folders; "
                f"images go in {folder}/<class>/: move it into a class folder or out of {folder}"
            )
        folders.append(entry)
    return sorted(folders, key=lambda p: _class_sort_key(p.name))


def _check_root(root: Path) -> None:
    if not root.exists() and not root.is_symlink():
        raise DataError(
            f"{root}: not found; put the images in {root}/<class>/ (or {root}/train/<class>/ and "
            f"{root}/test/<class>/), then `dvc add {root}`; in a clone, `dvc pull {root}`"
        )
    if _kind(root) != "folder":
        raise DataError(f"{root}: not a folder; an image folder holds one folder of images per class")
    images = Path(IMAGES_ROOT).resolve()
    if not root.resolve().is_relative_to(images):
        raise DataError(
            f"{root}: leads to {root.resolve()}, outside {IMAGES_ROOT}/; DVC tracks only what lies inside the "
            f"repository: replace the link by a copy (`dvc add {root}` then tracks it)"
        )


def scan(root: Path, skip_bad: bool = False) -> Layout:
    """The layout of an image folder, checked: at least two classes, each with images."""
    _check_root(root)
    folders = _class_folders(root)
    if not folders:
        raise DataError(f"{root}: empty: no class folders; put each class's images in {root}/<class>/")
    names = [f.name for f in folders]
    if "train" in names or "test" in names:
        return _scan_split(root, folders, skip_bad)
    layout = Layout(classes=names)
    _check_classes(root, names)
    for label, folder in enumerate(folders):
        _add_images(layout, folder, label, skip_bad)
    return layout


def _scan_split(root: Path, folders: list[Path], skip_bad: bool) -> Layout:
    names = [f.name for f in folders]
    if sorted(names) != ["test", "train"]:
        other = [n for n in names if n not in ("train", "test")]
        raise DataError(
            f"{root}: holds {', '.join(n + '/' for n in names)}: a train/test layout has exactly train/ and "
            f"test/, each with one folder per class; a class layout has no folder named train or test"
            + (f" (found {', '.join(other)} beside them)" if other else "")
        )
    train, test = (_class_folders(root / name) for name in ("train", "test"))
    classes = [f.name for f in train]
    _check_classes(root / "train", classes)
    if unknown := [f.name for f in test if f.name not in classes]:
        raise DataError(f"{root / 'test' / unknown[0]}: class {unknown[0]!r} has no folder in {root / 'train'}")
    layout = Layout(classes=classes, is_test=[])
    for is_test, folders in ((False, train), (True, test)):
        for folder in folders:
            n = len(layout.files)
            _add_images(layout, folder, classes.index(folder.name), skip_bad)
            layout.is_test += [is_test] * (len(layout.files) - n)
    return layout


def _check_classes(where: Path, classes: list[str]) -> None:
    if len(classes) < 2:
        raise DataError(
            f"{where}: one class folder ({classes[0]!r}); classification needs at least two: "
            f"one folder of images per class"
        )


def _add_images(layout: Layout, folder: Path, label: int, skip_bad: bool) -> None:
    n = len(layout.files)
    for entry in _entries(folder):
        kind = _kind(entry)
        if kind == "folder":
            raise DataError(f"{entry}: a folder inside the class folder {folder}; images go directly in it")
        if entry.suffix.lower() not in SUFFIXES or kind != "file":
            what = "not a regular file" if kind != "file" else "not an image file"
            reason = f"{entry}: {what} (an image folder holds {', '.join(SUFFIXES)} files)"
            if not skip_bad:
                raise DataError(f"{reason}; remove it, or set skip_bad: true to skip such files")
            layout.skipped.append({"file": str(entry), "reason": reason})
            continue
        layout.files.append(entry)
        layout.labels.append(label)
    if len(layout.files) == n:
        raise DataError(f"{folder}: no images ({', '.join(SUFFIXES)}); add some, or remove the folder")


# --- Decoding ------------------------------------------------------------------


def decode_batch(files: list[str], color: Color, size: tuple[int, int], max_pixels: int):
    """Pixels of each file (uint8, zeros where it failed) and, per file, None or the error.
    Runs in a worker process: plain values in and out."""
    channels = () if color == "grayscale" else (3,)
    out = np.zeros((len(files), *channels, *size), np.uint8)
    errors: list[str | None] = []
    for i, file in enumerate(files):
        try:
            require_regular_file(file, "an image")
            out[i] = read_pixels(file, color, size, max_pixels)
            errors.append(None)
        except TooManyPixels as error:
            errors.append(f"{error} (the source's max_pixels option)")
        except DataError as error:
            errors.append(str(error))
    return out, errors


def _batches(layout: Layout, options: ImageFolderOptions, workers: int):
    """(pixels, errors) of each BATCH of files in order; at most 2 per worker in flight."""
    files = [str(f) for f in layout.files]
    args = (options.color, options.shape, options.max_pixels)
    chunks = [files[i : i + BATCH] for i in range(0, len(files), BATCH)]
    if workers <= 1:
        for chunk in chunks:
            yield decode_batch(chunk, *args)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn: the progress bar's monitor thread makes fork unsafe, and a worker needs nothing inherited
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending = collections.deque()
        try:
            for chunk in chunks:
                pending.append(pool.submit(decode_batch, chunk, *args))
                if len(pending) >= 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


def default_workers(n_files: int) -> int:
    """Decoding processes: the usable cores (at most MAX_WORKERS); one for small folders.
    The result does not depend on it: each file decodes alone, in order."""
    if n_files < PARALLEL_FROM:
        return 1
    return max(1, min(MAX_WORKERS, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1))


def decode(layout: Layout, options: ImageFolderOptions, out: Path, workers: int | None = None) -> np.ndarray:
    """Decode every file of `layout` into `out` (.npy, uint8), streaming; returns which files
    were kept. A bad file stops with its error, or with skip_bad is skipped and recorded in
    layout.skipped."""
    from tqdm import tqdm

    workers = default_workers(len(layout.files)) if workers is None else workers
    kept = np.zeros(len(layout.files), bool)
    part = out.with_name(out.name + ".part")
    done = 0
    bar = tqdm(total=len(layout.files), desc=f"decoding {options.path}", unit="image", file=sys.stderr, leave=False)
    with open(part, "wb") as data, bar:
        for pixels, errors in _batches(layout, options, workers):
            for i, error in enumerate(errors):
                if error is None:
                    data.write(pixels[i].tobytes())
                    kept[done + i] = True
                elif not options.skip_bad:
                    raise DataError(f"{error}; fix or remove it, or set skip_bad: true to skip such files")
                else:
                    layout.skipped.append({"file": str(layout.files[done + i]), "reason": error})
            done += len(errors)
            bar.update(len(errors))
    shape = (int(kept.sum()), *((3,) if options.color == "rgb" else ()), *options.shape)
    with open(out, "wb") as npy, open(part, "rb") as data:
        np.lib.format.write_array_header_1_0(npy, {"descr": "|u1", "fortran_order": False, "shape": shape})
        shutil.copyfileobj(data, npy)
    part.unlink()
    return kept


# --- The source ------------------------------------------------------------------


@register_source("image_folder", ImageFolderOptions)
class ImageFolderSource:
    """Labelled images, one folder per class, under data/images/."""

    @staticmethod
    def fetch(options: ImageFolderOptions, raw_dir: Path, workers: int | None = None) -> None:
        root = Path(options.path)
        layout = scan(root, options.skip_bad)
        kept = decode(layout, options, raw_dir / "images.npy", workers)
        labels = np.asarray(layout.labels, np.int64)[kept]
        if missing := [c for i, c in enumerate(layout.classes) if not (labels == i).any()]:
            raise DataError(f"{root}: every image of class {missing[0]!r} was skipped as unreadable; fix them")
        np.save(raw_dir / "labels.npy", labels)
        if layout.is_test is not None:
            np.save(raw_dir / "is_test.npy", np.asarray(layout.is_test, bool)[kept])
        write_json(raw_dir / "index.json", _index(options, layout, len(labels)))
        if layout.skipped:
            warn(
                f"{root}: skipped {len(layout.skipped)} of {len(layout.skipped) + len(labels)} files "
                f"(skip_bad: true), listed in the download's index.json; the first: {layout.skipped[0]['reason']}"
            )

    @staticmethod
    def load(options: ImageFolderOptions, raw_dir: Path) -> Table:
        index = (
            read_json(raw_dir / "index.json", "rerun the download stage")
            if (raw_dir / "index.json").is_file()
            else None
        )
        if (
            not isinstance(index, dict)
            or not isinstance(index.get("classes"), list)
            or index.get("size") != list(options.shape)
        ):
            raise DataError(f"{raw_dir / 'index.json'}: missing, or not of these options; rerun the download stage")
        images = _load_npy(raw_dir / "images.npy", np.uint8, ndim=3 if options.color == "grayscale" else 4)
        labels = _load_npy(raw_dir / "labels.npy", np.int64, ndim=1)
        is_test = _load_npy(raw_dir / "is_test.npy", np.bool_, ndim=1) if (raw_dir / "is_test.npy").exists() else None
        classes = [str(c) for c in index["classes"]]
        if images.shape[-2:] != options.shape or len(labels) != len(images) or not len(images):
            raise DataError(
                f"{raw_dir}: images.npy {images.shape} and labels.npy {labels.shape} do not match; rerun the download stage"
            )
        if labels.min() < 0 or labels.max() >= len(classes) or (is_test is not None and len(is_test) != len(labels)):
            raise DataError(f"{raw_dir}: labels.npy or is_test.npy does not match index.json; rerun the download stage")
        return Table(
            x=images,
            y=labels,
            task="classification",
            feature_names=["pixel"],
            target_name="class",
            classes=classes,
            is_test=is_test,
            pixels={"color": options.color, "size": list(options.shape)},
        )


def _index(options: ImageFolderOptions, layout: Layout, n_images: int) -> dict[str, Any]:
    return {
        "path": options.path,
        "classes": layout.classes,
        "split": "folders" if layout.is_test is not None else "none",
        "color": options.color,
        "size": list(options.shape),
        "n_images": n_images,
        "n_skipped": len(layout.skipped),
        "skipped": layout.skipped,
    }
