"""The reference's exp_data layout, both ways: our runs exported into it, and the authors' released
results file read from it (--reference).

  exp_data/ours-exp-data.pkl   {(name, METHOD): success array (evaluations, seeds)}, name a task, a
                               domain or 'all'; ours-exp-data.json gives each entry's steps
  load_released(path) -> Released   the authors' file: {(name, method): success array (evaluations,
                               seeds)}, (30, 8) from 50K or (31, 8) from step 0, read without running
                               code by experiments/infra/safe_pickle.py; its 1M (offline) and 1.5M (online)
                               scores per task, domain and overall, and its curves
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import os
from typing import Optional, Sequence

import numpy as np

from experiments.infra import files, safe_pickle
from experiments.infra.errors import UserError
from experiments.report.published import PAPER_METHODS
from experiments.report.runs import ReportError, RunLogs, domain_key, seed_curves

# ------------------------------------------------------------------------- released results files

EVAL_EVERY = 50_000
OFFLINE_STEP = 1_000_000
ONLINE_STEP = 1_500_000
# Number of rows -> the step of row 0. Both layouts evaluate every 50K up to 1.5M.
LAYOUTS = {30: EVAL_EVERY, 31: 0}


class ReleasedResultsError(UserError, ValueError):
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


def load_reference(path: str) -> Released:
    """The authors' released results file, or a ReportError naming the problem."""
    try:
        return load_released(os.path.expanduser(path))
    except ReleasedResultsError as e:
        raise ReportError(f"--reference: {e}") from None


# ------------------------------------------------------------------------------- exp_data export

EXP_DATA_FILE = "ours-exp-data.pkl"


def _seed_matrix(run: RunLogs) -> Optional[tuple[np.ndarray, list, np.ndarray, list]]:
    """(steps, seeds, success array (evaluations, seeds), phases) over the fine-tuning evaluations
    (step > 0) that every seed of the run has, or None."""
    curves = seed_curves({k: v for k, v in run.eval.items()}, "success")
    curves = {s: (x[x > 0], y[x > 0]) for s, (x, y) in curves.items()}
    curves = {s: c for s, c in curves.items() if c[0].size}
    if not curves:
        return None
    steps = functools.reduce(np.intersect1d, [x for x, _ in curves.values()])
    if steps.size == 0:
        return None
    seeds = sorted(curves)
    values = np.stack([curves[s][1][np.searchsorted(curves[s][0], steps)] for s in seeds], axis=1)
    boundary = run.expected_final_steps().get("offline")
    if boundary is None:
        offline_steps = run.eval["step"][run.eval["phase"] == "offline"]
        boundary = int(offline_steps.max()) if offline_steps.size else 0
    phases = ["offline" if step <= boundary else "online" for step in steps]
    return steps, seeds, values, phases


def _mean_entry(entries: list) -> Optional[tuple[np.ndarray, list, np.ndarray]]:
    """Per seed common to the entries, the mean over them at the steps common to them."""
    if not entries:
        return None
    steps = functools.reduce(np.intersect1d, [e[0] for e in entries])
    seeds = sorted(set.intersection(*(set(e[1]) for e in entries)))
    if steps.size == 0 or not seeds:
        return None
    stacked = [e[2][np.searchsorted(e[0], steps)][:, [e[1].index(s) for s in seeds]] for e in entries]
    return steps, seeds, np.mean(stacked, axis=0)


def export_exp_data(runs: Sequence[RunLogs], out_dir: str) -> list[str]:
    """Our success curves in the reference's exp_data layout, to plot beside the released data.

    `ours-exp-data.pkl`: a dict keyed by (name, METHOD) (method upper-cased, as 'TRQAM', 'QAM'),
    name a task env id, a domain, or 'all'; each value a float array (evaluations, seeds) of success
    in [0, 1], one row per evaluation step (the BC evaluation at step 0 left out). A domain entry is,
    per seed, the mean over its tasks present; 'all', per seed, the mean over the domains present;
    both over the steps and seeds common to their members. `ours-exp-data.json` gives, per entry, the
    steps of the rows, the seeds of the columns, each row's phase, the members, and whether every run
    reached its final step. Returns the two paths.
    """
    import pickle

    os.makedirs(out_dir, exist_ok=True)
    arrays, info = {}, {}
    by_method = collections.defaultdict(list)
    for run in runs:
        by_method[run.method].append(run)
    for method, method_runs in by_method.items():
        key_method = method.upper()
        tasks_by_domain = collections.defaultdict(list)
        for run in method_runs:
            m = _seed_matrix(run)
            if m is None:
                continue
            steps, seeds, values, phases = m
            expected = run.expected_final_steps()
            unfinished = [p for p, step in expected.items()
                          if run.progress(p, int(max(run.eval["step"][run.eval["phase"] == p], default=0)))]
            arrays[(run.env_name, key_method)] = values
            info[f"{run.env_name}|{key_method}"] = dict(
                steps=steps.tolist(), seeds=seeds, phases=phases, members=[run.env_name],
                finished=not unfinished and bool(expected), expected_final_steps=expected)
            tasks_by_domain[run.domain].append((steps, seeds, values, run))
        domain_entries = []
        for domain in sorted(tasks_by_domain, key=domain_key):
            members = tasks_by_domain[domain]
            mean = _mean_entry([m[:3] for m in members])
            if mean is None:
                continue
            arrays[(domain, key_method)] = mean[2]
            info[f"{domain}|{key_method}"] = dict(
                steps=mean[0].tolist(), seeds=mean[1], members=[m[3].env_name for m in members],
                finished=all(info[f"{m[3].env_name}|{key_method}"]["finished"] for m in members))
            domain_entries.append((domain, mean))
        overall = _mean_entry([m for _, m in domain_entries])
        if overall is not None and domain_entries:
            arrays[("all", key_method)] = overall[2]
            info[f"all|{key_method}"] = dict(
                steps=overall[0].tolist(), seeds=overall[1], members=[d for d, _ in domain_entries],
                finished=all(info[f"{d}|{key_method}"]["finished"] for d, _ in domain_entries))
    pkl = os.path.join(out_dir, EXP_DATA_FILE)
    meta = os.path.join(out_dir, EXP_DATA_FILE.replace(".pkl", ".json"))
    files.write_atomic(pkl, pickle.dumps(arrays))
    files.write_json(meta, {"layout": "dict (name, METHOD) -> success array (evaluations, seeds); rows at 'steps', "
                                      "columns for 'seeds'", "entries": info}, indent=1)
    return [pkl, meta]
