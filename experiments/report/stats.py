"""Scores and statistics over seeds: the task, domain and overall rows (mean ± std), and rliable's
interquartile mean, probability of improvement and performance profiles over them.

Scores (conventions §10): a seed's offline score is its eval row of phase offline with the largest step (the
end of offline training); its online score is its online row with the largest step. A domain's
score for seed s is the mean over the domain's tasks of seed s's score, over the seeds common to all
its tasks present; overall is, per seed, the mean over the domains present, over the seeds common to
them. Each level is then reported as mean +- sample std (ddof=1, as the reference's
exp_data/reproduce.py) over seeds, as success in percent. A run whose last evaluation is before the
final step of its config is marked unfinished ('offline 1000/2000', 'online 300/500 env steps'), and
so is every domain and overall score that includes it.

Statistics (rliable; --nostats turns them off): for every domain and overall score, the
interquartile mean over its tasks x seeds with a 95% stratified bootstrap CI (--bootstrap_reps,
--bootstrap_seed); for every pair of methods, the probability of improvement over their common tasks
with its CI (--poi_reps); per phase, a performance profile.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import Optional, Sequence

import numpy as np

from experiments.report.runs import PHASES, ReportError, RunLogs, domain_key, method_key

# Standard deviation over seeds: the sample std (ddof=1), as the reference's exp_data/reproduce.py.
STD_DDOF = 1


@dataclasses.dataclass(frozen=True)
class Row:
    """One aggregated score. mean and std are success in percent (std over seeds with ddof=STD_DDOF;
    NaN with a single seed)."""
    level: str  # 'task', 'domain' or 'overall'
    name: str  # env_name, domain or 'overall'
    method: str
    phase: str
    mean: float
    std: float
    num_seeds: int
    num_tasks: int
    domain: str = ""
    task: int = 0
    num_domains: int = 0
    members: tuple = ()  # domain rows: its tasks' numbers; overall rows: its domains
    per_seed: tuple = ()  # ((seed, success in [0, 1]), ...) that the mean and std are over
    final_steps: tuple = ()  # task rows: the distinct steps of the evaluations used
    notes: tuple = ()
    progress: str = ""  # task rows: 'offline 1000/2000' for an unfinished run; '' when finished
    unfinished: tuple = ()  # domain / overall rows: the unfinished runs they include


# ------------------------------------------------------------------------------------- aggregation

def final_scores(run: RunLogs, phase: str) -> dict[int, tuple[int, float]]:
    """seed -> (step, success) of the seed's `phase` evaluation with the largest step (the later
    row in the file on a tie)."""
    out = {}
    ev = run.eval
    for i in np.flatnonzero(ev["phase"] == phase):
        seed, step = int(ev["seed"][i]), int(ev["step"][i])
        if seed not in out or step >= out[seed][0]:
            out[seed] = (step, float(ev["success"][i]))
    return out


def seed_std(values: np.ndarray, axis=None):
    """Sample std over seeds (ddof=STD_DDOF); NaN where there are too few seeds."""
    values = np.asarray(values, dtype=np.float64)
    n = values.size if axis is None else values.shape[axis]
    if n <= STD_DDOF:
        return np.full(np.mean(values, axis=axis).shape, np.nan) if axis is not None else math.nan
    return values.std(axis=axis, ddof=STD_DDOF)


def _stats(per_seed: dict[int, float]) -> tuple[float, float]:
    values = np.array([per_seed[s] for s in sorted(per_seed)], dtype=np.float64)
    return float(100 * values.mean()), float(100 * seed_std(values))


def _common_seeds(seed_sets: dict[str, set], what: str) -> tuple[set, tuple]:
    """Seeds common to all the named seed sets, and a note if some seeds were dropped."""
    common = set.intersection(*seed_sets.values())
    union = set.union(*seed_sets.values())
    if common == union:
        return common, ()
    missing = {name: sorted(union - seeds) for name, seeds in seed_sets.items() if union - seeds}
    detail = "; ".join(f"{name} lacks seed(s) {', '.join(map(str, m))}"
                       for name, m in missing.items())
    if not common:
        return common, (f"no seed common to its {what}: {detail}",)
    return common, (f"over the {len(common)} seed(s) common to its {what} "
                    f"({', '.join(map(str, sorted(common)))}): {detail}",)


def aggregate(runs: Sequence[RunLogs], phase: str) -> list[Row]:
    """Task, domain and overall rows for every method with evaluations of `phase`.

    Per seed first (domain score of seed s = mean of seed s's task scores over the domain's tasks
    present; overall = mean of the domain scores), then mean and sample std (ddof = 1) over the seeds
    common to the tasks (domains). A domain or overall with no common seed gets a NaN row."""
    if phase not in PHASES:
        raise ValueError(f"phase {phase!r} is not one of {PHASES}")
    by_method = collections.defaultdict(list)
    for run in runs:
        by_method[run.method].append(run)
    rows = []
    for method in sorted(by_method, key=method_key):
        by_domain = collections.defaultdict(list)
        for run in sorted(by_method[method], key=lambda r: r.task):
            scores = final_scores(run, phase)
            if not scores:
                continue
            per_seed = {s: v for s, (_, v) in scores.items()}
            steps = sorted({step for step, _ in scores.values()})
            notes = ()
            if len(steps) > 1:
                notes = ("final evaluation step differs across seeds: " + ", ".join(
                    f"seed {s} at {scores[s][0]}" for s in sorted(scores)),)
            mean, std = _stats(per_seed)
            task_row = Row("task", run.env_name, method, phase, mean, std, len(per_seed), 1,
                           domain=run.domain, task=run.task,
                           per_seed=tuple(sorted(per_seed.items())), final_steps=tuple(steps),
                           notes=notes, progress=run.progress(phase, min(steps)))
            by_domain[run.domain].append(task_row)
            rows.append(task_row)
        domain_rows = []
        for domain in sorted(by_domain, key=domain_key):
            task_rows = by_domain[domain]
            seeds, notes = _common_seeds(
                {f"task{r.task}": {s for s, _ in r.per_seed} for r in task_rows}, "tasks")
            per_seed = {s: float(np.mean([dict(r.per_seed)[s] for r in task_rows])) for s in seeds}
            mean, std = _stats(per_seed) if per_seed else (math.nan, math.nan)
            domain_rows.append(Row("domain", domain, method, phase, mean, std, len(per_seed),
                                   len(task_rows), domain=domain, num_domains=1,
                                   members=tuple(r.task for r in task_rows),
                                   per_seed=tuple(sorted(per_seed.items())), notes=notes,
                                   unfinished=tuple(f"{r.name} ({r.progress})" for r in task_rows
                                                    if r.progress)))
        rows.extend(domain_rows)
        valid = [r for r in domain_rows if r.num_seeds]
        if valid:
            seeds, notes = _common_seeds(
                {r.name: {s for s, _ in r.per_seed} for r in valid}, "domains")
            per_seed = {s: float(np.mean([dict(r.per_seed)[s] for r in valid])) for s in seeds}
            mean, std = _stats(per_seed) if per_seed else (math.nan, math.nan)
            if len(valid) < len(domain_rows):
                notes += ("leaves out domain(s) with no common seed: " + ", ".join(
                    r.name for r in domain_rows if not r.num_seeds),)
            rows.append(Row("overall", "overall", method, phase, mean, std, len(per_seed),
                            sum(r.num_tasks for r in valid), num_domains=len(valid),
                            members=tuple(r.name for r in valid),
                            per_seed=tuple(sorted(per_seed.items())), notes=notes,
                            unfinished=sum((r.unfinished for r in valid), ())))
    return rows


# ------------------------------------------------------------------------------------- statistics
#
# The interquartile mean with stratified bootstrap confidence intervals, the probability of
# improvement and performance profiles (Agarwal et al., "Deep RL at the edge of the statistical
# precipice", 2021), computed with its library, rliable. A score matrix is (seeds, tasks) of success
# in [0, 1], one column per task; the bootstrap resamples the seeds of each task with replacement
# (the tasks are the strata).

BOOTSTRAP_REPS = 2000
POI_REPS = 500
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95


@dataclasses.dataclass(frozen=True)
class Interval:
    """A point estimate and its CONFIDENCE bootstrap interval (IQM in percent; probabilities in [0, 1])."""
    estimate: float
    low: float
    high: float
    num_tasks: int
    num_seeds: int  # for a probability of improvement: 'seeds of X / seeds of Y' in notes instead
    notes: str = ""


def _rliable():
    """rliable's library and metrics modules (imported on first use: it takes seconds)."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from rliable import library, metrics
    except Exception as e:  # not installed, or a dependency that does not import (arch with pandas 3)
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ReportError(f"the statistics need rliable, which could not be imported ({type(e).__name__}: "
                          f"{reason}); install it with: pip install rliable==1.2.0 'pandas<3' "
                          "(or pass --nostats)") from None
    return library, metrics


def _seeded(seed: int, fn, *args, **kwargs):
    """fn(*args, **kwargs) with numpy's global generator seeded, then restored. rliable 1.2's
    stratified bootstraps draw their indices with np.random.choice, ignoring the random_state they
    take, so the global generator is what makes an interval reproducible."""
    import warnings

    state = np.random.get_state()
    np.random.seed(seed)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)  # arch: random_state deprecation
            return fn(*args, **kwargs)
    finally:
        np.random.set_state(state)


def score_matrix(task_rows: Sequence[Row], seeds) -> np.ndarray:
    """(seeds, tasks) success in [0, 1] of the task rows, for the given seeds."""
    return np.array([[dict(r.per_seed)[s] for r in task_rows] for s in sorted(seeds)], dtype=np.float64)


def _aggregate_members(rows: Sequence[Row]) -> dict:
    """(level, name, method, phase) of every domain and overall row with seeds -> (task rows, seeds)."""
    tasks = collections.defaultdict(list)
    for r in rows:
        if r.level == "task":
            tasks[(r.method, r.phase, r.domain)].append(r)
    out = {}
    for r in rows:
        if r.level not in ("domain", "overall") or not r.num_seeds:
            continue
        domains = [r.name] if r.level == "domain" else list(r.members)
        members = [t for d in domains for t in tasks[(r.method, r.phase, d)]]
        out[(r.level, r.name, r.method, r.phase)] = (members, [s for s, _ in r.per_seed])
    return out


def iqm_intervals(rows: Sequence[Row], reps: int = BOOTSTRAP_REPS, seed: int = BOOTSTRAP_SEED) -> dict:
    """(level, name, method, phase) -> Interval of the IQM (percent) over the tasks x seeds of each
    domain and overall row: its tasks, and the seeds its mean ± std is over. Each estimate starts
    from the same seed, so it does not depend on which other rows are present."""
    library, metrics = _rliable()
    out = {}
    for key, (members, seeds) in _aggregate_members(rows).items():
        scores = score_matrix(members, seeds)
        point, interval = _seeded(
            seed, library.get_interval_estimates, {"x": scores}, lambda x: np.array([metrics.aggregate_iqm(x)]),
            reps=reps, confidence_interval_size=CONFIDENCE)
        out[key] = Interval(100 * float(point["x"][0]), 100 * float(interval["x"][0, 0]),
                            100 * float(interval["x"][1, 0]), scores.shape[1], scores.shape[0])
    return out


def _method_matrix(task_rows: Sequence[Row]) -> Optional[tuple[np.ndarray, list]]:
    seeds = set.intersection(*({s for s, _ in r.per_seed} for r in task_rows)) if task_rows else set()
    return (score_matrix(task_rows, seeds), sorted(seeds)) if seeds else None


def improvement(rows: Sequence[Row], reps: int = POI_REPS, seed: int = BOOTSTRAP_SEED) -> list:
    """[(x, y, phase, Interval of P(X > Y))] for every pair of methods with tasks in common, x before y
    in method order. P(X > Y) is, averaged over the common tasks, the probability that a seed of X
    scores higher than a seed of Y on that task (ties count one half); each method over the seeds
    common to those tasks."""
    library, metrics = _rliable()
    by = collections.defaultdict(dict)
    for r in rows:
        if r.level == "task":
            by[(r.method, r.phase)][r.name] = r
    methods = sorted({r.method for r in rows}, key=method_key)
    out = []
    for phase in PHASES:
        for i, x in enumerate(methods):
            for y in methods[i + 1:]:
                tasks = sorted(set(by[(x, phase)]) & set(by[(y, phase)]))
                if not tasks:
                    continue
                mx = _method_matrix([by[(x, phase)][t] for t in tasks])
                my = _method_matrix([by[(y, phase)][t] for t in tasks])
                if mx is None or my is None:
                    continue
                poi = lambda a, b: np.array([metrics.probability_of_improvement(a, b)])
                point, interval = _seeded(seed, library.get_interval_estimates, {"x": [mx[0], my[0]]}, poi,
                                          reps=reps, confidence_interval_size=CONFIDENCE)
                out.append((x, y, phase, Interval(
                    float(point["x"][0]), float(interval["x"][0, 0]), float(interval["x"][1, 0]), len(tasks),
                    0, notes=f"{len(mx[1])} seeds of {x}, {len(my[1])} of {y}")))
    return out


def performance_profiles(rows: Sequence[Row], phase: str, reps: int = BOOTSTRAP_REPS,
                         seed: int = BOOTSTRAP_SEED, taus=None) -> tuple:
    """(taus, {method: (profile, ci (2, taus), num_tasks, num_seeds)}): per method, the fraction of
    its (task, seed) runs whose success exceeds tau, over the tasks and seeds of its overall row."""
    library, _ = _rliable()
    taus = np.linspace(0.0, 1.0, 51) if taus is None else np.asarray(taus)
    out = {}
    for (level, _, method, row_phase), (members, seeds) in _aggregate_members(rows).items():
        if level != "overall" or row_phase != phase:
            continue
        scores = score_matrix(members, seeds)
        profiles, cis = _seeded(seed, library.create_performance_profile, {"x": scores}, taus, reps=reps,
                                confidence_interval_size=CONFIDENCE)
        out[method] = (profiles["x"], np.asarray(cis["x"]), scores.shape[1], scores.shape[0])
    return taus, dict(sorted(out.items(), key=lambda kv: method_key(kv[0])))
