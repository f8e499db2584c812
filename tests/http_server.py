"""A tiny HTTP file server on 127.0.0.1 for download tests, with scripted faults.

Each request takes the next fault from `faults` (none once the list is empty):
  "drop"     close the connection without answering
  "truncate" announce the full length, send half the body, close
  "stall"    wait `stall_s` seconds before answering (to trip a client timeout)
  "500"      answer 500 Internal Server Error
Range requests get 206 with the rest of the file, unless `ranges=False`.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FileServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, files: dict[str, bytes], *, faults=(), ranges: bool = True, stall_s: float = 0.5):
        super().__init__(("127.0.0.1", 0), _Handler)  # port 0: the OS picks a free one
        self.files = dict(files)
        self.faults = list(faults)
        self.ranges = ranges
        self.stall_s = stall_s
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header) in arrival order
        self._lock = threading.Lock()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_port}/{path}"

    def next_fault(self, path: str, range_header: str | None) -> str | None:
        with self._lock:
            self.requests.append((path, range_header))
            return self.faults.pop(0) if self.faults else None

    def __enter__(self) -> FileServer:
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    server: FileServer

    def do_GET(self) -> None:
        fault = self.server.next_fault(self.path, self.headers.get("Range"))
        if fault == "drop":
            return  # closing without a status line: the client sees RemoteDisconnected
        if fault == "stall":
            time.sleep(self.server.stall_s)
        body = self.server.files.get(self.path.lstrip("/"))
        if fault == "500" or body is None:
            self.send_error(500 if fault == "500" else 404)
            return
        start = self._range_start() if self.server.ranges else None
        part = body[start or 0 :]
        self.send_response(206 if start is not None else 200)
        if start is not None:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(part)))
        self.end_headers()
        self.wfile.write(part[: len(part) // 2] if fault == "truncate" else part)

    def _range_start(self) -> int | None:
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        return int(match.group(1)) if match else None

    def log_message(self, format, *args) -> None:  # keep test output quiet
        pass


def dead_url(path: str = "file.gz") -> str:
    """A URL on a local port nothing listens on: connecting is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/{path}"
