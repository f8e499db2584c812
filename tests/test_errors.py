"""The one-line messages: an exception's first line, pydantic's first error, a warning."""

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from torchrepro.core.errors import first_error, first_line, warn


def test_first_line_is_the_start_of_the_message_or_the_error_type():
    assert first_line(ValueError("\n  bad value\nmore detail")) == "bad value"
    assert first_line(EOFError()) == "EOFError"
    assert first_line(RuntimeError("x" * 300)) == "x" * 200


class Point(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    x: int = Field(ge=0)
    y: int = 0

    @model_validator(mode="after")
    def _ordered(self):
        if self.y < self.x:
            raise ValueError("y: must not be below x")
        return self


def invalid(raw: dict):
    with pytest.raises(ValidationError) as caught:
        Point.model_validate(raw)
    return first_error(caught.value)


def test_first_error_gives_where_what_and_how_many_more():
    first = invalid({"x": -1, "y": "a"})
    assert (first.where, first.type, first.input, first.others) == ("x", "greater_than_equal", -1, 1)
    assert first.line("points.p") == "points.p.x: Input should be greater than or equal to 0 (got -1)"
    assert invalid({"x": 1, "z": 2}).type == "extra_forbidden"


def test_a_validators_message_loses_pydantics_prefix():
    first = invalid({"x": 2, "y": 1})
    assert (first.where, first.message) == ("", "y: must not be below x")


def test_first_error_keeps_the_errors_asked_for():
    with pytest.raises(ValidationError) as caught:
        Point.model_validate({"x": -1, "y": "a"})
    kept = first_error(caught.value, keep=lambda e: e["loc"] == ("y",))
    assert (kept.where, kept.others) == ("y", 0)
    none_kept = first_error(caught.value, keep=lambda e: False)  # then the first of all
    assert (none_kept.where, none_kept.others) == ("x", 1)


def test_a_warning_is_one_line_on_stderr(capsys):
    warn("the disk is almost full")
    assert capsys.readouterr() == ("", "warning: the disk is almost full\n")
