"""The validate stage remembers the torch checks that passed by what they read: an edit that
changes none of it is checked without them, any other edit checks that experiment again, and
a value that failed is never remembered."""

from __future__ import annotations

import pytest

from torchrepro import validate
from torchrepro.core.errors import ParamsError
from torchrepro.core.params import parse_params

MEMO = "logs/params.checked.json"


@pytest.fixture
def checked(monkeypatch):
    """validate.check with the memo; returns the experiments whose torch checks ran."""
    ran = []
    real = validate._check_with_torch

    def counting(name, exp, device_name):
        ran.append(name)
        real(name, exp, device_name)

    monkeypatch.setattr(validate, "_check_with_torch", counting)

    def check(params_dict) -> list[str]:
        ran.clear()
        validate.check(parse_params(params_dict), MEMO)
        return list(ran)

    return check


def test_unchanged_experiments_skip_the_torch_checks(params_dict, checked):
    assert checked(params_dict) == ["digits_mlp", "line_linear"]
    assert checked(params_dict) == []
    params_dict["datasets"]["digits"]["split"]["seed"] = 1  # a dataset's split: no experiment's checks
    assert checked(params_dict) == []


@pytest.mark.parametrize(
    "key, value, rechecked",
    [
        ("epochs", 7, False),  # read only by a scheduler, and there is none
        ("batch_size", 3, False),  # never read by the checks
        ("lr", 0.5, True),
        ("momentum", 0.9, True),  # an optimizer option
        ("scheduler", {"name": "step", "step_size": 1}, True),
    ],
)
def test_an_edit_checks_again_what_it_can_change(params_dict, checked, key, value, rechecked):
    checked(params_dict)
    params_dict["experiments"]["line_linear"]["train"][key] = value
    assert checked(params_dict) == (["line_linear"] if rechecked else [])


def test_with_a_scheduler_more_epochs_are_checked_again(params_dict, checked):
    train = params_dict["experiments"]["line_linear"]["train"]
    train["scheduler"] = {"name": "onecycle"}  # total_steps comes from the epochs
    checked(params_dict)
    train["epochs"] = 4
    assert checked(params_dict) == ["line_linear"]


def test_a_model_edit_is_checked_again(params_dict, checked):
    checked(params_dict)
    params_dict["experiments"]["digits_mlp"]["model"]["hidden_sizes"] = [0]
    with pytest.raises(ParamsError, match=r"experiments\.digits_mlp\.model\.hidden_sizes"):
        checked(params_dict)


def test_a_value_that_failed_is_never_remembered(params_dict, checked):
    params_dict["experiments"]["line_linear"]["train"]["momentum"] = -1.0
    for _ in range(2):
        with pytest.raises(ParamsError, match=r"experiments\.line_linear\.train"):
            checked(params_dict)


def test_other_code_or_versions_check_everything_again(params_dict, checked, monkeypatch):
    checked(params_dict)
    monkeypatch.setattr(validate, "_checker", lambda: {"code": "another", "torch": "another"})
    assert checked(params_dict) == ["digits_mlp", "line_linear"]


def test_an_unreadable_memo_checks_everything(params_dict, checked, tmp_path):
    checked(params_dict)
    (tmp_path / MEMO).write_text("{not json")
    assert checked(params_dict) == ["digits_mlp", "line_linear"]
    assert checked(params_dict) == []


def test_a_device_other_than_the_cpu_is_checked_every_time(params_dict, checked):
    """Whether a GPU is there is the machine's, not the params'."""
    params_dict["experiments"]["line_linear"]["device"] = "auto"
    checked(params_dict)
    assert checked(params_dict) == ["line_linear"]
