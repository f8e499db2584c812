import hashlib
import json
import os
import pickle

import pytest
import torch

from torchrepro.core.errors import DataError
from torchrepro.models.checkpoint import load_model, safe_load, save_model, to_bytes
from torchrepro.models.nets import create_model


def make(seed: int = 0):
    torch.manual_seed(seed)
    model = create_model("mlp", [1, 28, 28], 10, hidden_sizes=[8])
    info = {
        "model": "mlp",
        "model_kwargs": {"hidden_sizes": [8]},
        "input_shape": [1, 28, 28],
        "n_outputs": 10,
        "task": "classification",
        "classes": [str(i) for i in range(10)],
        "feature_names": ["pixel"],
        "normalize": {"method": "unit", "scale": 1 / 255, "mean": 0.0, "std": 1.0},
    }
    return model, info


def resign(model_dir) -> None:
    """Record model.pt's current digest in model.json, as a tampering writer could."""
    info_path = model_dir / "model.json"
    described = json.loads(info_path.read_text())
    described["sha256"] = hashlib.sha256((model_dir / "model.pt").read_bytes()).hexdigest()
    info_path.write_text(json.dumps(described))


class Payload:
    """Unpickling this creates the marker file: proof that a loader ran pickled code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_save_twice_gives_identical_bytes(tmp_path):
    model, info = make()
    save_model(tmp_path / "a", model, info)
    save_model(tmp_path / "b", model, info)
    first = (tmp_path / "a" / "model.pt").read_bytes()
    assert first == (tmp_path / "b" / "model.pt").read_bytes()
    save_model(tmp_path / "a", model, info)  # overwriting in place too
    assert (tmp_path / "a" / "model.pt").read_bytes() == first
    assert (tmp_path / "a" / "model.json").read_bytes() == (tmp_path / "b" / "model.json").read_bytes()


def test_different_weights_give_different_bytes(tmp_path):
    save_model(tmp_path / "a", *make(0))
    save_model(tmp_path / "b", *make(1))
    assert (tmp_path / "a" / "model.pt").read_bytes() != (tmp_path / "b" / "model.pt").read_bytes()


def test_load_model_roundtrip_gives_identical_outputs(tmp_path):
    model, info = make()
    save_model(tmp_path, model, info)
    loaded, loaded_info = load_model(tmp_path)
    assert loaded_info.pop("sha256") == hashlib.sha256((tmp_path / "model.pt").read_bytes()).hexdigest()
    assert loaded_info == info and not loaded.training
    x = torch.randn(5, 1, 28, 28)
    model.eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name


def test_model_pt_is_a_plain_state_dict(tmp_path):
    model, info = make()
    save_model(tmp_path, model, info)
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    assert list(state) == list(model.state_dict()) and all(t.device.type == "cpu" for t in state.values())


def test_pickled_object_in_a_checkpoint_is_refused_and_never_runs(tmp_path):
    model, info = make()
    save_model(tmp_path, model, info)
    marker = tmp_path / "pwned"
    state = dict(model.state_dict(), extra=Payload(marker))
    (tmp_path / "model.pt").write_bytes(to_bytes(state))
    resign(tmp_path)  # whoever can write model.pt can update its digest too
    assert not marker.exists()
    with pytest.raises(DataError, match="model.pt: refused to load: holds more than tensors and plain data") as info:
        load_model(tmp_path)
    assert not marker.exists()
    # One readable line that says what was found, not torch's page of advice.
    assert "(Unsupported global: GLOBAL " in str(info.value) and "open" in str(info.value)
    assert "\n" not in str(info.value) and "\x1b" not in str(info.value)
    # Control: the payload is live; a trusting loader runs it.
    torch.load(tmp_path / "model.pt", weights_only=False)["extra"].close()
    assert marker.exists()


def test_raw_pickle_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"weight": Payload(marker)}, protocol=2))  # torch's own protocol
    with pytest.raises(DataError, match="evil.pt: refused to load"):
        safe_load(path)
    assert not marker.exists()
    pickle.loads(path.read_bytes())["weight"].close()  # control: plain pickle would have run it
    assert marker.exists()


def test_truncated_checkpoint(tmp_path):
    model, info = make()
    save_model(tmp_path, model, info)
    data = (tmp_path / "model.pt").read_bytes()
    for keep in (len(data) // 2, 100, 10):
        (tmp_path / "model.pt").write_bytes(data[:keep])
        with pytest.raises(DataError, match="model.pt: its SHA-256 does not match model.json.*dvc checkout --force"):
            load_model(tmp_path)


def test_a_flipped_byte_that_torch_would_load_is_caught_by_the_digest(tmp_path):
    """torch does not check its archive's CRCs: two flipped bytes in a tensor's data load
    without a word and give other weights. The digest in model.json catches them."""
    model, info = make()
    save_model(tmp_path, model, info)
    path = tmp_path / "model.pt"
    data = bytearray(path.read_bytes())
    offset = data.index(b"data/0") + 200  # inside the first tensor's bytes
    data[offset] ^= 0x40
    data[offset + 1] ^= 0x40
    path.write_bytes(bytes(data))
    assert not torch.equal(torch.load(path, weights_only=True)["1.weight"], model.state_dict()["1.weight"])
    with pytest.raises(DataError, match="model.pt: its SHA-256 does not match"):
        load_model(tmp_path)


def test_garbage_and_empty_checkpoints(tmp_path):
    path = tmp_path / "x.pt"
    for content in (b"", b"not a checkpoint", os.urandom(256)):
        path.write_bytes(content)
        with pytest.raises(DataError, match="x.pt: "):
            safe_load(path)


def test_weights_that_do_not_fit_the_model(tmp_path):
    model, info = make()
    save_model(tmp_path, model, info)
    info_path = tmp_path / "model.json"
    described = json.loads(info_path.read_text())
    described["model_kwargs"]["hidden_sizes"] = [9]
    info_path.write_text(json.dumps(described))
    resign(tmp_path)
    with pytest.raises(DataError, match="model.pt: does not fit model 'mlp'"):
        load_model(tmp_path)


def test_missing_or_broken_model_dir(tmp_path):
    with pytest.raises(DataError, match="no trained model here .*run its train stage first"):
        load_model(tmp_path / "nothing")
    model, info = make()
    save_model(tmp_path, model, info)
    (tmp_path / "model.json").write_text("{")
    with pytest.raises(DataError, match="model.json: not valid JSON"):
        load_model(tmp_path)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-pickle"])
def test_every_truncation_is_a_data_error(tmp_path, legacy):
    """Damaged bytes fail inside torch's unpickler in many ways (EOFError, struct.error,
    IndexError, ...); each must still come out as one DataError."""
    model, _ = make()
    data = to_bytes(model.state_dict()) if not legacy else pickle.dumps({"w": [1.5, 2.5], "n": "x" * 40}, protocol=2)
    path = tmp_path / "cut.pt"
    for keep in range(0, len(data), max(1, len(data) // 60)):
        path.write_bytes(data[:keep])
        with pytest.raises(DataError, match="cut.pt: "):
            safe_load(path)
