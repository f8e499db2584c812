"""The train stage: fit one experiment's model on its processed dataset.

Writes models/<experiment>/ (model.pt, model.json) and dvclive's per-epoch metrics in
metrics/<experiment>/train/: the same bytes on every host, so a clone's `dvc repro` leaves
dvc.lock as committed. A run that fails leaves the previous metrics and model as they were.
The host's side, wall-clock seconds and the device, goes to logs/<experiment>.json, for
people: no stage declares or reads it, and git ignores it.
A killed run resumes from .resume/ (resume.py) and ends with the same bytes.

`run` takes four steps in order: build (the device, the data on it, the seeded model, its
optimizer and the trainer), resume (from a killed run's checkpoint, if one fits), fit_and_save
(each epoch to dvclive and to a resume checkpoint, then the model) and write_log.
"""

from __future__ import annotations

import sys
from contextlib import nullcontext
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch

from torchrepro.core import determinism
from torchrepro.core.devices import describe, resolve_device
from torchrepro.core.errors import warn
from torchrepro.core.io import file_digest, rounded, write_json
from torchrepro.core.live import open_live, restored_on_failure
from torchrepro.core.params import Experiment, Params, Paths
from torchrepro.models.checkpoint import save_model
from torchrepro.models.inference import Split
from torchrepro.models.nets import count_parameters, create_model
from torchrepro.normalize import store
from torchrepro.optim import host_dependent, make_optimizer, make_schedule
from torchrepro.train.distributed import World
from torchrepro.train.loop import Trainer, fit, seed_everything
from torchrepro.train.resume import ResumeStore, interval_from_env

SNAPSHOT_LAYOUT = 3  # bump when Trainer.snapshot() changes: older resume files are then removed
PACKAGE = Path(__file__).resolve().parents[1]
# The code that shapes a training run: resuming from a checkpoint made by other code is not safe.
TRAINING_CODE = ("core", "models", "train", "optim.py", "normalize/store.py")


@cache  # the files do not change while a run goes on; fingerprint and lineage both ask
def code_digest() -> str:
    """SHA-256 over the training code's Python files, in a fixed order."""
    files = sorted(
        f
        for part in TRAINING_CODE
        for f in ([PACKAGE / part] if part.endswith(".py") else (PACKAGE / part).rglob("*.py"))
    )
    return file_digest(*files)


@dataclass(frozen=True)
class Identity:
    """What makes a training run the one it is, recorded once: the resume fingerprint,
    model.json and the log each take from it what they need."""

    experiment: str
    params: dict[str, Any]  # the experiment's section of params.yaml, defaults filled in
    seed: int
    determinism: str
    torch_version: str  # in full: its build label (+cpu, +cu130) too
    data: dict[str, str]  # the processed arrays' SHA-256
    device: torch.device
    world_size: int

    def fingerprint(self) -> dict[str, Any]:
        """What a resume checkpoint must match to continue this run."""
        return {
            "params": self.params,
            "seed": self.seed,
            "device": str(self.device),
            "determinism": self.determinism,
            "data": self.data,
            "torch": self.torch_version,
            "code": code_digest(),
            "snapshot": SNAPSHOT_LAYOUT,
            "world_size": self.world_size,  # the ranks' slices sum in another order: other bytes
        }

    def lineage(self, schedule: dict[str, Any] | None) -> dict[str, Any]:
        """The fingerprint less the epoch count, plus the scheduler's options as torch got them
        (T_max, total_steps: some come from the epoch count). Runs of one lineage go through the
        same states epoch by epoch: a longer one may continue a shorter one's last checkpoint."""
        train = {k: v for k, v in self.params["train"].items() if k != "epochs"}
        return {**self.fingerprint(), "params": {**self.params, "train": train}, "schedule": schedule}

    def recipe(self) -> dict[str, Any]:
        """What model.json says of how its weights were made: the same on every host."""
        return {
            "params": self.params,
            "seed": self.seed,
            "determinism": self.determinism,
            # The release only: the build's label (+cpu, +cu130) is each host's choice of wheel.
            "torch_version": self.torch_version.split("+")[0],
        }


@dataclass
class Run:
    """One experiment's training, built: who it is, its data's description, its trainer, its
    ranks, and where its checkpoints and outputs go."""

    identity: Identity
    exp: Experiment
    meta: dict[str, Any]
    trainer: Trainer
    world: World
    settings: dict[str, Any]  # the determinism in force, for the log
    paths: Paths
    checkpoints: ResumeStore


def log_epoch(live, row: dict[str, float]) -> None:
    """One epoch's losses (and accuracies) as dvclive metrics train/... and test/..., step = epoch."""
    live.step = row["epoch"]
    for name, value in row.items():
        if name != "epoch":
            split, _, metric = name.partition("_")
            live.log_metric(f"{split}/{metric}", rounded(value))  # 6 digits: diffs show change, not noise
    live.next_step()


def run(params: Params, experiment: str, progress: bool = True) -> dict:
    """Train one experiment from params.yaml; writes its model, metrics and log. Returns the log."""
    world = World.from_env(params.launcher)
    # A failure at any point, loading the data included, leaves the previous metrics: dvclive
    # writes them in place while the run goes on, for `dvc exp show` to read live.
    live_dir = params.paths.train_live_dir(experiment)
    try:
        with restored_on_failure(live_dir) if world.is_main else nullcontext():
            job = build(params, experiment, world)
            history = resume(job)
            if not world.is_main:  # rank 0 alone writes: the other ranks only train
                fit(job.trainer, job.exp.train.epochs, history, None, progress=False)
                return {}
            resumed_from = len(history)
            seconds = fit_and_save(job, history, progress)
        return write_log(job, resumed_from, seconds)
    finally:
        world.stop()


def build(params: Params, experiment: str, world: World) -> Run:
    """Choose the device and set it up as the determinism mode asks, load the processed data
    onto it, and build the seeded model, its optimizer and schedule, and the trainer."""
    exp, key, paths = params.experiment(experiment), f"experiments.{experiment}", params.paths
    device_key = f"{key}.device" if exp.device else "device"
    device = world.device(resolve_device(params.device_for(experiment), key=device_key), device_key)
    settings = determinism.apply(params.determinism, device)
    world.start(device)
    data = store.load(paths.processed_dir(exp.dataset))
    meta, seed = data.meta, params.seed_for(experiment)

    seed_everything(seed)  # before the model exists: its initial weights come from this seed
    shape, options = meta["input_shape"], exp.model.options
    model = create_model(exp.model.name, shape, n_outputs(meta), key=f"{key}.model", **options).to(device)
    optimizer = make_optimizer(model.parameters(), exp.train, device, key=f"{key}.train")
    if params.determinism == "portable" and device.type == "cpu" and (why := host_dependent(optimizer)):
        warn(f"determinism: portable: {why}; results may differ between Intel and AMD CPUs")
    train = Split.from_numpy(data.x_train, data.y_train, device, meta)
    test = Split.from_numpy(data.x_test, data.y_test, device, meta)
    trainer = Trainer(model, optimizer, train, test, meta["task"], exp.train.batch_size, seed, world=world)
    trainer.schedule = make_schedule(optimizer, exp.train, trainer.steps_per_epoch, key=f"{key}.train")

    identity = Identity(
        experiment=experiment,
        params=exp.model_dump(mode="json"),
        seed=seed,
        determinism=params.determinism,
        torch_version=str(torch.__version__),
        data=meta["sha256"],
        device=device,
        world_size=world.size,
    )
    schedule = trainer.schedule.options if trainer.schedule is not None else None
    checkpoints = ResumeStore(
        paths.resume_dir(experiment),
        identity.fingerprint(),
        exp.train.epochs,
        interval_from_env(),
        lineage=identity.lineage(schedule),
    )
    return Run(identity, exp, meta, trainer, world, settings, paths, checkpoints)


def n_outputs(meta: dict[str, Any]) -> int:
    """The network's outputs: one per class, or the one regressed value."""
    return len(meta["classes"]) if meta["task"] == "classification" else 1


def resume(job: Run) -> list[dict]:
    """The history so far: empty, or that of the resume checkpoint this run continues, whose
    weights, optimizer, schedule and random generators are then the trainer's."""
    history: list[dict] = []
    world = job.world
    if (state := job.checkpoints.load(tidy=world.is_main)) is not None:
        history = job.trainer.restore(state)
        if world.is_main:
            source = job.checkpoints.loaded_from
            how = "resumed from epoch" if source == job.checkpoints.path else "continued a shorter run from its epoch"
            print(f"{job.identity.experiment}: {how} {len(history)} ({source})", file=sys.stderr)
    world.agree(len(history), "the epoch to resume from")
    return history


def fit_and_save(job: Run, history: list[dict], progress: bool) -> list[float]:
    """Train the remaining epochs, logging each to dvclive and checkpointing it for a resume,
    then write the model. Returns each epoch's seconds."""
    experiment = job.identity.experiment
    live = open_live(job.paths.train_live_dir(experiment))
    for row in history:  # replayed, so the files read as if the run had never stopped
        log_epoch(live, row)

    def end_of_epoch(epoch: int, history: list[dict]) -> None:
        log_epoch(live, history[-1])
        job.checkpoints.save(job.trainer.snapshot(history), epoch)

    history, seconds = fit(job.trainer, job.exp.train.epochs, history, end_of_epoch, progress)
    live.end()
    save_model(job.paths.model_dir(experiment), job.trainer.model, model_info(job))  # last: then the run is done
    return seconds


def model_info(job: Run) -> dict[str, Any]:
    """model.json: how to rebuild the network and feed it its inputs, and how it was made."""
    meta, exp = job.meta, job.exp
    return {
        "experiment": job.identity.experiment,
        "dataset": exp.dataset,
        "model": exp.model.name,
        "model_kwargs": exp.model.options,
        "n_outputs": n_outputs(meta),
        "n_parameters": count_parameters(job.trainer.model),
        **{name: meta[name] for name in ("input_shape", "task", "classes", "feature_names", "normalize")},
        **job.identity.recipe(),
    }


def write_log(job: Run, resumed_from: int, seconds: list[float]) -> dict:
    """logs/<experiment>.json, for people only (no stage declares it, git ignores it): what
    differs from host to host and run to run. Returns it."""
    device = job.identity.device
    log = {
        "experiment": job.identity.experiment,
        "device": str(device),
        "device_name": describe(device),
        **job.settings,
        "world_size": job.identity.world_size,
        "torch": job.identity.torch_version,
        "resumed_from_epoch": resumed_from,
        "epochs_run": len(seconds),
        "train_seconds": round(sum(seconds), 4),
        "seconds_per_epoch": [round(s, 4) for s in seconds],
    }
    write_json(job.paths.log_file(job.identity.experiment), log)
    return log
