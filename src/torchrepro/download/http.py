"""A careful downloader: mirrors, retries with backoff, resume, digest check, atomic result.

Standard library only (plus tqdm for the progress bar), so the download stage
starts fast and needs nothing a bare Python lacks.
"""

from __future__ import annotations

import hashlib
import http.client
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from torchrepro.core.errors import DataError
from torchrepro.core.io import atomic_path, file_digest

# A check returns None when the file is good, else what is wrong ("expected ..., got ...").
Check = Callable[[Path], str | None]

CHUNK_BYTES = 1 << 16
USER_AGENT = "torchrepro-fetch/1 (python urllib)"  # some hosts refuse urllib's default agent


def digest_check(spec: str) -> Check:
    """A Check from "ALGORITHM:HEX" (e.g. "sha256:ab12..."), comparing the file's own bytes."""
    algorithm, _, expected = spec.partition(":")
    if algorithm not in hashlib.algorithms_available or not expected:
        raise ValueError(f"digest spec {spec!r}: expected 'ALGORITHM:HEX' such as 'sha256:ab12...' or 'md5:...'")

    def check(path: Path) -> str | None:
        actual = file_digest(path, algorithm=algorithm)
        if actual != expected.lower():
            return f"{algorithm.upper()} mismatch: expected {expected.lower()}, got {actual}"
        return None

    return check


def download(
    urls: list[str],
    dest: Path,
    verify: Check | str | None = None,
    *,
    timeout: float = 30.0,
    retries: int = 3,
    backoff: float = 1.0,
    hint: str = "",
    progress: bool = True,
) -> None:
    """Download the first URL that works into `dest`, verified, or raise one DataError.

    Mirrors are tried in order. On each, a dropped connection, timeout or 5xx is
    retried `retries` times, sleeping backoff * 2**attempt seconds between tries
    and resuming with an HTTP Range request. `verify` is a Check or an
    "ALGORITHM:HEX" digest. `dest` appears only once the file is complete and
    verified. If every mirror fails, the error lists each URL with its reason,
    then `hint` (say, how to supply the file another way).
    """
    dest = Path(dest)
    check = digest_check(verify) if isinstance(verify, str) else verify
    failures: list[str] = []
    with atomic_path(dest) as tmp:  # renamed onto dest only if the block succeeds
        for url in urls:
            try:
                _fetch_with_retries(url, tmp, dest.name, timeout, retries, backoff, progress)
                _verify(tmp, check)
                return
            except DataError as error:
                failures.append(f"{url} ({error})")
        tried = "; ".join(failures) or "no URLs were given"
        raise DataError(f"{dest.name}: no mirror gave a good copy; tried: {tried}." + (f" {hint}" if hint else ""))


def _verify(tmp: Path, check: Check | None) -> None:
    problem = check(tmp) if check else None
    if problem:
        raise DataError(f"downloaded, but {problem}")


def _fetch_with_retries(
    url: str, tmp: Path, label: str, timeout: float, retries: int, backoff: float, progress: bool
) -> None:
    """Download `url` into `tmp`, resuming after transient errors; DataError once it gives up."""
    tmp.write_bytes(b"")  # each mirror starts from nothing; its bytes may differ from the last one's
    for attempt in range(retries + 1):
        try:
            _transfer(url, tmp, label, timeout, progress)
            return
        except (OSError, http.client.HTTPException) as error:  # URLError and HTTPError are OSErrors
            if not _is_transient(error) or attempt == retries:
                tries = f", after {attempt + 1} tries" if attempt else ""
                raise DataError(_reason(error) + tries) from None
            time.sleep(backoff * 2**attempt)


def _transfer(url: str, tmp: Path, label: str, timeout: float, progress: bool) -> None:
    """One HTTP request: resume from tmp's size if the server honours Range, else start over."""
    have = tmp.stat().st_size
    headers = {"User-Agent": USER_AGENT} | ({"Range": f"bytes={have}-"} if have else {})
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416:  # our partial file is not a prefix of theirs (it changed): start over
            tmp.write_bytes(b"")
        raise
    with response:
        have = _resume_offset(response, have)
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        with open(tmp, "ab" if have else "wb") as out, _progress_bar(label, total, have, progress) as bar:
            while chunk := response.read(CHUNK_BYTES):
                out.write(chunk)
                bar.update(len(chunk))
    got = tmp.stat().st_size
    if total is not None and got != total:
        # http.client returns a short body silently; treat it as a dropped connection.
        raise ConnectionError(f"connection closed after {got} of {total} bytes")


def _resume_offset(response, have: int) -> int:
    """Where this response's body starts in the file: `have` for a matching 206, else 0."""
    if have == 0 or response.status != 206:
        return 0  # a 200 is the whole file: the server ignored Range, so start over
    content_range = response.headers.get("Content-Range", "")
    if not content_range.startswith(f"bytes {have}-"):
        raise ConnectionError(f"server answered Range bytes={have}- with Content-Range {content_range!r}")
    return have


def _progress_bar(label: str, total: int | None, initial: int, enabled: bool) -> tqdm:
    # disable= only to turn the bar off: an explicit disable=False would override TQDM_DISABLE.
    quiet = {} if enabled else {"disable": True}
    return tqdm(
        total=total,
        initial=initial,
        desc=label,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=sys.stderr,
        leave=False,
        **quiet,
    )


def _is_transient(error: Exception) -> bool:
    """Whether waiting and trying again could help."""
    if isinstance(error, urllib.error.HTTPError):
        return error.code in (408, 416, 429) or error.code >= 500
    if isinstance(error, urllib.error.URLError):
        return not isinstance(error.reason, socket.gaierror)  # an unknown host stays unknown
    return True  # resets, timeouts, short bodies


def _reason(error: Exception) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        return str(error.reason)
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
