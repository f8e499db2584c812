"""core/live.py: dvclive synced once a second leaves the bytes dvclive leaves when synced every step."""

import json
from pathlib import Path

from dvclive import Live

from torchrepro.core.live import open_live
from torchrepro.train.stage import log_epoch


def history(epochs: int) -> list[dict[str, float]]:
    """Rows as the training loop makes them: epoch, then each split's loss and accuracy."""
    return [
        {"epoch": e, "train_loss": 1 / e, "train_acc": 1 - 1 / (e + 1), "test_loss": 2 / e, "test_acc": 0.5 + e / 1000}
        for e in range(1, epochs + 1)
    ]


def files(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def run_dvclive(directory: Path, rows: list[dict]) -> None:
    """dvclive itself, with next_step's full sync on every step."""
    live = Live(dir=str(directory), dvcyaml=None, save_dvc_exp=False, report=None)
    for row in rows:
        log_epoch(live, row)
    live.end()


def test_the_files_are_dvclives_whatever_the_sync_interval(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rows = history(25)
    run_dvclive(Path("reference"), rows)
    for every in (0.0, 3600.0):
        live = open_live(f"every-{every}", sync_every_s=every)
        for row in rows:
            log_epoch(live, row)
        live.end()
        assert files(Path(f"every-{every}")) == files(Path("reference"))
    assert json.loads(Path("reference/metrics.json").read_text())["step"] == 25


def test_the_summary_is_live_from_the_first_step_and_then_once_per_interval(tmp_path):
    live = open_live(tmp_path, sync_every_s=3600.0)
    rows = history(10)
    log_epoch(live, rows[0])
    summary = tmp_path / "metrics.json"
    assert json.loads(summary.read_text())["step"] == 1  # `dvc exp show` sees the run at once
    for row in rows[1:]:
        log_epoch(live, row)
    assert json.loads(summary.read_text())["step"] == 1  # not rewritten within the interval
    # The per-epoch rows are appended every step: dvclive's plots are never behind.
    assert (tmp_path / "plots/metrics/test/loss.tsv").read_text().splitlines()[-1] == "10\t0.2"
    live.end()
    assert json.loads(summary.read_text())["step"] == 10


def test_every_step_syncs_with_a_zero_interval(tmp_path):
    live = open_live(tmp_path, sync_every_s=0.0)
    for row in history(3):
        log_epoch(live, row)
        assert json.loads((tmp_path / "metrics.json").read_text())["step"] == row["epoch"]
    live.end()
