"""What to download for a run, and NSD's files and the COCO captions over HTTP(S).

Each file is fetched by :func:`brainldm.nsd.http.download` (resumable, verified, bounded
retries; see there). Planning (:func:`plan_downloads`) sizes the needed keys with HEAD requests
when the network answers, else from :data:`TYPICAL_SIZES` (approximate sizes of NSD's files,
documented below).
"""

from __future__ import annotations

import http.client
import logging
import os
import re
import shutil
import urllib.error
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from brainldm.core.atomic import atomic_path, write_text
from brainldm.nsd import layout as nsd
from brainldm.nsd.http import MIB, DownloadError, DownloadResult, download, format_bytes, key_url, remote_info

log = logging.getLogger("brainldm.nsd.download")

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
    (
        r"/transforms/[lr]h\.func1pt8-to-layerB[123]\.mgz$",
        2_500_000,
        "surface transform, ~227k vertices x 3 float32 (gzip)",
    ),
    (r"/transforms/[lr]h\.white-to-fsaverage\.mgz$", 400_000, "fsaverage transform, 163,842 indices"),
    (r"annotations_trainval2017\.zip$", 252_907_541, "COCO 2017 annotations archive (241 MiB)"),
)
DEFAULT_TYPICAL_SIZE = 10_000_000


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
    rois = list(
        dict.fromkeys([*config["fmri"]["rois"], *config["decoding"]["z_rois"], *config["decoding"]["c_rois"]])
    )
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
        how = (
            "sizes from HEAD requests"
            if sources == {"head"}
            else "sizes are typical values (offline estimate, see brainldm.nsd.download.TYPICAL_SIZES)"
            if sources == {"table"}
            else "sizes from HEAD requests where answered, else typical values"
        )
        lines = [f"download plan: {self.n_files} files, {format_bytes(self.total_bytes)} in total ({how})"]
        groups = {"betas": r"/betas_session", "stimuli": r"nsd_stimuli\.hdf5$"}
        for name, pattern in groups.items():
            chosen = [e for e in self.entries if re.search(pattern, e.key)]
            if chosen:
                lines.append(
                    f"  {name}: {len(chosen)} files, {format_bytes(sum(e.size or 0 for e in chosen))}"
                )
        rest = [e for e in self.entries if not any(re.search(p, e.key) for p in groups.values())]
        if rest:
            lines.append(f"  other: {len(rest)} files, {format_bytes(sum(e.size or 0 for e in rest))}")
        for entry in self.missing:
            lines.append(f"  NOT FOUND: {entry.key} ({entry.url}): {entry.note}")
        return "\n".join(lines)

    def to_tsv(self) -> str:
        rows = ["key\tsize\tsource\tetag\turl"]
        rows += [
            f"{e.key}\t{'' if e.size is None else e.size}\t{e.source}\t{e.etag or ''}\t{e.url}"
            for e in self.entries
        ]
        return "\n".join(rows) + "\n"


def plan_downloads(
    base_url: str,
    keys: Iterable[str],
    *,
    online: bool = True,
    timeout: float = 10.0,
    workers: int = 8,
    show: bool = True,
) -> DownloadPlan:
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


def check_download_plan(
    base_url: str,
    keys: list[str],
    *,
    accept_terms: bool,
    download_dir: str | os.PathLike,
    plan_path: str | os.PathLike,
) -> DownloadPlan:
    """Before a run downloads NSD ``keys``: the terms gate, then the plan from HEAD requests.

    Writes the plan as TSV to ``plan_path``. Stops the run, before any file is fetched, when the
    terms were not acknowledged, a key is not on the server, or the exact sizes (HEAD) exceed the
    free space where ``download_dir`` lies; estimated sizes over the free space only warn.

    Raises
    ------
    DownloadError
        One message that says what is wrong and what to do.
    """
    if not accept_terms:
        raise DownloadError(terms_message(len(keys)))
    plan = plan_downloads(base_url, keys, online=True, show=False)
    log.info("%s", plan.summary())
    write_text(plan_path, plan.to_tsv())
    if plan.missing:
        lines = "\n".join(f"  {entry.key}: {entry.note}" for entry in plan.missing)
        raise DownloadError(f"{len(plan.missing)} needed NSD files are not on {base_url}:\n{lines}")
    folder = Path(download_dir)
    while not folder.exists():
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if plan.total_bytes > free:
        message = (
            f"the planned NSD downloads need {format_bytes(plan.total_bytes)} but "
            f"only {format_bytes(free)} are free in {folder.resolve()}"
        )
        if plan.exact:
            raise DownloadError(f"{message}; free space or set nsd.root to a local copy")
        log.warning("%s (estimated from typical sizes)", message)
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


def download_nsd_key(
    base_url: str, key: str, dest: str | os.PathLike, *, accept_terms: bool, **options
) -> DownloadResult:
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

    Each file is written through :func:`brainldm.core.atomic.atomic_path`; zip CRCs are checked while
    reading.

    Returns
    -------
    list of Path
        The two JSON files, in :data:`brainldm.nsd.layout.COCO_CAPTION_FILES` order.
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


def download_coco_captions(
    url: str, coco_root: str | os.PathLike, *, keep_archive: bool = False, **options
) -> list[Path]:
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
