"""The report command: results table, statistics, learning curves and an exp_data export from launcher
run directories (conventions §10).

  python -m experiments.report --runs_dir=runs                     # writes runs/report/...
  python -m experiments.report --runs_dir=runs --out_dir=/tmp/rep --noplots
  python -m experiments.report --runs_dir=runs --reference=trqam-exp-data.pkl   # + the authors' release

What each number means: docs/results.md.

Output (under --out_dir, default <runs_dir>/report; the command prints where):
  results.md   the table with the paper's figures beside each method (and the released file's
               columns), the IQM table, the probabilities of improvement, and the paper-layout table
               (domains as columns, methods as rows, best in bold) in Markdown and LaTeX
  results.csv, improvement.csv   every score, and every pair's probability of improvement
  exp_data/ours-exp-data.pkl     the reference's exp_data layout (steps in ours-exp-data.json)
  curves/      per run and per domain learning curves, performance profiles
"""

import sys

from absl import app, flags

from experiments.report import ReportError, make_report
from experiments.report.stats import BOOTSTRAP_REPS, BOOTSTRAP_SEED, POI_REPS

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
