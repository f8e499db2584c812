"""The download stage: fetch a dataset's raw files into data/raw/<dataset>/.

Each source in the registry (sources.py: csv, iris, mnist-5k; mnist.py: mnist,
fashion-mnist; folder.py: image_folder) copies or downloads its files in a plain format (.npy, .csv or the
original IDX files) and reads that directory back as a Table. No torch here.
"""

from __future__ import annotations

from pathlib import Path

from torchrepro.core.io import atomic_dir
from torchrepro.download import folder, mnist  # noqa: F401  (register image_folder, mnist, fashion-mnist)
from torchrepro.download.sources import Table, resolve_source


def fetch(dataset: str, source, raw_dir: str | Path) -> None:
    """Fetch a dataset's raw files into raw_dir atomically (all files or none)."""
    spec, options = resolve_source(dataset, source)
    with atomic_dir(raw_dir) as tmp:
        spec.fetch(options, tmp)


def load(dataset: str, source, raw_dir: str | Path) -> Table:
    """A fetched dataset's raw files as a Table."""
    spec, options = resolve_source(dataset, source)
    return spec.load(options, Path(raw_dir))


def run(params, dataset: str) -> None:
    """The download stage: fetch one dataset from params.yaml into data/raw/<dataset>."""
    fetch(dataset, params.dataset(dataset).source, params.paths.raw_dir(dataset))
