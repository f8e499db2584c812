import hashlib

import pytest
import torch

from torchrepro import resume
from torchrepro.checkpoint import to_bytes
from torchrepro.resume import ResumeStore, file_digest

FINGERPRINT = {"params": {"lr": 0.1}, "seed": 0, "device": "cpu", "data": "abc", "torch": "2.x"}


def state(epoch: int = 1) -> dict:
    return {"epoch": epoch, "history": [{"epoch": 1, "train_loss": 0.5}], "model": {"w": torch.arange(4.0)}}


def test_save_load_roundtrip(tmp_path):
    store = ResumeStore(tmp_path / "exp", FINGERPRINT)
    assert store.load() is None  # nothing yet
    assert store.save(state()) is True
    assert store.path.parent == tmp_path / "exp" and store.path.suffix == ".pt"
    loaded = ResumeStore(tmp_path / "exp", dict(FINGERPRINT)).load()  # a new process, same fingerprint
    assert loaded["epoch"] == 1 and loaded["history"] == [{"epoch": 1, "train_loss": 0.5}]
    assert torch.equal(loaded["model"]["w"], torch.arange(4.0))
    assert loaded["fingerprint"] == FINGERPRINT


def test_fingerprint_with_a_str_subclass_still_loads(tmp_path):
    """train.run puts torch.__version__ (a str subclass) into the fingerprint."""
    fingerprint = dict(FINGERPRINT, torch=torch.__version__)
    ResumeStore(tmp_path, fingerprint).save(state())
    assert ResumeStore(tmp_path, fingerprint).load() is not None


def test_nothing_to_load_is_silent(tmp_path, capsys):
    assert ResumeStore(tmp_path / "never", FINGERPRINT).load() is None
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("key, value", [("params", {"lr": 0.2}), ("data", "def"), ("seed", 1)])
def test_other_fingerprint_is_ignored_with_a_warning_naming_what_differs(tmp_path, capsys, key, value):
    ResumeStore(tmp_path, FINGERPRINT).save(state())
    other = ResumeStore(tmp_path, dict(FINGERPRINT, **{key: value}))
    assert other.load() is None
    err = capsys.readouterr().err
    assert err.startswith("warning: ignoring resume checkpoint ") and err.count("\n") == 1
    assert f"made with different {key}" in err


def test_corrupt_checkpoint_is_ignored_with_a_warning(tmp_path, capsys):
    store = ResumeStore(tmp_path, FINGERPRINT)
    store.save(state())
    store.path.write_bytes(store.path.read_bytes()[:50])
    assert store.load() is None
    err = capsys.readouterr().err
    assert err.startswith("warning: ignoring resume checkpoint: ") and "corrupt or truncated" in err
    assert err.rstrip().endswith("starting over")


def test_unreadable_other_checkpoint_warning(tmp_path, capsys):
    (tmp_path / "0000.pt").write_bytes(b"junk")
    assert ResumeStore(tmp_path, FINGERPRINT).load() is None
    err = capsys.readouterr().err
    assert f"ignoring resume checkpoint {tmp_path / '0000.pt'}: unreadable" in err


class Opaque:
    """Any custom class: weights_only loading must refuse it."""


def test_pickled_object_in_a_resume_file_is_refused(tmp_path, capsys):
    store = ResumeStore(tmp_path, FINGERPRINT)
    store.path.parent.mkdir(parents=True, exist_ok=True)
    store.path.write_bytes(to_bytes({"fingerprint": FINGERPRINT, "x": Opaque()}))
    assert store.load() is None
    assert "refused to load" in capsys.readouterr().err


def test_matching_name_with_a_different_fingerprint_inside(tmp_path, capsys):
    store = ResumeStore(tmp_path, FINGERPRINT)
    store.path.parent.mkdir(parents=True, exist_ok=True)
    store.path.write_bytes(to_bytes({**state(), "fingerprint": dict(FINGERPRINT, seed=9)}))
    assert store.load() is None
    assert "its fingerprint does not match; starting over" in capsys.readouterr().err


def test_clear_removes_the_checkpoints(tmp_path):
    store = ResumeStore(tmp_path / "exp", FINGERPRINT)
    store.save(state())
    assert store.path.exists()
    store.clear()
    assert not (tmp_path / "exp").exists()
    store.clear()  # nothing there: still fine


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_every_s_throttles_saves(tmp_path, monkeypatch):
    clock = Clock()
    monkeypatch.setattr(resume.time, "monotonic", clock)
    store = ResumeStore(tmp_path, FINGERPRINT, every_s=60)
    clock.now += 10
    assert store.save(state(1)) is False and not store.path.exists()  # 10 s since the start
    clock.now += 55
    assert store.save(state(2)) is True  # 65 s
    clock.now += 59
    assert store.save(state(3)) is False  # 59 s since the last save
    clock.now += 1
    assert store.save(state(4)) is True
    assert store.load()["epoch"] == 4


def test_every_s_zero_saves_every_epoch_but_not_the_last(tmp_path):
    store = ResumeStore(tmp_path, FINGERPRINT, every_s=0)
    assert store.save(state(1)) is True and store.save(state(2)) is True
    assert store.save(state(3), final_epoch=True) is False  # training is done: nothing to resume
    assert store.load()["epoch"] == 2


def test_file_digest_is_sha256_of_the_concatenation(tmp_path):
    (tmp_path / "a").write_bytes(b"hello ")
    (tmp_path / "b").write_bytes(b"world")
    assert file_digest(tmp_path / "a", tmp_path / "b") == hashlib.sha256(b"hello world").hexdigest()
    assert file_digest(tmp_path / "b", tmp_path / "a") != file_digest(tmp_path / "a", tmp_path / "b")
