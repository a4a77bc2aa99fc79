"""Launcher: BC pretraining, offline and online TRQAM / QAM fine-tuning, evaluation, checkpoints.

  python -m experiments.train                    # the CPU quickstart (configs/quickstart.py)
  python -m experiments.train --config=experiments/configs/ogbench.py \
      --env_name=cube-double-play-singletask-task2-v0 --method=trqam --num_seeds=8
  python -m experiments.train --config=experiments/configs/ogbench.py --suite=ogbench50 --shard=0/10
"""

import os
import warnings

from absl import app, flags, logging
from ml_collections import config_flags

from experiments import checkpointing, data, pipeline, spec

config_flags.DEFINE_config_file("config", "experiments/configs/quickstart.py", "Run config file.",
                                lock_config=True)
flags.DEFINE_string("env_name", None, "OGBench single-task env id (overrides config.env_name).")
flags.DEFINE_enum("method", None, ["trqam", "qam", "bc"], "Method (overrides config.method).")
flags.DEFINE_integer("num_seeds", None, "Seeds trained in parallel (overrides config.num_seeds).")
flags.DEFINE_integer("bc_steps", None, "BC pretraining steps (overrides config.bc_steps).")
flags.DEFINE_integer("offline_steps", None, "Offline steps (overrides config.offline_steps).")
flags.DEFINE_integer("online_steps", None, "Online env steps (overrides config.online_steps).")
flags.DEFINE_string("output_dir", None, "Root of the run directories (overrides config.output_dir).")
flags.DEFINE_string("dataset_dir", None, "OGBench dataset directory (overrides config.dataset_dir).")
flags.DEFINE_string("suite", None, "'ogbench50' runs the 50 tasks (overrides config.suite).")
flags.DEFINE_string("shard", "", "i/n: run the i-th of n slices of the suite (cluster job arrays).")
flags.DEFINE_bool("resume", False, "Continue the runs in an existing output directory.")
flags.DEFINE_bool("report", True, "Write the results table and curves under <output_dir>/report at the end.")
FLAGS = flags.FLAGS

OVERRIDES = ("env_name", "method", "num_seeds", "bc_steps", "offline_steps", "online_steps", "output_dir",
             "dataset_dir", "suite")
# Errors that are the user's to fix: print the message alone, no traceback.
USER_ERRORS = (data.DataError, spec.ConfigError, pipeline.RunDirExistsError, pipeline.ConfigMismatchError,
               pipeline.TrainingDivergedError, checkpointing.CheckpointError)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    warnings.filterwarnings("ignore", message=".*precision lowered by casting.*")  # ogbench's Box spaces
    warnings.filterwarnings("ignore", message=".*DISPLAY environment variable.*")  # glfw without a screen
    config = FLAGS.config
    config.update_from_flattened_dict({k: FLAGS[k].value for k in OVERRIDES if FLAGS[k].value is not None})
    try:
        for env_name in spec.task_list(config, FLAGS.shard):
            print(f"Running {env_name} ({config.method}, {config.num_seeds} seeds) ...")
            run_dir = pipeline.run_task(config, env_name, resume=FLAGS.resume)
            print(f"Finished {run_dir}")
    except USER_ERRORS as e:
        raise SystemExit(f"Error: {e}") from None
    if FLAGS.report:
        from experiments import report

        runs_dir = os.path.expanduser(config.output_dir)
        try:
            print(report.make_report(runs_dir))
        except report.ReportError as e:
            raise SystemExit(f"Error while writing the report: {e}") from None
        print(f"Table and curves written to {os.path.join(runs_dir, 'report')}")


if __name__ == "__main__":
    app.run(main)
