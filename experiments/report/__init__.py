"""Paper-style results table, statistics, learning curves and an exp_data export from launcher run
directories (conventions §10); `python -m experiments.report` is the command (__main__.py), and
docs/results.md says what each number means.

make_report below runs the modules in data-flow order:
  runs.py       reads the run directories <runs_dir>/<env_name>/<method>/ (eval.csv, train.csv, ...)
  stats.py      aggregates seeds into task, domain and overall scores; rliable's IQM, probability of
                improvement and performance profiles
  tables.py     results.csv, improvement.csv, results.md (with the paper's and the released figures)
  published.py  the TRQAM paper's table, as data with its source
  plots.py      curves/*.png
  exp_data.py   exp_data/ours-exp-data.pkl, and the authors' released results file (--reference)
"""

from __future__ import annotations

import os
from typing import Optional

from experiments.report import exp_data, tables
from experiments.report.runs import PHASES, ReportError, find_runs_dir, load_runs
# Functions, not the modules: make_report's arguments `plots` and `stats` would hide them.
from experiments.report.plots import write_plots
from experiments.report.stats import (BOOTSTRAP_REPS, BOOTSTRAP_SEED, POI_REPS, aggregate, improvement,
                                      iqm_intervals)

__all__ = ["ReportError", "make_report"]


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
    released = exp_data.load_reference(reference) if reference else None
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
    tables.write_csv(rows, os.path.join(out_dir, "results.csv"), released, iqm)
    markdown = tables.to_markdown(rows, released, iqm, pairs,
                                  f" ({bootstrap_reps} replications, seed {bootstrap_seed})",
                                  f" ({poi_reps} replications, seed {bootstrap_seed})")
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(markdown)
    written = ["results.md", "results.csv"]
    if stats:
        tables.write_improvement_csv(pairs, os.path.join(out_dir, "improvement.csv"))
        written.append("improvement.csv")
    exp_data.export_exp_data(runs, os.path.join(out_dir, "exp_data"))
    written.append(f"exp_data/{exp_data.EXP_DATA_FILE}")
    if plots:
        n = len(write_plots(runs, os.path.join(out_dir, "curves"), released, rows if stats else None,
                            bootstrap_reps, bootstrap_seed))
        written.append(f"curves/ ({n} PNGs)")
    if log is not None:
        log(f"Wrote {', '.join(written)} to {os.path.abspath(out_dir)}")
    return markdown
