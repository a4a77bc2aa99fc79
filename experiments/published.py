"""Published results to stand beside ours: the TRQAM paper's table, and the authors' released results
files (per task, offline and online, curves), read without running code.

  PAPER_TABLE[method][domain] = (mean, std)   offline success (%) at 1M steps, 8 seeds
  PAPER_OVERALL[method]       = all           the mean of the 10 rounded domain means
  load_released(path) -> Released             (name, method) -> success array (evaluations, seeds)
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from experiments import safe_pickle
from experiments.configs.domains import SUITE_DOMAINS

# ------------------------------------------------------------------------------ the paper's table
#
# Source: the TRQAM paper's results table (offline success in %, the checkpoint at 1M gradient
# steps, 8 seeds per task, mean +- std over seeds with ddof = 1; a domain is the mean of its 5 tasks,
# "all" the mean of the 10 rounded domain means), as the authors' TRQAM blog post reports it. The
# SQAM row is from the same authors' follow-up (SQAM, arXiv 2610.10437), whose table repeats the
# other rows unchanged. Same protocol as this project (docs/conventions.md section 10).
PAPER_SOURCE = ("the TRQAM paper's table (8 seeds, offline success at 1M steps, mean ± std over seeds); "
                "the SQAM row from the authors' SQAM paper (arXiv 2610.10437)")
PAPER_DOMAINS = SUITE_DOMAINS  # the paper's columns: the protocol's 10 domains, in its order
# The paper's column names.
PAPER_SHORT = {d: d.replace("-navigate", "").replace("-play", "") for d in PAPER_DOMAINS}
PAPER_METHODS = ("FQL", "CGQL-L", "DSRL", "IFQL", "QAM", "QAM-E", "TRQAM", "SQAM")
PAPER_SEEDS = 8
_ROWS = {  # method: (mean, std) per domain in PAPER_DOMAINS order, then all
    "FQL": ((38, 9), (2, 6), (74, 5), (2, 1), (70, 5), (25, 10), (9, 7), (44, 4), (7, 5), (9, 5), 28),
    "CGQL-L": ((48, 7), (7, 5), (57, 2), (6, 3), (58, 1), (0, 0), (0, 0), (55, 2), (0, 1), (1, 1), 23),
    "DSRL": ((53, 2), (1, 1), (53, 10), (1, 1), (80, 0), (100, 0), (61, 8), (72, 4), (34, 6), (9, 3), 46),
    "IFQL": ((29, 8), (12, 3), (93, 2), (30, 7), (36, 1), (64, 4), (42, 4), (9, 2), (24, 7), (6, 3), 35),
    "QAM": ((62, 9), (29, 4), (64, 7), (4, 3), (64, 4), (15, 3), (1, 1), (71, 2), (19, 6), (18, 3), 35),
    "QAM-E": ((86, 3), (6, 8), (60, 6), (4, 5), (63, 6), (89, 4), (54, 8), (71, 3), (11, 4), (9, 3), 45),
    "TRQAM": ((89, 4), (41, 4), (84, 3), (36, 4), (79, 1), (100, 0), (99, 1), (81, 3), (50, 5), (19, 5), 68),
    "SQAM": ((91, 3), (62, 4), (94, 2), (54, 5), (79, 0), (100, 0), (85, 6), (58, 3), (72, 4), (54, 5), 75),
}
PAPER_TABLE = {m: dict(zip(PAPER_DOMAINS, row[:-1])) for m, row in _ROWS.items()}
PAPER_OVERALL = {m: row[-1] for m, row in _ROWS.items()}
# The QAM paper's own released data is another protocol (12 seeds): shown only as a footnote.
QAM_RELEASE_FOOTNOTE = ("The QAM paper's own released data (12 seeds, its own protocol) gives QAM 44 and FQL 36 "
                        "overall; it is not comparable with the table above and is not shown beside it.")

# Run-directory method names (before any '_' suffix of a sweep, e.g. sqam_eps0.5) -> paper method.
_RUN_TO_PAPER = {"fql": "FQL", "cgql-l": "CGQL-L", "cgql": "CGQL-L", "dsrl": "DSRL", "ifql": "IFQL",
                 "qam": "QAM", "qam-e": "QAM-E", "qame": "QAM-E", "trqam": "TRQAM", "sqam": "SQAM"}


def paper_method(run_method: str) -> Optional[str]:
    """'trqam' -> 'TRQAM', 'sqam_eps0.5' -> 'SQAM', 'qam_beta3' -> 'QAM'; None for bc or unknown."""
    return _RUN_TO_PAPER.get(run_method.split("_")[0].lower())


# ------------------------------------------------------------------------- released results files

EVAL_EVERY = 50_000
OFFLINE_STEP = 1_000_000
ONLINE_STEP = 1_500_000
# Number of rows -> the step of row 0. Both layouts evaluate every 50K up to 1.5M.
LAYOUTS = {30: EVAL_EVERY, 31: 0}


class ReleasedResultsError(ValueError):
    """A released results file that cannot be read; the message is one line."""


@dataclasses.dataclass
class Released:
    path: str
    entries: dict  # (name, method) -> float array (evaluations, seeds), success in [0, 1]
    rows: int  # 30 or 31
    seeds: int
    percent: bool  # the file held percentages (divided by 100 here)

    @property
    def steps(self) -> np.ndarray:
        return LAYOUTS[self.rows] + EVAL_EVERY * np.arange(self.rows)

    def row_of(self, step: int) -> int:
        return int(np.flatnonzero(self.steps == step)[0])

    @property
    def methods(self) -> list:
        found = {m for _, m in self.entries}
        return [m for m in PAPER_METHODS if m in found] + sorted(found - set(PAPER_METHODS))

    def describe(self) -> str:
        first = "from step 0" if LAYOUTS[self.rows] == 0 else "from 50K"
        return (f"layout ({self.rows}, {self.seeds}): evaluations every 50K {first} to 1.5M, 1M at row "
                f"{self.row_of(OFFLINE_STEP)}, 1.5M at row {self.row_of(ONLINE_STEP)}"
                + ("; values in percent" if self.percent else ""))

    def entry(self, name: str, method: str, domain_tasks=None) -> Optional[np.ndarray]:
        """The (evaluations, seeds) array of `name` (a task id, a domain or 'all'), or for a domain
        without its own entry, the per-seed mean of `domain_tasks` when the file holds all of them."""
        if (name, method) in self.entries:
            return self.entries[(name, method)]
        if domain_tasks and all((t, method) in self.entries for t in domain_tasks):
            return np.mean([self.entries[(t, method)] for t in domain_tasks], axis=0)
        return None

    def score(self, name: str, method: str, phase: str, domain_tasks=None):
        """(mean, std with ddof=1) in percent at 1M (offline) or 1.5M (online) over the seeds with a
        value (NaN: missing), or None."""
        values = self.entry(name, method, domain_tasks)
        if values is None:
            return None
        row = values[self.row_of(OFFLINE_STEP if phase == "offline" else ONLINE_STEP)]
        row = row[np.isfinite(row)]  # seeds the file lacks (NaN) left out
        if row.size == 0:
            return None
        std = float(100 * row.std(ddof=1)) if row.size > 1 else float("nan")
        return float(100 * row.mean()), std


def load_released(path: str) -> Released:
    """Reads the authors' released results pickle (e.g. trqam-exp-data.pkl) without running code.

    Expected: a dict {(name, method): array (evaluations, seeds)} of success rates, name an OGBench
    task id, a domain or 'all'; every array (30, seeds) from 50K to 1.5M, or every one (31, seeds) from
    step 0. Raises ReleasedResultsError with one line naming the problem."""
    expected = ("expected a pickled dict {(name, method): success array (30, seeds) from 50K to 1.5M, or "
                "(31, seeds) from step 0}")
    try:
        with open(path, "rb") as f:
            payload = safe_pickle.load(f)
    except OSError as e:
        raise ReleasedResultsError(f"{path}: cannot read: {e.strerror or e}") from None
    except safe_pickle.UnsafePickleError as e:
        raise ReleasedResultsError(f"{path} is not a released results file: {e}") from None
    except Exception as e:  # truncated, not a pickle, ...
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ReleasedResultsError(f"{path} is not a released results file: cannot unpickle it ({reason}); "
                                   f"{expected}") from None
    if not isinstance(payload, dict) or not payload:
        raise ReleasedResultsError(f"{path}: holds a {type(payload).__name__}"
                                   f"{' (empty)' if isinstance(payload, dict) else ''}; {expected}")
    entries, shapes = {}, {}
    for key, value in payload.items():
        if not (isinstance(key, tuple) and len(key) == 2 and all(isinstance(k, str) for k in key)):
            raise ReleasedResultsError(f"{path}: key {key!r} is not a (name, method) pair of strings; {expected}")
        try:
            array = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise ReleasedResultsError(f"{path}: entry {key} is a {type(value).__name__}, not a numeric array; "
                                       f"{expected}") from None
        if array.ndim != 2 or array.shape[0] not in LAYOUTS or array.shape[1] < 1:
            raise ReleasedResultsError(f"{path}: entry {key} has shape {array.shape}; {expected}")
        if np.isinf(array).any():
            raise ReleasedResultsError(f"{path}: entry {key} holds infinite values; expected success rates")
        entries[key] = array
        shapes.setdefault(array.shape, key)
    if len(shapes) > 1:
        (s1, k1), (s2, k2) = list(shapes.items())[:2]
        raise ReleasedResultsError(f"{path}: entries of different shapes, {k1} {s1} and {k2} {s2}; every entry "
                                   "should have the same layout")
    (rows, seeds), = shapes
    finite = [a[np.isfinite(a)] for a in entries.values()]  # NaN: an evaluation the file lacks
    low = min((a.min() for a in finite if a.size), default=0.0)
    high = max((a.max() for a in finite if a.size), default=0.0)
    if low < 0 or high > 100:
        raise ReleasedResultsError(f"{path}: success values range over [{low:g}, {high:g}]; expected rates in "
                                   "[0, 1] (or percentages)")
    percent = high > 1
    if percent:
        entries = {k: v / 100 for k, v in entries.items()}
    return Released(path=path, entries=entries, rows=rows, seeds=seeds, percent=percent)
