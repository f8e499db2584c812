"""params.yaml as typed, validated objects.

Everything a stage reads from params.yaml passes through `load_params` once.
Unknown keys, wrong types and out-of-range values raise ParamsError naming the
key path and what is allowed. This module must not import torch: the download
and normalize stages use it too.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from torchrepro.errors import ParamsError

DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda|cuda:\d+|mps)$")
DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"


class Strict(BaseModel):
    # strict: "3" is not an int and 1 is not a bool; forbid: a typo in a key is an error.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _check_device(value: str | None) -> str | None:
    if value is not None and not DEVICE_PATTERN.match(value):
        raise ValueError(f"unknown device {value!r}; allowed: {DEVICE_CHOICES}")
    return value


class Paths(Strict):
    """Where artifacts live, relative to the project root. dvc.yaml builds its paths from
    these roots too, and tests/test_dvc_yaml.py checks that both agree."""

    raw: str = "data/raw"
    processed: str = "data/processed"
    models: str = "models"
    metrics: str = "metrics"
    plots: str = "plots"
    logs: str = "logs"
    reports: str = "reports"
    resume: str = ".resume"  # resume checkpoints: git-ignored, outside every DVC output

    def raw_dir(self, dataset: str) -> Path:
        return Path(self.raw) / dataset

    def processed_dir(self, dataset: str) -> Path:
        return Path(self.processed) / dataset

    def model_dir(self, experiment: str) -> Path:
        return Path(self.models) / experiment

    def metrics_file(self, experiment: str) -> Path:
        return Path(self.metrics) / f"{experiment}.json"

    def history_file(self, experiment: str) -> Path:
        return Path(self.metrics) / "history" / f"{experiment}.csv"

    def predictions_file(self, experiment: str) -> Path:
        return Path(self.metrics) / "predictions" / f"{experiment}.csv"

    def plots_dir(self, experiment: str) -> Path:
        return Path(self.plots) / experiment

    def log_file(self, experiment: str) -> Path:
        return Path(self.logs) / f"{experiment}.json"

    def resume_dir(self, experiment: str) -> Path:
        return Path(self.resume) / experiment


class Split(Strict):
    """A seeded train/test split; stratified by label for classification."""

    test_size: Annotated[float, Field(gt=0, lt=1)] = 0.2
    seed: int = 0


class Source(BaseModel):
    """`name` picks a registered source; the other keys are that source's options."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)
    name: str

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class Dataset(Strict):
    source: Source
    split: Split | Literal["none"] = Split()
    normalize: Literal["none", "standardize"] = "standardize"

    @field_validator("source", mode="before")
    @classmethod
    def _source_shorthand(cls, value: Any) -> Any:
        # `source: mnist-5k` is short for `source: {name: mnist-5k}`.
        return {"name": value} if isinstance(value, str) else value


class Model(BaseModel):
    """`name` picks a registered model; the other keys are its constructor's kwargs,
    checked against the constructor when the model is built."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)
    name: str

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class Train(Strict):
    optimizer: str = "adam"
    lr: Annotated[float, Field(gt=0)] = 1e-3
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.0
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    batch_size: Annotated[int, Field(ge=1)] = 64
    epochs: Annotated[int, Field(ge=1)] = 10
    # Seconds between resume checkpoints: one is written at the end of the first epoch that ends at
    # least this long after the previous one (or the start); 0 = at the end of every epoch.
    checkpoint_every_s: Annotated[float, Field(ge=0)] = 0.0


class Experiment(Strict):
    dataset: str
    model: Model
    train: Train = Train()
    device: str | None = None  # overrides the global device
    seed: int | None = None  # overrides the global seed

    _device = field_validator("device")(classmethod(lambda cls, v: _check_device(v)))


class Params(Strict):
    device: str = "auto"
    seed: int = 0
    paths: Paths = Paths()
    datasets: dict[str, Dataset]
    experiments: dict[str, Experiment]

    _device = field_validator("device")(classmethod(lambda cls, v: _check_device(v)))

    @model_validator(mode="after")
    def _datasets_exist(self) -> Params:
        for name, exp in self.experiments.items():
            if exp.dataset not in self.datasets:
                raise ParamsError(
                    f"experiments.{name}.dataset: unknown dataset {exp.dataset!r}; "
                    f"defined under datasets: {', '.join(sorted(self.datasets))}"
                )
        return self

    def experiment(self, name: str) -> Experiment:
        if name not in self.experiments:
            raise ParamsError(
                f"unknown experiment {name!r}; defined under experiments: "
                f"{', '.join(sorted(self.experiments))}"
            )
        return self.experiments[name]

    def dataset(self, name: str) -> Dataset:
        if name not in self.datasets:
            raise ParamsError(
                f"unknown dataset {name!r}; defined under datasets: {', '.join(sorted(self.datasets))}"
            )
        return self.datasets[name]

    def device_for(self, experiment: str) -> str:
        return self.experiment(experiment).device or self.device

    def seed_for(self, experiment: str) -> int:
        exp = self.experiment(experiment)
        return self.seed if exp.seed is None else exp.seed


def _locate(loc: tuple) -> tuple[str, type[BaseModel], bool | None]:
    """Follow an error location through the schema. Returns the key path as written in
    params.yaml (pydantic inserts the name of the union member it tried: `split.Split.seed`),
    the model that holds the last key (its keys are what is allowed there) and, when the
    location ends at a union member, whether that member is a mapping (a model)."""
    keys: list[str] = []
    holder, annotation, member = Params, Params, None
    for part in loc:
        if str(part).startswith("function-"):
            continue
        args = [a for a in get_args(annotation) if a is not type(None)]
        if get_origin(annotation) in (Union, UnionType) and len(args) == 1:
            annotation, args = args[0], list(get_args(args[0]))  # Optional[X]: pydantic adds no tag
        origin, member = get_origin(annotation), None
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            holder, field = annotation, annotation.model_fields.get(str(part))
            annotation = field.annotation if field else None
        elif origin in (Union, UnionType):  # `part` names the member tried, not a key
            models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel) and a.__name__ == part]
            annotation, member = (models[0], True) if models else (None, False)
            continue
        else:  # dict[str, X] or list[X]: `part` is a key or an index
            annotation = args[-1] if args else None
        keys.append(str(part))
    return ".".join(keys), holder, member


def _relevant(error: dict[str, Any]) -> bool:
    """Of a union's failed members, keep the one of the input's kind: for `split: {test_size: 2}`
    the mapping's error, not "should be 'none'"; for `split: all` the other way round."""
    member = _locate(error["loc"])[2]
    return member is None or member == isinstance(error.get("input"), dict)


def _describe(error: dict[str, Any]) -> str:
    path, holder, _ = _locate(error["loc"])
    if error["type"] == "extra_forbidden":
        return f"{path}: unknown key; allowed: {', '.join(sorted(holder.model_fields))}"
    message = error["msg"].removeprefix("Value error, ")
    got = error.get("input")
    if error["type"] != "missing" and not isinstance(got, (dict, list)) and repr(got) not in message:
        message += f" (got {got!r})"
    return f"{path}: {message}"


def parse_params(raw: Any, origin: str = "params.yaml") -> Params:
    """Validate an already-parsed params mapping."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{origin}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ParamsError as error:
        raise ParamsError(f"{origin}: {error}") from None
    except ValidationError as error:
        errors = [e for e in error.errors() if _relevant(e)] or error.errors()
        line = f"{origin}: {_describe(errors[0])}"
        if len(errors) > 1:
            line += f" (and {len(errors) - 1} more)"
        raise ParamsError(line) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found; run from the project root or pass --params") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or "invalid YAML"
        raise ParamsError(f"{path}: not valid YAML{where}: {problem}") from None
    return parse_params(raw, str(path))
