"""Paper-style results table, learning curves and an exp_data export from launcher run directories
(conventions §10).

  python -m experiments.report --runs_dir=runs                     # writes runs/report/...
  python -m experiments.report --runs_dir=runs --out_dir=/tmp/rep --noplots
  python -m experiments.report --runs_dir=runs --reference=trqam-exp-data.pkl   # + the authors' release

What each number means: docs/results.md.

Input: one run directory per (task, method), `<runs_dir>/<env_name>/<method>/`, holding
  eval.csv   step,phase,seed,success[,episode_return]  one row per seed per evaluation
  train.csv  step,phase,seed,<metrics...>              optional; lambda_eff, kl_hat, critic_loss,
                                                      q_mean and bc_loss are plotted
  config.json                                         optional; offline_steps, online_steps and
                                                      bc_steps tell a finished run from an unfinished one
  task.json                                           optional; offline/online kl_budget (the KL panel's eps)
where env_name is an OGBench single-task id `<domain>-singletask-task<N>-v0` and phase is
`offline` or `online` (steps count gradient steps; online steps continue from the offline ones, one
update per env step), or `bc` for an evaluation of the BC policy before fine-tuning (plotted, never
scored). Directories without an eval.csv (e.g. the report folder itself), and those whose name
starts with '_' or '.' (the launcher's shared `_pretrained_bc/`), are skipped. A --runs_dir one
level too high is searched one level down; a run or task directory gets an error naming the
directory to pass.

Scores (conventions §10): a seed's offline score is its eval row of phase offline with the largest step (the
end of offline training); its online score is its online row with the largest step. A domain's
score for seed s is the mean over the domain's tasks of seed s's score, over the seeds common to all
its tasks present; overall is, per seed, the mean over the domains present, over the seeds common to
them. Each level is then reported as mean +- sample std (ddof=1, as the reference's
exp_data/reproduce.py) over seeds, as success in percent. A run whose last evaluation is before the
final step of its config is marked unfinished ('offline 1000/2000', 'online 300/500 env steps'), and
so is every domain and overall score that includes it.

Beside them (experiments/published.py): the TRQAM paper's table, per domain mean +- std and overall,
for each run method's own paper method (trqam -> TRQAM, qam -> QAM, sqam and sqam_eps0.5 -> SQAM)
and always TRQAM's; with --reference, the authors' released results file (a pickle of
{(name, method): success array (evaluations, seeds)}, (30, 8) from 50K or (31, 8) from step 0, read
without running code by experiments/safe_pickle.py): per task, domain and overall, at 1M (offline)
and 1.5M (online), for every method it holds, and its curves on the success plots.

Statistics (rliable; --nostats turns them off): for every domain and overall score, the
interquartile mean over its tasks x seeds with a 95% stratified bootstrap CI (--bootstrap_reps,
--bootstrap_seed); for every pair of methods, the probability of improvement over their common tasks
with its CI (--poi_reps); per phase, a performance profile.

Output (under --out_dir, default <runs_dir>/report; the command prints where):
  results.csv  level,name,method,phase,mean,std_ddof1,num_seeds,num_tasks,domain,seeds,final_steps,
               status,notes,iqm,iqm_ci_low,iqm_ci_high (percent; level is task, domain, overall,
               published (the paper's table, method '<M> (paper)') or released (the --reference file,
               method '<M> 1M (released)' / '<M> 1.5M (released)'); status final / unfinished: ...)
  results.md   the table with the paper's figures beside each method (and the released file's
               columns), the IQM table, the probabilities of improvement, and the paper-layout table
               (domains as columns, methods as rows, best in bold) in Markdown and LaTeX
  improvement.csv  x,y,phase,probability_x_beats_y,ci_low,ci_high,num_tasks,seeds
  exp_data/ours-exp-data.pkl   the reference's exp_data layout: {(name, METHOD): array (evaluations,
               seeds)}, name a task, a domain or 'all'; ours-exp-data.json gives each entry's steps
  curves/<env_name>__<method>.png  success (from the BC policy at step 0), lambda_eff, kl_hat with the
               budget eps, critic loss, Q mean and BC loss vs steps, per seed and mean +- std
  curves/<domain>.png              methods' mean success curves per task, and the domain mean when the
                                   domain has more than one task
  curves/performance_profile_<phase>.png   fraction of (task, seed) runs above each success level
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import functools
import json
import math
import os
import re
import sys
from typing import Optional, Sequence

import numpy as np
from absl import app, flags

from experiments import files, published
from experiments.configs.domains import EXTRA_DOMAINS, TASKS
from experiments.configs.domains import SUITE_DOMAINS as DOMAINS  # conventions §10's order

PHASES = ("offline", "online")
# Phases accepted in eval.csv: "bc" marks an evaluation of the BC-pretrained policy (step 0 of
# fine-tuning), plotted as the start of the curves but never scored.
EVAL_PHASES = ("bc",) + PHASES
PHASE_RANK = {"bc": 0, "offline": 1, "online": 2}
# Standard deviation over seeds: the sample std (ddof=1), as the reference's exp_data/reproduce.py.
STD_DDOF = 1
TASKS_PER_DOMAIN = len(TASKS)
METHOD_ORDER = ("trqam", "sqam", "qam", "bc")
ENV_NAME_RE = re.compile(
    r"^(?P<domain>[A-Za-z0-9][A-Za-z0-9-]*?)-singletask-task(?P<task>\d+)-v\d+$")
EVAL_COLUMNS = ("step", "phase", "seed", "success")
TRAIN_COLUMNS = ("step", "phase", "seed")
CURVE_METRICS = (
    ("success", "success (%)"), ("lambda_eff", "lambda_eff"), ("kl_hat", "path KL (kl_hat)"),
    ("critic_loss", "critic loss"), ("q_mean", "Q mean"), ("bc_loss", "BC flow loss"))


class ReportError(Exception):
    """A problem with the input, described in one line naming the file."""


@dataclasses.dataclass
class Run:
    """One run directory: a (task, method) pair with all its seeds."""
    path: str
    env_name: str
    domain: str
    task: int
    method: str
    eval: dict  # column -> np.ndarray (phase: str array, step/seed: int, others: float)
    train: Optional[dict] = None  # same, or None without a train.csv
    config: Optional[dict] = None  # config.json: offline_steps, online_steps, bc_steps (progress)
    task_spec: Optional[dict] = None  # task.json: kl_budget of offline / online (the KL panel's eps)

    def expected_final_steps(self) -> dict:
        """phase -> the step its last evaluation is logged at when the run is finished (from
        config.json; empty without it). Online steps continue from the offline ones."""
        c = self.config or {}
        try:
            if self.method == "bc" or c.get("method") == "bc":
                return {"offline": int(c["bc_steps"])}
            offline, online = int(c["offline_steps"]), int(c.get("online_steps") or 0)
        except (KeyError, TypeError, ValueError):
            return {}
        return {"offline": offline, **({"online": offline + online} if online > 0 else {})}

    def progress(self, phase: str, reached: int) -> str:
        """'' when `phase` reached its final step (or it is unknown); else e.g. 'offline 1000/2000'
        or 'online 300/500 env steps'."""
        expected = self.expected_final_steps().get(phase)
        if expected is None or reached >= expected:
            return ""
        if phase == "online":
            offline = self.expected_final_steps()["offline"]
            return f"online {reached - offline}/{expected - offline} env steps"
        return f"{phase} {reached}/{expected}"


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


# ----------------------------------------------------------------------------------------- loading

def parse_env_name(env_name: str) -> tuple[str, int]:
    """'cube-double-play-singletask-task2-v0' -> ('cube-double-play', 2)."""
    match = ENV_NAME_RE.match(env_name)
    if not match:
        raise ValueError(f"{env_name!r} is not an OGBench single-task id "
                         "'<domain>-singletask-task<N>-v<k>'")
    return match.group("domain"), int(match.group("task"))


def _parse_int(text: str) -> int:
    value = float(text)  # accepts '1000000', '1e6', '1000000.0'
    if not math.isfinite(value) or value != int(value):
        raise ValueError
    return int(value)


def _parse_float(text: str) -> float:
    return float(text) if text else float("nan")


def _to_array(texts: list, parse, dtype, fail):
    """Column of stripped strings -> array; on a bad entry, fail(index, text)."""
    try:  # fast path: numpy parses the whole column
        values = np.array([t if t else "nan" for t in texts], dtype=np.float64)
        if dtype == np.float64:
            return values
        if np.all(np.isfinite(values)) and np.all(values == np.round(values)):
            return values.astype(dtype)
    except ValueError:
        pass
    for i, text in enumerate(texts):  # slow path: find the first bad entry
        try:
            parse(text)
        except ValueError:
            fail(i, text)
    raise AssertionError("unreachable")  # pragma: no cover


def read_table(path: str, required: Sequence[str], kind: str) -> dict:
    """Reads a launcher csv into column arrays (phase: object array of str; step, seed: int64; every
    other column: float64, an empty field reading as NaN), checking every field.

    kind 'eval': success must be a number in [0, 1]. Raises ReportError naming the file and line."""
    try:
        with open(path, newline="") as f:
            lines = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ReportError(f"{path}: cannot read: {e}") from None
    lines = [(i + 1, fields) for i, fields in enumerate(lines) if any(x.strip() for x in fields)]
    if not lines:
        raise ReportError(f"{path}: empty file (no header)")
    header = [h.strip() for h in lines[0][1]]
    missing = [c for c in required if c not in header]
    if missing:
        raise ReportError(f"{path}: header lacks column(s) {', '.join(missing)} "
                          f"(header: {','.join(header)})")
    if len(set(header)) != len(header) or "" in header:
        raise ReportError(
            f"{path}: header has duplicated or empty column names: {','.join(header)}")
    body = lines[1:]
    for line_no, fields in body:
        if len(fields) != len(header):
            raise ReportError(
                f"{path} line {line_no}: expected {len(header)} fields, got {len(fields)}")
    out = {}
    for j, name in enumerate(header):
        texts = [fields[j].strip() for _, fields in body]

        def fail(i, text, name=name, what="a number"):
            raise ReportError(f"{path} line {body[i][0]}: {name} {text!r} is not {what}")

        if name == "phase":
            allowed = EVAL_PHASES
            for i, text in enumerate(texts):
                if text not in allowed:
                    fail(i, text, what=f"one of {', '.join(allowed)}")
            out[name] = np.array(texts, dtype=object)
        elif name in ("step", "seed"):
            out[name] = _to_array(texts, _parse_int, np.int64,
                                  lambda i, text, name=name: fail(i, text, name, "an integer"))
        else:
            out[name] = _to_array(texts, _parse_float, np.float64, fail)
    if kind == "eval":
        bad = np.flatnonzero(~((out["success"] >= 0) & (out["success"] <= 1)))
        if bad.size:
            line_no, fields = body[int(bad[0])]
            text = fields[header.index("success")].strip()
            raise ReportError(f"{path} line {line_no}: success {text!r} is not in [0, 1]")
    return out


def _optional_json(path: str):
    """The parsed file, or None when it does not exist."""
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise ReportError(f"{path}: not valid JSON: {e}") from None


def load_run(path: str) -> Run:
    """Loads `<...>/<env_name>/<method>/`: eval.csv required, train.csv and config.json optional."""
    path = os.path.normpath(path)
    method = os.path.basename(path)
    env_name = os.path.basename(os.path.dirname(path))
    try:
        domain, task = parse_env_name(env_name)
    except ValueError as e:
        raise ReportError(f"{path}: run directory's parent {e}") from None
    config = _optional_json(os.path.join(path, "config.json"))
    task_spec = _optional_json(os.path.join(path, "task.json"))
    evals = read_table(os.path.join(path, "eval.csv"), EVAL_COLUMNS, "eval")
    train_path = os.path.join(path, "train.csv")
    train = read_table(train_path, TRAIN_COLUMNS, "train") if os.path.exists(train_path) else None
    return Run(path=path, env_name=env_name, domain=domain, task=task, method=method, eval=evals,
               train=train, config=config, task_spec=task_spec)


def _run_paths(runs_dir: str) -> list[str]:
    """`<runs_dir>/<env_name>/<method>/` directories holding an eval.csv."""
    paths = []
    for env_name in sorted(os.listdir(runs_dir)):
        env_dir = os.path.join(runs_dir, env_name)
        if env_name.startswith((".", "_")) or not os.path.isdir(env_dir):  # _pretrained_bc: not a run
            continue
        for method in sorted(os.listdir(env_dir)):
            run_dir = os.path.join(env_dir, method)
            if not method.startswith(".") and os.path.isfile(os.path.join(run_dir, "eval.csv")):
                paths.append(run_dir)
    return paths


def find_runs_dir(runs_dir: str) -> str:
    """runs_dir itself when it holds run directories; else the one directory below it that does
    (a --runs_dir one level too high). Raises ReportError saying where the runs are otherwise."""
    if not os.path.isdir(runs_dir):
        raise ReportError(f"{runs_dir}: not a directory")
    if _run_paths(runs_dir):
        return runs_dir
    below = [os.path.join(runs_dir, name) for name in sorted(os.listdir(runs_dir))
             if not name.startswith(".") and os.path.isdir(os.path.join(runs_dir, name))
             and _run_paths(os.path.join(runs_dir, name))]
    if len(below) == 1:
        return below[0]
    if below:
        raise ReportError(f"{runs_dir}: no run directories here, but {len(below)} directories below hold "
                          f"runs: {', '.join(below)}; pass one of them as --runs_dir")
    path = os.path.normpath(runs_dir)
    if os.path.isfile(os.path.join(path, "eval.csv")):  # a run directory: two levels too low
        raise ReportError(f"{runs_dir} is a run directory; pass the directory that holds the runs: "
                          f"--runs_dir={os.path.dirname(os.path.dirname(path))}")
    if ENV_NAME_RE.match(os.path.basename(path)) and _run_paths(os.path.dirname(path)):
        raise ReportError(f"{runs_dir} is a task directory; pass the directory that holds the runs: "
                          f"--runs_dir={os.path.dirname(path)}")
    raise ReportError(f"{runs_dir}: no run directories (expected "
                      "<runs_dir>/<domain>-singletask-task<N>-v0/<method>/eval.csv)")


def load_runs(runs_dir: str) -> list[Run]:
    """All run directories `<runs_dir>/<env_name>/<method>/` that hold an eval.csv, sorted (from
    the directory `find_runs_dir` picks)."""
    runs = [load_run(p) for p in _run_paths(find_runs_dir(runs_dir))]
    return sorted(runs, key=lambda r: (domain_key(r.domain), r.task, method_key(r.method)))


def domain_key(domain: str):
    known = DOMAINS + EXTRA_DOMAINS
    return (known.index(domain), "") if domain in known else (len(known), domain)


def method_key(method: str):
    """METHOD_ORDER by the name before any sweep suffix (sqam_eps0.5 next to sqam), then by name."""
    base = method.split("_")[0]
    return (METHOD_ORDER.index(base) if base in METHOD_ORDER else len(METHOD_ORDER), method)


# ------------------------------------------------------------------------------------- aggregation

def final_scores(run: Run, phase: str) -> dict[int, tuple[int, float]]:
    """seed -> (step, success) of the seed's `phase` evaluation with the largest step (the later
    row in the file on a tie)."""
    out = {}
    ev = run.eval
    for i in np.flatnonzero(ev["phase"] == phase):
        seed, step = int(ev["seed"][i]), int(ev["step"][i])
        if seed not in out or step >= out[seed][0]:
            out[seed] = (step, float(ev["success"][i]))
    return out


def _std(values: np.ndarray, axis=None):
    """Sample std over seeds (ddof=STD_DDOF); NaN where there are too few seeds."""
    values = np.asarray(values, dtype=np.float64)
    n = values.size if axis is None else values.shape[axis]
    if n <= STD_DDOF:
        return np.full(np.mean(values, axis=axis).shape, np.nan) if axis is not None else math.nan
    return values.std(axis=axis, ddof=STD_DDOF)


def _stats(per_seed: dict[int, float]) -> tuple[float, float]:
    values = np.array([per_seed[s] for s in sorted(per_seed)], dtype=np.float64)
    return float(100 * values.mean()), float(100 * _std(values))


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


def aggregate(runs: Sequence[Run], phase: str) -> list[Row]:
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


def write_improvement_csv(pairs: Sequence, path: str) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["x", "y", "phase", "probability_x_beats_y", "ci_low", "ci_high", "num_tasks", "seeds"])
        for x, y, phase, iv in pairs:
            writer.writerow([x, y, phase, repr(iv.estimate), repr(iv.low), repr(iv.high), iv.num_tasks, iv.notes])


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


# ------------------------------------------------------------------------------------ csv output

CSV_FIELDS = ("level", "name", "method", "phase", "mean", f"std_ddof{STD_DDOF}", "num_seeds",
              "num_tasks", "domain", "seeds", "final_steps", "status", "notes", "iqm", "iqm_ci_low",
              "iqm_ci_high")


def _status(r: Row) -> str:
    if r.level in ("published", "released"):
        return r.level
    if r.level == "task":
        return f"unfinished: {r.progress}" if r.progress else "final"
    return f"includes unfinished: {', '.join(r.unfinished)}" if r.unfinished else "final"


def paper_columns(methods: Sequence[str]) -> list[str]:
    """The paper's methods shown: those of the run methods, and TRQAM, in the paper's order."""
    wanted = {published.paper_method(m) for m in methods} | {"TRQAM"}
    return [m for m in published.PAPER_METHODS if m in wanted]


def _domain_tasks(domain: str) -> list[str]:
    return [f"{domain}-singletask-task{i}-v0" for i in range(1, TASKS_PER_DOMAIN + 1)]


def published_rows(rows: Sequence[Row], released: Optional[published.Released] = None) -> list[Row]:
    """Figures not computed from these runs, for the domains (tasks) present in `rows`, and overall:
    level 'published', the TRQAM paper's table (method 'TRQAM (paper)'), for the paper methods of the
    run methods and TRQAM; level 'released', the released results file's 1M (offline) and 1.5M
    (online) scores, per task, domain and overall, for every method it holds."""
    methods = sorted({r.method for r in rows}, key=method_key)
    domains = sorted({r.name for r in rows if r.level == "domain"}, key=domain_key)
    has_overall = any(r.level == "overall" for r in rows)
    out = []
    note = f"published figure, not computed from these runs: {published.PAPER_SOURCE}"
    for method in paper_columns(methods):
        for domain in domains:
            if domain in published.PAPER_TABLE[method]:
                mean, std = published.PAPER_TABLE[method][domain]
                out.append(Row("published", domain, f"{method} (paper)", "offline", float(mean), float(std),
                               published.PAPER_SEEDS, TASKS_PER_DOMAIN, domain=domain, notes=(note,)))
        if has_overall:
            out.append(Row("published", "overall", f"{method} (paper)", "offline",
                           float(published.PAPER_OVERALL[method]), math.nan, published.PAPER_SEEDS,
                           TASKS_PER_DOMAIN * len(published.PAPER_DOMAINS), num_domains=len(published.PAPER_DOMAINS),
                           notes=(note + "; the mean of the 10 rounded domain means",)))
    if released is None:
        return out
    note = f"released results file {released.path} ({released.describe()}), not computed from these runs"
    tasks = sorted({(r.domain, r.task, r.name) for r in rows if r.level == "task"},
                   key=lambda t: (domain_key(t[0]), t[1]))
    for method in released.methods:
        for phase in PHASES:
            step = "1M" if phase == "offline" else "1.5M"
            label = f"{method} {step} (released)"
            for domain, task, name in tasks:
                score = released.score(name, method, phase)
                if score:
                    out.append(Row("released", name, label, phase, *score, released.seeds, 1, domain=domain,
                                   task=task, notes=(note,)))
            for domain in domains:
                score = released.score(domain, method, phase, _domain_tasks(domain))
                if score:
                    out.append(Row("released", domain, label, phase, *score, released.seeds, TASKS_PER_DOMAIN,
                                   domain=domain, notes=(note,)))
            score = released.score("all", method, phase)
            if has_overall and score:
                out.append(Row("released", "overall", label, phase, *score, released.seeds, 0, notes=(note,)))
    return out


def write_csv(rows: Sequence[Row], path: str, released=None, iqm: Optional[dict] = None) -> None:
    """One row per score; the std column's name states its ddof. Figures not computed from the runs
    come last (level 'published': the paper's table; 'released': the released results file). Domain
    and overall rows carry the IQM and its bootstrap CI (percent) when `iqm` is given."""
    iqm = iqm or {}
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_FIELDS)
        for r in list(rows) + published_rows(rows, released):
            iv = iqm.get((r.level, r.name, r.method, r.phase))
            writer.writerow([r.level, r.name, r.method, r.phase, repr(r.mean), repr(r.std),
                             r.num_seeds, r.num_tasks, r.domain,
                             " ".join(str(s) for s, _ in r.per_seed),
                             " ".join(map(str, r.final_steps)), _status(r), " | ".join(r.notes),
                             *((repr(iv.estimate), repr(iv.low), repr(iv.high)) if iv else ("", "", ""))])


# ---------------------------------------------------------------------------------------- markdown

def format_score(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.1f} (1 seed, no std)" if math.isnan(std) else f"{mean:.1f} ± {std:.1f}"


def _step_notes(rows: Sequence[Row]) -> list[str]:
    """Per (method, phase): a note when task runs end at different final steps (unfinished runs)."""
    notes = []
    groups = collections.defaultdict(list)
    for r in rows:
        if r.level == "task":
            groups[(r.method, r.phase)].append(r)
    for (method, phase), task_rows in groups.items():
        last = max(max(r.final_steps) for r in task_rows)
        behind = [r for r in task_rows if min(r.final_steps) < last]
        if behind:
            earlier = ", ".join(f"{r.name} ({min(r.final_steps)})" for r in behind)
            notes.append(f"{method} {phase}: most advanced final evaluation at step {last}; "
                         f"earlier in {earlier}")
    return notes


def _columns(rows: Sequence[Row], released) -> list[tuple]:
    """('run', method, phase) per method and phase present, each paper method's ('paper', M) right
    after the last run method it belongs to (TRQAM's after the run columns when no run is TRQAM), then
    ('released', M, phase) for every method of the released file."""
    methods = sorted({r.method for r in rows if r.level in ("task", "domain", "overall")}, key=method_key)
    present = {(r.method, r.phase) for r in rows}
    paper = paper_columns(methods)
    last = {}
    for m in methods:
        if published.paper_method(m) in paper:
            last[published.paper_method(m)] = m
    columns = []
    for m in methods:
        columns += [("run", m, p) for p in PHASES if (m, p) in present]
        columns += [("paper", pm) for pm in paper if last.get(pm) == m]
    columns += [("paper", pm) for pm in paper if pm not in last]
    if released is not None:
        columns += [("released", pm, p) for pm in released.methods for p in PHASES]
    return columns


def _header(column) -> str:
    if column[0] == "run":
        return f"{column[1]} {column[2]}"
    if column[0] == "paper":
        return f"{column[1]} (paper)"
    return f"{column[1]} {'1M' if column[2] == 'offline' else '1.5M'} (released)"


def to_markdown(rows: Sequence[Row], released: Optional[published.Released] = None,
                iqm: Optional[dict] = None, pairs: Optional[Sequence] = None,
                iqm_info: str = "", poi_info: str = "") -> str:
    """Markdown: the table (tasks grouped under domains, then domain means, then overall; one column
    per method and phase, the paper's figures beside their methods, the released file's columns
    last), the IQM table, the probabilities of improvement, and the paper-layout table."""
    columns = _columns(rows, released)
    cells = {(r.level, r.name, r.method, r.phase): r for r in rows}
    extra = {(r.level, r.name, r.method, r.phase): r for r in published_rows(rows, released)}
    notes: list[str] = []

    def run_cell(level, name, method, phase):
        r = cells.get((level, name, method, phase))
        if r is None:
            return "–"
        text = format_score(r.mean, r.std)
        if level == "domain" and r.num_tasks != TASKS_PER_DOMAIN:
            text += f" ({r.num_tasks}/{TASKS_PER_DOMAIN} tasks)"
        if level == "overall" and set(r.members) != set(DOMAINS):
            outside = [d for d in r.members if d not in DOMAINS]
            text += (f" ({r.num_domains}/{len(DOMAINS)} domains)" if not outside else
                     f" ({r.num_domains} domains, incl. {', '.join(outside)})")
        if r.progress:
            text += f" (unfinished: {r.progress})"
        elif r.unfinished:
            text += " (incl. unfinished)"
            notes.append(f"{name} / {method} / {phase}: includes unfinished run(s): {', '.join(r.unfinished)}")
            text += f" [{len(notes)}]"
        for note in r.notes:
            notes.append(f"{name} / {method} / {phase}: {note}")
            text += f" [{len(notes)}]"
        return text

    def cell(column, level, name):
        if column[0] == "run":
            return run_cell(level, name, column[1], column[2])
        if column[0] == "paper":
            r = extra.get(("published", name, f"{column[1]} (paper)", "offline"))
            if r is None:
                return "–"
            return f"{r.mean:.0f}" if math.isnan(r.std) else f"{r.mean:.0f} ± {r.std:.0f}"
        r = extra.get(("released", name, _header(column), column[2]))
        return "–" if r is None else format_score(r.mean, r.std)

    def line(label, level, name):
        return "| " + " | ".join([label] + [cell(c, level, name) for c in columns]) + " |"

    domains = sorted({r.domain for r in rows if r.level == "domain"}, key=domain_key)
    tasks = sorted({(r.domain, r.task, r.name) for r in rows if r.level == "task"},
                   key=lambda t: (domain_key(t[0]), t[1], t[2]))
    seeds = sorted({r.num_seeds for r in rows if r.level == "task"})
    out = [
        f"Success rate (%), mean ± std over seeds (sample std, ddof={STD_DDOF}, as the reference's "
        "exp_data/reproduce.py). Offline: each seed's "
        "last offline evaluation (end of offline training); online: its last online evaluation. "
        "Domain: per seed, the mean over the domain's tasks, then mean ± std over the seeds "
        "common to them; overall: per seed, the mean over the domains present, then mean ± std "
        "over seeds. "
        f"Seeds per task: {', '.join(map(str, seeds))}.",
        "",
        "| task | " + " | ".join(_header(c) for c in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    blank = " |" * len(columns)
    for domain in domains:
        out.append(f"| **{domain}** |" + blank)
        for d, task, name in tasks:
            if d == domain:
                out.append(line(f"task{task}", "task", name))
    out.append("| **domain mean** |" + blank)
    for domain in domains:
        out.append(line(domain, "domain", domain))
    out.append(line("**overall**", "overall", "overall"))
    notes.extend(_step_notes(rows))
    out += ["", f"Columns marked (paper) are published figures, not computed from these runs: "
            f"{published.PAPER_SOURCE}; per domain the mean of its 5 tasks, overall the mean of all 10 "
            "domains (the paper gives no per-task figures). " + published.QAM_RELEASE_FOOTNOTE]
    outside = [d for d in domains if d not in published.PAPER_DOMAINS]
    if outside:
        out[-1] += (f" {', '.join(outside)} {'is' if len(outside) == 1 else 'are'} not among the paper's 10 "
                    "domains: no paper figure.")
    if released is not None:
        out += ["", f"Columns marked (released) are from the authors' released results file {released.path} "
                f"({released.describe()}): mean ± std (ddof={STD_DDOF}) over its {released.seeds} seeds at 1M "
                "steps (offline) and 1.5M (online: 1M offline steps then 500K env steps); a domain is its "
                "own entry (else the per-seed mean of its 5 tasks), overall the file's 'all' entry."]
    if notes:
        out += ["", "Notes:"] + [f"[{i}] {n}" for i, n in enumerate(notes, 1)]
    if iqm:
        out += ["", *iqm_markdown(rows, iqm, iqm_info)]
    if pairs:
        out += ["", *improvement_markdown(pairs, poi_info)]
    out += ["", *paper_layout(rows)]
    return "\n".join(out) + "\n"


def iqm_markdown(rows: Sequence[Row], iqm: dict, stats_info: str = "") -> list[str]:
    """The IQM table: a row per domain and overall, a column per method and phase."""
    columns = sorted({(k[2], k[3]) for k in iqm}, key=lambda c: (method_key(c[0]), PHASES.index(c[1])))
    domains = sorted({k[1] for k in iqm if k[0] == "domain"}, key=domain_key)

    def cell(level, name, method, phase):
        iv = iqm.get((level, name, method, phase))
        return "–" if iv is None else (f"{iv.estimate:.1f} [{iv.low:.1f}, {iv.high:.1f}] "
                                       f"({iv.num_tasks}×{iv.num_seeds})")

    out = [f"Interquartile mean (IQM, success %) with its {100 * CONFIDENCE:.0f}% stratified bootstrap "
           "confidence interval [low, high] over (tasks × seeds), computed with rliable: the mean of the "
           "middle 50% of all the (task, seed) scores of the domain (overall: of every task present); "
           f"the bootstrap resamples each task's seeds with replacement{stats_info}.",
           "", "| IQM | " + " | ".join(f"{m} {p}" for m, p in columns) + " |", "|---|" + "---|" * len(columns)]
    for level, name in [("domain", d) for d in domains] + [("overall", "overall")]:
        out.append(f"| {'**overall**' if level == 'overall' else name} | "
                   + " | ".join(cell(level, name, m, p) for m, p in columns) + " |")
    return out


def improvement_markdown(pairs: Sequence, stats_info: str = "") -> list[str]:
    out = ["Probability of improvement P(X > Y), computed with rliable: on each task both methods ran, the "
           "probability that a seed of X scores higher than a seed of Y (ties count one half), averaged "
           f"over those tasks; 0.5 means neither is better. {100 * CONFIDENCE:.0f}% stratified bootstrap "
           f"confidence interval{stats_info}. P(Y > X) = 1 − P(X > Y).",
           "", "| X | Y | phase | P(X > Y) | CI | tasks | seeds |", "|---|---|---|---|---|---|---|"]
    for x, y, phase, iv in pairs:
        out.append(f"| {x} | {y} | {phase} | {iv.estimate:.2f} | [{iv.low:.2f}, {iv.high:.2f}] | "
                   f"{iv.num_tasks} | {iv.notes} |")
    return out


def paper_layout(rows: Sequence[Row]) -> list[str]:
    """The paper's table layout (domains as columns, methods as rows, best in bold), in Markdown and
    LaTeX: the paper's rows, then this report's methods, offline, rounded to whole percent. Our
    'all' cell is shown only when the method has all 10 domains."""
    ours = sorted({r.method for r in rows if r.level == "domain" and r.phase == "offline"}, key=method_key)
    extra_domains = sorted({r.name for r in rows if r.level == "domain" and r.name not in published.PAPER_DOMAINS},
                           key=domain_key)
    domains = list(published.PAPER_DOMAINS) + extra_domains
    cells = {(r.level, r.name, r.method): r for r in rows if r.phase == "offline"}
    table = []  # (label, {column: (mean, std or nan, marker)})
    for m in published.PAPER_METHODS:
        row = {d: (*published.PAPER_TABLE[m][d], "") for d in published.PAPER_DOMAINS}
        row["all"] = (published.PAPER_OVERALL[m], math.nan, "")
        table.append((m, row))
    for m in ours:
        row = {}
        for d in domains:
            r = cells.get(("domain", d, m))
            if r is not None and not math.isnan(r.mean):
                row[d] = (r.mean, r.std, "" if r.num_tasks == TASKS_PER_DOMAIN else "†")
        r = cells.get(("overall", "overall", m))
        if r is not None and set(published.PAPER_DOMAINS) <= set(r.members):
            row["all"] = (r.mean, math.nan, "")
        if row:
            table.append((f"{m} (ours)", row))
    columns = domains + ["all"]
    # Best per column, bold only where the column has more than one figure to compare.
    best = {c: max(round(row[c][0]) for _, row in table if c in row) if sum(c in row for _, row in table) > 1
            else None for c in columns}

    def text(row, c, bold, pm="±"):
        if c not in row:
            return "–"
        mean, std, marker = row[c]
        value = f"{mean:.0f}" if math.isnan(std) else f"{mean:.0f} {pm} {std:.0f}"
        return bold(value) + marker if round(mean) == best[c] else value + marker

    short = {d: published.PAPER_SHORT.get(d, d.replace("-play", "")) for d in domains}
    md = ["Offline success (%) in the TRQAM paper's layout: the paper's rows (at 1M steps), then this report's "
          "methods (their last offline evaluation), mean ± std over seeds, rounded; best per column in bold. "
          "† fewer than 5 tasks of the domain; 'all' for our methods only with all 10 domains.",
          "", "| method | " + " | ".join(short[d] for d in domains) + " | all |",
          "|---|" + "---|" * len(columns)]
    for label, row in table:
        md.append(f"| {label} | " + " | ".join(text(row, c, lambda v: f"**{v}**") for c in columns) + " |")
    tex = ["```latex", "\\begin{tabular}{l" + "c" * len(columns) + "}", "\\toprule",
           "Method & " + " & ".join(short[d] for d in domains) + " & all \\\\", "\\midrule"]
    for i, (label, row) in enumerate(table):
        if i == len(published.PAPER_METHODS) and len(table) > i:
            tex.append("\\midrule")
        cells_tex = [text(row, c, lambda v: f"\\textbf{{{v}}}", "$\\pm$").replace("†", "$^\\dagger$")
                     .replace("–", "--") for c in columns]
        tex.append(label.replace("_", "\\_") + " & " + " & ".join(cells_tex) + " \\\\")
    tex += ["\\bottomrule", "\\end{tabular}", "```"]
    return md + [""] + tex


# ---------------------------------------------------------------------------------------- plotting

def seed_curves(table: Optional[dict], column: str) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """seed -> (steps, values) sorted by step, offline before online on a shared step (the later row
    kept), NaNs dropped. Empty when the table or the column is absent."""
    if table is None or column not in table:
        return {}
    rank = np.array([PHASE_RANK[p] for p in table["phase"]], dtype=np.int64)
    curves = {}
    for seed in np.unique(table["seed"]):
        idx = np.flatnonzero(table["seed"] == seed)
        idx = idx[np.lexsort((idx, rank[idx], table["step"][idx]))]
        by_step = {}
        for i in idx:
            by_step[int(table["step"][i])] = float(table[column][i])
        steps = np.array(list(by_step), dtype=np.int64)
        values = np.array(list(by_step.values()), dtype=np.float64)
        keep = np.isfinite(values)
        if keep.any():
            curves[int(seed)] = (steps[keep], values[keep])
    return curves


def band(curves: dict) -> Optional[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(steps common to all curves, mean, std with ddof=STD_DDOF; NaN for one curve), or None."""
    if not curves:
        return None
    steps = functools.reduce(np.intersect1d, [s for s, _ in curves.values()])
    if steps.size == 0:
        return None
    values = np.stack([v[np.searchsorted(s, steps)] for s, v in curves.values()])
    return steps, values.mean(0), _std(values, axis=0)


def mean_over_tasks(per_task: Sequence[dict]) -> dict:
    """Per seed common to all tasks, the mean over tasks at the steps common to all of them."""
    seeds = set.intersection(*(set(c) for c in per_task)) if per_task else set()
    out = {}
    for seed in sorted(seeds):
        sub = {i: c[seed] for i, c in enumerate(per_task)}
        b = band(sub)
        if b is not None:
            out[seed] = (b[0], b[1])
    return out


def online_boundary(run: Run) -> Optional[int]:
    """The step where online fine-tuning starts (config.json's offline_steps, else the largest
    offline step), if the run has online rows (in eval.csv or train.csv)."""
    tables = [t for t in (run.eval, run.train) if t is not None and len(t["step"])]
    if not any((t["phase"] == "online").any() for t in tables):
        return None
    expected = run.expected_final_steps()
    if "offline" in expected and run.method != "bc":
        return expected["offline"]
    offline = [t["step"][t["phase"] == "offline"] for t in tables]
    offline = [s for s in offline if s.size]
    return int(max(s.max() for s in offline)) if offline else None


def _draw(ax, curves, color=None, label=None, per_seed=True):
    if per_seed:
        for steps, values in curves.values():
            ax.plot(steps, values, lw=0.6, alpha=0.45, color=color or "C0")
    b = band(curves)
    if b is not None:
        steps, mean, std = b
        ax.plot(steps, mean, lw=1.8, color=color or "C0", label=label)
        ax.fill_between(steps, mean - std, mean + std, alpha=0.2, color=color or "C0", lw=0)
        if steps.size and steps[0] == 0:  # the BC-pretrained policy, evaluated before fine-tuning
            ax.plot([0], [mean[0]], marker="o", ls="none", color=color or "C0", mec="k",
                    label="BC policy (step 0)" if per_seed or label is None else None)


def _draw_released(ax, released, name: str, method: str, color: str, domain_tasks=None) -> bool:
    """The released file's curve of (name, method): mean ± std over its seeds, dashed. False if absent."""
    if released is None:
        return False
    values = released.entry(name, method, domain_tasks)
    if values is None:
        return False
    import warnings

    with warnings.catch_warnings():  # a row without any value (NaN) is left as a gap
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = 100 * np.nanmean(values, axis=1)
        std = 100 * np.nanstd(values, axis=1, ddof=STD_DDOF)
    ax.plot(released.steps, mean, lw=1.4, ls="--", color=color, label=f"{method} (released)")
    if values.shape[1] > 1:
        ax.fill_between(released.steps, mean - std, mean + std, alpha=0.1, color=color, lw=0)
    return True


def _released_methods(methods: Sequence[str]) -> list[tuple[str, str]]:
    """(paper method, color) to draw from a released file beside run methods colored C0, C1, ...:
    each run method's own (its color), and TRQAM's (gray unless a run method is TRQAM)."""
    out = {}
    for k, m in enumerate(methods):
        pm = published.paper_method(m)
        if pm and pm not in out:
            out[pm] = f"C{k}"
    out.setdefault("TRQAM", "0.45")
    return list(out.items())


def kl_budgets(run: Run) -> dict:
    """phase -> the KL budget eps of a TRQAM or SQAM run (task.json), for the phases the run has."""
    spec = run.task_spec or {}
    if run.method.split("_")[0] not in ("trqam", "sqam"):
        return {}
    out = {}
    for phase in PHASES:
        try:
            out[phase] = float(spec[phase]["kl_budget"])
        except (KeyError, TypeError, ValueError):
            pass
    return out


def _draw_budget(ax, run: Run, boundary: Optional[int]) -> None:
    """The KL budget eps as a horizontal line, per phase (offline, then online past the boundary)."""
    budgets = kl_budgets(run)
    if "offline" not in budgets:
        return
    if boundary is None or budgets.get("online", budgets["offline"]) == budgets["offline"]:
        ax.axhline(budgets["offline"], color="C3", ls=":", lw=1.5, label=f"budget eps = {budgets['offline']:g}")
        return
    x0, x1 = ax.get_xlim()
    ax.hlines(budgets["offline"], min(x0, 0), boundary, color="C3", ls=":", lw=1.5,
              label=f"offline budget eps = {budgets['offline']:g}")
    ax.hlines(budgets["online"], boundary, max(x1, boundary), color="C1", ls=":", lw=1.5,
              label=f"online budget eps = {budgets['online']:g}")


def _finish(ax, title, ylabel, boundary, empty_text=None, legend=True):
    if ylabel.startswith("success"):
        ax.set_ylim(-3, 103)
    ax.set_title(title, fontsize=9)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if boundary is None:
        ax.set_xlabel("gradient steps")
    else:
        # Online, one update per env step: step = offline steps + env steps. The top axis counts
        # the online env steps from the boundary.
        ax.axvline(boundary, color="k", ls="--", lw=1, alpha=0.7, label=f"offline → online (step {boundary})")
        ax.set_xlabel(f"gradient steps (offline) | {boundary} + env steps (online)")
        top = ax.secondary_xaxis("top", functions=(lambda x, b=boundary: x - b, lambda x, b=boundary: x + b))
        from matplotlib.ticker import FuncFormatter
        top.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}" if v >= 0 else ""))
        top.set_xlabel("online env steps", fontsize=7)
        top.tick_params(labelsize=6)
    if empty_text:
        ax.text(0.5, 0.5, empty_text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def _new_figure(ncols, nrows=1):
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend
    fig = Figure(figsize=(4.2 * ncols, 3.2 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    return fig, axes


def plot_run(run: Run, path: str, released=None):
    """Success (from the BC policy at step 0 when eval.csv has it), lambda_eff, kl_hat (with the
    budget eps), critic loss, Q mean and BC loss vs steps: thin per-seed lines, mean +- std band.
    With a released results file, the success panel also shows its curves of the run's method and
    TRQAM for this task (dashed)."""
    fig, axes = _new_figure(3, -(-len(CURVE_METRICS) // 3))
    boundary = online_boundary(run)
    for ax, (column, ylabel) in zip(axes, CURVE_METRICS):
        table = run.eval if column == "success" else run.train
        curves = seed_curves(table, column)
        if column == "success":
            curves = {s: (x, 100 * y) for s, (x, y) in curves.items()}
        _draw(ax, curves)
        if column == "kl_hat":
            _draw_budget(ax, run, boundary)
        if column == "success":
            for method, color in _released_methods([run.method]):
                _draw_released(ax, released, run.env_name, method, "C1" if color == "C0" else color)
        where = "eval.csv" if column == "success" else "train.csv"
        _finish(ax, f"{column} ({len(curves)} seeds)", ylabel, boundary,
                None if curves else f"no {column} in {where}")
    fig.suptitle(f"{run.env_name} / {run.method}: thin lines are seeds; thick line and band, mean ± std "
                 f"(ddof={STD_DDOF}) over seeds", fontsize=10)
    fig.savefig(path, dpi=100)
    return fig


def plot_domain(runs: Sequence[Run], path: str, released=None):
    """One panel per task and one for the domain mean; methods' mean +- std success overlaid, and
    with a released results file, its curves of the run methods and TRQAM (dashed)."""
    domain = runs[0].domain
    tasks = sorted({r.task for r in runs})
    methods = sorted({r.method for r in runs}, key=method_key)
    with_mean = len(tasks) > 1  # a domain mean of one task would repeat its panel
    panels = len(tasks) + with_mean
    ncols = min(panels, 3)
    fig, axes = _new_figure(ncols, -(-panels // ncols))
    boundaries = [b for b in map(online_boundary, runs) if b is not None]
    boundary = max(boundaries) if boundaries else None
    for ax in axes[panels:]:
        ax.set_visible(False)
    for k, method in enumerate(methods):
        color = f"C{k}"
        per_task = []
        for ax, task in zip(axes, tasks):
            run = next((r for r in runs if r.task == task and r.method == method), None)
            if run is None:
                continue
            curves = {s: (x, 100 * y) for s, (x, y) in seed_curves(run.eval, "success").items()}
            per_task.append(curves)
            _draw(ax, curves, color=color, label=method, per_seed=False)
        if with_mean:
            _draw(axes[len(tasks)], mean_over_tasks(per_task), color=color,
                  label=f"{method} ({len(per_task)}/{TASKS_PER_DOMAIN} tasks)", per_seed=False)
    for method, color in _released_methods(methods):
        for ax, task in zip(axes, tasks):
            _draw_released(ax, released, f"{domain}-singletask-task{task}-v0", method, color)
        if with_mean:
            _draw_released(axes[len(tasks)], released, domain, method, color, _domain_tasks(domain))
    for ax, task in zip(axes, tasks):
        _finish(ax, f"task{task}", "success (%)", boundary)
    if with_mean:
        _finish(axes[len(tasks)], "domain mean", "success (%)", boundary)
    fig.suptitle(f"{domain}: mean ± std (ddof={STD_DDOF}) over seeds", fontsize=10)
    fig.savefig(path, dpi=100)
    return fig


def plot_profiles(rows: Sequence[Row], phase: str, path: str, reps: int = BOOTSTRAP_REPS,
                  seed: int = BOOTSTRAP_SEED):
    """Performance profiles (rliable): per method, the fraction of its (task, seed) runs with success
    above tau, with the 95% stratified bootstrap band. None when no method has an overall row."""
    taus, profiles = performance_profiles(rows, phase, reps, seed)
    if not profiles:
        return None
    fig, (ax,) = _new_figure(1)
    for k, (method, (profile, ci, num_tasks, num_seeds)) in enumerate(profiles.items()):
        ax.plot(100 * taus, profile, lw=1.8, color=f"C{k}", label=f"{method} ({num_tasks} tasks × {num_seeds} seeds)")
        ax.fill_between(100 * taus, ci[0], ci[1], alpha=0.2, color=f"C{k}", lw=0)
    ax.set_xlabel("success τ (%)")
    ax.set_ylabel("fraction of runs with success > τ")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"performance profile, {phase}\n(bands: 95% stratified bootstrap CI)", fontsize=8)
    fig.savefig(path, dpi=100)
    return fig


def write_plots(runs: Sequence[Run], curves_dir: str, released=None, rows: Optional[Sequence[Row]] = None,
                reps: int = BOOTSTRAP_REPS, seed: int = BOOTSTRAP_SEED) -> list[str]:
    """Per run and per domain PNGs; with `rows`, performance_profile_<phase>.png for each phase
    with an overall row."""
    os.makedirs(curves_dir, exist_ok=True)
    paths = []
    for run in runs:
        paths.append(os.path.join(curves_dir, f"{run.env_name}__{run.method}.png"))
        plot_run(run, paths[-1], released)
    by_domain = collections.defaultdict(list)
    for run in runs:
        by_domain[run.domain].append(run)
    for domain, domain_runs in by_domain.items():
        paths.append(os.path.join(curves_dir, f"{domain}.png"))
        plot_domain(domain_runs, paths[-1], released)
    for phase in PHASES if rows else ():
        path = os.path.join(curves_dir, f"performance_profile_{phase}.png")
        if plot_profiles(rows, phase, path, reps, seed) is not None:
            paths.append(path)
    return paths


# ------------------------------------------------------------------------------- exp_data export

EXP_DATA_FILE = "ours-exp-data.pkl"


def _seed_matrix(run: Run) -> Optional[tuple[np.ndarray, list, np.ndarray, list]]:
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


def export_exp_data(runs: Sequence[Run], out_dir: str) -> list[str]:
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


# -------------------------------------------------------------------------------------------- main

def load_reference(path: str) -> published.Released:
    """The authors' released results file, or a ReportError naming the problem."""
    try:
        return published.load_released(os.path.expanduser(path))
    except published.ReleasedResultsError as e:
        raise ReportError(f"--reference: {e}") from None


def make_report(runs_dir: str, out_dir: Optional[str] = None, plots: bool = True, log=None,
                reference: Optional[str] = None, stats: bool = True, bootstrap_reps: int = BOOTSTRAP_REPS,
                poi_reps: int = POI_REPS, bootstrap_seed: int = BOOTSTRAP_SEED) -> str:
    """Loads the runs, writes results.csv, results.md, improvement.csv, exp_data/ (and curves/),
    returns the Markdown. `log` (e.g. print) gets a line on where the runs were found, on the
    released file's layout, and where the files went.

    reference: the authors' released results pickle (trqam-exp-data.pkl), read without running
      code: per-task published columns (1M and 1.5M) and curves.
    stats: the rliable statistics (IQM with bootstrap CIs, probability of improvement, performance
      profiles), with bootstrap_reps (IQM, profiles) and poi_reps (probability of improvement)
      bootstrap replications, numpy's generator seeded with bootstrap_seed."""
    if bootstrap_reps < 1 or poi_reps < 1:
        raise ReportError(f"--bootstrap_reps={bootstrap_reps} and --poi_reps={poi_reps} must be at least 1")
    released = load_reference(reference) if reference else None
    found = find_runs_dir(runs_dir)
    if log is not None and os.path.normpath(found) != os.path.normpath(runs_dir):
        log(f"No runs directly in {runs_dir}; using the runs in {found}.")
    if log is not None and released is not None:
        log(f"Released results {released.path}: {released.describe()}; methods {', '.join(released.methods)}.")
    runs = load_runs(found)
    out_dir = out_dir or os.path.join(found, "report")
    os.makedirs(out_dir, exist_ok=True)
    rows = [row for phase in PHASES for row in aggregate(runs, phase)]
    iqm, pairs = {}, []
    if stats:
        iqm = iqm_intervals(rows, bootstrap_reps, bootstrap_seed)
        pairs = improvement(rows, poi_reps, bootstrap_seed)
    write_csv(rows, os.path.join(out_dir, "results.csv"), released, iqm)
    markdown = to_markdown(rows, released, iqm, pairs, f" ({bootstrap_reps} replications, seed {bootstrap_seed})",
                           f" ({poi_reps} replications, seed {bootstrap_seed})")
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(markdown)
    written = ["results.md", "results.csv"]
    if stats:
        write_improvement_csv(pairs, os.path.join(out_dir, "improvement.csv"))
        written.append("improvement.csv")
    export_exp_data(runs, os.path.join(out_dir, "exp_data"))
    written.append(f"exp_data/{EXP_DATA_FILE}")
    if plots:
        n = len(write_plots(runs, os.path.join(out_dir, "curves"), released, rows if stats else None,
                            bootstrap_reps, bootstrap_seed))
        written.append(f"curves/ ({n} PNGs)")
    if log is not None:
        log(f"Wrote {', '.join(written)} to {os.path.abspath(out_dir)}")
    return markdown


flags.DEFINE_string("runs_dir", None, "Directory of run directories <env_name>/<method>/.")
flags.DEFINE_string("out_dir", None, "Output directory (default: <runs_dir>/report).")
flags.DEFINE_bool("plots", True, "Write the learning-curve PNGs.")
flags.DEFINE_string("reference", None, "The authors' released results pickle (e.g. trqam-exp-data.pkl): adds "
                    "per-task published columns at 1M and 1.5M steps and published curves.")
flags.DEFINE_bool("stats", True, "IQM with bootstrap CIs, probability of improvement and performance profiles "
                  "(rliable).")
flags.DEFINE_integer("bootstrap_reps", BOOTSTRAP_REPS, "Bootstrap replications for the IQM CIs and profiles.")
flags.DEFINE_integer("poi_reps", POI_REPS, "Bootstrap replications for the probability-of-improvement CIs.")
flags.DEFINE_integer("bootstrap_seed", BOOTSTRAP_SEED, "Seed of the bootstrap (the same seed, the same CIs).")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS.runs_dir:
        raise app.UsageError("--runs_dir is required")
    messages = []
    try:
        markdown = make_report(FLAGS.runs_dir, FLAGS.out_dir, FLAGS.plots, log=messages.append,
                               reference=FLAGS.reference, stats=FLAGS.stats, bootstrap_reps=FLAGS.bootstrap_reps,
                               poi_reps=FLAGS.poi_reps, bootstrap_seed=FLAGS.bootstrap_seed)
    except ReportError as e:
        raise SystemExit(f"report: error: {e}") from None
    sys.stdout.write(markdown)
    for message in messages:
        print(message)


if __name__ == "__main__":
    app.run(main)
