"""The description of a dataset that meta.json (normalize/store.py) and model.json
(models/checkpoint.py) both carry: its task, input shape, classes, feature names and
normalization. One schema, below both: a model is fed as its data was described.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from torchrepro.core.errors import DataError, first_error


class Normalization(BaseModel):
    """x -> (x * scale - mean) / std; mean and std are scalars or arrays that broadcast to one input."""

    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)
    method: str
    scale: Annotated[float, Field(gt=0)]
    mean: Any
    std: Any


class Description(BaseModel):
    """What meta.json and model.json both say about the data. Their digests catch damage to the
    array and weight files; this catches an edited or foreign description before its values
    reach numpy or torch as shapes, class lists or divisors."""

    model_config = ConfigDict(extra="allow", strict=True)
    task: Literal["classification", "regression"]
    input_shape: Annotated[list[Annotated[int, Field(ge=1, le=2**20)]], Field(min_length=1, max_length=3)]
    classes: list[str]
    feature_names: list[str]
    normalize: Normalization

    @model_validator(mode="after")
    def _consistent(self) -> Description:
        if self.task == "classification" and (not self.classes or len(set(self.classes)) != len(self.classes)):
            raise ValueError(f"classes: a classifier needs distinct class names, got {self.classes}")
        if self.task == "regression" and self.classes:
            raise ValueError("classes: a regression has no classes")
        if len(self.input_shape) == 1 and len(self.feature_names) != self.input_shape[0]:
            raise ValueError(f"feature_names: {len(self.feature_names)} names for {self.input_shape[0]} features")
        for name in ("mean", "std"):
            try:
                value = np.asarray(getattr(self.normalize, name), dtype=np.float64)
                np.broadcast_shapes(value.shape, tuple(self.input_shape))
            except (ValueError, TypeError):
                raise ValueError(f"normalize.{name}: not numbers of the input's shape {self.input_shape}") from None
            if not np.isfinite(value).all() or (name == "std" and not (value > 0).all()):
                raise ValueError(f"normalize.{name}: must be finite{' and positive' if name == 'std' else ''}")
        return self


def check_description(raw: Any, path: Path, schema: type[Description], hint: str) -> dict[str, Any]:
    """`raw` (parsed JSON) if it fits `schema`, else a DataError naming the file, the key and `hint`."""
    try:
        schema.model_validate(raw)
    except ValidationError as error:
        first = first_error(error)
        raise DataError(f"{path}: {first.where + ': ' if first.where else ''}{first.message}; {hint}") from None
    return raw
