import hashlib
import json
import os

import pytest
import torch

from torchrepro.core.io import file_digest
from torchrepro.models.checkpoint import to_bytes
from torchrepro.train import resume
from torchrepro.train.resume import ResumeStore

FINGERPRINT = {"params": {"lr": 0.1}, "seed": 0, "device": "cpu", "data": "abc", "torch": "2.x", "snapshot": 3}
EPOCHS = 5


def state(epoch: int = 1) -> dict:
    return {"epoch": epoch, "history": [{"epoch": 1, "train_loss": 0.5}], "model": {"w": torch.arange(4.0)}}


def store(tmp_path, **differences) -> ResumeStore:
    return ResumeStore(tmp_path / "exp", dict(FINGERPRINT, **differences), EPOCHS)


def test_save_load_roundtrip(tmp_path):
    first = store(tmp_path)
    assert first.load() is None  # nothing yet
    assert first.save(state(), epoch=1) is True
    assert first.path.parent == tmp_path / "exp" and first.path.suffix == ".pt"
    loaded = store(tmp_path).load()  # a new process, same fingerprint
    assert loaded["epoch"] == 1 and loaded["history"] == [{"epoch": 1, "train_loss": 0.5}]
    assert torch.equal(loaded["model"]["w"], torch.arange(4.0))


def test_the_header_holds_a_digest_of_the_archive(tmp_path):
    s = store(tmp_path)
    s.save(state(), epoch=1)
    line, _, payload = s.path.read_bytes().partition(b"\n")
    header = json.loads(line)
    assert header["sha256"] == hashlib.sha256(payload).hexdigest()
    assert header["fingerprint"] == FINGERPRINT and (header["epoch"], header["epochs"]) == (1, EPOCHS)


def test_fingerprint_with_a_str_subclass_still_loads(tmp_path):
    """The train stage puts torch.__version__ (a str subclass) into the fingerprint."""
    fingerprint = dict(FINGERPRINT, torch=torch.__version__)
    ResumeStore(tmp_path, fingerprint, EPOCHS).save(state(), epoch=1)
    assert ResumeStore(tmp_path, fingerprint, EPOCHS).load() is not None


def test_nothing_to_load_is_silent(tmp_path, capsys):
    assert store(tmp_path).load() is None
    assert capsys.readouterr().err == ""


def test_other_params_do_not_resume_but_an_unfinished_checkpoint_of_theirs_is_kept(tmp_path):
    theirs = store(tmp_path, params={"lr": 0.2})
    theirs.save(state(), epoch=2)
    assert store(tmp_path).load() is None
    assert theirs.path.exists()  # a return to lr 0.2 resumes it


def test_finished_checkpoints_of_other_params_are_removed(tmp_path):
    theirs = store(tmp_path, params={"lr": 0.2})
    theirs.save(state(EPOCHS), epoch=EPOCHS)
    assert store(tmp_path).load() is None
    assert not theirs.path.exists()  # finished: DVC's run-cache holds its results


LINEAGE = {"params": {"lr": 0.1}, "seed": 0}


def run_of(tmp_path, epochs: int, lineage: dict | None = LINEAGE) -> ResumeStore:
    """The store of a run of `epochs` epochs of one lineage (its fingerprint differs by epochs)."""
    return ResumeStore(tmp_path / "exp", dict(FINGERPRINT, epochs=epochs), epochs, lineage=lineage)


def test_a_longer_run_continues_the_longest_shorter_run_of_its_lineage(tmp_path):
    two, three = run_of(tmp_path, 2), run_of(tmp_path, 3)
    two.save(state(2), epoch=2)  # finished
    three.save(state(3), epoch=3)
    longer = run_of(tmp_path, 5)
    assert longer.load()["epoch"] == 3 and longer.loaded_from == three.path
    assert two.path.exists()  # finished, but a longer run of its lineage may still continue it
    assert not longer.path.exists()  # the continued run's own checkpoint is written as it trains


def test_no_run_continues_one_of_another_lineage_or_one_as_long(tmp_path):
    run_of(tmp_path, 3, lineage={"params": {"lr": 0.2}}).save(state(3), epoch=3)
    run_of(tmp_path, 5).save(state(4), epoch=4)  # unfinished, as long as the run below
    assert run_of(tmp_path, 4).load() is None
    assert run_of(tmp_path, 6, lineage=None).load() is None  # None: continue no other run


def test_finished_runs_no_longer_run_continues_are_removed(tmp_path):
    five = run_of(tmp_path, 5)
    five.save(state(5), epoch=5)
    assert run_of(tmp_path, 4).load() is None
    assert not five.path.exists()  # finished, and longer: DVC's run-cache holds its results


@pytest.mark.parametrize("key", ["torch", "snapshot"])
def test_checkpoints_no_run_can_use_are_removed(tmp_path, key):
    theirs = store(tmp_path, **{key: "other"})
    theirs.save(state(), epoch=1)
    store(tmp_path).load()
    assert not theirs.path.exists()


def test_only_the_newest_unfinished_checkpoints_of_other_params_are_kept(tmp_path):
    others = []
    for i in range(resume.KEEP_OTHERS + 2):
        other = store(tmp_path, seed=100 + i)
        other.save(state(), epoch=1)
        os.utime(other.path, (1000 + i, 1000 + i))
        others.append(other.path)
    store(tmp_path).load()
    assert [p.exists() for p in others] == [False, False, True, True, True]


@pytest.mark.parametrize("damage", ["truncate", "flip", "no-header"])
def test_a_damaged_checkpoint_is_ignored_with_a_warning_and_removed(tmp_path, capsys, damage):
    s = store(tmp_path)
    s.save(state(), epoch=1)
    data = bytearray(s.path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) - 50]
    elif damage == "flip":  # two bytes in the archive: torch.load would not notice
        data[-300] ^= 0x08
        data[-299] ^= 0x08
    else:
        data = bytearray(to_bytes(state()))
    s.path.write_bytes(bytes(data))
    assert s.load() is None
    err = capsys.readouterr().err
    assert err.startswith("warning: ignoring resume checkpoint: ") and err.rstrip().endswith("starting over")
    assert err.count("\n") == 1 and not s.path.exists()


def test_unreadable_other_checkpoint_is_removed_with_a_warning(tmp_path, capsys):
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "0000.pt").write_bytes(b"junk")
    assert store(tmp_path).load() is None
    assert "removing resume checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "exp" / "0000.pt").exists()


class Opaque:
    """Any custom class: weights_only loading must refuse it."""


def test_pickled_object_in_a_resume_file_is_refused(tmp_path, capsys):
    """Even with a header whose digest matches, the archive is loaded with weights_only."""
    s = store(tmp_path)
    s.path.parent.mkdir(parents=True)
    payload = to_bytes({"x": Opaque()})
    header = {"format": resume.FORMAT, "sha256": hashlib.sha256(payload).hexdigest(), "fingerprint": FINGERPRINT}
    s.path.write_bytes(json.dumps(header).encode() + b"\n" + payload)
    assert s.load() is None
    assert "refused to load" in capsys.readouterr().err


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_every_s_throttles_saves_but_the_last_epoch_is_always_saved(tmp_path, monkeypatch):
    clock = Clock()
    monkeypatch.setattr(resume.time, "monotonic", clock)
    s = ResumeStore(tmp_path, FINGERPRINT, EPOCHS, every_s=60)
    clock.now += 10
    assert s.save(state(1), epoch=1) is False and not s.path.exists()  # 10 s since the start
    clock.now += 55
    assert s.save(state(2), epoch=2) is True  # 65 s
    clock.now += 59
    assert s.save(state(3), epoch=3) is False  # 59 s since the last save
    clock.now += 1
    assert s.save(state(4), epoch=4) is True
    assert s.save(state(5), epoch=EPOCHS) is True  # the last one: a kill now must cost nothing
    assert s.load()["epoch"] == 5


@pytest.mark.parametrize("value, seconds", [(None, 0.0), ("0", 0.0), ("30", 30.0), ("1.5", 1.5)])
def test_interval_from_the_environment(monkeypatch, value, seconds):
    if value is None:
        monkeypatch.delenv(resume.INTERVAL_ENV, raising=False)
    else:
        monkeypatch.setenv(resume.INTERVAL_ENV, value)
    assert resume.interval_from_env() == seconds


def test_file_digest_is_sha256_of_the_concatenation(tmp_path):
    (tmp_path / "a").write_bytes(b"hello ")
    (tmp_path / "b").write_bytes(b"world")
    assert file_digest(tmp_path / "a", tmp_path / "b") == hashlib.sha256(b"hello world").hexdigest()
    assert file_digest(tmp_path / "b", tmp_path / "a") != file_digest(tmp_path / "a", tmp_path / "b")


def recorded_after(s: ResumeStore, lock, seconds: float) -> None:
    """dvc.lock written `seconds` after the checkpoint (negative: before it)."""
    lock.write_text("schema: '2.0'\n")
    written = s.path.stat().st_mtime_ns
    os.utime(lock, ns=(written + int(seconds * 1e9),) * 2)


@pytest.mark.parametrize(
    "epoch, lock_after_s, used",
    [
        (EPOCHS, None, True),  # no dvc.lock: DVC never recorded a run here
        (EPOCHS, -1, True),  # killed after training, before DVC's record
        (EPOCHS, 1, False),  # recorded: `dvc repro -f` must train again
        (EPOCHS, 0, False),  # the same time: it cannot be told which came first
        (2, 1, True),  # an unfinished run is never DVC's: it resumes
    ],
)
def test_a_finished_checkpoint_is_used_only_until_dvc_lock_is_written(tmp_path, epoch, lock_after_s, used):
    lock = tmp_path / "dvc.lock"
    first = ResumeStore(tmp_path / "exp", FINGERPRINT, EPOCHS, lock_file=lock)
    first.save(state(epoch), epoch=epoch)
    if lock_after_s is not None:
        recorded_after(first, lock, lock_after_s)
    loaded = ResumeStore(tmp_path / "exp", FINGERPRINT, EPOCHS, lock_file=lock).load()
    assert (loaded is not None) == used
    assert first.path.exists()  # ignored, not removed: the retrain overwrites it


def test_the_lock_file_is_dvc_lock_in_the_working_folder(tmp_path, monkeypatch):
    """DVC runs a stage in the folder of its dvc.yaml, where dvc.lock lies."""
    monkeypatch.chdir(tmp_path)
    s = store(tmp_path)
    s.save(state(EPOCHS), epoch=EPOCHS)
    recorded_after(s, tmp_path / "dvc.lock", 1)
    assert store(tmp_path).load() is None
