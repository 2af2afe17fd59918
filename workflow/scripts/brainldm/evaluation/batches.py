"""Images read and prepared batch by batch, ahead of the networks that consume them.

The evaluation rules read ~12,000 PNGs per subject (982 test images, every sample of every method)
and resize each for every network. On a GPU that CPU work would leave the card idle; with
``reader_threads`` > 0 it runs on threads, batches ahead of the caller (PNG decoding and PIL's
resizing release the GIL). The prepared values are the same whichever thread makes them.
"""

from __future__ import annotations

import itertools
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np


def load_png(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 of a PNG; a clear error when it is missing."""
    from PIL import Image

    if not Path(path).exists():
        raise FileNotFoundError(f"{path} is missing (an output of rule reconstruct_images)")
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def read_images(images: Sequence) -> list[np.ndarray]:
    """(H, W, 3) uint8 arrays of ``images``: arrays (or PIL images) as they are, PNG paths read."""
    return [load_png(image) if isinstance(image, (str, Path)) else np.asarray(image) for image in images]


def prepared_batches(
    images: Sequence,
    batch_size: int,
    prepare: Callable[[int, list[np.ndarray]], object],
    reader_threads: int = 0,
) -> Iterator[tuple[int, object]]:
    """``(start, prepare(start, batch))`` for consecutive batches of ``images``, in order.

    Parameters
    ----------
    images : (H, W, 3) uint8 arrays or PNG paths
    batch_size : images per batch
    prepare : called with the batch's first index and its images (:func:`read_images`); it must
        not depend on other batches (it may run on another thread)
    reader_threads : 0 reads and prepares in the calling thread; ``n`` > 0 runs ``n`` threads that
        stay up to ``n + 1`` batches ahead of the caller

    Yields
    ------
    start : int
    prepared : what ``prepare`` returned
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    starts = iter(range(0, len(images), batch_size))

    def job(start: int):
        return prepare(start, read_images(images[start : start + batch_size]))

    if reader_threads <= 0:
        for start in starts:
            yield start, job(start)
        return
    pool = ThreadPoolExecutor(max_workers=reader_threads, thread_name_prefix="reader")
    try:
        pending = deque(
            (start, pool.submit(job, start)) for start in itertools.islice(starts, reader_threads + 1)
        )
        while pending:
            start, future = pending.popleft()
            prepared = future.result()  # re-raises a reader's error here, in order
            following = next(starts, None)
            if following is not None:
                pending.append((following, pool.submit(job, following)))
            yield start, prepared
    finally:
        # a caller that stops early (an error, a closed generator) leaves nothing running
        pool.shutdown(wait=True, cancel_futures=True)


def reader_threads_for(device: str | None, threads: int) -> int:
    """Reader threads of an evaluation job: its ``threads`` beside a GPU, where the card would
    otherwise wait for PNG decoding and resizing; none on the CPU, whose threads run the networks."""
    from brainldm.evaluation.networks import device_of

    return int(threads) if device_of(device).type == "cuda" else 0


def job_options(evaluation: dict, model_device: str, threads: int) -> dict:
    """The options of an evaluation rule job's call of ``identify_reconstructions`` or
    ``evaluate_reconstructions``: its settings, device, and reader threads (:func:`reader_threads_for`).

    Parameters
    ----------
    evaluation : the job's ``evaluation`` settings (``batch_size``, ``network_dtype``,
        ``channels_last``, ``clip_model``)
    model_device : config ``model.device`` (``auto``, ``cpu`` or ``cuda``)
    threads : the job's threads
    """
    device = None if model_device == "auto" else model_device
    return {
        "batch_size": evaluation["batch_size"],
        "reader_threads": reader_threads_for(device, threads),
        "device": device,
        "network_dtype": evaluation["network_dtype"],
        "channels_last": evaluation["channels_last"],
        "clip_model": evaluation["clip_model"],
    }
