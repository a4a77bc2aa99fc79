"""Paper-style results table and learning curves from launcher run directories (SPEC section 10).

  python -m experiments.report --runs_dir=runs                     # writes runs/report/...
  python -m experiments.report --runs_dir=runs --out_dir=/tmp/rep --noplots

Input: one run directory per (task, method), `<runs_dir>/<env_name>/<method>/`, holding
  eval.csv   step,phase,seed,success[,episode_return]  one row per seed per evaluation
  train.csv  step,phase,seed,<metrics...>              optional; lambda_eff and kl_hat are plotted
  config.json                                         optional; kept on the Run record, unused
where env_name is an OGBench single-task id `<domain>-singletask-task<N>-v0` and phase is
`offline` or `online` (steps count gradient steps and continue from offline into online).
Directories without an eval.csv (e.g. the report folder itself), and those whose name starts with
'_' or '.' (the launcher's shared `_pretrained_bc/`), are skipped.

Scores (SPEC 10): a seed's offline score is its eval row of phase offline with the largest step (the
end of offline training); its online score is its online row with the largest step. A domain's
score for seed s is the mean over the domain's tasks of seed s's score, over the seeds common to all
its tasks present; overall is, per seed, the mean over the domains present, over the seeds common to
them. Each level is then reported as mean +- population std (ddof=0) over seeds, as success in
percent.

Output (under --out_dir, default <runs_dir>/report):
  results.csv  level,name,method,phase,mean,std,num_seeds,num_tasks,domain,seeds,final_steps,notes
               (mean and std in percent; level is task, domain or overall)
  results.md   the Markdown table (also printed to stdout)
  curves/<env_name>__<method>.png  success, lambda_eff and kl_hat vs steps, per seed and mean +- std
  curves/<domain>.png              methods' mean success curves per task and for the domain mean
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

PHASES = ("offline", "online")
# SPEC section 10's order, then the extra single-task domain used for quick runs.
DOMAINS = (
    "antmaze-large-navigate", "antmaze-giant-navigate", "humanoidmaze-medium-navigate",
    "humanoidmaze-large-navigate", "scene-play", "puzzle-3x3-play", "puzzle-4x4-play",
    "cube-double-play", "cube-triple-play", "cube-quadruple-play",
)
EXTRA_DOMAINS = ("cube-single-play",)
TASKS_PER_DOMAIN = 5
METHOD_ORDER = ("trqam", "qam", "bc")
ENV_NAME_RE = re.compile(
    r"^(?P<domain>[A-Za-z0-9][A-Za-z0-9-]*?)-singletask-task(?P<task>\d+)-v\d+$")
EVAL_COLUMNS = ("step", "phase", "seed", "success")
TRAIN_COLUMNS = ("step", "phase", "seed")
CURVE_METRICS = (
    ("success", "success (%)"), ("lambda_eff", "lambda_eff"), ("kl_hat", "path KL (kl_hat)"))


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
    config: Optional[dict] = None


@dataclasses.dataclass(frozen=True)
class Row:
    """One aggregated score. mean and std are success in percent (std with ddof=0 over seeds)."""
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
            for i, text in enumerate(texts):
                if text not in PHASES:
                    fail(i, text, what=f"one of {', '.join(PHASES)}")
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


def load_run(path: str) -> Run:
    """Loads `<...>/<env_name>/<method>/`: eval.csv required, train.csv and config.json optional."""
    path = os.path.normpath(path)
    method = os.path.basename(path)
    env_name = os.path.basename(os.path.dirname(path))
    try:
        domain, task = parse_env_name(env_name)
    except ValueError as e:
        raise ReportError(f"{path}: run directory's parent {e}") from None
    config = None
    config_path = os.path.join(path, "config.json")
    if os.path.exists(config_path):
        try:
            with open(config_path) as f:
                config = json.load(f)
        except (OSError, ValueError) as e:
            raise ReportError(f"{config_path}: not valid JSON: {e}") from None
    evals = read_table(os.path.join(path, "eval.csv"), EVAL_COLUMNS, "eval")
    train_path = os.path.join(path, "train.csv")
    train = read_table(train_path, TRAIN_COLUMNS, "train") if os.path.exists(train_path) else None
    return Run(path=path, env_name=env_name, domain=domain, task=task, method=method, eval=evals,
               train=train, config=config)


def load_runs(runs_dir: str) -> list[Run]:
    """All run directories `<runs_dir>/<env_name>/<method>/` that hold an eval.csv, sorted."""
    if not os.path.isdir(runs_dir):
        raise ReportError(f"{runs_dir}: not a directory")
    runs = []
    for env_name in sorted(os.listdir(runs_dir)):
        env_dir = os.path.join(runs_dir, env_name)
        if env_name.startswith((".", "_")) or not os.path.isdir(env_dir):  # _pretrained_bc: not a run
            continue
        for method in sorted(os.listdir(env_dir)):
            run_dir = os.path.join(env_dir, method)
            if not method.startswith(".") and os.path.isfile(os.path.join(run_dir, "eval.csv")):
                runs.append(load_run(run_dir))
    if not runs:
        raise ReportError(f"{runs_dir}: no run directories (expected "
                          "<runs_dir>/<domain>-singletask-task<N>-v0/<method>/eval.csv)")
    return sorted(runs, key=lambda r: (domain_key(r.domain), r.task, method_key(r.method)))


def domain_key(domain: str):
    known = DOMAINS + EXTRA_DOMAINS
    return (known.index(domain), "") if domain in known else (len(known), domain)


def method_key(method: str):
    if method in METHOD_ORDER:
        return (METHOD_ORDER.index(method), "")
    return (len(METHOD_ORDER), method)


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


def _stats(per_seed: dict[int, float]) -> tuple[float, float]:
    values = np.array([per_seed[s] for s in sorted(per_seed)], dtype=np.float64)
    return float(100 * values.mean()), float(100 * values.std(ddof=0))


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
    present; overall = mean of the domain scores), then mean and population std over the seeds
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
                           notes=notes)
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
                                   per_seed=tuple(sorted(per_seed.items())), notes=notes))
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
                            per_seed=tuple(sorted(per_seed.items())), notes=notes))
    return rows


CSV_FIELDS = ("level", "name", "method", "phase", "mean", "std", "num_seeds", "num_tasks",
              "domain", "seeds", "final_steps", "notes")


def write_csv(rows: Sequence[Row], path: str) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_FIELDS)
        for r in rows:
            writer.writerow([r.level, r.name, r.method, r.phase, repr(r.mean), repr(r.std),
                             r.num_seeds, r.num_tasks, r.domain,
                             " ".join(str(s) for s, _ in r.per_seed),
                             " ".join(map(str, r.final_steps)), " | ".join(r.notes)])


# ---------------------------------------------------------------------------------------- markdown

def format_score(mean: float, std: float) -> str:
    return "–" if math.isnan(mean) else f"{mean:.1f} ± {std:.1f}"


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


def to_markdown(rows: Sequence[Row]) -> str:
    """Markdown table: tasks grouped under domains, then domain means, then overall; one column per
    method and phase (online only for methods with online scores). Notes are numbered below."""
    methods = sorted({r.method for r in rows}, key=method_key)
    present = {(r.method, r.phase) for r in rows}
    columns = [(m, p) for m in methods for p in PHASES if (m, p) in present]
    cells = {(r.level, r.name, r.method, r.phase): r for r in rows}
    notes: list[str] = []

    def cell(level, name, method, phase):
        r = cells.get((level, name, method, phase))
        if r is None:
            return "–"
        text = format_score(r.mean, r.std)
        if level == "domain" and r.num_tasks != TASKS_PER_DOMAIN:
            text += f" ({r.num_tasks}/{TASKS_PER_DOMAIN} tasks)"
        if level == "overall" and set(r.members) != set(DOMAINS):
            extra = [d for d in r.members if d not in DOMAINS]
            text += (f" ({r.num_domains}/{len(DOMAINS)} domains)" if not extra else
                     f" ({r.num_domains} domains, incl. {', '.join(extra)})")
        for note in r.notes:
            notes.append(f"{name} / {method} / {phase}: {note}")
            text += f" [{len(notes)}]"
        return text

    def line(label, level, name):
        return "| " + " | ".join([label] + [cell(level, name, m, p) for m, p in columns]) + " |"

    domains = sorted({r.domain for r in rows if r.level == "domain"}, key=domain_key)
    tasks = sorted({(r.domain, r.task, r.name) for r in rows if r.level == "task"},
                   key=lambda t: (domain_key(t[0]), t[1], t[2]))
    seeds = sorted({r.num_seeds for r in rows if r.level == "task"})
    out = [
        "Success rate (%), mean ± std over seeds (population std, ddof=0). Offline: each seed's "
        "last offline evaluation (end of offline training); online: its last online evaluation. "
        "Domain: per seed, the mean over the domain's tasks, then mean ± std over the seeds "
        "common to them; overall: per seed, the mean over the domains present, then mean ± std "
        "over seeds. "
        f"Seeds per task: {', '.join(map(str, seeds))}.",
        "",
        "| task | " + " | ".join(f"{m} {p}" for m, p in columns) + " |",
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
    if notes:
        out += ["", "Notes:"] + [f"[{i}] {n}" for i, n in enumerate(notes, 1)]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------- plotting

def seed_curves(table: Optional[dict], column: str) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """seed -> (steps, values) sorted by step, offline before online on a shared step (the later row
    kept), NaNs dropped. Empty when the table or the column is absent."""
    if table is None or column not in table:
        return {}
    rank = np.array([PHASES.index(p) for p in table["phase"]], dtype=np.int64)
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
    """(steps common to all curves, mean, population std) across the curves, or None."""
    if not curves:
        return None
    steps = functools.reduce(np.intersect1d, [s for s, _ in curves.values()])
    if steps.size == 0:
        return None
    values = np.stack([v[np.searchsorted(s, steps)] for s, v in curves.values()])
    return steps, values.mean(0), values.std(0)


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
    """Largest offline step, if the run has online rows (in eval.csv or train.csv)."""
    tables = [t for t in (run.eval, run.train) if t is not None and len(t["step"])]
    if not any((t["phase"] == "online").any() for t in tables):
        return None
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


def _finish(ax, title, ylabel, boundary, empty_text=None):
    if ylabel.startswith("success"):
        ax.set_ylim(-3, 103)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("gradient steps")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if boundary is not None:
        ax.axvline(boundary, color="k", ls="--", lw=1, alpha=0.7)
    if empty_text:
        ax.text(0.5, 0.5, empty_text, ha="center", va="center", transform=ax.transAxes, color="0.4")


def _new_figure(ncols, nrows=1):
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend
    fig = Figure(figsize=(4.2 * ncols, 3.2 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    return fig, axes


def plot_run(run: Run, path: str) -> None:
    """Success, lambda_eff and kl_hat vs steps: thin per-seed lines, mean +- std band."""
    fig, axes = _new_figure(len(CURVE_METRICS))
    boundary = online_boundary(run)
    for ax, (column, ylabel) in zip(axes, CURVE_METRICS):
        table = run.eval if column == "success" else run.train
        curves = seed_curves(table, column)
        if column == "success":
            curves = {s: (x, 100 * y) for s, (x, y) in curves.items()}
        _draw(ax, curves)
        where = "eval.csv" if column == "success" else "train.csv"
        _finish(ax, f"{column} ({len(curves)} seeds)", ylabel, boundary,
                None if curves else f"no {column} in {where}")
    fig.suptitle(f"{run.env_name} / {run.method}", fontsize=10)
    fig.savefig(path, dpi=100)


def plot_domain(runs: Sequence[Run], path: str) -> None:
    """One panel per task and one for the domain mean; methods' mean +- std success overlaid."""
    domain = runs[0].domain
    tasks = sorted({r.task for r in runs})
    methods = sorted({r.method for r in runs}, key=method_key)
    panels = len(tasks) + 1
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
        _draw(axes[len(tasks)], mean_over_tasks(per_task), color=color,
              label=f"{method} ({len(per_task)}/{TASKS_PER_DOMAIN} tasks)", per_seed=False)
    for ax, task in zip(axes, tasks):
        _finish(ax, f"task{task}", "success (%)", boundary)
    _finish(axes[len(tasks)], "domain mean", "success (%)", boundary)
    for ax in axes[:panels]:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(f"{domain}: mean ± std over seeds", fontsize=10)
    fig.savefig(path, dpi=100)


def write_plots(runs: Sequence[Run], curves_dir: str) -> list[str]:
    os.makedirs(curves_dir, exist_ok=True)
    paths = []
    for run in runs:
        paths.append(os.path.join(curves_dir, f"{run.env_name}__{run.method}.png"))
        plot_run(run, paths[-1])
    by_domain = collections.defaultdict(list)
    for run in runs:
        by_domain[run.domain].append(run)
    for domain, domain_runs in by_domain.items():
        paths.append(os.path.join(curves_dir, f"{domain}.png"))
        plot_domain(domain_runs, paths[-1])
    return paths


# -------------------------------------------------------------------------------------------- main

def make_report(runs_dir: str, out_dir: Optional[str] = None, plots: bool = True) -> str:
    """Loads the runs, writes results.csv, results.md (and curves/), returns the Markdown."""
    runs = load_runs(runs_dir)
    out_dir = out_dir or os.path.join(runs_dir, "report")
    os.makedirs(out_dir, exist_ok=True)
    rows = [row for phase in PHASES for row in aggregate(runs, phase)]
    write_csv(rows, os.path.join(out_dir, "results.csv"))
    markdown = to_markdown(rows)
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(markdown)
    if plots:
        write_plots(runs, os.path.join(out_dir, "curves"))
    return markdown


flags.DEFINE_string("runs_dir", None, "Directory of run directories <env_name>/<method>/.")
flags.DEFINE_string("out_dir", None, "Output directory (default: <runs_dir>/report).")
flags.DEFINE_bool("plots", True, "Write the learning-curve PNGs.")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS.runs_dir:
        raise app.UsageError("--runs_dir is required")
    try:
        markdown = make_report(FLAGS.runs_dir, FLAGS.out_dir, FLAGS.plots)
    except ReportError as e:
        raise SystemExit(f"report: error: {e}") from None
    sys.stdout.write(markdown)


if __name__ == "__main__":
    app.run(main)
