"""params.yaml as typed, validated objects.

Everything a stage reads from params.yaml passes through `load_params` once. Unknown keys,
duplicate keys, wrong types, non-finite numbers and out-of-range values raise ParamsError
naming the key path and what is allowed. No torch here: download and normalize use it too;
the options of models, optimizers and schedulers are checked against torch itself by
`torchrepro.validate` (the validate stage) before any stage runs.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from ruamel.yaml import YAML, YAMLError
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.nodes import MappingNode, Node, SequenceNode

from torchrepro.core.errors import Invalid, ParamsError, first_error
from torchrepro.core.io import require_regular_file

DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda|cuda:\d+|mps)$")
# Dataset and experiment names become file and folder names (models/<experiment>) and DVC stage
# names (train@<experiment>): no separators, no `..`, nothing DVC refuses in a stage name.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
NAME_RULE = "letters, digits, - and _, starting with a letter or digit"
DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"
Seed = Annotated[int, Field(ge=0, lt=2**32)]  # numpy and scikit-learn take 32-bit seeds
# The launcher is substituted into the train stage's shell command: plain words only, so that it
# stays a command with its arguments (python, torchrun --nproc-per-node 2, srun python).
LAUNCHER_WORD = r"[A-Za-z0-9_./:=+,@%-]+"
LAUNCHER_PATTERN = re.compile(rf"^{LAUNCHER_WORD}( +{LAUNCHER_WORD})*$")
LAUNCHER_RULE = (
    "a command and its arguments: words of letters, digits and - _ . / : = + , @ % separated by spaces, "
    "e.g. python or torchrun --nproc-per-node 2; no shell syntax (; | & $ ` < > quotes)"
)
# The project's own files, relative to its root: code, tests, what git and DVC keep, and the CSV
# sources and image folders. No `paths:` root may lie in one (a stage would replace or delete files there) or hold one.
CSV_DIR = "data/csv"  # the download stage's dep in dvc.yaml: a CSV source elsewhere is not tracked
PROTECTED = {
    "src": "the library",
    "stages": "the stage scripts",
    "tests": "the tests",
    ".git": "git's repository",
    ".dvc": "DVC's cache and settings",
    CSV_DIR: "the CSV sources",
    "data/images": "the image folders",
}


class Strict(BaseModel):
    # strict: "3" is not an int and 1 is not a bool; forbid: a typo in a key is an error.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class Named(BaseModel):
    """`name` picks a registered thing; the other keys are its options, checked against it
    where it is built (a model's constructor, a torch.optim class, a source's options)."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)
    name: str

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


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
    predictions: str = "predictions"
    plots: str = "plots"
    logs: str = "logs"
    reports: str = "reports"
    resume: str = ".resume"  # resume checkpoints: git-ignored, outside every DVC output

    @model_validator(mode="after")
    def _separate_roots(self) -> Paths:
        # Stages replace whole folders under these roots (and tidy .pt files under `resume`):
        # a root that is the project itself, climbs out of it with `..`, or holds another root
        # would let one stage replace or delete another's files.
        roots = self.model_dump()
        for key, root in roots.items():
            if Path(root) == Path(".") or ".." in Path(root).parts:
                raise ParamsError(f"paths.{key}: {root!r} must name a folder of its own (not '.', '' or one with '..')")
            if (problem := project_path_problem(root)) is not None:
                raise ParamsError(f"paths.{key}: {problem}")
        for key, root in roots.items():
            for other, other_root in roots.items():
                if key != other and Path(root) in (Path(other_root), *Path(other_root).parents):
                    raise ParamsError(
                        f"paths.{other}: {other_root!r} lies in paths.{key} ({root!r}); give each its own folder"
                    )
        return self

    def raw_dir(self, dataset: str) -> Path:
        return Path(self.raw) / dataset

    def processed_dir(self, dataset: str) -> Path:
        return Path(self.processed) / dataset

    def model_dir(self, experiment: str) -> Path:
        return Path(self.models) / experiment

    def train_live_dir(self, experiment: str) -> Path:
        """dvclive's directory for training: metrics.json (last epoch) and per-epoch plots."""
        return Path(self.metrics) / experiment / "train"

    def evaluate_live_dir(self, experiment: str) -> Path:
        """dvclive's directory for evaluation: metrics.json."""
        return Path(self.metrics) / experiment / "evaluate"

    def predictions_file(self, experiment: str) -> Path:
        return Path(self.predictions) / f"{experiment}.csv"

    def plots_dir(self, experiment: str) -> Path:
        return Path(self.plots) / experiment

    def log_file(self, experiment: str) -> Path:
        return Path(self.logs) / f"{experiment}.json"

    def resume_dir(self, experiment: str) -> Path:
        return Path(self.resume) / experiment


def project_path_problem(value: str, root: Path | None = None) -> str | None:
    """Why `value` cannot be a path of the project's (None if it can): it must be relative, stay
    inside the project, and neither lie in nor hold one of its own folders (PROTECTED). With
    `root` (the project's folder) it is also followed on disk: links included, it must lead to
    a place inside `root` and outside those folders."""
    path = Path(value)
    if path.is_absolute() or path.drive:
        return f"{value!r} is absolute; give a path relative to the project's folder"
    if ".." in path.parts:
        return f"{value!r} climbs out of its folder with '..'; give a path inside the project"
    for name, what in PROTECTED.items():
        protected = Path(name)
        if protected in (path, *path.parents):
            return f"{value!r} lies in {name}/ ({what}); choose a folder of its own"
        if path in protected.parents:
            return f"{value!r} holds {name}/ ({what}); choose a folder of its own"
    return None if root is None else _on_disk_problem(value, root)


def _on_disk_problem(value: str, root: Path) -> str | None:
    """The on-disk half of project_path_problem: where `value` leads once links are followed."""
    top = root.resolve()
    target = (root / value).resolve()
    if target == top or not target.is_relative_to(top):
        return f"{value!r} leads to {target} (through a link), not to a folder inside the project"
    protected = {name: what for name, what in PROTECTED.items() if (root / name).exists()}
    place = target
    while place != top:  # samefile: a link to, or a case-insensitive spelling of, a protected folder
        for name, what in protected.items():
            if place.exists() and os.path.samefile(place, root / name):
                return f"{value!r} leads into {name}/ ({what}) through a link; choose a folder of its own"
        place = place.parent
    for name, what in protected.items():
        if (root / name).resolve().is_relative_to(target):
            return f"{value!r} leads to {target}, which holds {name}/ ({what}); choose a folder of its own"
    return None


class Split(Strict):
    """A seeded train/test split, stratified by label for classification unless told not to."""

    test_size: Annotated[float, Field(gt=0, lt=1)] = 0.2
    seed: Seed = 0
    stratify: bool = True


# How inputs are scaled before training; statistics come from the training split only.
#   none: as the source gives them (pixels 0-255, raw feature values)
#   unit: to [0, 1]: pixels / 255 (torchvision's ToTensor), features by the training min and max
#   global: one mean and standard deviation over the whole training matrix (pixels / 255 first)
#   per_feature: a mean and standard deviation per feature column (per pixel for images)
Normalize = Literal["none", "unit", "global", "per_feature"]


class Dataset(Strict):
    source: Named
    split: Split | Literal["none"] = Split()
    normalize: Normalize | None = None  # None: what the tutorials do for the source's kind (normalize stage)

    @field_validator("source", mode="before")
    @classmethod
    def _source_shorthand(cls, value: Any) -> Any:
        # `source: mnist-5k` is short for `source: {name: mnist-5k}`.
        return {"name": value} if isinstance(value, str) else value


class Train(BaseModel):
    """The loop's settings; every other key is a keyword option of the torch.optim optimizer
    named by `optimizer` (momentum, weight_decay, betas, ...), checked against its signature."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True, allow_inf_nan=False)
    optimizer: str = "adam"
    lr: Annotated[float, Field(gt=0)] = 1e-3
    batch_size: Annotated[int, Field(ge=1, le=2**20)] = 64
    epochs: Annotated[int, Field(ge=1, le=100_000)] = 10
    scheduler: Named | None = None  # a torch.optim.lr_scheduler by name, plus its options

    @property
    def optimizer_options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class Experiment(Strict):
    dataset: str
    model: Named
    train: Train = Train()
    device: str | None = None  # overrides the global device
    seed: Seed | None = None  # overrides the global seed

    _device = field_validator("device")(classmethod(lambda cls, v: _check_device(v)))


class Params(Strict):
    """The whole file. The top-level settings have no defaults: dvc.yaml lists them as params
    or builds the train command from them, and DVC needs each one written in params.yaml."""

    device: str
    seed: Seed
    # portable: the same bytes on every x86-64 CPU with AVX2 or AVX-512 and any core count;
    # host: torch's fastest defaults for this machine (see torchrepro.core.determinism).
    determinism: Literal["portable", "host"]
    launcher: str  # the train command's prefix
    paths: Paths = Paths()
    datasets: dict[str, Dataset]
    experiments: dict[str, Experiment]

    _device = field_validator("device")(classmethod(lambda cls, v: _check_device(v)))

    @field_validator("launcher")
    @classmethod
    def _plain_words(cls, value: str) -> str:
        if not LAUNCHER_PATTERN.match(value):
            raise ValueError(f"must be {LAUNCHER_RULE}")
        return value

    @model_validator(mode="after")
    def _names_are_file_names(self) -> Params:
        for section in ("datasets", "experiments"):
            for name in getattr(self, section):
                if not NAME_PATTERN.match(name):
                    raise ParamsError(f"{section}.{name}: not a usable name; use {NAME_RULE}")
        return self

    @model_validator(mode="after")
    def _datasets_exist(self) -> Params:
        for name, exp in self.experiments.items():
            if exp.dataset not in self.datasets:
                raise ParamsError(
                    f"experiments.{name}.dataset: unknown dataset {exp.dataset!r}; "
                    f"defined under datasets: {', '.join(sorted(self.datasets))}. "
                    f"A new dataset needs its own block under datasets: (source, split, normalize)"
                )
        return self

    def experiment(self, name: str) -> Experiment:
        if name not in self.experiments:
            raise ParamsError(
                f"unknown experiment {name!r}; defined under experiments: {', '.join(sorted(self.experiments))}"
            )
        return self.experiments[name]

    def dataset(self, name: str) -> Dataset:
        if name not in self.datasets:
            raise ParamsError(f"unknown dataset {name!r}; defined under datasets: {', '.join(sorted(self.datasets))}")
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


def _describe(error: Invalid) -> str:
    path, holder, _ = _locate(error.loc)
    if error.type == "extra_forbidden":
        return f"{path}: unknown key; allowed: {', '.join(sorted(holder.model_fields))}"
    message, got = error.message, error.input
    if error.type != "missing" and not isinstance(got, (dict, list)) and repr(got) not in message:
        message += f" (got {got!r})"
    return f"{path}: {message}"


def _non_finite(node: Any, path: str = "", seen: set[int] | None = None) -> str | None:
    """The key path of the first NaN or infinity anywhere in the tree (options included).
    A YAML alias repeats a node without copying it: each is visited once, so a file of nested
    aliases (a "billion laughs") costs its size, not its expansion."""
    if isinstance(node, float) and not math.isfinite(node):
        return path or "(top level)"
    seen = set() if seen is None else seen
    if not isinstance(node, (dict, list)) or id(node) in seen:
        return None
    seen.add(id(node))
    children = node.items() if isinstance(node, dict) else enumerate(node)
    for key, child in children:
        if (found := _non_finite(child, f"{path}.{key}" if path else str(key), seen)) is not None:
            return found
    return None


def parse_params(raw: Any, origin: str = "params.yaml") -> Params:
    """Validate an already-parsed params mapping."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{origin}: expected a mapping at the top level, got {type(raw).__name__}")
    if (where := _non_finite(raw)) is not None:
        raise ParamsError(f"{origin}: {where}: must be a finite number, not NaN or infinity")
    try:
        return Params.model_validate(raw)
    except ParamsError as error:
        raise ParamsError(f"{origin}: {error}") from None
    except ValidationError as error:
        first = first_error(error, keep=_relevant)
        line = f"{origin}: {_describe(first)}"
        if first.others:
            line += f" (and {first.others} more)"
        raise ParamsError(line) from None


# A params file is a few hundred values; aliases (`*name`) may repeat a node, but every reader
# that walks the tree (pydantic, json.dumps of the options) pays for each repetition.
MAX_EXPANDED_NODES = 100_000


def _expanded_size(node: Node, sizes: dict[int, int], open_nodes: set[int]) -> int:
    """How many nodes the tree under `node` holds once every alias is expanded, memoized over
    the node graph (a file of nested aliases costs its size); past MAX_EXPANDED_NODES, or on a
    node that contains itself, stops with the node that tells where."""
    if id(node) in sizes:
        return sizes[id(node)]
    if id(node) in open_nodes:
        raise _Expansion(node, "an alias repeats a node that holds it, an endless tree; write the value out")
    open_nodes.add(id(node))
    children: list = []
    if isinstance(node, MappingNode):
        children = [child for pair in node.value for child in pair]
    elif isinstance(node, SequenceNode):
        children = node.value
    size = 1
    for child in children:
        size += _expanded_size(child, sizes, open_nodes)
        if size > MAX_EXPANDED_NODES:
            raise _Expansion(
                node,
                f"its aliases would expand to more than {MAX_EXPANDED_NODES:,} values, where a params file "
                "holds a few hundred; write the values out or nest fewer aliases",
            )
    open_nodes.discard(id(node))
    sizes[id(node)] = size
    return size


class _Expansion(Exception):
    def __init__(self, node: Node, problem: str):
        super().__init__(problem)
        self.node, self.problem = node, problem


def read_yaml(path: Path, text: str) -> Any:
    """Parse YAML as DVC does (dvc/utils/serialize/_yaml.py: ruamel.yaml, typ="safe", YAML 1.2:
    `010` is 10, `yes` a string), so a stage trains on the values dvc.lock records. Duplicate
    keys are errors, as in DVC; aliases are bounded before anything expands them. Errors give
    the line and column."""
    yaml = YAML(typ="safe")
    try:
        node = yaml.compose(text)
        if node is None:  # empty, or only comments
            return None
        _expanded_size(node, {}, set())
        return yaml.constructor.construct_document(node)
    except RecursionError:
        raise ParamsError(f"{path}: nested too deeply to be a params file") from None
    except _Expansion as error:
        mark = error.node.start_mark
        raise ParamsError(f"{path}: at line {mark.line + 1}, column {mark.column + 1}: {error.problem}") from None
    except YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).partition("\n")[0] or "invalid YAML"
        if isinstance(error, DuplicateKeyError) and (key := _DUPLICATE.match(problem)):
            problem = f"duplicate key {key[1]!r}"
        raise ParamsError(f"{path}: not valid YAML{where}: {problem}") from None


_DUPLICATE = re.compile(r'found duplicate key "(.*?)" with value ', re.DOTALL)


def load_params(path: str | Path = "params.yaml", root: str | Path | None = None) -> Params:
    """Read and validate params.yaml. `root` is the project's folder, where the stages run and
    the `paths:` lead (DVC runs each stage in the folder of dvc.yaml and params.yaml); the
    working folder by default. Each of `paths:` is checked there on disk, links followed."""
    path = Path(path)
    require_regular_file(path, "a params file", "pass a YAML file with --params")
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found; run from the project root or pass --params") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ParamsError(f"{path}: cannot read ({error})") from None
    params = parse_params(read_yaml(path, text), str(path))
    root = Path.cwd() if root is None else Path(root)
    for key, value in params.paths.model_dump().items():
        if (problem := project_path_problem(value, root)) is not None:
            raise ParamsError(f"{path}: paths.{key}: {problem}")
    return params
