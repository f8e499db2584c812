"""Optimizers and schedulers come from torch.optim by name; options are checked against torch."""

import re

import pytest
import torch
from torch import nn

from torchrepro import optim
from torchrepro.core.errors import ParamsError
from torchrepro.core.params import Named, Train

CPU = torch.device("cpu")


def build(**train) -> torch.optim.Optimizer:
    return optim.make_optimizer(nn.Linear(2, 1).parameters(), Train(**train), CPU, key="experiments.e.train")


@pytest.mark.parametrize("name", sorted(set(optim.OPTIMIZERS) - set(optim.UNSUPPORTED)))
def test_every_torch_optim_optimizer_is_there_by_lower_case_name(name):
    optimizer = build(optimizer=name, lr=0.01)
    assert type(optimizer) is optim.OPTIMIZERS[name] and type(optimizer).__module__.startswith("torch.optim")
    assert optimizer.param_groups[0]["lr"] == 0.01


def test_the_other_train_keys_are_the_optimizers_options():
    sgd = build(optimizer="sgd", lr=0.5, momentum=0.9, weight_decay=0.01, nesterov=True)
    group = sgd.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"], group["nesterov"]) == (0.5, 0.9, 0.01, True)
    adam = build(optimizer="adam", lr=0.1, betas=[0.8, 0.99])  # YAML gives a list, torch documents a tuple
    assert adam.param_groups[0]["betas"] == (0.8, 0.99)


def test_unknown_optimizer_lists_the_valid_ones():
    with pytest.raises(ParamsError) as info:
        build(optimizer="adamm")
    message = str(info.value)
    assert message.startswith("experiments.e.train.optimizer: unknown optimizer 'adamm'; allowed: ")
    assert "adadelta" in message and "rmsprop" in message and "lbfgs" not in message


@pytest.mark.parametrize("name", sorted(optim.UNSUPPORTED))
def test_optimizers_that_do_not_fit_the_loop_say_why(name):
    with pytest.raises(ParamsError, match=rf"^experiments\.e\.train\.optimizer: {name} "):
        build(optimizer=name)


def test_an_option_the_optimizer_does_not_take_names_the_key_and_lists_the_allowed():
    with pytest.raises(ParamsError) as info:
        build(optimizer="adam", momentum=0.9)
    message = str(info.value)
    assert message.startswith(
        "experiments.e.train.momentum: unknown key; allowed: the training settings optimizer, lr, batch_size, "
        "epochs, scheduler and optimizer Adam's options betas, eps"
    )


@pytest.mark.parametrize(
    "train, problem",
    [
        ({"optimizer": "sgd", "momentum": -0.5}, "Invalid momentum value"),
        ({"optimizer": "adam", "betas": [0.9, 1.5]}, "Invalid beta parameter"),
        ({"optimizer": "sgd", "nesterov": True}, "Nesterov momentum requires a momentum"),
    ],
)
def test_torch_checks_the_ranges(train, problem):
    with pytest.raises(ParamsError, match=rf"^experiments\.e\.train: .*{problem}"):
        build(**train)


@pytest.mark.parametrize(
    "train, key, problem",
    [
        ({"optimizer": "rmsprop", "alpha": "fast"}, "alpha", "Input should be a valid number for optimizer RMSprop"),
        ({"optimizer": "adam", "amsgrad": 2}, "amsgrad", "Input should be a valid boolean"),
        ({"optimizer": "adam", "betas": [0.9]}, "betas.1", "Field required"),
        ({"optimizer": "adam", "foreach": "yes"}, "foreach", "Input should be a valid boolean"),
    ],
)
def test_option_types_follow_torch_annotations(train, key, problem):
    # torch itself accepts amsgrad: 2 and foreach: "yes" without a word, and fails on a short
    # betas with an IndexError.
    with pytest.raises(ParamsError, match=rf"^experiments\.e\.train\.{re.escape(key)}: {problem}"):
        build(**train)


@pytest.mark.parametrize("option", ["capturable", "differentiable"])
def test_options_torch_refuses_only_at_the_first_step_fail_when_built(option):
    with pytest.raises(ParamsError, match=r"^experiments\.e\.train: Adam cannot take a step with these options"):
        build(optimizer="adam", **{option: True})


# --- schedulers ---------------------------------------------------------------------------------


def schedule(steps_per_epoch=10, **scheduler) -> optim.Schedule:
    cfg = Train(optimizer="sgd", lr=1.0, epochs=4, scheduler=Named(**scheduler))
    optimizer = optim.make_optimizer(nn.Linear(2, 1).parameters(), cfg, CPU)
    return optim.make_schedule(optimizer, cfg, steps_per_epoch, key="experiments.e.train")


def lr(s: optim.Schedule) -> float:
    return s.scheduler.optimizer.param_groups[0]["lr"]


def test_no_scheduler_is_none():
    cfg = Train(optimizer="sgd")
    assert optim.make_schedule(optim.make_optimizer(nn.Linear(2, 1).parameters(), cfg, CPU), cfg, 10) is None


def test_step_is_steplr_stepped_per_epoch():
    s = schedule(name="step", step_size=1, gamma=0.7)
    assert isinstance(s.scheduler, torch.optim.lr_scheduler.StepLR) and not s.per_batch
    s.after_batch()
    assert lr(s) == 1.0  # batches do not move it
    s.after_epoch(test_loss=0.5)
    assert lr(s) == pytest.approx(0.7)


def test_exponential_and_cosine():
    s = schedule(name="exponential", gamma=0.5)
    s.after_epoch(0.0)
    assert lr(s) == 0.5
    cosine = schedule(name="cosine")  # T_max defaults to the recipe's epochs
    assert isinstance(cosine.scheduler, torch.optim.lr_scheduler.CosineAnnealingLR) and cosine.scheduler.T_max == 4
    for _ in range(4):
        cosine.after_epoch(0.0)
    assert lr(cosine) == pytest.approx(0.0, abs=1e-12)


def test_onecycle_is_stepped_per_batch_over_the_whole_run():
    s = schedule(steps_per_epoch=10, name="onecycle")
    assert s.per_batch and s.scheduler.total_steps == 4 * 10  # epochs x batches
    assert s.scheduler.optimizer.param_groups[0]["max_lr"] == 1.0  # train.lr
    for _ in range(39):
        s.after_batch()
    assert lr(s) < 1e-4  # the last batch trains at the cycle's floor
    s.after_batch()  # the step after the last batch
    s.after_epoch(0.0)  # no epoch step for a per-batch scheduler: one more step would raise
    with pytest.raises(ValueError, match="Tried to step"):
        s.scheduler.step()


def test_plateau_steps_with_the_test_loss():
    s = schedule(name="plateau", patience=0, factor=0.5)
    s.after_epoch(1.0)
    s.after_epoch(2.0)  # worse: patience 0 halves it
    assert lr(s) == 0.5


def test_unknown_scheduler_and_options():
    with pytest.raises(
        ParamsError, match=r"^experiments\.e\.train\.scheduler\.name: unknown scheduler 'steplr'; allowed: .*onecycle"
    ):
        schedule(name="steplr")
    with pytest.raises(
        ParamsError,
        match=r"^experiments\.e\.train\.scheduler\.step: unknown key; allowed: scheduler StepLR's options step_size, gamma",
    ):
        schedule(name="step", step=1)
    with pytest.raises(
        ParamsError, match=r"^experiments\.e\.train\.scheduler\.step_size: required by scheduler StepLR"
    ):
        schedule(name="step")
    with pytest.raises(ParamsError, match=r"^experiments\.e\.train\.scheduler\.name: lambda takes a Python function"):
        schedule(name="lambda")


@pytest.mark.parametrize(
    "scheduler, problem",
    [
        # torch builds each of these, then fails (or misbehaves) only once training steps it.
        ({"name": "step", "step_size": 0}, r"StepLR fails at step 1: integer modulo by zero"),
        ({"name": "step", "step_size": "a"}, r"step_size: Input should be a valid integer"),
        ({"name": "multistep", "milestones": "x"}, r"milestones: Input should be a valid (list|array)"),
        ({"name": "exponential", "gamma": -5.0}, r"ExponentialLR makes the learning rate -5 at step 1; it must stay"),
        ({"name": "onecycle", "total_steps": 2}, r"OneCycleLR fails at step 3: Tried to step 3 times"),
    ],
)
def test_a_schedule_that_would_fail_mid_training_fails_when_built(scheduler, problem):
    with pytest.raises(ParamsError, match=rf"^experiments\.e\.train\.scheduler(: |\.).*{problem}"):
        schedule(**scheduler)


def test_check_builds_on_a_stand_in_before_any_data():
    optim.check(Train(optimizer="adadelta", lr=1.0, scheduler=Named(name="step", step_size=1, gamma=0.7)))
    with pytest.raises(ParamsError, match=r"^train\.scheduler\.gama: unknown key; allowed: scheduler StepLR's options"):
        optim.check(Train(optimizer="adadelta", scheduler=Named(name="step", step_size=1, gama=0.7)))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fused_kernels_on_cuda_unless_the_options_choose():
    params = nn.Linear(2, 1).cuda().parameters()
    adam = optim.make_optimizer(params, Train(optimizer="adam"), torch.device("cuda"))
    assert adam.defaults["fused"] is True
    foreach = optim.make_optimizer(
        nn.Linear(2, 1).cuda().parameters(), Train(optimizer="adam", foreach=True), torch.device("cuda")
    )
    assert not foreach.defaults["fused"]
