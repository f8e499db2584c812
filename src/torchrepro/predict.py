"""Predict with a trained experiment: images (PNG/JPEG; BMP, WebP too for an image folder's
models) or a CSV of feature rows.

  python -m torchrepro.predict --experiment mnist_cnn digit.png photo.jpg [--json]
  python -m torchrepro.predict --experiment iris_mlp flowers.csv [--out predictions.txt]

Inputs get exactly the normalization the model was trained with (model.json's
`normalize`): pixels through the float32 steps training runs on the device, feature rows
through the data store's `apply`, as the normalize stage made the training table. A model
trained on an image folder gets each image as the folder's images were made
(normalize.pixels: grayscale or RGB, resized). Other image models take digits, framed the
way MNIST digits are: grayscale, light ink on a dark background, cropped to the ink, fitted
into 20x20 and placed in 28x28 with the ink's center of mass at the center.

Inputs are read, predicted and written CHUNK_ROWS at a time, so memory does not grow with the
number of rows or files. The output appears only complete: --out FILE is renamed into place
at the end, and standard output gets the predictions once the last is made (until then they
wait in a temporary file). After an error there is no output at all.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import textwrap
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from torchrepro.core import determinism
from torchrepro.core.cli import run
from torchrepro.core.errors import DataError
from torchrepro.core.io import atomic_path, require_regular_file
from torchrepro.core.params import Params, load_params
from torchrepro.download import images
from torchrepro.download.sources import read_csv_frames, read_numeric
from torchrepro.normalize import store

if TYPE_CHECKING:  # torch is imported once the determinism environment is set
    import torch

FIELD, BOX = 28, 20  # MNIST: digits fitted into 20x20, centred in a 28x28 field
IMAGE_FORMATS = ("PNG", "JPEG")  # PIL opens many more; each decoder is more that a bad file can reach
MAX_PIXELS = 50_000_000  # --max-pixels: a 48-megapixel phone photo fits
WORK_PIXELS = 4_000_000  # larger images are reduced to about this many pixels before framing
CENTER = 14.0  # where MNIST puts the ink's center of mass (row and column, in pixel indices)
TOP_K = 3
MIN_CONTRAST = 8  # of 255: an image with less is blank paper plus noise, not a digit
# Inputs read, predicted and written at a time: under 30 MB of memory beside the model's, for
# CSV rows and images alike, however many there are (measured: 7 MB for a 1,000,000-row CSV).
# Whole batches of inference.EVAL_BATCH (128), so chunking never changes which inputs share a
# forward pass, and the results are those of predicting all inputs at once.
CHUNK_ROWS = 80 * 128


# --- Images ---------------------------------------------------------------


def read_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Grayscale pixels 0-255, float64 (H, W), of a PNG or JPEG file.

    The size comes from the file's header and is checked against `max_pixels` before any pixel
    is decoded. An image of more than WORK_PIXELS is decoded at a reduced scale (JPEG) or
    box-reduced right after decoding (PNG), before the other copies are made: memory stays
    under about 4 bytes per pixel of the limit, 8 with transparency (PIL reduces those through
    a premultiplied copy). A digit keeps its shape: it ends up 20x20 anyway. A warning PIL
    gives while reading the file is an error (images.opened): EXIF holds the rotation.
    """
    path = Path(path)
    require_regular_file(path, "an image")
    try:
        with images.opened(path, IMAGE_FORMATS, "PNG or JPEG", max_pixels, _draft) as image:
            return _gray(image)
    except images.TooManyPixels as error:
        n = error.width * error.height
        raise DataError(
            f"{error}; pass --max-pixels {n} to read it (up to {8 * n / 2**20:,.0f} MiB of memory)"
        ) from None


def _draft(width: int, height: int) -> tuple[int, int] | None:
    factor = _reduction(width, height)
    return (width // factor, height // factor) if factor > 1 else None


def _reduction(width: int, height: int) -> int:
    """The integer factor that brings width x height down to about WORK_PIXELS (1: none)."""
    return max(1, math.ceil(math.sqrt(width * height / WORK_PIXELS)))


def _gray(image) -> np.ndarray:
    """A decoded image as grayscale 0-255 float64 (H, W), reduced to about WORK_PIXELS first."""
    from PIL import Image, ImageOps

    sixteen_bit = image.mode.startswith("I")  # a 16-bit PNG: L would clip every value over 255
    transparent = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    if image.mode in ("1", "P"):  # reduce() needs whole-byte pixels
        image = image.convert("RGBA" if transparent else "L")
    elif image.mode.startswith("I;16"):
        image = image.convert("I")
    if (factor := _reduction(*image.size)) > 1:
        image = image.reduce(factor)  # the mean of each factor x factor box
    image = ImageOps.exif_transpose(image)  # phone photos store their rotation in EXIF
    if transparent:
        # Transparent pixels count as white paper, as in a drawing exported from a canvas.
        image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image.convert("RGBA"))
    if sixteen_bit:
        return np.asarray(image, dtype=np.float64) / 257  # 65535 -> 255
    return np.asarray(image.convert("L"), dtype=np.float64)


def frame_digit(gray: np.ndarray, where: str = "image") -> np.ndarray:
    """Any-size grayscale digit -> (28, 28) float32 pixels 0-255, framed as in MNIST.

    Light ink on dark background (inverted when the border is light), background level
    subtracted and ink stretched to 255, cropped to the ink's bounding box, resized into
    20x20 keeping the aspect ratio, pasted so the center of mass lands at (14, 14).
    """
    from PIL import Image

    if np.median(_border(gray)) > 127:  # dark ink on light paper: MNIST is the other way round
        gray = 255 - gray
    ink = np.clip(gray - np.median(_border(gray)), 0, None)  # a gray photo background becomes 0
    if ink.max() < MIN_CONTRAST:
        raise DataError(f"{where}: no digit found: the image is (almost) one uniform color")
    ink *= 255 / ink.max()
    rows, cols = np.flatnonzero((ink > 0.05 * 255).any(1)), np.flatnonzero((ink > 0.05 * 255).any(0))
    crop = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]  # 5% threshold: ignore JPEG speckle
    h, w = crop.shape
    scale = BOX / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))  # PIL sizes are (width, height)
    fitted = np.asarray(
        Image.fromarray(crop.astype(np.float32)).resize(size, Image.Resampling.LANCZOS), dtype=np.float64
    )
    fitted = np.clip(fitted, 0, 255)  # Lanczos overshoots a little at sharp edges
    return place_by_center_of_mass(fitted).astype(np.float32)


def _border(gray: np.ndarray) -> np.ndarray:
    return np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])


def place_by_center_of_mass(fitted: np.ndarray) -> np.ndarray:
    """Paste a (h, w) ink patch (h, w <= 28) into a 28x28 field with its center of mass at (14, 14)."""
    h, w = fitted.shape
    ys, xs = np.mgrid[:h, :w]
    mass = fitted.sum()
    cy, cx = (ys * fitted).sum() / mass, (xs * fitted).sum() / mass
    top = int(np.clip(np.rint(CENTER - cy), 0, FIELD - h))  # stay inside the field
    left = int(np.clip(np.rint(CENTER - cx), 0, FIELD - w))
    field = np.zeros((FIELD, FIELD))
    field[top : top + h, left : left + w] = fitted
    return field


# --- Tables ---------------------------------------------------------------


def read_features(
    path: str | Path, feature_names: list[str], chunk_rows: int | None = None
) -> Iterator[tuple[np.ndarray, list[int]]]:
    """Raw feature rows (n, F) float64 from a CSV whose header names the features, at most
    `chunk_rows` at a time (None: all at once), and the row of each in the file (the header is
    row 1; blank rows are skipped). Columns are matched by name; other named columns (a target,
    an id) are ignored. Every row must have exactly the header's fields; errors name the file and row."""
    path = Path(path)
    needs = f"; the model needs {', '.join(feature_names)}"
    for frame in read_csv_frames(path, feature_names, needs=needs, chunk_rows=chunk_rows):
        yield read_numeric(frame, feature_names, path), frame.index.tolist()


# --- Model ----------------------------------------------------------------


def load_trained(params: Params, experiment: str, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict]:
    """The experiment's checkpoint and model.json; says how to train it when there is none."""
    from torchrepro.models.checkpoint import load_model

    params.experiment(experiment)  # unknown name: ParamsError listing the defined ones
    return load_model(params.paths.model_dir(experiment), device, experiment)


def is_image_model(info: dict[str, Any]) -> bool:
    return len(info["input_shape"]) == 3  # (C, H, W); tabular models take (F,)


def pixels_spec(info: dict[str, Any]) -> dict[str, Any] | None:
    """How the training images were made from files ({"color", "size"}, from an image folder),
    or None for digits, which are framed as MNIST's."""
    spec = info["normalize"].get("pixels")
    if spec is None:
        return None
    channels = {"grayscale": 1, "rgb": 3}.get(spec.get("color")) if isinstance(spec, dict) else None
    if channels is None or [channels, *spec.get("size", [])] != list(info["input_shape"]):
        raise DataError(
            f"{info['experiment']}: model.json's normalize.pixels {spec!r} does not fit its input_shape "
            f"{info['input_shape']}; train the experiment again"
        )
    return spec


def read_resized(path: str | Path, spec: dict[str, Any], max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """An image file as the image_folder source made the training images: (C, H, W) float64 0-255."""
    try:
        pixels = images.read_pixels(path, spec["color"], tuple(spec["size"]), max_pixels)
    except images.TooManyPixels as error:
        raise DataError(f"{error}; pass --max-pixels {error.width * error.height} to read it") from None
    return pixels.reshape(-1, *spec["size"]).astype(np.float64)


def model_inputs(raw: np.ndarray, info: dict[str, Any], device="cpu") -> torch.Tensor:
    """Raw inputs as the network saw them in training and evaluation, bit for bit."""
    import torch

    from torchrepro.models.inference import Pixels

    if is_image_model(info):
        pixels = torch.from_numpy(raw.astype(np.float32)).to(device)  # whole numbers or float32 already: exact
        return Pixels.from_meta(info["normalize"], torch.device(device))(pixels)
    return torch.from_numpy(store.apply(raw, info)).to(device)


def predict_raw(model: torch.nn.Module, info: dict[str, Any], raw: np.ndarray, device="cpu") -> list[dict[str, Any]]:
    """Predictions for raw inputs (pixels 0-255 as (N, C, H, W), or raw feature rows (N, F)):
    class and top-k probabilities for classification, the value for regression."""
    import torch

    from torchrepro.models.inference import predict

    out = predict(model, model_inputs(raw, info, device)).cpu().double()
    if info["task"] != "classification":
        return [{"prediction": float(f"{v:.7g}")} for v in out[:, 0]]  # float32 holds ~7 digits
    probs = torch.softmax(out, dim=1)
    top = probs.topk(min(TOP_K, probs.shape[1]), dim=1)
    classes = info["classes"]
    return [
        {
            "prediction": classes[int(idx[0])],
            "top": [{"class": classes[int(i)], "probability": round(float(p), 6)} for p, i in zip(ps, idx)],
        }
        for ps, idx in zip(top.values, top.indices)
    ]


def check_inputs(files: list[str | Path], info: dict[str, Any]) -> None:
    """Each file is of the kind the model takes (images, or CSV tables) and a regular file:
    said before any file is read."""
    image_model = is_image_model(info)
    resized = image_model and pixels_spec(info) is not None
    if image_model and not resized and list(info["input_shape"]) != [1, FIELD, FIELD]:
        shape = "x".join(map(str, info["input_shape"]))
        raise DataError(f"{info['experiment']}: images are framed as 1x28x28 digits; this model takes {shape}")
    for file in map(Path, files):
        is_csv = file.suffix.lower() == ".csv"
        if image_model and is_csv:
            kinds = images.FOLDER_KIND if resized else "PNG or JPEG"
            raise DataError(f"{file}: experiment {info['experiment']!r} takes images ({kinds}), not a CSV")
        if not image_model and not is_csv:
            raise DataError(
                f"{file}: experiment {info['experiment']!r} takes a CSV with columns "
                f"{', '.join(info['feature_names'])}, not {file.suffix or 'a file without suffix'}"
            )
        require_regular_file(file, "an image" if image_model else "a CSV file")


def read_inputs(
    files: list[str | Path], info: dict[str, Any], max_pixels: int = MAX_PIXELS, chunk_rows: int | None = CHUNK_ROWS
) -> Iterator[tuple[np.ndarray, list[dict[str, Any]]]]:
    """Raw model inputs of all files in order, stacked in chunks of `chunk_rows` rows that run
    on across files (the last may be shorter; None: one chunk), with one label per row
    ({"input": file[, "line": n]})."""
    limit = chunk_rows or math.inf
    arrays, labels, held = [], [], 0
    for rows, row_labels in _read_pieces(files, info, max_pixels, chunk_rows):
        arrays.append(rows)
        labels += row_labels
        held += len(rows)
        while held >= limit:
            stacked = np.concatenate(arrays)
            yield stacked[:chunk_rows], labels[:chunk_rows]
            arrays, labels, held = [stacked[chunk_rows:]], labels[chunk_rows:], held - chunk_rows
    if held:
        yield np.concatenate(arrays), labels


def _read_pieces(
    files: list[str | Path], info: dict[str, Any], max_pixels: int, chunk_rows: int | None
) -> Iterator[tuple[np.ndarray, list[dict[str, Any]]]]:
    """Each image (1, C, H, W), or up to `chunk_rows` rows of a CSV, with their labels."""
    spec = pixels_spec(info) if is_image_model(info) else None
    for file in map(Path, files):
        if spec is not None:
            yield read_resized(file, spec, max_pixels)[None], [{"input": str(file)}]
        elif is_image_model(info):
            yield frame_digit(read_image(file, max_pixels), str(file))[None, None], [{"input": str(file)}]
        else:
            for rows, numbers in read_features(file, info["feature_names"], chunk_rows):
                yield rows, [{"input": str(file), "line": n} for n in numbers]


def predict_files(
    params: Params,
    experiment: str,
    files: list[str | Path],
    device: str = "cpu",
    max_pixels: int = MAX_PIXELS,
    chunk_rows: int | None = CHUNK_ROWS,
) -> Iterator[dict]:
    """Load the experiment's model and predict every image or CSV row in `files`, under the
    params' determinism, as evaluation does. The model and the kinds of the files are checked
    at once; the inputs are then read, predicted and yielded `chunk_rows` at a time."""
    from torchrepro.core.devices import resolve_device
    from torchrepro.models.inference import EVAL_BATCH

    torch_device = resolve_device(device, key="--device")
    determinism.apply(params.determinism, torch_device)
    model, info = load_trained(params, experiment, torch_device)
    check_inputs(files, info)
    assert chunk_rows is None or chunk_rows % EVAL_BATCH == 0, "chunks of whole batches (see CHUNK_ROWS)"
    return _predictions(model, info, files, torch_device, max_pixels, chunk_rows)


def _predictions(model, info, files, device, max_pixels: int, chunk_rows: int | None) -> Iterator[dict]:
    for raw, labels in read_inputs(files, info, max_pixels, chunk_rows):
        for label, result in zip(labels, predict_raw(model, info, raw, device)):
            yield label | result


# --- Output ---------------------------------------------------------------


def write_results(results: Iterable[dict[str, Any]], out: TextIO, experiment: str, as_json: bool = False) -> None:
    """Text lines (format_result), or the JSON document json.dump(..., indent=2) writes of
    {"experiment": ..., "predictions": [...]}, one result at a time."""
    if not as_json:
        for result in results:
            out.write(format_result(result) + "\n")
        return
    out.write(f'{{\n  "experiment": {json.dumps(experiment)},\n  "predictions": [')
    empty = True
    for result in results:
        out.write(("\n" if empty else ",\n") + textwrap.indent(json.dumps(result, indent=2), "    "))
        empty = False
    out.write("]\n}\n" if empty else "\n  ]\n}\n")


def format_result(result: dict[str, Any]) -> str:
    """`digit.png: 7  (7 0.981, 1 0.012, 9 0.003)`; CSV rows as `file.csv:LINE: ...`."""
    where = result["input"] + (f":{result['line']}" if "line" in result else "")
    if "top" not in result:
        return f"{where}: {result['prediction']:.6g}"
    top = ", ".join(f"{t['class']} {t['probability']:.3f}" for t in result["top"])
    return f"{where}: {result['prediction']}  ({top})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m torchrepro.predict", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--experiment", required=True, help="a key under `experiments:` in params.yaml")
    parser.add_argument("files", nargs="+", metavar="FILE", help="PNG/JPEG images, or CSV files for tabular models")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of text lines")
    parser.add_argument("--out", metavar="FILE", help="write the predictions to FILE instead of standard output")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps (default: %(default)s)")
    parser.add_argument("--params", default="params.yaml", help="params file, for paths (default: %(default)s)")
    parser.add_argument(
        "--max-pixels",
        type=_positive_int,
        default=MAX_PIXELS,
        metavar="N",
        help="refuse larger images before decoding them (default: %(default)s; up to 8 bytes of memory each)",
    )
    args = parser.parse_args(argv)

    def predict() -> None:
        require_regular_file(args.params, "a params file")
        params = load_params(args.params)
        determinism.prepare_environment(params.determinism)
        results = predict_files(params, args.experiment, args.files, args.device, args.max_pixels)
        if args.out:
            _check_out(Path(args.out), args.files)
            with atomic_path(args.out) as tmp, open(tmp, "w", encoding="utf-8", errors="surrogateescape") as out:
                write_results(results, out, args.experiment, args.json)
            return
        # Standard output gets every prediction or, after an error in a late chunk, none: they
        # gather in a temporary file (on disk, not in memory) until the last is written.
        with tempfile.TemporaryFile("w+", encoding="utf-8", errors="surrogateescape") as out:
            write_results(results, out, args.experiment, args.json)
            out.seek(0)
            shutil.copyfileobj(out, sys.stdout)

    run(predict)


def _check_out(out: Path, files: list[str]) -> None:
    """--out must not be one of the inputs: the predictions would replace the file they came from."""
    for file in files:
        if out.exists() and Path(file).exists() and os.path.samefile(out, file):
            raise DataError(f"--out {out}: is also an input file; choose another output file")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of pixels >= 1, got {text!r}")
    return value


if __name__ == "__main__":
    main()
