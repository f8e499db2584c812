"""Model checkpoints: model.pt (a state_dict) and model.json (how to rebuild and feed it).

model.json carries two SHA-256 digests, both checked by every reader: `sha256`, of model.pt's
bytes, and `json_sha256`, of model.json's own content (every other field, as canonical JSON:
sorted keys, no spaces), so one flipped digit in a normalization mean or a class name is an
error, not other predictions. Being over the parsed content, it holds however the file is
indented.

Bytes are deterministic: equal tensors give an identical model.pt, so DVC sees
nothing changed downstream when a rerun reproduces the same weights.

torch is imported where it is used: the report stage reads model.json without it.
"""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field, model_validator

from torchrepro.core.description import Description, check_description
from torchrepro.core.errors import DataError, ParamsError, first_line
from torchrepro.core.io import atomic_dir, bytes_digest, read_json, require_regular_file, write_bytes, write_json

if TYPE_CHECKING:
    import torch
    from torch import nn

INFO_DIGEST = "json_sha256"  # model.json's digest of its own other fields


class ModelInfo(Description):
    """model.json: how to rebuild the network and feed it (the rest is for people)."""

    model: str
    model_kwargs: dict[str, Any]
    n_outputs: Annotated[int, Field(ge=1)]
    sha256: str
    json_sha256: str

    @model_validator(mode="after")
    def _outputs_fit_the_task(self) -> ModelInfo:
        expected = len(self.classes) if self.task == "classification" else 1
        if self.n_outputs != expected:
            raise ValueError(f"n_outputs: {self.n_outputs}, but this {self.task} needs {expected}")
        return self


def to_bytes(obj: Any) -> bytes:
    """torch.save into memory. Saving to a path would name the zip's inner folder after the
    file, so a temporary file name would change the bytes; in memory the name is fixed."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def safe_load(path: str | Path, map_location: str | torch.device = "cpu", data: bytes | None = None) -> Any:
    """torch.load with weights_only=True: refuses pickled objects rather than running them.
    `data`: the file's bytes, already read (and checked); `path` then only names it."""
    import torch

    path = Path(path)
    try:
        return torch.load(io.BytesIO(data) if data is not None else path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as error:
        reason = _refusal(error)
        raise DataError(f"{path}: refused to load: holds more than tensors and plain data ({reason})") from None
    except Exception as error:  # damaged bytes fail in many ways: EOFError, struct.error, IndexError, ...
        raise DataError(f"{path}: corrupt or truncated checkpoint ({first_line(error)})") from None


def _refusal(error: Exception) -> str:
    """torch's refusal is a page of advice; the line naming what the file holds is the one to show."""
    for line in str(error).splitlines():
        if "WeightsUnpickler error:" in line:
            return line.partition("WeightsUnpickler error:")[2].strip().split(". ")[0][:200]
    return first_line(error)


def info_digest(info: dict[str, Any]) -> str:
    """SHA-256 of model.json's content other than its own digest, as canonical JSON."""
    fields = {key: value for key, value in info.items() if key != INFO_DIGEST}
    return bytes_digest(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode())


def signed(info: dict[str, Any]) -> dict[str, Any]:
    """`info` with its own digest added, as save_model writes it."""
    return info | {INFO_DIGEST: info_digest(info)}


def _retrain(model_dir: Path, experiment: str | None) -> str:
    return f"dvc repro train@{experiment or model_dir.name}"


def _restore(model_dir: Path, experiment: str | None) -> str:
    return f"restore it with `dvc checkout --force {model_dir}` or retrain with `{_retrain(model_dir, experiment)}`"


def check_info(info: Any, info_path: Path, experiment: str | None = None) -> dict[str, Any]:
    """model.json's parsed content, if its own digest matches; else a DataError naming the file
    and the stage that rewrites it. A file without the digest (an older format) must be retrained."""
    model_dir = info_path.parent
    if not isinstance(info, dict):
        kind = type(info).__name__
        raise DataError(f"{info_path}: not a model description (a JSON {kind}); {_restore(model_dir, experiment)}")
    if INFO_DIGEST not in info:
        raise DataError(
            f"{info_path}: no {INFO_DIGEST} digest: written by an older torchrepro, or not by torchrepro; "
            f"retrain with `{_retrain(model_dir, experiment)}`"
        )
    try:
        intact = info[INFO_DIGEST] == info_digest(info)
    except (ValueError, RecursionError):  # what json.loads accepts, dumps may still refuse (deep nesting)
        intact = False
    if not intact:
        raise DataError(
            f"{info_path}: its {INFO_DIGEST} does not match its content: the file is damaged; "
            f"{_restore(model_dir, experiment)}"
        )
    return info


def read_info(info_path: str | Path, experiment: str | None = None) -> dict[str, Any]:
    """model.json, its own digest checked (not the weights': load_model does that); a missing
    file raises FileNotFoundError."""
    info_path = Path(info_path)
    restore = _restore(info_path.parent, experiment)
    require_regular_file(info_path, "a JSON file", restore)
    return check_info(read_json(info_path, restore), info_path, experiment)


def save_model(model_dir: str | Path, model: nn.Module, info: dict[str, Any]) -> None:
    """Write model.pt (CPU tensors) and model.json together, atomically: a failure (a full
    disk) leaves the previous pair, never a new model.pt beside an old model.json."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    weights = to_bytes(state)
    with atomic_dir(model_dir) as tmp:
        write_bytes(tmp / "model.pt", weights)
        write_json(tmp / "model.json", signed(info | {"sha256": bytes_digest(weights)}))


def load_model(
    model_dir: str | Path, device: torch.device | str = "cpu", experiment: str | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model from model.json and load model.pt into it, safely, both digests checked.
    Naming the experiment lets a missing model's error give the command that trains it."""
    from torchrepro.models.nets import create_model

    model_dir = Path(model_dir)
    info_path, weights_path = model_dir / "model.json", model_dir / "model.pt"
    if not info_path.exists() or not weights_path.exists():
        if experiment is not None:
            raise DataError(
                f"experiment {experiment!r} has not been trained yet ({weights_path} not found); "
                f"train it with: dvc repro train@{experiment}"
            )
        raise DataError(f"{model_dir}: no trained model here (model.json and model.pt); run its train stage first")
    restore = _restore(model_dir, experiment)
    info = read_info(info_path, experiment)
    require_regular_file(weights_path, "a checkpoint", restore)
    weights = weights_path.read_bytes()
    if bytes_digest(weights) != info.get("sha256"):
        raise DataError(
            f"{weights_path}: its SHA-256 does not match {info_path.name}: the checkpoint is damaged; {restore}"
        )
    check_description(info, info_path, ModelInfo, restore)
    try:
        model = create_model(info["model"], info["input_shape"], info["n_outputs"], **info["model_kwargs"])
    except ParamsError as error:  # the model's name or options, as model.json gives them
        raise DataError(f"{info_path}: {error}; {restore}") from None
    except TypeError as error:
        raise DataError(f"{info_path}: not a model description ({first_line(error)}); {restore}") from None
    state = safe_load(weights_path, data=weights)
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as error:
        raise DataError(f"{weights_path}: does not fit model {info['model']!r} ({first_line(error)})") from None
    return model.to(device).eval(), info
