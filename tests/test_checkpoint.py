import contextlib
import hashlib
import json
import os
import pickle
import signal
import socket
import subprocess
import sys

import pytest
import torch

from torchrepro.core.errors import DataError
from torchrepro.models.checkpoint import load_model, read_info, safe_load, save_model, signed, to_bytes
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


def resign(model_dir, described: dict | None = None) -> None:
    """Record model.pt's current digest in model.json (or write `described`) and sign it anew,
    as a tampering writer could: what the digests cannot catch, the checks after them must."""
    info_path = model_dir / "model.json"
    described = json.loads(info_path.read_text()) if described is None else described
    described["sha256"] = hashlib.sha256((model_dir / "model.pt").read_bytes()).hexdigest()
    info_path.write_text(json.dumps(signed(described)))


def canonical(content: dict) -> bytes:
    """The JSON the digest of model.json is taken over: sorted keys, no whitespace."""
    return json.dumps(content, sort_keys=True, separators=(",", ":")).encode()


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
    assert loaded_info.pop("json_sha256") == hashlib.sha256(canonical(loaded_info)).hexdigest()
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
    resign(tmp_path, described)
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


# --- model.json's own digest ----------------------------------------------------------------


def flip_bit_in_mean(info_path) -> None:
    """One bit of one digit of normalize's mean: 0.1307 becomes 0.1306, still valid JSON."""
    data = bytearray(info_path.read_bytes())
    at = data.index(b"0.1307") + 5
    data[at] ^= 0x01
    info_path.write_bytes(bytes(data))


def test_a_flipped_bit_in_model_json_is_caught_by_its_digest(tmp_path):
    model, info = make()
    info["normalize"] |= {"method": "global", "mean": 0.1307, "std": 0.3081}
    save_model(tmp_path, model, info)
    flip_bit_in_mean(tmp_path / "model.json")
    assert json.loads((tmp_path / "model.json").read_text())["normalize"]["mean"] == 0.1306  # a plausible value
    with pytest.raises(DataError) as error:
        load_model(tmp_path, experiment="digits_mlp")
    message = str(error.value)
    assert message.startswith(f"{tmp_path / 'model.json'}: its json_sha256 does not match its content")
    assert "the file is damaged" in message and "`dvc repro train@digits_mlp`" in message
    assert f"dvc checkout --force {tmp_path}" in message and "\n" not in message


def test_the_digest_is_of_the_content_not_the_layout(tmp_path):
    model, info = make()
    save_model(tmp_path, model, info)
    info_path = tmp_path / "model.json"
    content = json.loads(info_path.read_text())
    info_path.write_text(json.dumps(dict(reversed(content.items())), indent=4))  # another order and indent
    assert load_model(tmp_path)[1] == content


@pytest.mark.parametrize(
    "edit, says",
    [
        (lambda c: c.pop("json_sha256"), "model.json: no json_sha256 digest: written by an older torchrepro"),
        (lambda c: c.update(json_sha256="0" * 64), "model.json: its json_sha256 does not match its content"),
        (lambda c: c.update(json_sha256=None), "model.json: its json_sha256 does not match its content"),
        (lambda c: c.update(n_parameters=c["n_parameters"] + 1), "its json_sha256 does not match its content"),
        (lambda c: c.update(extra="x"), "model.json: its json_sha256 does not match its content"),
    ],
    ids=["older-format", "wrong-digest", "null-digest", "a-number-changed", "a-field-added"],
)
def test_model_json_without_its_digest_or_with_another(tmp_path, edit, says):
    model, info = make()
    save_model(tmp_path, model, info | {"n_parameters": 7})
    info_path = tmp_path / "model.json"
    content = json.loads(info_path.read_text())
    edit(content)
    info_path.write_text(json.dumps(content))
    with pytest.raises(DataError, match=says) as error:
        load_model(tmp_path)
    assert "dvc repro train@" in str(error.value)
    with pytest.raises(DataError, match=says):
        read_info(info_path)  # what the report reads: the same check


def test_model_json_not_an_object(tmp_path):
    model, info = make()
    save_model(tmp_path, model, info)
    (tmp_path / "model.json").write_text("[1, 2]")
    with pytest.raises(DataError, match="model.json: not a model description \\(a JSON list\\); restore it with"):
        load_model(tmp_path)


def test_read_info_needs_no_torch():
    """The report reads model.json (its parameter count) in a stage that must not import torch."""
    code = "import sys; from torchrepro.models.checkpoint import read_info; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


# --- Files that are not regular files ---------------------------------------------------------


@contextlib.contextmanager
def deadline(seconds: int = 20):
    """Fail instead of hanging: reading a FIFO without a writer would block forever."""

    def expire(*_):
        raise TimeoutError(f"still blocked after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def not_regular(kind: str, path) -> None:
    """Put a non-regular file of `kind` at `path` (which must not exist yet)."""
    if kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero":
        path.symlink_to("/dev/zero")
    elif kind == "socket":
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(path))
        server.close()  # the socket file stays
    elif kind == "link-to-fifo":
        os.mkfifo(path.with_name(path.name + ".fifo"))
        path.symlink_to(path.name + ".fifo")


NOT_REGULAR = {  # kind -> what the error says it is
    "folder": "is a folder",
    "fifo": "is a named pipe (FIFO)",
    "dev-zero": "(a link to /dev/zero): is a character device",
    "socket": "is a socket",
    "link-to-fifo": ".fifo): is a named pipe (FIFO)",
}


@pytest.mark.parametrize("name, what", [("model.json", "a JSON file"), ("model.pt", "a checkpoint")])
@pytest.mark.parametrize("kind", list(NOT_REGULAR))
def test_model_files_must_be_regular_files(tmp_path, name, what, kind):
    model, info = make()
    model_dir = tmp_path / "m"
    save_model(model_dir, model, info)
    (model_dir / name).unlink()
    not_regular(kind, model_dir / name)
    with deadline(), pytest.raises(DataError) as error:
        load_model(model_dir)
    message = str(error.value)
    assert message.startswith(str(model_dir / name)) and f"{NOT_REGULAR[kind]}, not {what}; restore it with" in message
