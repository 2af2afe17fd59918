"""Downloads: a loopback HTTP server serves the toy NSD tree, with faults on demand.

Every fault mode either recovers with a byte-identical file or fails with a clear message and no
file at the final path; a rerun after a failure resumes (Range sent, earlier bytes not re-sent).
Through Snakemake's command line: the terms gate (no request made), the paper's dry run (every
input planned, no network) and an end-to-end run that downloads a toy tree and prepares its fMRI
exactly as the run on the local copy does.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import re
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from conftest import merged_config

from brainldm.core.config import validate_config
from brainldm.nsd import download as dl
from brainldm.nsd import http as http_dl
from brainldm.nsd import layout as nsd
from brainldm.toy.world import ToyParams, write_toy_world

REPO = Path(__file__).resolve().parents[1]
BETAS_KEY = nsd.betas_key(1, 1, "nifti")
COCO_ZIP = "coco/annotations_trainval2017.zip"


# --------------------------------------------------------------------------- the server


class FaultyServer:
    """Serves files of ``root`` (and ``extra`` {url path: bytes}) like S3: ETag = MD5, Range.

    ``faults[path]`` is a list of modes used by successive requests of that path (then normal):
    ``drop:K`` (send K body bytes, then reset the connection), ``short:K`` (a body K bytes
    shorter than its Content-Length, then close), ``503``, ``404``, ``403``, ``etag`` (a wrong
    MD5 ETag), ``slow`` (stall ``slow_seconds`` before the body), ``norange`` (ignore Range).
    Faults apply to GET requests only. ``etags[path]`` overrides the ETag of every answer.
    ``requests`` records each request.
    """

    def __init__(self, root: Path | None = None, extra: dict[str, bytes] | None = None):
        self.root = root
        self.extra = dict(extra or {})
        self.faults: dict[str, list[str]] = {}
        self.etags: dict[str, str] = {}
        self.requests: list[dict] = []
        self.slow_seconds = 1.0
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep pytest's output clean
                pass

            def do_GET(self):
                owner._serve(self, head=False)

            def do_HEAD(self):
                owner._serve(self, head=True)

            def do_CONNECT(self):  # a proxied HTTPS request: record it, refuse it
                owner._record(self, "CONNECT", self.path)
                self.send_response(502)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def reset(self):
        with self.lock:
            self.faults.clear()
            self.etags.clear()
            self.requests.clear()

    def content(self, path: str) -> bytes | None:
        if path in self.extra:
            return self.extra[path]
        if self.root is not None:
            file = self.root / path
            if file.is_file():
                return file.read_bytes()
        return None

    def _record(self, handler, method, path) -> dict:
        record = {
            "method": method,
            "path": path,
            "range": handler.headers.get("Range"),
            "status": None,
            "sent": 0,
        }
        with self.lock:
            self.requests.append(record)
        return record

    def _serve(self, handler, head: bool):
        path = urllib.parse.unquote(urllib.parse.urlparse(handler.path).path).lstrip("/")
        record = self._record(handler, "HEAD" if head else "GET", path)
        with self.lock:
            queue = self.faults.get(path, []) if not head else []  # faults hit GETs only
            fault = queue.pop(0) if queue else None
        data = self.content(path)

        def empty(status, extra_headers=()):
            record["status"] = status
            handler.send_response(status)
            for name, value in extra_headers:
                handler.send_header(name, value)
            handler.send_header("Content-Length", "0")
            handler.end_headers()

        if fault in ("404", "403", "503") or data is None:
            return empty(int(fault) if fault else 404)
        etag = self.etags.get(path, f'"{hashlib.md5(data).hexdigest()}"')
        if fault == "etag":
            etag = f'"{hashlib.md5(b"something else").hexdigest()}"'
        start, status = 0, 200
        match = re.fullmatch(r"bytes=(\d+)-", handler.headers.get("Range") or "")
        if match and fault != "norange":
            start = int(match[1])
            if start >= len(data):
                return empty(416, [("Content-Range", f"bytes */{len(data)}")])
            status = 206
        body = data[start:]
        record["status"] = status
        handler.send_response(status)
        handler.send_header("Content-Type", "application/octet-stream")
        handler.send_header("Content-Length", str(len(body)))
        handler.send_header("ETag", etag)
        handler.send_header("Accept-Ranges", "bytes")
        if status == 206:
            handler.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        handler.end_headers()
        if head:
            return
        try:
            if fault == "slow":
                time.sleep(self.slow_seconds)
            if fault and fault.startswith(("drop:", "short:")):
                kind, k = fault.split(":")
                part = body[: int(k)] if kind == "drop" else body[: len(body) - int(k)]
                record["sent"] = len(part)  # recorded first: the client may finish before we return
                handler.wfile.write(part)
                handler.wfile.flush()
                handler.close_connection = True
                if kind == "drop":  # let the client read, then reset (RST, not FIN)
                    time.sleep(0.2)
                    handler.connection.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                    handler.connection.close()
                return
            record["sent"] = len(body)
            handler.wfile.write(body)
        except OSError:  # the client went away (e.g. after its timeout)
            handler.close_connection = True

    def gets(self, path: str | None = None) -> list[dict]:
        return [r for r in self.requests if r["method"] == "GET" and (path is None or r["path"] == path)]


@pytest.fixture(scope="module")
def server(toy_world):
    srv = FaultyServer(toy_world["nsd_root"])
    yield srv
    srv.close()


@pytest.fixture
def fresh(server):
    server.reset()
    return server


FAST = dict(backoff=0.0, timeout=2.0, progress=False, chunk_size=64 * 1024, reserve_bytes=0)


def fetch(server, tmp_path, key=BETAS_KEY, **options):
    return http_dl.download(
        http_dl.key_url(server.url, key), tmp_path / "out" / Path(key).name, key=key, **{**FAST, **options}
    )


def truth(toy_world, key=BETAS_KEY) -> bytes:
    return (toy_world["nsd_root"] / key).read_bytes()


# --------------------------------------------------------------------------- one file, faults


def test_clean_download_is_identical_and_md5_verified(fresh, toy_world, tmp_path):
    result = fetch(fresh, tmp_path)
    assert result.path.read_bytes() == truth(toy_world)
    assert (result.verified, result.attempts, result.resumed_from) == ("md5", 1, 0)
    assert result.md5 == hashlib.md5(truth(toy_world)).hexdigest()
    assert [r["range"] for r in fresh.gets()] == [None]
    assert not http_dl.part_path(result.path).exists()


def test_dropped_connection_resumes_with_range_in_the_same_call(fresh, toy_world, tmp_path):
    data = truth(toy_world)
    assert len(data) > 300_000
    fresh.faults[BETAS_KEY] = ["drop:200000"]
    result = fetch(fresh, tmp_path, attempts=3)
    assert result.path.read_bytes() == data
    first, second = fresh.gets()
    kept = int(second["range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < kept <= 200_000
    assert second["status"] == 206 and second["sent"] == len(data) - kept
    assert result.resumed_from == kept and result.attempts == 2


def test_rerun_after_a_failure_resumes_instead_of_starting_over(fresh, toy_world, tmp_path):
    data = truth(toy_world)
    fresh.faults[BETAS_KEY] = ["drop:150000"]
    with pytest.raises(http_dl.DownloadError) as error:
        fetch(fresh, tmp_path, attempts=1)
    dest = tmp_path / "out" / Path(BETAS_KEY).name
    part = http_dl.part_path(dest)
    assert not dest.exists()
    assert BETAS_KEY in str(error.value) and "resumes" in str(error.value)
    kept = part.stat().st_size
    assert 0 < kept <= 150_000 and part.read_bytes() == data[:kept]
    fresh.requests.clear()
    result = fetch(fresh, tmp_path)  # the rerun
    (request,) = fresh.gets()
    assert request["range"] == f"bytes={kept}-"
    assert request["sent"] == len(data) - kept  # bytes before the Range were not re-sent
    assert result.path.read_bytes() == data and result.verified == "md5"


def test_503_is_retried_with_exponential_backoff(fresh, toy_world, tmp_path):
    fresh.faults[BETAS_KEY] = ["503", "503"]
    waits = []
    result = fetch(fresh, tmp_path, attempts=4, backoff=0.5, sleep=waits.append)
    assert result.path.read_bytes() == truth(toy_world)
    assert [r["status"] for r in fresh.gets()] == [503, 503, 200]
    assert waits == [0.5, 1.0]


def test_persistent_503_gives_up_after_the_bounded_attempts(fresh, tmp_path):
    fresh.faults[BETAS_KEY] = ["503"] * 5
    with pytest.raises(http_dl.DownloadError, match=r"giving up after 3 attempts.*HTTP 503"):
        fetch(fresh, tmp_path, attempts=3)
    assert len(fresh.gets()) == 3
    assert not (tmp_path / "out" / Path(BETAS_KEY).name).exists()


def test_body_shorter_than_its_content_length_is_completed(fresh, toy_world, tmp_path):
    data = truth(toy_world)
    fresh.faults[BETAS_KEY] = ["short:1000"]
    result = fetch(fresh, tmp_path, attempts=2)
    assert result.path.read_bytes() == data
    first, second = fresh.gets()
    assert second["range"] == f"bytes={len(data) - 1000}-" and second["sent"] == 1000


def test_wrong_etag_fails_cleanly_then_a_rerun_starts_over(fresh, toy_world, tmp_path):
    fresh.faults[BETAS_KEY] = ["etag", "etag"]
    with pytest.raises(http_dl.DownloadError, match=r"MD5 [0-9a-f]{32} differs from the server's ETag"):
        fetch(fresh, tmp_path, attempts=2)
    dest = tmp_path / "out" / Path(BETAS_KEY).name
    assert not dest.exists() and not http_dl.part_path(dest).exists()  # untrusted bytes are discarded
    fresh.requests.clear()
    result = fetch(fresh, tmp_path)
    assert [r["range"] for r in fresh.gets()] == [None]
    assert result.path.read_bytes() == truth(toy_world)


def test_persistent_wrong_etag_is_final_after_one_fresh_full_download(fresh, toy_world, tmp_path):
    """A mismatch is retried once from byte 0; the same mismatch then is final (2 GETs, not 6)."""
    fresh.etags[BETAS_KEY] = f'"{hashlib.md5(b"another file").hexdigest()}"'
    with pytest.raises(http_dl.DownloadError) as error:
        fetch(fresh, tmp_path, attempts=6)
    message = str(error.value)
    assert "for the second time, on a fresh full download" in message and "not retried" in message
    assert BETAS_KEY in message and "\n" not in message
    assert [r["range"] for r in fresh.gets()] == [None, None]
    dest = tmp_path / "out" / Path(BETAS_KEY).name
    assert not dest.exists() and not http_dl.part_path(dest).exists()
    # one bad answer among good ones still recovers
    fresh.reset()
    fresh.faults[BETAS_KEY] = ["etag"]
    assert fetch(fresh, tmp_path, attempts=6).path.read_bytes() == truth(toy_world)
    assert len(fresh.gets()) == 2


@pytest.mark.parametrize("code, words", [("404", "not found"), ("403", "access denied")])
def test_404_and_403_stop_at_once_naming_key_and_url(fresh, tmp_path, code, words):
    fresh.faults[BETAS_KEY] = [code]
    with pytest.raises(http_dl.DownloadError) as error:
        fetch(fresh, tmp_path, attempts=5)
    message = str(error.value)
    assert f"HTTP {code} ({words})" in message
    assert BETAS_KEY in message and http_dl.key_url(fresh.url, BETAS_KEY) in message
    assert len(fresh.gets()) == 1  # no retry
    assert not (tmp_path / "out" / Path(BETAS_KEY).name).exists()


def test_slow_response_times_out_then_recovers(fresh, toy_world, tmp_path):
    fresh.slow_seconds = 1.0
    fresh.faults[BETAS_KEY] = ["slow"]
    started = time.monotonic()
    result = fetch(fresh, tmp_path, attempts=2, timeout=0.3)
    assert time.monotonic() - started < 5
    assert result.path.read_bytes() == truth(toy_world) and result.attempts == 2
    fresh.requests.clear()
    fresh.faults[BETAS_KEY] = ["slow", "slow"]
    with pytest.raises(http_dl.DownloadError, match="timed out"):
        fetch(fresh, tmp_path / "again", attempts=2, timeout=0.3)
    assert not (tmp_path / "again" / "out" / Path(BETAS_KEY).name).exists()


def test_server_ignoring_range_is_restarted_from_zero(fresh, toy_world, tmp_path):
    data = truth(toy_world)
    dest = tmp_path / "out" / Path(BETAS_KEY).name
    dest.parent.mkdir()
    http_dl.part_path(dest).write_bytes(data[:5000])
    fresh.faults[BETAS_KEY] = ["norange"]
    result = fetch(fresh, tmp_path)
    assert fresh.gets()[0]["range"] == "bytes=5000-" and fresh.gets()[0]["status"] == 200
    assert result.path.read_bytes() == data and result.resumed_from == 0


def test_complete_part_left_before_the_rename_is_verified_not_refetched(fresh, toy_world, tmp_path):
    data = truth(toy_world)
    dest = tmp_path / "out" / Path(BETAS_KEY).name
    dest.parent.mkdir()
    http_dl.part_path(dest).write_bytes(data)
    result = fetch(fresh, tmp_path)
    assert [(r["method"], r["status"]) for r in fresh.requests] == [("GET", 416), ("HEAD", 200)]
    assert result.path.read_bytes() == data and result.verified == "md5"


def test_corrupt_part_is_caught_by_md5_and_refetched(fresh, toy_world, tmp_path):
    data = truth(toy_world)
    dest = tmp_path / "out" / Path(BETAS_KEY).name
    dest.parent.mkdir()
    http_dl.part_path(dest).write_bytes(b"\0" * 4096)  # e.g. the object changed since
    result = fetch(fresh, tmp_path, attempts=2)
    assert [r["range"] for r in fresh.gets()] == ["bytes=4096-", None]
    assert result.path.read_bytes() == data


def test_too_little_disk_space_stops_before_writing(fresh, tmp_path, monkeypatch):
    monkeypatch.setattr(
        http_dl.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**12, 10**12 - 10, 10)
    )
    with pytest.raises(http_dl.DownloadError, match=r"needs .* free in .* only 10 B are free"):
        fetch(fresh, tmp_path, attempts=3)
    dest = tmp_path / "out" / Path(BETAS_KEY).name
    assert not dest.exists() and not http_dl.part_path(dest).exists()
    assert len(fresh.gets()) == 1


def test_multipart_etag_is_verified_when_the_part_size_is_inferable(tmp_path):
    rng = __import__("numpy").random.default_rng(0)
    data = rng.integers(0, 256, size=3 * 2**20 - 12345, dtype="uint8").tobytes()
    parts = [hashlib.md5(data[i : i + 2**20]).digest() for i in range(0, len(data), 2**20)]
    good = f'"{hashlib.md5(b"".join(parts)).hexdigest()}-{len(parts)}"'
    srv = FaultyServer(extra={"big.bin": data})
    try:
        srv.etags["big.bin"] = good
        result = http_dl.download(f"{srv.url}/big.bin", tmp_path / "a.bin", **FAST)
        assert result.verified == "multipart-md5" and result.path.read_bytes() == data
        srv.etags["big.bin"] = f'"{"0" * 32}-3"'  # unknown part size: only the length is checked
        result = http_dl.download(f"{srv.url}/big.bin", tmp_path / "b.bin", **FAST)
        assert result.verified == "length" and result.path.read_bytes() == data
    finally:
        srv.close()


def test_etag_parsing():
    md5 = "0123456789abcdef0123456789abcdef"
    assert http_dl.plain_md5_etag(f'"{md5}"') == md5
    assert http_dl.plain_md5_etag(f'"{md5}-3"') is None and http_dl.plain_md5_etag(f'W/"{md5}"') is None
    assert http_dl.multipart_etag(f'"{md5}-3"') == (md5, 3)
    assert http_dl._content_range("bytes 10-19/20") == (10, 19, 20)
    assert http_dl._content_range("bytes */20") == (None, None, 20)


def test_file_digests_equal_md5_and_s3_multipart_etags_of_the_parts(tmp_path):
    """Read in blocks that do not line up with the parts; S3's ETag = md5 of the parts' md5s."""
    data = random.Random(0).randbytes(10_000)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    md5, multipart = http_dl.file_digests(path, part_sizes=(4096, 2500, 10_000), block=1000)
    assert md5 == hashlib.md5(data).hexdigest()
    for size in (4096, 2500, 10_000):
        parts = [hashlib.md5(data[start : start + size]).digest() for start in range(0, len(data), size)]
        assert multipart[size] == hashlib.md5(b"".join(parts)).hexdigest(), size


def test_terms_refused_means_no_request(fresh, tmp_path):
    with pytest.raises(http_dl.DownloadError, match="accept_terms is false"):
        dl.download_nsd_key(fresh.url, BETAS_KEY, tmp_path / "x", accept_terms=False)
    assert fresh.requests == []


# --------------------------------------------------------------------------- what, how much


def test_needed_keys_of_the_paper_config(paper_config):
    keys = dl.needed_keys(paper_config)
    # + the surface transforms of maps.enabled, + prf-visualrois (4 volumes and its label table),
    # which the encoding summary reports by area
    assert len(keys) == len(set(keys)) == 164 + 4 * 8 + 4 + 1
    for subject in (1, 2, 5, 7):
        betas = [k for k in keys if f"subj{subject:02d}/" in k and "/betas_session" in k]
        assert sorted(betas) == [nsd.betas_key(subject, s, "nifti") for s in range(1, 38)]
        assert nsd.roi_key(subject, "streams") in keys and nsd.roi_key(subject, "nsdgeneral") in keys
        assert nsd.brainmask_key(subject) in keys
        assert nsd.betas_key(subject, 38, "nifti") not in keys
        assert set(nsd.surface_transform_keys(subject)) <= set(keys)
    assert keys[:3] == [nsd.expdesign_key(), nsd.stim_info_key(), nsd.stimuli_key()]
    assert [k for k in keys if k.endswith(".ctab")] == [
        nsd.label_table_key(a) for a in ("streams", "prf-visualrois")
    ]


def test_needed_keys_follow_beta_format_and_rois(paper_config):
    import copy

    config = copy.deepcopy(paper_config)
    config["nsd"]["beta_format"] = "hdf5"
    config["subjects"] = [2]
    config["sessions"] = {"first": 3, "last": 5}
    config["decoding"]["c_rois"] = ["hV4"]
    keys = dl.needed_keys(config)
    assert [k for k in keys if "betas_session" in k] == [nsd.betas_key(2, s, "hdf5") for s in (3, 4, 5)]
    assert nsd.roi_key(2, "prf-visualrois") in keys and nsd.label_table_key("prf-visualrois") in keys
    assert len(keys) == 3 + 3 + 3 + 2 + 1 + 8  # shared, betas, atlases, label tables, brain mask, transforms
    config["maps"]["enabled"] = False
    assert dl.needed_keys(config) == [k for k in keys if "/transforms/" not in k]


def test_plan_from_head_requests_is_exact(fresh, toy_world):
    keys = [BETAS_KEY, nsd.expdesign_key(), "nsddata/not/there.nii.gz"]
    plan = dl.plan_downloads(fresh.url, keys, show=False)
    sizes = {e.key: e.size for e in plan.entries}
    assert sizes[BETAS_KEY] == len(truth(toy_world))
    assert sizes[nsd.expdesign_key()] == len(truth(toy_world, nsd.expdesign_key()))
    assert [e.key for e in plan.missing] == ["nsddata/not/there.nii.gz"]
    assert plan.total_bytes == sizes[BETAS_KEY] + sizes[nsd.expdesign_key()]
    assert all(r["method"] == "HEAD" for r in fresh.requests) and len(fresh.requests) == 3
    assert "NOT FOUND: nsddata/not/there.nii.gz" in plan.summary()


def test_offline_plan_uses_the_typical_sizes_table(paper_config):
    with socket.socket() as probe:  # a port nobody listens on: connection refused at once
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    plan = dl.plan_downloads(url, dl.needed_keys(paper_config), timeout=2.0, show=False)
    assert {e.source for e in plan.entries} == {"table"} and plan.n_files == 201
    betas = 4 * 37 * dl.typical_size(BETAS_KEY)[0]
    assert betas + 73000 * 425 * 425 * 3 < plan.total_bytes < betas + 73000 * 425 * 425 * 3 + 10**9
    assert (
        plan.summary().startswith("download plan: 201 files, 187.") and "betas: 148 files" in plan.summary()
    )


# --------------------------------------------------------------------------- COCO


def coco_zip(coco_root: Path) -> bytes:
    """An annotations archive like COCO's: the two caption files among other annotation files."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in nsd.COCO_CAPTION_FILES:
            archive.write(coco_root / name, name)
        archive.writestr("annotations/instances_train2017.json", json.dumps({"annotations": []}))
    return buffer.getvalue()


def test_coco_archive_keeps_only_the_two_caption_files(toy_world, tmp_path):
    srv = FaultyServer(extra={COCO_ZIP: coco_zip(toy_world["coco_root"])})
    try:
        srv.faults[COCO_ZIP] = ["drop:1000"]
        written = dl.download_coco_captions(f"{srv.url}/{COCO_ZIP}", tmp_path / "coco", **FAST)
        assert [p.relative_to(tmp_path / "coco").as_posix() for p in written] == list(nsd.COCO_CAPTION_FILES)
        for name in nsd.COCO_CAPTION_FILES:
            assert (tmp_path / "coco" / name).read_bytes() == (toy_world["coco_root"] / name).read_bytes()
        assert sorted(p.name for p in (tmp_path / "coco").rglob("*") if p.is_file()) == [
            "captions_train2017.json",
            "captions_val2017.json",
        ]  # no archive, no instances file
        assert srv.gets()[1]["range"] is not None  # the archive download resumed
        srv.extra[COCO_ZIP] = b"this is not a zip file"
        with pytest.raises(http_dl.DownloadError, match="not a valid zip archive"):
            dl.download_coco_captions(f"{srv.url}/{COCO_ZIP}", tmp_path / "bad", **FAST)
        assert (
            list((tmp_path / "bad").rglob("*.json")) == []
            and not (tmp_path / "bad" / "annotations_trainval2017.zip").exists()
        )
    finally:
        srv.close()


# --------------------------------------------------------------------------- through Snakemake

from toy_runs import copy_workflow  # noqa: E402 (the workflow copy the graph tests use)


def snakemake(directory: Path, *args: str, env: dict | None = None, check: bool = True):
    import os

    command = [sys.executable, "-m", "snakemake", "--cores", "2", *args]
    result = subprocess.run(
        command, cwd=directory, capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})}
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}")
    return result


def test_terms_gate_stops_before_any_job_and_any_request(fresh, tmp_path):
    directory = copy_workflow(tmp_path / "wf")
    (directory / "config" / "gate.yaml").write_text(
        yaml.safe_dump(
            {
                "subjects": [1],
                "sessions": {"first": 1, "last": 2},
                "nsd": {"root": None, "base_url": fresh.url, "accept_terms": False},
                "coco": {"root": None, "annotations_url": f"{fresh.url}/{COCO_ZIP}"},
            }
        )
    )
    targets = [f"resources/nsd/{nsd.expdesign_key()}", f"resources/nsd/{BETAS_KEY}"]
    result = snakemake(directory, *targets, "--configfile", "config/gate.yaml", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "nsd.accept_terms is false" in output and "Terms and Conditions" in output
    assert "data access form" in output and dl.NSD_TERMS_URL in output
    assert fresh.requests == []
    assert not (directory / "resources").exists()


def test_paper_dry_run_plans_every_input_without_network(fresh, tmp_path):
    directory = copy_workflow(tmp_path / "wf")
    proxy = {name: fresh.url for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")}
    proxy.update(no_proxy="", NO_PROXY="")
    result = snakemake(directory, "-n", env=proxy)  # any HTTP(S) request would reach `fresh`
    output = result.stdout + result.stderr
    planned = re.findall(r"wildcards: key=(\S+)", output)
    assert len(planned) == len(set(planned)) == 201
    for subject in (1, 2, 5, 7):
        sessions = sorted(
            int(m)
            for m in re.findall(
                rf"subj{subject:02d}/func1pt8mm/betas_fithrf_GLMdenoise_RR/betas_session(\d\d)\.nii\.gz",
                " ".join(planned),
            )
        )
        assert sessions == list(range(1, 38))
        assert {
            nsd.roi_key(subject, "streams"),
            nsd.roi_key(subject, "nsdgeneral"),
            nsd.brainmask_key(subject),
        } <= set(planned)
    assert {
        nsd.expdesign_key(),
        nsd.stim_info_key(),
        nsd.stimuli_key(),
        nsd.label_table_key("streams"),
    } <= set(planned)
    stats = dict(re.findall(r"^(download_\w+)\s+(\d+)$", output, flags=re.M))
    assert stats == {"download_nsd_file": "201", "download_coco_annotations": "1"}
    assert "download plan: 201 files" in output and "nsd.accept_terms is false" in output
    assert fresh.requests == []
    assert not (directory / "resources").exists()


@pytest.fixture(scope="module")
def nsd_sized_world(tmp_path_factory):
    """A toy world with NSD's 750 trials per session (one session), so that it goes through the
    workflow's NSD code path when it comes from a download (``nsd.root: null`` is never the toy:
    ``is_toy`` keys on the root folder)."""
    root = tmp_path_factory.mktemp("world750")
    params = ToyParams(
        n_subjects=2,
        n_sessions=1,
        trials_per_session=750,
        n_shared_images=50,
        n_own_images=200,
        image_size=32,
        grid=(10, 12, 9),
        snr=1.0,
        seed=3,
    )
    write_toy_world(root / "nsd", root / "coco", params)
    return root


FMRI_NAMES = (
    "train_trials.tsv",
    "test_images.tsv",
    *(
        f"{roi}_{kind}"
        for roi in ("early", "ventral", "nsdgeneral")
        for kind in ("train.npy", "test.npy", "voxels.npz")
    ),
)


@pytest.fixture(scope="module")
def end_to_end(nsd_sized_world, tmp_path_factory):
    """The workflow run twice: downloading from the loopback server, and on the local copy."""
    srv = FaultyServer(nsd_sized_world / "nsd", extra={COCO_ZIP: coco_zip(nsd_sized_world / "coco")})
    # A flaky first answer for one betas file: the rule must recover inside the run.
    srv.faults[nsd.betas_key(2, 1, "nifti")] = ["drop:5000"]
    has_fmri = (REPO / "workflow" / "rules" / "fmri.smk").exists()
    fmri = [f"results/e2e/subj{s:02d}/fmri/{name}" for s in (1, 2) for name in FMRI_NAMES] if has_fmri else []
    common = {"dataset": "e2e", "subjects": [1, 2], "sessions": {"first": 1, "last": 1}}
    runs = {}
    try:
        for name, roots in {
            "download": {
                "nsd": {"root": None, "base_url": srv.url, "accept_terms": True},
                "coco": {"root": None, "annotations_url": f"{srv.url}/{COCO_ZIP}"},
            },
            "local": {
                "nsd": {"root": str(nsd_sized_world / "nsd")},
                "coco": {"root": str(nsd_sized_world / "coco")},
            },
        }.items():
            directory = copy_workflow(tmp_path_factory.mktemp(name))
            (directory / "config" / "e2e.yaml").write_text(yaml.safe_dump({**common, **roots}))
            downloads = []
            if name == "download":
                keys = dl.needed_keys(validate_config(merged_config(**common, **roots)))
                downloads = [f"resources/nsd/{k}" for k in keys] + [
                    f"resources/coco/{n}" for n in nsd.COCO_CAPTION_FILES
                ]
                runs["keys"] = keys
            snakemake(
                directory, *downloads, *fmri, "--configfile", "config/e2e.yaml"
            )  # targets first: --configfile takes several values
            runs[name] = directory
        runs["requests"] = list(srv.requests)
    finally:
        srv.close()
    runs["fmri"] = fmri
    return runs


def test_end_to_end_download_fetches_the_tree_byte_for_byte(end_to_end, nsd_sized_world):
    directory = end_to_end["download"]
    keys = end_to_end["keys"]
    # shared; per subject betas, atlases (streams, nsdgeneral, prf-visualrois), mask, transforms;
    # 2 label tables
    assert len(keys) == 3 + 2 * (1 + 3 + 1 + 8) + 2
    for key in keys:
        assert (directory / "resources/nsd" / key).read_bytes() == (
            nsd_sized_world / "nsd" / key
        ).read_bytes(), key
    for name in nsd.COCO_CAPTION_FILES:
        assert (directory / "resources/coco" / name).read_bytes() == (
            nsd_sized_world / "coco" / name
        ).read_bytes()
    assert not list((directory / "resources").rglob("*.part")) and not list(
        (directory / "resources").rglob("*.zip")
    )
    plan = (directory / "logs/download/nsd_plan.tsv").read_text().splitlines()
    assert len(plan) == 1 + len(keys) and all("\thead\t" in row for row in plan[1:])
    flaky = nsd.betas_key(2, 1, "nifti")
    assert [
        r["range"] is not None for r in end_to_end["requests"] if r["method"] == "GET" and r["path"] == flaky
    ] == [False, True]
    assert "verified by md5" in (directory / f"logs/download/nsd/{flaky}.log").read_text()


def test_end_to_end_stages_match_the_local_copy_run(end_to_end):
    if not end_to_end["fmri"]:
        pytest.skip("the fMRI preparation stage has not landed yet")
    for target in end_to_end["fmri"]:
        downloaded = (end_to_end["download"] / target).read_bytes()
        assert downloaded == (end_to_end["local"] / target).read_bytes(), target


def one_key_run(server, tmp_path):
    """Snakemake asked for one NSD key from ``server`` (terms accepted): its result."""
    directory = copy_workflow(tmp_path / "wf")
    (directory / "config" / "one.yaml").write_text(
        yaml.safe_dump(
            {
                "subjects": [1],
                "sessions": {"first": 1, "last": 1},
                "nsd": {"root": None, "base_url": server.url, "accept_terms": True},
            }
        )
    )
    return directory, snakemake(
        directory, f"resources/nsd/{BETAS_KEY}", "--configfile", "config/one.yaml", check=False
    )


@pytest.mark.parametrize("fault", ["404", "403", "etag"])
def test_final_download_failures_are_not_rerun_by_snakemake(fresh, tmp_path, fault):
    """A final failure costs its GETs once: Snakemake does not rerun the job (rule retries: 0)."""
    if fault == "etag":
        fresh.etags[BETAS_KEY] = f'"{hashlib.md5(b"another file").hexdigest()}"'
    else:
        fresh.faults[BETAS_KEY] = [fault] * 20  # GETs fail, the plan's HEAD succeeds
    directory, result = one_key_run(fresh, tmp_path)
    assert result.returncode != 0
    assert len(fresh.gets(BETAS_KEY)) == (2 if fault == "etag" else 1)
    log = (directory / f"logs/download/nsd/{BETAS_KEY}.log").read_text()
    assert ("not retried" if fault == "etag" else f"HTTP {fault}") in log
    assert not (directory / "resources/nsd" / BETAS_KEY).exists()
