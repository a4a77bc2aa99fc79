"""Launcher: BC pretraining, offline and online TRQAM / QAM fine-tuning, evaluation, checkpoints.

  python -m experiments.train                    # the CPU quickstart (configs/quickstart.py)
  python -m experiments.train --config=experiments/configs/ogbench.py \
      --env_name=cube-double-play-singletask-task2-v0 --method=trqam --num_seeds=8
  python -m experiments.train --config=experiments/configs/ogbench.py --env_name=cube-double-play --tasks=1,3 \
      --config.sweep.kl_budget=0.25,0.5,1.0    # a domain program: 2 tasks x 3 budgets x 4 seeds, one jit
  python -m experiments.train --config=experiments/configs/ogbench.py --suite=ogbench50 --shard=0/10

SIGTERM or SIGINT stops at the next safe point with a checkpoint there, prints one line and exits
with 143 or 130; the same command with --resume continues (and exits at once if the run is finished).
"""

import errno
import os
import re
import signal
import sys
import warnings

from experiments.infra.preemption import SIGNALS, Interrupted, Preemption

# From the first line on, SIGTERM / SIGINT are held until a safe point of `main` (the imports below take
# seconds): a signal at any moment of start-up then ends in one line and exit 143 / 130.
PREEMPT = Preemption().install(hold=True) if __name__ == "__main__" else None

from absl import app, flags
from ml_collections import config_flags

from experiments.infra import checkpointing
from experiments.infra.errors import UserError
from experiments.runner import plan, program, spec

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "quickstart.py")


def _one_line(error: Exception) -> str:
    """ml_collections and absl wrap the user's mistake in several layers; keep its words, in one line."""
    chain = [error]
    while chain[-1].__cause__ is not None or chain[-1].__context__ is not None:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
    for e in chain:
        match = re.search(r'Did you mean "([^"]+)" instead of "([^"]+)"', str(e))
        if match:
            return f"unknown config field {match.group(2)!r}; did you mean {match.group(1)!r}?"
    text = str(chain[-1]) if isinstance(error, flags.Error) and len(chain) > 1 else str(error)
    text = re.sub(r"Attempted \[[^]]*\]:", "", text)
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


try:  # config_flags reads the --config.* overrides from sys.argv here, at definition time
    config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "Run config file.", lock_config=True)
except Exception as e:  # a typo in a field, a bad value or a missing file: the user's input
    raise SystemExit(f"Error in the command line: {_one_line(e)}") from None
flags.DEFINE_string("env_name", None, "OGBench single-task env id, or a domain such as cube-double-play to train "
                    "its tasks in one program (overrides config.env_name).")
flags.DEFINE_string("tasks", None, "With a domain as --env_name: the tasks to train, e.g. 1,3 (overrides config.tasks).")
flags.DEFINE_enum("method", None, ["trqam", "qam", "sqam", "bc"], "Method (overrides config.method).")
flags.DEFINE_integer("seed", None, "Base seed; seed i of the run is seed + i (overrides config.seed).")
flags.DEFINE_integer("num_seeds", None, "Seeds trained in parallel (overrides config.num_seeds).")
flags.DEFINE_integer("bc_steps", None, "BC pretraining steps (overrides config.bc_steps).")
flags.DEFINE_integer("offline_steps", None, "Offline steps (overrides config.offline_steps).")
flags.DEFINE_integer("online_steps", None, "Online env steps (overrides config.online_steps).")
flags.DEFINE_string("output_dir", None, "Root of the run directories (overrides config.output_dir).")
flags.DEFINE_string("dataset_dir", None, "OGBench dataset directory (overrides config.dataset_dir).")
flags.DEFINE_string("suite", None, "'ogbench50' runs the 50 tasks (overrides config.suite).")
flags.DEFINE_string("shard", "", "i/n: run the i-th of n slices of the suite (cluster job arrays).")
flags.DEFINE_bool("resume", False, "Continue the runs in an existing output directory: a run that does not exist "
                  "starts, a partial one continues, a finished one is left as it is.")
flags.DEFINE_bool("report", True, "Write the results table and curves under <output_dir>/report at the end.")
FLAGS = flags.FLAGS

OVERRIDES = ("env_name", "tasks", "method", "seed", "num_seeds", "bc_steps", "offline_steps", "online_steps", "output_dir",
             "dataset_dir", "suite")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    checkpointing.quiet_orbax()
    warnings.filterwarnings("ignore", message=".*precision lowered by casting.*")  # ogbench's Box spaces
    warnings.filterwarnings("ignore", message=".*DISPLAY environment variable.*")  # glfw without a screen
    preempt = PREEMPT or Preemption().install(hold=True)
    try:
        config = FLAGS.config
        config.get("seed")  # ml_collections defers a failed load until first access
    except Exception as e:  # the config file could not be loaded
        raise SystemExit(f"Error in the command line: {_one_line(e.__cause__ or e)}") from None
    try:
        preempt.check()
        config.update_from_flattened_dict({k: FLAGS[k].value for k in OVERRIDES if FLAGS[k].value is not None})
        import jax

        jax.config.update("jax_default_matmul_precision",
                          None if config.matmul_precision == "default" else config.matmul_precision)
        tasks = spec.task_list(config, FLAGS.shard)
        # Every run of every program is planned (and its config checked) before the first one starts.
        programs = [(names, plan.plan(config, names))
                    for names in plan.by_domain(tasks if config.suite else plan.task_names(config))]
        for names, runs in programs:
            print(f"Running {', '.join(names)} ({config.method}, {config.num_seeds} seeds) ...")
            for path in program.train_runs(runs, resume=FLAGS.resume, preempt=preempt):
                print(f"Finished {path}")
        if FLAGS.report:
            from experiments import report

            runs_dir = os.path.expanduser(config.output_dir)
            try:
                print(report.make_report(runs_dir, log=print))
            except report.ReportError as e:
                raise SystemExit(f"Error while writing the report: {e}") from None
    except UserError as e:  # the user's to fix: the message alone, no traceback
        raise SystemExit(f"Error: {e}") from None
    except OSError as e:  # validation found the output dir writable; a disk that filled up since, say
        line = write_error(e, config.output_dir)
        if line is None:
            raise
        raise SystemExit(line) from None
    except Interrupted as e:
        _stop_at_once_on_signal(e.exit_code)  # from here on, the interpreter's teardown (jax's atexit) included
        print(e.message(), file=sys.stderr, flush=True)
        sys.stdout.flush()
        if e.again:  # raised wherever the second signal found the program: skip the interpreter's teardown
            _exit_now(e.exit_code)
        sys.exit(e.exit_code)


# A write that failed for a reason the user fixes (space, permissions, a read-only disk), not a bug.
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR)


def write_error(error: OSError, output_dir: str):
    """The one line for a failed write under output_dir, or None for any other OSError (a traceback)."""
    root = os.path.abspath(os.path.expanduser(output_dir))
    path = os.path.abspath(str(error.filename)) if error.filename else ""
    if error.errno not in WRITE_ERRNOS or not (path == root or path.startswith(root + os.sep)):
        return None
    return (f"Error: cannot write {path} ({error.strerror}). Make --output_dir writable (space, permissions), or "
            f"choose another; --resume then continues each run from its last checkpoint.")


def _stop_at_once_on_signal(code: int) -> None:
    """The stop is decided and its line printed once: a signal after this (a second Ctrl-C, a scheduler's
    repeat SIGTERM) ends the process with the same code at once, without a second line or a traceback."""
    for sig in SIGNALS:
        signal.signal(sig, lambda *_: _exit_now(code))


def _exit_now(code: int) -> None:
    """Exits without the interpreter's teardown (objects cut off mid-call by the second signal print
    __del__ tracebacks there), after unlinking multiprocessing's named semaphores, which its resource
    tracker would otherwise report as leaked."""
    import multiprocessing.util

    try:
        multiprocessing.util._run_finalizers(0)
    except Exception:  # best effort: the exit code is what matters
        pass
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def parse_flags(argv):
    """absl's parser, with a bad flag or config field (e.g. a typo) reported in one line."""
    try:
        return FLAGS(argv)
    except Exception as e:  # absl and ml_collections raise several types; all are the user's input
        raise SystemExit(f"Error in the command line: {_one_line(e)}") from None


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
