"""What the pipeline benchmarks share: a fresh clone of this repository (HEAD), the
environment its stages run in, and a params.yaml that trains the image recipes on
Fashion-MNIST's 60,000 images."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
IMAGE_EXPERIMENTS = ("mnist_twolayernet", "mnist_mlp", "mnist_cnn")


def fresh_clone(where: Path) -> Path:
    """`git clone` of HEAD into where/clone: committed files only, empty DVC cache."""
    clone = where / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    return clone


def env(repo: Path) -> dict[str, str]:
    """The venv first on PATH (dvc.yaml runs `python`), and the clone's own library."""
    bin_dir = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "PYTHONPATH": str(repo / "src"),
        "DVC_NO_ANALYTICS": "1",
    }


def fashion_source(local_dir: Path | None) -> dict:
    """The params source of Fashion-MNIST: --local-dir if given, else Debian's copy (or exit)."""
    if local_dir is None and not DEBIAN_DIR.is_dir():
        sys.exit(
            f"error: no Fashion-MNIST at {DEBIAN_DIR}; `apt-get install dataset-fashion-mnist` "
            "or pass --local-dir with the four IDX files"
        )
    return {"name": "fashion-mnist"} | ({"local_dir": str(local_dir)} if local_dir else {})


def use_fashion_mnist(repo: Path, local_dir: Path | None, epochs: int | None = None, device: str = "cpu") -> None:
    """Point the clone's image experiments at Fashion-MNIST (its official 60,000/10,000 split);
    `epochs` replaces each recipe's own when given."""
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params["device"] = device
    params["datasets"]["fashion-mnist"] = {"source": fashion_source(local_dir), "normalize": "global"}
    for name in IMAGE_EXPERIMENTS:
        params["experiments"][name]["dataset"] = "fashion-mnist"
        if epochs is not None:
            params["experiments"][name]["train"]["epochs"] = epochs
    path.write_text(yaml.safe_dump(params, sort_keys=False))
