"""Predict with a trained experiment: digit images (PNG/JPEG) or a CSV of feature rows.

  python -m torchrepro.predict --experiment mnist_cnn digit.png photo.jpg [--json]
  python -m torchrepro.predict --experiment iris_mlp flowers.csv

Inputs get exactly the normalization the model was trained with (model.json's
`normalize`, via the data store's `apply`). Images are first framed the way MNIST digits
are: grayscale, light ink on a dark background, cropped to the ink, fitted into
20x20 and placed in 28x28 with the ink's center of mass at the center.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from torchrepro.core import determinism
from torchrepro.core.cli import run
from torchrepro.core.errors import DataError
from torchrepro.core.params import Params, load_params
from torchrepro.download.sources import read_csv_frame, read_numeric
from torchrepro.normalize import store

if TYPE_CHECKING:  # torch is imported once the determinism environment is set
    import torch

FIELD, BOX = 28, 20  # MNIST: digits fitted into 20x20, centred in a 28x28 field
CENTER = 14.0  # where MNIST puts the ink's center of mass (row and column, in pixel indices)
TOP_K = 3
MIN_CONTRAST = 8  # of 255: an image with less is blank paper plus noise, not a digit


# --- Images ---------------------------------------------------------------


def read_image(path: str | Path) -> np.ndarray:
    """Grayscale pixels 0-255, float64 (H, W), of a PNG or JPEG file."""
    from PIL import Image, ImageOps

    path = Path(path)
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)  # phone photos store their rotation in EXIF
            if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
                # Transparent pixels count as white paper, as in a drawing exported from a canvas.
                image = image.convert("RGBA")
                paper = Image.new("RGBA", image.size, "white")
                image = Image.alpha_composite(paper, image)
            return np.asarray(image.convert("L"), dtype=np.float64)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        # UnidentifiedImageError is an OSError; truncated files raise OSError on decode.
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(f"{path}: not a readable PNG or JPEG image ({reason})") from None


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


def read_features(path: str | Path, feature_names: list[str]) -> np.ndarray:
    """Raw feature rows (N, F) float64 from a CSV whose header names the features; other
    columns (a target, an id) are ignored. Errors name the file row (the header is row 1)."""
    path = Path(path)
    frame = read_csv_frame(path, feature_names, needs=f"; the model needs {', '.join(feature_names)}")
    return read_numeric(frame, feature_names, path)


# --- Model ----------------------------------------------------------------


def load_trained(params: Params, experiment: str, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict]:
    """The experiment's checkpoint and model.json; says how to train it when there is none."""
    from torchrepro.models.checkpoint import load_model

    params.experiment(experiment)  # unknown name: ParamsError listing the defined ones
    return load_model(params.paths.model_dir(experiment), device, experiment)


def is_image_model(info: dict[str, Any]) -> bool:
    return len(info["input_shape"]) == 3  # (1, 28, 28); tabular models take (F,)


def predict_raw(model: torch.nn.Module, info: dict[str, Any], raw: np.ndarray, device="cpu") -> list[dict[str, Any]]:
    """Predictions for raw inputs (pixels 0-255 as (N, 1, 28, 28), or raw feature rows (N, F)):
    class and top-k probabilities for classification, the value for regression."""
    import torch

    from torchrepro.models.inference import predict

    x = torch.from_numpy(store.apply(raw, info)).to(device)
    out = predict(model, x).cpu().double()
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


def read_inputs(files: list[str | Path], info: dict[str, Any]) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Raw model inputs for all files, stacked, and one label per row ({"input": file[, "line": n]})."""
    image_model = is_image_model(info)
    arrays, labels = [], []
    for file in map(Path, files):
        is_csv = file.suffix.lower() == ".csv"
        if image_model and is_csv:
            raise DataError(f"{file}: experiment {info['experiment']!r} takes images (PNG or JPEG), not a CSV")
        if not image_model and not is_csv:
            raise DataError(
                f"{file}: experiment {info['experiment']!r} takes a CSV with columns "
                f"{', '.join(info['feature_names'])}, not {file.suffix or 'a file without suffix'}"
            )
        if image_model:
            if list(info["input_shape"]) != [1, FIELD, FIELD]:
                shape = "x".join(map(str, info["input_shape"]))
                raise DataError(f"{info['experiment']}: images are framed as 1x28x28 digits; this model takes {shape}")
            arrays.append(frame_digit(read_image(file), str(file))[None, None])  # (1, 1, 28, 28)
            labels.append({"input": str(file)})
        else:
            rows = read_features(file, info["feature_names"])
            arrays.append(rows)
            labels += [{"input": str(file), "line": i + 2} for i in range(len(rows))]
    return np.concatenate(arrays), labels


def predict_files(params: Params, experiment: str, files: list[str | Path], device: str = "cpu") -> list[dict]:
    """Load the experiment's model and predict every image or CSV row in `files`, under the
    params' determinism, as evaluation does."""
    from torchrepro.core.devices import resolve_device

    torch_device = resolve_device(device, key="--device")
    determinism.apply(params.determinism, torch_device)
    model, info = load_trained(params, experiment, torch_device)
    raw, labels = read_inputs(files, info)
    return [label | result for label, result in zip(labels, predict_raw(model, info, raw, torch_device))]


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
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps (default: %(default)s)")
    parser.add_argument("--params", default="params.yaml", help="params file, for paths (default: %(default)s)")
    args = parser.parse_args(argv)

    def predict() -> None:
        params = load_params(args.params)
        determinism.prepare_environment(params.determinism)
        results = predict_files(params, args.experiment, args.files, args.device)
        if args.json:
            json.dump({"experiment": args.experiment, "predictions": results}, sys.stdout, indent=2)
            print()
        else:
            print("\n".join(map(format_result, results)))

    run(predict)


if __name__ == "__main__":
    main()
