"""Learning curves (matplotlib, no pyplot), under <out_dir>/curves/:

  <env_name>__<method>.png  success (from the BC policy at step 0), lambda_eff, kl_hat with the
                            budget eps, critic loss, Q mean and BC loss vs steps, per seed and mean +- std
  <domain>.png              methods' mean success curves per task, and the domain mean when the
                            domain has more than one task
  performance_profile_<phase>.png   fraction of (task, seed) runs above each success level
With --reference, the released file's curves are drawn dashed on the success panels.
"""

from __future__ import annotations

import collections
import functools
import os
from typing import Optional, Sequence

import numpy as np

from experiments.report.published import paper_method
from experiments.report.runs import (PHASES, TASKS_PER_DOMAIN, RunLogs, domain_tasks, method_key,
                                     seed_curves)
from experiments.report.stats import (BOOTSTRAP_REPS, BOOTSTRAP_SEED, STD_DDOF, Row,
                                      performance_profiles, seed_std)

CURVE_METRICS = (
    ("success", "success (%)"), ("lambda_eff", "lambda_eff"), ("kl_hat", "path KL (kl_hat)"),
    ("critic_loss", "critic loss"), ("q_mean", "Q mean"), ("bc_loss", "BC flow loss"))


def band(curves: dict) -> Optional[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(steps common to all curves, mean, std with ddof=STD_DDOF; NaN for one curve), or None."""
    if not curves:
        return None
    steps = functools.reduce(np.intersect1d, [s for s, _ in curves.values()])
    if steps.size == 0:
        return None
    values = np.stack([v[np.searchsorted(s, steps)] for s, v in curves.values()])
    return steps, values.mean(0), seed_std(values, axis=0)


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


def online_boundary(run: RunLogs) -> Optional[int]:
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
        pm = paper_method(m)
        if pm and pm not in out:
            out[pm] = f"C{k}"
    out.setdefault("TRQAM", "0.45")
    return list(out.items())


def kl_budgets(run: RunLogs) -> dict:
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


def _draw_budget(ax, run: RunLogs, boundary: Optional[int]) -> None:
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


def plot_run(run: RunLogs, path: str, released=None):
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


def plot_domain(runs: Sequence[RunLogs], path: str, released=None):
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
            _draw_released(axes[len(tasks)], released, domain, method, color, domain_tasks(domain))
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


def write_plots(runs: Sequence[RunLogs], curves_dir: str, released=None, rows: Optional[Sequence[Row]] = None,
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
