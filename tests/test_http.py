import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
from http_server import FileServer, dead_url
from idx_files import write_idx

from torchrepro.core.errors import DataError
from torchrepro.download.http import digest_check, download
from torchrepro.download.idx import read_idx

FAST = {"backoff": 0.001, "timeout": 5.0, "progress": False}  # keep retries quick in tests


@pytest.fixture(scope="module")
def payload(tmp_path_factory) -> bytes:
    """A gzipped IDX file of random images, big enough to arrive in several chunks."""
    path = tmp_path_factory.mktemp("payload") / "images.gz"
    images = np.random.default_rng(0).integers(0, 256, size=(200, 28, 28), dtype=np.uint8)
    write_idx(path, images, gzip=True)
    return path.read_bytes()


def md5(data: bytes) -> str:
    return "md5:" + hashlib.md5(data).hexdigest()


def test_download_and_verify(tmp_path, payload):
    dest = tmp_path / "images.gz"
    with FileServer({"images.gz": payload}) as server:
        download([server.url("images.gz")], dest, md5(payload), **FAST)
    assert dest.read_bytes() == payload
    assert read_idx(dest, ndim=3).shape == (200, 28, 28)
    assert [p.name for p in tmp_path.iterdir()] == ["images.gz"]  # no temporary file left behind


def test_verify_accepts_a_callable(tmp_path, payload):
    seen = []
    with FileServer({"f": payload}) as server:
        download([server.url("f")], tmp_path / "f", lambda path: seen.append(path.read_bytes()), **FAST)
    assert seen == [payload]


def test_checksum_mismatch_names_file_expected_and_actual(tmp_path, payload):
    wrong = "0" * 32
    with FileServer({"images.gz": payload}) as server, pytest.raises(DataError) as error:
        download([server.url("images.gz")], tmp_path / "images.gz", f"md5:{wrong}", **FAST)
    message = str(error.value)
    assert "images.gz" in message and f"expected {wrong}" in message
    assert f"got {hashlib.md5(payload).hexdigest()}" in message
    assert list(tmp_path.iterdir()) == []


def test_truncated_transfer_resumes_with_range(tmp_path, payload):
    dest = tmp_path / "images.gz"
    with FileServer({"images.gz": payload}, faults=["truncate"]) as server:
        download([server.url("images.gz")], dest, md5(payload), **FAST)
    assert dest.read_bytes() == payload
    assert server.requests == [("/images.gz", None), ("/images.gz", f"bytes={len(payload) // 2}-")]


def test_server_without_range_support_restarts_cleanly(tmp_path, payload):
    dest = tmp_path / "images.gz"
    with FileServer({"images.gz": payload}, faults=["truncate"], ranges=False) as server:
        download([server.url("images.gz")], dest, md5(payload), **FAST)
    assert dest.read_bytes() == payload  # the 200 body replaced the partial file, not appended to it
    assert server.requests[1][1] is not None  # it asked to resume and was answered with the whole file


@pytest.mark.parametrize("faults", [["drop", "drop"], ["500", "drop"], ["stall"]])
def test_transient_failures_are_retried(tmp_path, payload, faults):
    dest = tmp_path / "images.gz"
    with FileServer({"images.gz": payload}, faults=faults, stall_s=0.4) as server:
        download([server.url("images.gz")], dest, md5(payload), retries=2, **{**FAST, "timeout": 0.2})
    assert dest.read_bytes() == payload
    assert len(server.requests) == len(faults) + 1


def test_first_mirror_down_second_serves(tmp_path, payload):
    dest = tmp_path / "images.gz"
    with FileServer({"images.gz": payload}) as server:
        download([dead_url(), server.url("images.gz")], dest, md5(payload), retries=1, **FAST)
    assert dest.read_bytes() == payload


def test_missing_file_is_not_retried(tmp_path, payload):
    with FileServer({}) as server, pytest.raises(DataError, match="HTTP 404"):
        download([server.url("images.gz")], tmp_path / "images.gz", md5(payload), retries=3, **FAST)
    assert len(server.requests) == 1


def test_all_mirrors_down_lists_every_url_and_the_hint(tmp_path, payload):
    down = dead_url("images.gz")
    with FileServer({}, faults=["500"] * 3) as server, pytest.raises(DataError) as error:
        urls = [down, server.url("images.gz")]
        download(urls, tmp_path / "images.gz", md5(payload), retries=2, hint="Set local_dir.", **FAST)
    message = str(error.value)
    assert message.startswith("images.gz: no mirror gave a good copy")
    assert f"{down} (" in message and "refused" in message.lower()
    assert f"{server.url('images.gz')} (HTTP 500" in message and "after 3 tries" in message
    assert message.endswith("Set local_dir.")
    assert list(tmp_path.iterdir()) == []


def test_bad_digest_spec_is_rejected():
    with pytest.raises(ValueError, match="ALGORITHM:HEX"):
        digest_check("f68b3c2dcbeaaa9fbdd348bbdeb94873")


def test_tqdm_environment_settings_apply_to_the_download_bar(tmp_path, payload):
    """TQDM_DISABLE=1 turns the bar off. tqdm reads its environment once, when imported: a
    process for each setting."""
    code = "import sys, pathlib; from torchrepro.download.http import download; download(sys.argv[1:2], pathlib.Path(sys.argv[2]))"
    errs = {}
    with FileServer({"images.gz": payload}) as server:
        for name, env in {"shown": {}, "hidden": {"TQDM_DISABLE": "1"}}.items():
            command = [sys.executable, "-c", code, server.url("images.gz"), str(tmp_path / f"{name}.gz")]
            done = subprocess.run(command, env=os.environ | env, capture_output=True, text=True, timeout=60)
            assert done.returncode == 0 and (tmp_path / f"{name}.gz").read_bytes() == payload, done.stderr
            errs[name] = done.stderr
    assert "shown.gz: " in errs["shown"]
    assert errs["hidden"] == ""
