"""Fetch NSD files and the COCO captions over plain HTTP(S): resumable, verified, bounded retries.

Only the standard library speaks HTTP here (:mod:`urllib.request`), so a download rule needs no
cloud SDK and no credentials: NSD's bucket is readable anonymously over HTTPS.

How one file is fetched (:func:`download`)
-----------------------------------------
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

Planning (:func:`plan_downloads`) sizes the needed keys with HEAD requests when the network
answers, else from :data:`TYPICAL_SIZES` (approximate sizes of NSD's files, documented below).
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
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from . import nsd
from .atomic import atomic_path

log = logging.getLogger("brainldm.download")

USER_AGENT = "brainldm-download/0.1 (+python-urllib)"
MIB = 2**20
#: Codes that no retry can fix: stop at once.
FATAL_HTTP = {400: "bad request", 401: "unauthorised", 403: "access denied", 404: "not found",
              405: "method not allowed", 410: "gone", 451: "unavailable for legal reasons"}
#: Codes worth retrying besides 5xx.
RETRY_HTTP = {408, 425, 429}

NSD_TERMS_URL = "https://naturalscenesdataset.org"
NSD_ACCESS_URL = "https://cvnlab.slite.page/p/dC~rBTjqjb/How-to-get-the-data"

#: Typical sizes (bytes) of the NSD files this workflow reads, used to plan a download when no
#: HEAD request can be made (offline, e.g. ``snakemake -n`` on a machine without network).
#: Approximate: betas per session ~1 GB (a 1.8 mm session is X*Y*Z*750 int16 values, ~1.05 GB
#: for subj01's 81x104x83 grid; the .nii.gz is somewhat smaller, the .hdf5 about that size);
#: the stimulus brick is 73000x425x425x3 uint8 = 39.6 GB (36.8 GiB) and is only offered whole;
#: the design, stim-info table, ROI volumes, masks and label tables are (k)B to tens of MB.
#: Entries are (regular expression on the key, bytes, description).
TYPICAL_SIZES: tuple[tuple[str, int, str], ...] = (
    (r"/betas_session\d\d\.nii\.gz$", 1_000_000_000, "single-trial betas, one session (NIfTI)"),
    (r"/betas_session\d\d\.hdf5$", 1_050_000_000, "single-trial betas, one session (HDF5)"),
    (r"/nsd_stimuli\.hdf5$", 73000 * 425 * 425 * 3, "stimulus brick 73000x425x425x3 uint8"),
    (r"/nsd_expdesign\.mat$", 1_000_000, "experimental design"),
    (r"/nsd_stim_info_merged\.csv$", 15_000_000, "stimulus information table"),
    (r"/roi/[^/]+\.nii\.gz$", 300_000, "ROI volume"),
    (r"/brainmask\.nii\.gz$", 100_000, "brain mask"),
    (r"\.ctab$", 2_000, "label table"),
    (r"/transforms/[lr]h\.func1pt8-to-layerB[123]\.mgz$", 2_500_000,
     "surface transform, ~227k vertices x 3 float32 (gzip)"),
    (r"/transforms/[lr]h\.white-to-fsaverage\.mgz$", 400_000, "fsaverage transform, 163,842 indices"),
    (r"annotations_trainval2017\.zip$", 252_907_541, "COCO 2017 annotations archive (241 MiB)"),
)
DEFAULT_TYPICAL_SIZE = 10_000_000


class DownloadError(RuntimeError):
    """A download that failed for good; the message names the file, the URL and what to do."""


class _Retry(Exception):
    """A failure that another attempt may fix (5xx, timeout, reset, short body, bad MD5)."""


class _Mismatch(_Retry):
    """Bytes that do not match the server's ETag: retried once from byte 0, then final."""


# --------------------------------------------------------------------------- helpers


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
    return RemoteInfo(url, _int_header(headers, "Content-Length"), headers.get("ETag"),
                      (headers.get("Accept-Ranges") or "").lower() == "bytes")


def _fatal_message(label: str, url: str, code: int) -> str:
    reason = FATAL_HTTP.get(code, "error")
    hint = {
        404: "check nsd.base_url (or coco.annotations_url) and that this key exists for the "
             "configured subject, session and beta format",
        403: "the server refused access; check the URL (NSD's bucket is readable anonymously "
             "over HTTPS) and any proxy in between",
    }.get(code, "this will not go away by retrying")
    return f"{label}: HTTP {code} ({reason}) from {url}; {hint}"


# --------------------------------------------------------------------------- one file


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


def download(url: str, dest: str | os.PathLike, *, key: str | None = None, attempts: int = 6,
             backoff: float = 2.0, max_backoff: float = 120.0, timeout: float = 60.0,
             chunk_size: int = MIB, reserve_bytes: int = 1024 * MIB,
             large_file_bytes: int = 100 * MIB, overwrite: bool = False, progress: bool = True,
             sleep: Callable[[float], None] = time.sleep) -> DownloadResult:
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
            result = _attempt(url, part, label, timeout=timeout, chunk_size=chunk_size,
                              reserve_bytes=reserve_bytes, large_file_bytes=large_file_bytes,
                              progress=progress)
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
            log.warning("%s: attempt %d/%d failed: %s; retrying in %.1f s",
                        label, attempt, attempts, last_error, wait)
            sleep(wait)
            continue
        os.replace(part, dest)
        log.info("%s: saved %s (%s, verified by %s)", label, dest, format_bytes(result[0]), result[2])
        return DownloadResult(dest, result[0], result[1], result[2], result[3], attempt)
    kept = part.stat().st_size if part.exists() else 0
    resume = (f"; {format_bytes(kept)} are kept in {part} and the next run resumes from there"
              if kept else "")
    raise DownloadError(f"{label}: giving up after {attempts} attempts to fetch {url}: "
                        f"{last_error}{resume}")


def _attempt(url: str, part: Path, label: str, *, timeout: float, chunk_size: int,
             reserve_bytes: int, large_file_bytes: int, progress: bool):
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
            raise _Retry(f"HTTP 416 for a resume at byte {offset} (remote size {total}); "
                         "the partial file was discarded") from None
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
                raise _Retry(f"asked to resume at byte {offset}, server sent from {start}; "
                             "the partial file was discarded")
        else:
            if offset:
                log.warning("%s: the server ignored the Range request (HTTP %d); starting over",
                            label, status)
            offset = 0
            total = length
        remaining = (total - offset) if total is not None else length
        _check_disk_space(part.parent, remaining, total, reserve_bytes, large_file_bytes, label)
        log.info("%s: %s %s from %s", label, "resuming at byte %d of" % offset if offset else "fetching",
                 format_bytes(total), url)
        received = _receive(response, part, offset, total, chunk_size, progress, label)
    if length is not None and received < length:
        raise _Retry(f"short body: {received} of {length} bytes announced")
    return _verify(part, total, etag, label, resumed_from=offset)


def _receive(response, part: Path, offset: int, total: int | None, chunk_size: int,
             progress: bool, label: str) -> int:
    """Append the body to ``part`` (truncated first when ``offset`` is 0); returns bytes read."""
    from tqdm import tqdm

    # read1: one socket read per call, so bytes that arrived before a reset or a stall are
    # written to the .part (read(n) would wait for n bytes and lose them on error).
    read = getattr(response, "read1", response.read)
    received = 0
    next_log = 0.1
    started = time.monotonic()
    with open(part, "ab" if offset else "wb") as out, tqdm(
        total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
        desc=Path(part.name).stem[:40], disable=not progress, file=sys.stderr, leave=False,
    ) as bar:
        while True:
            try:
                chunk = read(chunk_size)
            except http.client.IncompleteRead as error:
                out.write(error.partial)
                raise _Retry(f"connection closed early after {offset + received + len(error.partial)} bytes") from None
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
                log.info("%s: %3.0f%% (%s of %s, %s/s)", label, 100 * (offset + received) / total,
                         format_bytes(offset + received), format_bytes(total), format_bytes(rate))
                next_log = math.floor((offset + received) / total * 10 + 1) / 10
    return received


def _check_disk_space(folder: Path, remaining: int | None, total: int | None, reserve_bytes: int,
                      large_file_bytes: int, label: str) -> None:
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
            log.warning("%s: multipart ETag %s with no inferable part size: only the length is "
                        "verified", label, etag)
        return size, None, "length" if total is not None else "none", resumed_from
    md5, multipart_digests = file_digests(part, part_sizes)
    if expected is not None:
        if md5 != expected:
            part.unlink()
            raise _Mismatch(f"MD5 {md5} differs from the server's ETag {expected}; the file was "
                            "discarded")
        return size, md5, "md5", resumed_from
    if multipart[0] in multipart_digests.values():
        return size, md5, "multipart-md5", resumed_from
    log.warning("%s: multipart ETag %s matches no usual part size %s: only the length is verified",
                label, etag, part_sizes)
    return size, md5, "length", resumed_from


# --------------------------------------------------------------------------- what and how much


def needed_keys(config: dict) -> list[str]:
    """Every NSD key the configured subjects, sessions, beta format and ROIs need.

    The design and stim-info files, the stimulus brick (NSD offers it only whole, ~37 GiB; the
    workflow then reads just the rows it needs), and per subject the betas of every configured
    session, the ROI atlases (and their label tables) of every ROI in ``fmri.rois``,
    ``decoding.z_rois`` and ``decoding.c_rois``, the brain mask, the atlases the encoding
    summary reports by label (``nsd.ENCODING_SUMMARY_ATLASES``), and with ``maps.enabled`` the
    8 surface transforms (``nsd.surface_transform_keys``). Order: shared files first,
    then by subject; no duplicates.
    """
    rois = list(dict.fromkeys([*config["fmri"]["rois"], *config["decoding"]["z_rois"],
                               *config["decoding"]["c_rois"]]))
    sessions = range(config["sessions"]["first"], config["sessions"]["last"] + 1)
    keys = [nsd.expdesign_key(), nsd.stim_info_key(), nsd.stimuli_key()]
    for subject in config["subjects"]:
        keys += nsd.subject_keys(subject, sessions, config["nsd"]["beta_format"], rois)
        keys += [nsd.roi_key(subject, atlas) for atlas in nsd.ENCODING_SUMMARY_ATLASES]
        keys += [nsd.label_table_key(atlas) for atlas in nsd.ENCODING_SUMMARY_ATLASES]
        if config.get("maps", {}).get("enabled", False):
            keys += nsd.surface_transform_keys(subject)
    return list(dict.fromkeys(keys))


def typical_size(key: str) -> tuple[int, str]:
    """``(bytes, description)`` of a key from :data:`TYPICAL_SIZES` (a default if none fits)."""
    for pattern, size, description in TYPICAL_SIZES:
        if re.search(pattern, key):
            return size, description
    return DEFAULT_TYPICAL_SIZE, "other file"


@dataclass(frozen=True)
class PlanEntry:
    """One file of a plan; ``source`` is ``head`` (exact), ``table`` (typical) or ``missing``."""

    key: str
    url: str
    size: int | None
    source: str
    etag: str | None = None
    note: str = ""


@dataclass
class DownloadPlan:
    """Files to fetch, their sizes and where each size came from."""

    entries: list[PlanEntry] = field(default_factory=list)

    @property
    def n_files(self) -> int:
        return len(self.entries)

    @property
    def total_bytes(self) -> int:
        return sum(entry.size or 0 for entry in self.entries)

    @property
    def missing(self) -> list[PlanEntry]:
        return [entry for entry in self.entries if entry.source == "missing"]

    @property
    def exact(self) -> bool:
        return all(entry.source == "head" for entry in self.entries)

    def summary(self) -> str:
        """A few lines: file count, total size, the share of betas and stimuli, the size source."""
        if not self.entries:
            return "download plan: nothing to download"
        sources = {entry.source for entry in self.entries if entry.source != "missing"}
        how = ("sizes from HEAD requests" if sources == {"head"} else
               "sizes are typical values (offline estimate, see brainldm.download.TYPICAL_SIZES)"
               if sources == {"table"} else "sizes from HEAD requests where answered, else typical values")
        lines = [f"download plan: {self.n_files} files, {format_bytes(self.total_bytes)} in total ({how})"]
        groups = {"betas": r"/betas_session", "stimuli": r"nsd_stimuli\.hdf5$"}
        for name, pattern in groups.items():
            chosen = [e for e in self.entries if re.search(pattern, e.key)]
            if chosen:
                lines.append(f"  {name}: {len(chosen)} files, {format_bytes(sum(e.size or 0 for e in chosen))}")
        rest = [e for e in self.entries if not any(re.search(p, e.key) for p in groups.values())]
        if rest:
            lines.append(f"  other: {len(rest)} files, {format_bytes(sum(e.size or 0 for e in rest))}")
        for entry in self.missing:
            lines.append(f"  NOT FOUND: {entry.key} ({entry.url}): {entry.note}")
        return "\n".join(lines)

    def to_tsv(self) -> str:
        rows = ["key\tsize\tsource\tetag\turl"]
        rows += [f"{e.key}\t{'' if e.size is None else e.size}\t{e.source}\t{e.etag or ''}\t{e.url}"
                 for e in self.entries]
        return "\n".join(rows) + "\n"


def plan_downloads(base_url: str, keys: Iterable[str], *, online: bool = True,
                   timeout: float = 10.0, workers: int = 8, show: bool = True) -> DownloadPlan:
    """Size the downloads of ``keys`` under ``base_url`` and print a summary.

    With ``online``, HEAD requests give exact sizes (in parallel); if the first one cannot
    reach the server, every size comes from :data:`TYPICAL_SIZES` instead (one timeout, not one
    per file). Keys the server answers 403/404 for are listed as ``missing``.

    Returns
    -------
    DownloadPlan
    """
    keys = list(keys)

    def offline(key: str, note: str = "") -> PlanEntry:
        size, description = typical_size(key)
        return PlanEntry(key, key_url(base_url, key), size, "table", None, note or description)

    def head(key: str) -> PlanEntry:
        url = key_url(base_url, key)
        try:
            info = remote_info(url, timeout=timeout, label=f"NSD key {key!r}")
        except DownloadError as error:
            return PlanEntry(key, url, None, "missing", None, str(error))
        except (OSError, urllib.error.URLError, http.client.HTTPException) as error:
            return offline(key, f"HEAD failed: {error}")
        if info.size is None:
            return offline(key, "HEAD gave no Content-Length")
        return PlanEntry(key, url, info.size, "head", info.etag)

    entries: list[PlanEntry] = []
    if keys and online:
        first = head(keys[0])
        if first.source == "table":  # the server is unreachable: do not wait once per file
            log.warning("cannot reach %s (%s); planning with typical sizes", base_url, first.note)
            entries = [first] + [offline(key) for key in keys[1:]]
        else:
            with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
                entries = [first] + list(pool.map(head, keys[1:]))
    else:
        entries = [offline(key) for key in keys]
    plan = DownloadPlan(entries)
    if show:
        for line in plan.summary().splitlines():
            log.info("%s", line)
    return plan


# --------------------------------------------------------------------------- NSD and COCO


def terms_message(n_files: int | None = None) -> str:
    """Why a run stops when NSD files must be downloaded but the terms were not acknowledged."""
    what = f"{n_files} NSD files" if n_files is not None else "NSD files"
    return (
        f"This run would download {what}, but nsd.accept_terms is false. NSD may only be used "
        "by people who agreed to its Terms and Conditions and submitted its data access form: "
        f"read both at {NSD_TERMS_URL} (download instructions: {NSD_ACCESS_URL}). Once you have, "
        "set `nsd: {accept_terms: true}` in your config (or pass --config "
        "'nsd={accept_terms: true}' ...), or point nsd.root at a local NSD copy. "
        "Nothing was downloaded."
    )


def download_nsd_key(base_url: str, key: str, dest: str | os.PathLike, *, accept_terms: bool,
                     **options) -> DownloadResult:
    """Download NSD ``key`` from ``base_url`` to ``dest`` (see :func:`download` for options).

    Raises
    ------
    DownloadError
        Before any request when ``accept_terms`` is false; otherwise as :func:`download`.
    """
    if not accept_terms:
        raise DownloadError(terms_message(1))
    return download(key_url(base_url, key), dest, key=key, **options)


def extract_coco_captions(archive: str | os.PathLike, coco_root: str | os.PathLike) -> list[Path]:
    """Extract only ``annotations/captions_{train,val}2017.json`` from the COCO annotations zip.

    Each file is written through :func:`brainldm.atomic.atomic_path`; zip CRCs are checked while
    reading.

    Returns
    -------
    list of Path
        The two JSON files, in :data:`brainldm.nsd.COCO_CAPTION_FILES` order.
    """
    archive, coco_root = Path(archive), Path(coco_root)
    written = []
    try:
        with zipfile.ZipFile(archive) as handle:
            names = handle.namelist()
            for relative in nsd.COCO_CAPTION_FILES:
                basename = Path(relative).name
                members = [n for n in names if n == relative or n.endswith("/" + basename) or n == basename]
                if not members:
                    raise DownloadError(
                        f"{archive}: no {basename} inside; expected COCO's "
                        "annotations_trainval2017.zip (check coco.annotations_url)"
                    )
                target = coco_root / relative
                with atomic_path(target) as tmp, handle.open(members[0]) as source, open(tmp, "wb") as out:
                    shutil.copyfileobj(source, out, MIB)
                written.append(target)
    except zipfile.BadZipFile as error:
        raise DownloadError(f"{archive}: not a valid zip archive ({error}); delete it and rerun") from None
    return written


def download_coco_captions(url: str, coco_root: str | os.PathLike, *, keep_archive: bool = False,
                           **options) -> list[Path]:
    """Fetch COCO's annotations archive (resumable, as :func:`download`), keep the two caption files.

    The archive is stored as ``<coco_root>/<archive name>`` while needed and removed after a
    successful extraction unless ``keep_archive``.
    """
    coco_root = Path(coco_root)
    name = Path(urllib.parse.urlparse(url).path).name or "annotations_trainval2017.zip"
    archive = coco_root / name
    download(url, archive, key=None, **options)
    try:
        written = extract_coco_captions(archive, coco_root)
    except DownloadError:
        archive.unlink(missing_ok=True)  # a corrupt archive must not be reused by the rerun
        raise
    if not keep_archive:
        archive.unlink()
    log.info("COCO captions: %s", ", ".join(str(p) for p in written))
    return written
