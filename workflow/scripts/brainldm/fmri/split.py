"""The paper's train/test split of one subject's NSD trials, and its counts.

Takagi & Nishimoto train on single trials and test on betas averaged over the repeats of each
test image. Test images are the shared1000 (``sharedix``) images that the subject saw in the
configured sessions; every other trial of those sessions is a train trial. With sessions 1-37
this gives, for each of subjects 1, 2, 5 and 7, 982 test images (2,770 trials) and 8,859 train
images (24,980 trials).

Row orders (stable, recorded in the output tables):

- train rows: trials in increasing global trial number (session order, then trial order);
- test rows: images in increasing ``nsdId``; the repeats of an image are numbered in order of
  presentation.

Trial numbers follow NSD's stim-info columns ``subjectS_repR``: 1-based over the full design
(session ``s`` holds trials ``(s - 1) * 750 + 1 .. s * 750``). Internally ``trial_index`` is the
0-based version.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from brainldm.nsd.layout import TRIALS_PER_SESSION, ExpDesign


@dataclass(frozen=True)
class SubjectSplit:
    """Train/test assignment of every trial of a subject's configured sessions.

    Attributes
    ----------
    subject : int
        1-based NSD subject.
    sessions : tuple of int
        1-based sessions, ascending.
    trials_per_session : int
        Trials per session (750 in NSD).
    trial_index : (n_trials,) int64
        0-based global trial index of each trial of the sessions, ascending.
    nsd_id : (n_trials,) int64
        0-based nsdId shown on each trial.
    is_test : (n_trials,) bool
        Whether the trial's image is a shared (test) image.
    train_row : (n_trials,) int64
        Row of the trial in the train matrix, -1 for test trials.
    test_row : (n_trials,) int64
        Row of the trial's image in the test matrix, -1 for train trials.
    repeat : (n_trials,) int64
        0-based presentation ordinal of the trial's image within the sessions.
    test_nsd_ids : (n_test_images,) int64
        nsdIds of the test images, ascending (= test row order).
    """

    subject: int
    sessions: tuple[int, ...]
    trials_per_session: int
    trial_index: np.ndarray
    nsd_id: np.ndarray
    is_test: np.ndarray
    train_row: np.ndarray
    test_row: np.ndarray
    repeat: np.ndarray
    test_nsd_ids: np.ndarray

    # ----------------------------------------------------------------- derived views

    @property
    def session(self) -> np.ndarray:
        """1-based session of each trial: (n_trials,) int64."""
        return self.trial_index // self.trials_per_session + 1

    @property
    def train_trials(self) -> np.ndarray:
        """Positions (into the per-trial arrays) of the train trials, in train row order."""
        return np.flatnonzero(~self.is_test)

    @property
    def n_trials(self) -> int:
        return int(self.trial_index.size)

    @property
    def n_train_trials(self) -> int:
        return int((~self.is_test).sum())

    @property
    def n_test_trials(self) -> int:
        return int(self.is_test.sum())

    @property
    def n_train_images(self) -> int:
        return int(np.unique(self.nsd_id[~self.is_test]).size)

    @property
    def n_test_images(self) -> int:
        return int(self.test_nsd_ids.size)

    @property
    def test_repeats(self) -> np.ndarray:
        """Number of repeats of each test image: (n_test_images,) int64, test row order."""
        return np.bincount(self.test_row[self.is_test], minlength=self.n_test_images)

    @property
    def max_repeats(self) -> int:
        return int(self.repeat[self.is_test].max(initial=-1)) + 1

    def session_trials(self, session: int) -> np.ndarray:
        """Positions (into the per-trial arrays) of the trials of ``session``, in trial order."""
        start = self.sessions.index(session) * self.trials_per_session
        return np.arange(start, start + self.trials_per_session)

    def counts(self) -> dict[str, int]:
        """Trial and image counts of the split (see :func:`split_counts`)."""
        return {
            "n_sessions": len(self.sessions),
            "n_train_trials": self.n_train_trials,
            "n_train_images": self.n_train_images,
            "n_test_trials": self.n_test_trials,
            "n_test_images": self.n_test_images,
        }


def make_split(
    design: ExpDesign, subject: int, sessions: Sequence[int], trials_per_session: int = TRIALS_PER_SESSION
) -> SubjectSplit:
    """Split the trials of ``subject`` in ``sessions`` into train trials and test images.

    Parameters
    ----------
    design : ExpDesign
        NSD's design (:func:`brainldm.nsd.layout.read_expdesign`).
    subject : int
        1-based subject.
    sessions : sequence of int
        1-based sessions to use (any order; duplicates are an error).
    trials_per_session : int
        Trials per session; 750 in NSD.

    Raises
    ------
    ValueError
        Empty or repeated sessions, or a session beyond the trials the design holds.
    """
    sessions = tuple(sorted(int(s) for s in sessions))
    if not sessions:
        raise ValueError("sessions: empty; expected at least one 1-based session")
    if len(set(sessions)) != len(sessions):
        raise ValueError(f"sessions {sessions}: a session is repeated")
    n_design_sessions = design.n_trials // trials_per_session
    if sessions[0] < 1 or sessions[-1] > n_design_sessions:
        raise ValueError(
            f"sessions {sessions[0]}..{sessions[-1]}: the design holds {design.n_trials} trials = "
            f"{n_design_sessions} sessions of {trials_per_session}; expected sessions in "
            f"1..{n_design_sessions}"
        )
    trial_index = np.concatenate(
        [np.arange((s - 1) * trials_per_session, s * trials_per_session) for s in sessions]
    ).astype(np.int64)
    nsd_id = design.trial_nsd_ids(subject)[trial_index]
    is_test = np.isin(nsd_id, design.shared_nsd_ids())

    train_row = np.full(trial_index.size, -1, dtype=np.int64)
    train_row[~is_test] = np.arange(int((~is_test).sum()))

    test_nsd_ids = np.unique(nsd_id[is_test])
    test_row = np.full(trial_index.size, -1, dtype=np.int64)
    test_row[is_test] = np.searchsorted(test_nsd_ids, nsd_id[is_test])

    # Presentation ordinal of each image within the chosen sessions (trials are in time order).
    repeat = np.zeros(trial_index.size, dtype=np.int64)
    seen: dict[int, int] = {}
    for position, image in enumerate(nsd_id.tolist()):
        repeat[position] = seen.get(image, 0)
        seen[image] = repeat[position] + 1

    return SubjectSplit(
        subject,
        sessions,
        trials_per_session,
        trial_index,
        nsd_id,
        is_test,
        train_row,
        test_row,
        repeat,
        test_nsd_ids,
    )


def split_counts(
    design: ExpDesign, subject: int, sessions: Sequence[int], trials_per_session: int = TRIALS_PER_SESSION
) -> dict[str, int]:
    """Counts of the split: ``n_sessions``, ``n_train_trials``, ``n_train_images``,
    ``n_test_trials``, ``n_test_images``.

    The same code serves the toy tests and the check of the paper's NSD counts.
    """
    return make_split(design, subject, sessions, trials_per_session).counts()
