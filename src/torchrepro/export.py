"""Export a trained experiment as one self-contained program that takes raw inputs.

  python -m torchrepro.export --experiment mnist_cnn [--out mnist_cnn.pt2]

The program is the model with its normalization in front (`RawInputs`): it takes
pixels 0-255 as float32 (N, C, H, W) (1x28x28 for digits), or raw feature values (N, F) in model.json's
feature order, and returns logits (classification) or values (regression), N free.
It is a torch.export program (.pt2, torch.export.save) with model.json inside as an
extra file; load it with `torch.export.load(path).module()`. Only if torch.export
fails for a model is TorchScript written instead (.pt, torch.jit.load), and the
command says so.
"""

from __future__ import annotations

import argparse
import io
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchrepro.core.cli import run
from torchrepro.core.errors import DataError, first_line, warn
from torchrepro.core.io import require_regular_file, write_bytes
from torchrepro.core.params import load_params
from torchrepro.models.checkpoint import INFO_DIGEST, info_digest
from torchrepro.models.inference import Pixels

INFO_FILE = "model.json"  # the name of model.json inside the .pt2 archive


class RawInputs(nn.Module):
    """The model with its normalization in front. Pixels take the float32 steps training takes,
    ((x / divisor) - mean) / std (models/inference.py's Pixels), so a training image gives the
    logits evaluation gives; feature rows get the data store's (x - mean) / std, folded into
    x * a - b."""

    def __init__(self, model: nn.Module, norm: dict[str, Any], pixels: bool):
        super().__init__()
        self.model = model
        self.pixels = pixels
        if pixels:
            steps = Pixels.from_meta(norm, torch.device("cpu"))
            for name in ("divisor", "mean", "std"):
                self.register_buffer(name, getattr(steps, name))
        else:  # folded in float64 and rounded once to float32: closest to the store's float64 math
            mean = torch.as_tensor(norm["mean"], dtype=torch.float64)
            std = torch.as_tensor(norm["std"], dtype=torch.float64)
            self.register_buffer("a", (norm["scale"] / std).float())  # (F,)
            self.register_buffer("b", (mean / std).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pixels:
            return self.model(x.div(self.divisor).sub(self.mean).div(self.std))
        return self.model(x * self.a - self.b)


def example_input(info: dict[str, Any], batch: int = 2) -> torch.Tensor:
    """A raw-looking input batch of the model's shape. Batch 2, not 1: export would treat a
    size-1 dimension as a constant."""
    return torch.rand(batch, *info["input_shape"]) * 255


def with_normalization(model: nn.Module, info: dict[str, Any]) -> RawInputs:
    return RawInputs(model, info["normalize"], pixels=len(info["input_shape"]) == 3).eval()


def export_program(wrapper: nn.Module, info: dict[str, Any]) -> torch.export.ExportedProgram:
    """torch.export with a free batch dimension."""
    batch = torch.export.Dim("batch")
    return torch.export.export(wrapper, (example_input(info),), dynamic_shapes={"x": {0: batch}})


def export_model(model: nn.Module, info: dict[str, Any], out: str | Path) -> tuple[Path, str | None]:
    """Write model+normalization to `out` as a torch.export program. Returns the path written
    and, when torch.export failed and TorchScript (.pt) was written instead, the reason."""
    out = Path(out)
    wrapper = with_normalization(model.cpu(), info)
    info_json = json.dumps(info, indent=2, sort_keys=True)
    try:
        program = export_program(wrapper, info)
    except Exception as error:
        out = out.with_suffix(".pt")
        write_bytes(out, torchscript_bytes(wrapper, info, info_json))
        return out, first_line(error)
    # Into memory, then an atomic write: torch.export.save warns about a path not ending in .pt2.
    buffer = io.BytesIO()
    torch.export.save(program, buffer, extra_files={INFO_FILE: info_json})
    write_bytes(out, buffer.getvalue())
    return out, None


def torchscript_bytes(wrapper: nn.Module, info: dict[str, Any], info_json: str) -> bytes:
    """The fallback: a traced TorchScript module with model.json inside."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # TorchScript is deprecated; the caller says that it fell back
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.trace(wrapper, example_input(info)), buffer, _extra_files={INFO_FILE: info_json})
    return buffer.getvalue()


def load_exported(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """An exported file back as a callable module and its model.json, whose own digest is
    checked as every reader of model.json checks it."""
    path = Path(path)
    require_regular_file(path, "an exported model")
    extra = {INFO_FILE: ""}
    if path.suffix == ".pt2":
        module = torch.export.load(path, extra_files=extra).module()
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(path), _extra_files=extra)
    try:
        info = json.loads(extra[INFO_FILE])
    except ValueError:
        info = None
    if not isinstance(info, dict) or info.get(INFO_DIGEST) != info_digest(info):
        raise DataError(f"{path}: the {INFO_FILE} inside is missing or damaged; export the experiment again")
    return module, info


def describe_io(info: dict[str, Any]) -> str:
    """What the exported program takes and returns, for the user."""
    if len(info["input_shape"]) == 3:
        takes = f"float32 pixels 0-255, shape (N, {', '.join(map(str, info['input_shape']))})"
    else:
        takes = f"float32 raw features (N, {len(info['feature_names'])}): {', '.join(info['feature_names'])}"
    gives = f"logits for classes {', '.join(info['classes'])}" if info["task"] == "classification" else "(N, 1) values"
    return f"input: {takes}; output: {gives}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m torchrepro.export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--experiment", required=True, help="a key under `experiments:` in params.yaml")
    parser.add_argument("--out", help="output file (default: <experiment>.pt2 in the current directory)")
    parser.add_argument("--params", default="params.yaml", help="params file, for paths (default: %(default)s)")
    args = parser.parse_args(argv)

    def export() -> None:
        from torchrepro.predict import load_trained

        require_regular_file(args.params, "a params file")
        model, info = load_trained(load_params(args.params), args.experiment)
        path, failure = export_model(model, info, args.out or f"{args.experiment}.pt2")
        if failure:
            warning = f"torch.export failed for {args.experiment} ({failure}); wrote TorchScript instead"
            warn(warning)
        how = "TorchScript, load with torch.jit.load" if failure else "torch.export, load with torch.export.load"
        print(f"wrote {path} ({how}); {describe_io(info)}")

    run(export)


if __name__ == "__main__":
    main()
