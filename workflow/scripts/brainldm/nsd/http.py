"""One file over plain HTTP(S): resumable, verified, with bounded retries.

Only the standard library speaks HTTP here (:mod:`urllib.request`), so a download rule needs no
cloud SDK and no credentials: NSD's bucket is readable anonymously over HTTPS.

How :func:`download` fetches a file:

- Bytes go to a temporary sibling ``<dest>.part``; ``dest`` appears (by rename) only once the
  file is complete and verified, so a later stage never sees a partial or corrupt file.
- A ``.part`` left by an interrupted run (or an earlier attempt) is resumed with an HTTP
  ``Range: bytes=<size>-`` request; a server that ignores ``Range`` (answers 200) is handled by
  starting over.
- The length is checked against ``Content-Length`` / ``Content-Range``; the MD5 is checked when
  the server's ETag is a plain MD5 (32 hex digits, as S3 gives for single-part uploads). S3's
  multipart ETags (``<md5 of part md5s>-<n parts>``) are checked too when the part size can be
  inferred (the usual 8 MiB or ``ceil(size / n)`` rounded up to a MiB); otherwise only the length
  is verified and the log says so.
- 5xx, 408, 429, timeouts, connection resets and short bodies are retried with exponential
  backoff (``backoff * 2**k`` seconds, capped), at most ``attempts`` times. An MD5 mismatch
  discards the ``.part`` (its bytes cannot be trusted) and is retried once, from byte 0; a second
  mismatch, on that fresh full download, is final (the server's file and ETag disagree, and
  fetching it again would only repeat that). 401/403/404/410 stop at once with a message naming
  the key and the URL. These are the only retries: the download rules set ``retries: 0``, so
  Snakemake does not rerun a job that failed for good.
- Free disk space is checked before the body is read (remaining bytes, plus a reserve for large
  files).
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import math
import os
import re
import shutil
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

log = logging.getLogger("brainldm.nsd.http")

USER_AGENT = "brainldm-download/0.1 (+python-urllib)"
MIB = 2**20
#: Codes that no retry can fix: stop at once.
FATAL_HTTP = {
    400: "bad request",
    401: "unauthorised",
    403: "access denied",
    404: "not found",
    405: "method not allowed",
    410: "gone",
    451: "unavailable for legal reasons",
}
#: Codes worth retrying besides 5xx.
RETRY_HTTP = {408, 425, 429}


class DownloadError(RuntimeError):
    """A download that failed for good; the message names the file, the URL and what to do."""


class _Retry(Exception):
    """A failure that another attempt may fix (5xx, timeout, reset, short body, bad MD5)."""


class _Mismatch(_Retry):
    """Bytes that do not match the server's ETag: retried once from byte 0, then final."""


def key_url(base_url: str, key: str) -> str:
    """URL of NSD ``key`` under ``base_url`` (path segments percent-encoded)."""
    return base_url.rstrip("/") + "/" + urllib.parse.quote(key.lstrip("/"), safe="/")


def format_bytes(n: float | None) -> str:
    """``1.2 GB``-style decimal size; ``?`` when unknown."""
    if n is None:
        return "?"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


def plain_md5_etag(etag: str | None) -> str | None:
    """The MD5 hex digest an ETag stands for, or None (weak, multipart or not an MD5)."""
    if not etag:
        return None
    value = etag.strip()
    if value.startswith("W/"):
        return None
    value = value.strip('"').lower()
    return value if re.fullmatch(r"[0-9a-f]{32}", value) else None


def multipart_etag(etag: str | None) -> tuple[str, int] | None:
    """``(md5 of part md5s, n_parts)`` of an S3 multipart ETag, or None."""
    if not etag:
        return None
    match = re.fullmatch(r'"?([0-9a-fA-F]{32})-(\d+)"?', etag.strip())
    return (match[1].lower(), int(match[2])) if match else None


def _candidate_part_sizes(size: int, n_parts: int) -> list[int]:
    """Part sizes an uploader may have used to cut ``size`` bytes into ``n_parts`` parts."""
    candidates = []
    for part in (8 * MIB, 16 * MIB, math.ceil(size / n_parts / MIB) * MIB, math.ceil(size / n_parts)):
        if part > 0 and math.ceil(size / part) == n_parts and part not in candidates:
            candidates.append(part)
    return candidates


def file_digests(path: Path, part_sizes: Sequence[int] = (), block: int = MIB) -> tuple[str, dict[int, str]]:
    """MD5 of a file and, for each part size, the S3 multipart ETag digest, in one pass.

    Returns
    -------
    md5 : str
        Hex digest of the whole file.
    multipart : dict[int, str]
        ``{part_size: hex md5 of the concatenated part md5 digests}``.
    """
    whole = hashlib.md5()
    state = {p: {"done": [], "current": hashlib.md5(), "filled": 0} for p in part_sizes}
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            whole.update(chunk)
            for part_size, s in state.items():
                view = memoryview(chunk)
                while view:
                    take = min(len(view), part_size - s["filled"])
                    s["current"].update(view[:take])
                    s["filled"] += take
                    view = view[take:]
                    if s["filled"] == part_size:
                        s["done"].append(s["current"].digest())
                        s["current"], s["filled"] = hashlib.md5(), 0
    multipart = {}
    for part_size, s in state.items():
        digests = s["done"] + ([s["current"].digest()] if s["filled"] else [])
        multipart[part_size] = hashlib.md5(b"".join(digests)).hexdigest()
    return whole.hexdigest(), multipart


def _content_range(value: str | None) -> tuple[int | None, int | None, int | None]:
    """``bytes a-b/n`` -> (a, b, n); ``bytes */n`` -> (None, None, n); missing parts None."""
    match = re.fullmatch(r"\s*bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)\s*", value or "")
    if not match:
        return None, None, None
    start = int(match[1]) if match[1] else None
    end = int(match[2]) if match[2] else None
    total = int(match[3]) if match[3] != "*" else None
    return start, end, total


def _int_header(headers, name: str) -> int | None:
    value = headers.get(name) if headers is not None else None
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


@dataclass(frozen=True)
class RemoteInfo:
    """What a HEAD request tells about a file."""

    url: str
    size: int | None
    etag: str | None
    accept_ranges: bool


def remote_info(url: str, *, timeout: float = 30.0, label: str | None = None) -> RemoteInfo:
    """HEAD ``url``.

    Raises
    ------
    DownloadError
        On 401/403/404/410 (the message names ``label`` and the URL).
    OSError, urllib.error.URLError, http.client.HTTPException
        When the server cannot be reached or answers with another error.
    """
    request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            headers = response.headers
    except urllib.error.HTTPError as error:
        error.close()
        if error.code in FATAL_HTTP:
            raise DownloadError(_fatal_message(label or url, url, error.code)) from None
        raise
    return RemoteInfo(
        url,
        _int_header(headers, "Content-Length"),
        headers.get("ETag"),
        (headers.get("Accept-Ranges") or "").lower() == "bytes",
    )


def _fatal_message(label: str, url: str, code: int) -> str:
    reason = FATAL_HTTP.get(code, "error")
    hint = {
        404: "check nsd.base_url (or coco.annotations_url) and that this key exists for the "
        "configured subject, session and beta format",
        403: "the server refused access; check the URL (NSD's bucket is readable anonymously "
        "over HTTPS) and any proxy in between",
    }.get(code, "this will not go away by retrying")
    return f"{label}: HTTP {code} ({reason}) from {url}; {hint}"


@dataclass(frozen=True)
class DownloadResult:
    """Outcome of :func:`download`.

    ``verified`` is ``"md5"``, ``"multipart-md5"``, ``"length"`` or ``"none"`` (no length was
    announced); ``resumed_from`` is the size of the ``.part`` the final attempt started from.
    """

    path: Path
    size: int
    md5: str | None
    verified: str
    resumed_from: int
    attempts: int
    skipped: bool = False


def part_path(dest: str | os.PathLike) -> Path:
    """The temporary sibling a download writes into: ``<dest name>.part``."""
    dest = Path(dest)
    return dest.with_name(dest.name + ".part")


def download(
    url: str,
    dest: str | os.PathLike,
    *,
    key: str | None = None,
    attempts: int = 6,
    backoff: float = 2.0,
    max_backoff: float = 120.0,
    timeout: float = 60.0,
    chunk_size: int = MIB,
    reserve_bytes: int = 1024 * MIB,
    large_file_bytes: int = 100 * MIB,
    overwrite: bool = False,
    progress: bool = True,
    sleep: Callable[[float], None] = time.sleep,
) -> DownloadResult:
    """Download ``url`` to ``dest``: resumable, verified, retried; ``dest`` only ever complete.

    Parameters
    ----------
    url : str
        ``http(s)://`` or ``file://`` URL.
    dest : path
        Final path. Bytes are written to ``<dest>.part`` first and renamed once verified.
    key : str, optional
        Name used in messages (an NSD key); defaults to the URL.
    attempts : int
        Requests tried at most before giving up on retryable failures (>= 1).
    backoff, max_backoff : float
        Wait ``min(backoff * 2**(k-1), max_backoff)`` seconds after the k-th failed attempt.
    timeout : float
        Seconds without any byte (connect or read) after which an attempt is abandoned.
    chunk_size : int
        Bytes read per call.
    reserve_bytes, large_file_bytes : int
        Before reading the body, the free space at ``dest`` must cover the remaining bytes, plus
        ``reserve_bytes`` when the file is at least ``large_file_bytes``.
    overwrite : bool
        Fetch again even if ``dest`` exists (otherwise it is kept as is).
    progress : bool
        Show a tqdm bar on stderr (progress is logged every 10 % regardless).
    sleep : callable
        Used to wait between attempts (tests pass a no-op).

    Returns
    -------
    DownloadResult

    Raises
    ------
    DownloadError
        On a fatal HTTP status (401/403/404/410, ...), too little disk space, or when every
        attempt failed. ``dest`` does not exist afterwards; a ``.part`` with good bytes is kept
        so that the next call resumes from it.
    """
    if attempts < 1:
        raise ValueError(f"attempts={attempts}: expected >= 1")
    dest = Path(dest)
    label = f"NSD key {key!r}" if key else url
    if dest.exists() and not overwrite:
        log.info("%s: %s already present, not downloaded again", label, dest)
        return DownloadResult(dest, dest.stat().st_size, None, "none", 0, 0, skipped=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)
    last_error = "no attempt made"
    mismatches = 0
    for attempt in range(1, attempts + 1):
        try:
            result = _attempt(
                url,
                part,
                label,
                timeout=timeout,
                chunk_size=chunk_size,
                reserve_bytes=reserve_bytes,
                large_file_bytes=large_file_bytes,
                progress=progress,
            )
        except _Retry as error:
            last_error = str(error)
            if isinstance(error, _Mismatch):
                mismatches += 1
                if mismatches == 2:  # the .part was discarded, so this was a fresh full GET
                    raise DownloadError(
                        f"{label}: {last_error}, for the second time, on a fresh full download "
                        f"of {url}: the server's file does not match its ETag; not retried "
                        "(check nsd.base_url, or try later if the file is being replaced)"
                    ) from None
            if attempt == attempts:
                break
            wait = min(backoff * 2 ** (attempt - 1), max_backoff)
            log.warning(
                "%s: attempt %d/%d failed: %s; retrying in %.1f s", label, attempt, attempts, last_error, wait
            )
            sleep(wait)
            continue
        os.replace(part, dest)
        log.info("%s: saved %s (%s, verified by %s)", label, dest, format_bytes(result[0]), result[2])
        return DownloadResult(dest, result[0], result[1], result[2], result[3], attempt)
    kept = part.stat().st_size if part.exists() else 0
    resume = f"; {format_bytes(kept)} are kept in {part} and the next run resumes from there" if kept else ""
    raise DownloadError(f"{label}: giving up after {attempts} attempts to fetch {url}: {last_error}{resume}")


def _attempt(
    url: str,
    part: Path,
    label: str,
    *,
    timeout: float,
    chunk_size: int,
    reserve_bytes: int,
    large_file_bytes: int,
    progress: bool,
):
    """One request: append to ``part`` and verify. Returns (size, md5, verified, resumed_from)."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        error.close()
        if error.code == 416 and offset:
            total = _content_range(error.headers.get("Content-Range"))[2]
            if total == offset:  # the .part is already complete (killed before the rename)
                log.info("%s: %s already holds all %d bytes", label, part, total)
                etag = _etag_by_head(url, timeout, label)
                return _verify(part, total, etag, label, resumed_from=offset)
            part.unlink()
            raise _Retry(
                f"HTTP 416 for a resume at byte {offset} (remote size {total}); "
                "the partial file was discarded"
            ) from None
        if error.code in FATAL_HTTP:
            raise DownloadError(_fatal_message(label, url, error.code)) from None
        if error.code >= 500 or error.code in RETRY_HTTP:
            raise _Retry(f"HTTP {error.code} {error.reason}") from None
        raise DownloadError(f"{label}: unexpected HTTP {error.code} {error.reason} from {url}") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
        reason = getattr(error, "reason", error)
        if isinstance(reason, FileNotFoundError):  # a file:// URL naming no file
            raise DownloadError(_fatal_message(label, url, 404)) from None
        raise _Retry(f"cannot connect: {reason}") from None

    with response:
        status = getattr(response, "status", None) or 200  # file:// answers carry no status
        etag = response.headers.get("ETag")
        length = _int_header(response.headers, "Content-Length")
        if status == 206:
            start, _, total = _content_range(response.headers.get("Content-Range"))
            if start != offset:
                part.unlink()
                raise _Retry(
                    f"asked to resume at byte {offset}, server sent from {start}; "
                    "the partial file was discarded"
                )
        else:
            if offset:
                log.warning(
                    "%s: the server ignored the Range request (HTTP %d); starting over", label, status
                )
            offset = 0
            total = length
        remaining = (total - offset) if total is not None else length
        _check_disk_space(part.parent, remaining, total, reserve_bytes, large_file_bytes, label)
        log.info(
            "%s: %s %s from %s",
            label,
            "resuming at byte %d of" % offset if offset else "fetching",
            format_bytes(total),
            url,
        )
        received = _receive(response, part, offset, total, chunk_size, progress, label)
    if length is not None and received < length:
        raise _Retry(f"short body: {received} of {length} bytes announced")
    return _verify(part, total, etag, label, resumed_from=offset)


def _receive(
    response, part: Path, offset: int, total: int | None, chunk_size: int, progress: bool, label: str
) -> int:
    """Append the body to ``part`` (truncated first when ``offset`` is 0); returns bytes read."""
    from tqdm import tqdm

    # read1: one socket read per call, so bytes that arrived before a reset or a stall are
    # written to the .part (read(n) would wait for n bytes and lose them on error).
    read = getattr(response, "read1", response.read)
    received = 0
    next_log = 0.1
    started = time.monotonic()
    with (
        open(part, "ab" if offset else "wb") as out,
        tqdm(
            total=total,
            initial=offset,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=Path(part.name).stem[:40],
            disable=not progress,
            file=sys.stderr,
            leave=False,
        ) as bar,
    ):
        while True:
            try:
                chunk = read(chunk_size)
            except http.client.IncompleteRead as error:
                out.write(error.partial)
                raise _Retry(
                    f"connection closed early after {offset + received + len(error.partial)} bytes"
                ) from None
            except (TimeoutError, OSError, http.client.HTTPException) as error:
                if isinstance(error, OSError) and error.errno == 28:  # ENOSPC is not transient
                    raise DownloadError(f"{label}: disk full while writing {part}") from None
                kind = "timed out" if isinstance(error, TimeoutError) else f"connection error ({error!r})"
                raise _Retry(f"{kind} after {offset + received} bytes") from None
            if not chunk:
                break
            out.write(chunk)
            received += len(chunk)
            bar.update(len(chunk))
            if total and (offset + received) / total >= next_log:
                rate = received / max(time.monotonic() - started, 1e-6)
                log.info(
                    "%s: %3.0f%% (%s of %s, %s/s)",
                    label,
                    100 * (offset + received) / total,
                    format_bytes(offset + received),
                    format_bytes(total),
                    format_bytes(rate),
                )
                next_log = math.floor((offset + received) / total * 10 + 1) / 10
    return received


def _check_disk_space(
    folder: Path,
    remaining: int | None,
    total: int | None,
    reserve_bytes: int,
    large_file_bytes: int,
    label: str,
) -> None:
    if not remaining:
        return
    needed = remaining + (reserve_bytes if (total or remaining) >= large_file_bytes else 0)
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise DownloadError(
            f"{label}: needs {format_bytes(needed)} free in {folder} ({format_bytes(remaining)} "
            f"to fetch plus a reserve), only {format_bytes(free)} are free; free some space or "
            "point nsd.root at a copy on a larger disk"
        )


def _etag_by_head(url: str, timeout: float, label: str) -> str | None:
    try:
        return remote_info(url, timeout=timeout, label=label).etag
    except (OSError, urllib.error.URLError, http.client.HTTPException):
        return None


def _verify(part: Path, total: int | None, etag: str | None, label: str, *, resumed_from: int):
    size = part.stat().st_size
    if total is not None and size != total:
        if size > total:
            part.unlink()
            raise _Retry(f"{size} bytes received but the file has {total}; the partial file was discarded")
        raise _Retry(f"short body: {size} of {total} bytes")
    expected = plain_md5_etag(etag)
    multipart = multipart_etag(etag)
    part_sizes = _candidate_part_sizes(size, multipart[1]) if multipart else []
    if expected is None and not part_sizes:
        if multipart:
            log.warning(
                "%s: multipart ETag %s with no inferable part size: only the length is verified", label, etag
            )
        return size, None, "length" if total is not None else "none", resumed_from
    md5, multipart_digests = file_digests(part, part_sizes)
    if expected is not None:
        if md5 != expected:
            part.unlink()
            raise _Mismatch(f"MD5 {md5} differs from the server's ETag {expected}; the file was discarded")
        return size, md5, "md5", resumed_from
    if multipart[0] in multipart_digests.values():
        return size, md5, "multipart-md5", resumed_from
    log.warning(
        "%s: multipart ETag %s matches no usual part size %s: only the length is verified",
        label,
        etag,
        part_sizes,
    )
    return size, md5, "length", resumed_from
