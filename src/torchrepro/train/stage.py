"""The train stage: fit one experiment's model on its processed dataset.

Writes models/<experiment>/ (model.pt, model.json) and dvclive's per-epoch metrics in
metrics/<experiment>/train/: the same bytes on every host, so a clone's `dvc repro` leaves
dvc.lock as committed. A run that fails leaves the previous metrics and model as they were.
The host's side, wall-clock seconds and the device, goes to logs/<experiment>.json, for
people: no stage declares or reads it, and git ignores it.
A killed run resumes from .resume/ (resume.py) and ends with the same bytes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from torchrepro.core import determinism
from torchrepro.core.devices import describe, resolve_device
from torchrepro.core.errors import warn
from torchrepro.core.io import file_digest, rounded, write_json
from torchrepro.core.live import open_live, restored_on_failure
from torchrepro.core.params import Params
from torchrepro.models.checkpoint import save_model
from torchrepro.models.nets import count_parameters, create_model
from torchrepro.normalize import store
from torchrepro.optim import host_dependent, make_optimizer, make_schedule
from torchrepro.train.distributed import World
from torchrepro.train.loop import Split, Trainer, fit, seed_everything
from torchrepro.train.resume import ResumeStore, interval_from_env

SNAPSHOT_LAYOUT = 3  # bump when Trainer.snapshot() changes: older resume files are then removed
PACKAGE = Path(__file__).resolve().parents[1]
# The code that shapes a training run: resuming from a checkpoint made by other code is not safe.
TRAINING_CODE = ("core", "models", "train", "optim.py", "normalize/store.py")


def code_digest() -> str:
    """SHA-256 over the training code's Python files, in a fixed order."""
    files = sorted(
        f
        for part in TRAINING_CODE
        for f in ([PACKAGE / part] if part.endswith(".py") else (PACKAGE / part).rglob("*.py"))
    )
    return file_digest(*files)


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
    exp = params.experiment(experiment)
    key = f"experiments.{experiment}"
    device_key = f"{key}.device" if exp.device else "device"
    world = World.from_env(params.launcher)
    device = world.device(resolve_device(params.device_for(experiment), key=device_key), device_key)
    settings = determinism.apply(params.determinism, device)
    world.start(device)
    try:
        return _train(params, experiment, device, settings, world, progress and world.is_main)
    finally:
        world.stop()


def _train(params: Params, experiment: str, device, settings: dict, world: World, progress: bool) -> dict:
    exp = params.experiment(experiment)
    key = f"experiments.{experiment}"
    paths = params.paths
    data = store.load(paths.processed_dir(exp.dataset))
    meta, seed = data.meta, params.seed_for(experiment)
    n_outputs = len(meta["classes"]) if meta["task"] == "classification" else 1

    seed_everything(seed)  # before the model exists: its initial weights come from this seed
    model = create_model(exp.model.name, meta["input_shape"], n_outputs, key=f"{key}.model", **exp.model.options)
    model.to(device)
    optimizer = make_optimizer(model.parameters(), exp.train, device, key=f"{key}.train")
    if params.determinism == "portable" and device.type == "cpu" and (why := host_dependent(optimizer)):
        warn(f"determinism: portable: {why}; results may differ between Intel and AMD CPUs")
    trainer = Trainer(
        model,
        optimizer,
        Split.from_numpy(data.x_train, data.y_train, device),
        Split.from_numpy(data.x_test, data.y_test, device),
        meta["task"],
        exp.train.batch_size,
        seed,
        world=world,
    )
    trainer.schedule = make_schedule(optimizer, exp.train, trainer.steps_per_epoch, key=f"{key}.train")

    fingerprint = {
        "params": exp.model_dump(mode="json"),
        "seed": seed,
        "device": str(device),
        "determinism": params.determinism,
        "data": meta["sha256"],
        "torch": str(torch.__version__),
        "code": code_digest(),
        "snapshot": SNAPSHOT_LAYOUT,
        "world_size": world.size,  # the ranks' slices sum in another order: other bytes
    }
    resume = ResumeStore(paths.resume_dir(experiment), fingerprint, exp.train.epochs, interval_from_env())
    history: list[dict] = []
    if (state := resume.load(tidy=world.is_main)) is not None:
        history = trainer.restore(state)
        if world.is_main:
            print(f"{experiment}: resumed from epoch {len(history)} ({resume.path})", file=sys.stderr)
    world.agree(len(history), "the epoch to resume from")
    resumed_from = len(history)

    if not world.is_main:  # rank 0 alone writes: the other ranks only train
        fit(trainer, exp.train.epochs, history, None, progress=False)
        return {}

    live_dir = paths.train_live_dir(experiment)
    with restored_on_failure(live_dir):  # dvclive writes in place, for `dvc exp show` to read live
        live = open_live(live_dir)
        for row in history:  # replayed, so the files read as if the run had never stopped
            log_epoch(live, row)

        def end_of_epoch(epoch: int, history: list[dict]) -> None:
            log_epoch(live, history[-1])
            resume.save(trainer.snapshot(history), epoch)

        history, seconds = fit(trainer, exp.train.epochs, history, end_of_epoch, progress)
        live.end()
        info = {
            "experiment": experiment,
            "dataset": exp.dataset,
            "model": exp.model.name,
            "model_kwargs": exp.model.options,
            "input_shape": meta["input_shape"],
            "n_outputs": n_outputs,
            "task": meta["task"],
            "classes": meta["classes"],
            "feature_names": meta["feature_names"],
            "normalize": meta["normalize"],
            "params": exp.model_dump(mode="json"),
            "seed": seed,
            "determinism": params.determinism,
            "n_parameters": count_parameters(model),
            # The release only: the build's label (+cpu, +cu130) is each host's choice of wheel.
            "torch_version": torch.__version__.split("+")[0],
        }
        save_model(paths.model_dir(experiment), model, info)  # last: once it is in place, the run is done

    # For people only (undeclared, git-ignored): what differs from host to host and run to run.
    log = {
        "experiment": experiment,
        "device": str(device),
        "device_name": describe(device),
        **settings,
        "world_size": world.size,
        "torch": str(torch.__version__),
        "resumed_from_epoch": resumed_from,
        "epochs_run": len(seconds),
        "train_seconds": round(sum(seconds), 4),
        "seconds_per_epoch": [round(s, 4) for s in seconds],
    }
    write_json(paths.log_file(experiment), log)
    return log
