"""The runner: from a config to trained run directories. Its modules, in the order a run passes them:

  spec           config -> frozen settings (TaskSpec per run, Settings per program); every value checked
  plan           the runs of a program (task x budget), their run dirs, and the learners (run x seed)
  program        run_program: lock and inspect the run dirs, open the dataset, split into programs that
                 fit in memory, and train each: BC, then the phases
  run_directory  resume or refuse (the config compared before any checkpoint is read), locks, summary.json
  context        what a program's phases share (networks, data, shardings) and its jitted update scans
  bc             BC pretraining, cached per domain
  phases         offline scans, online env steps, and the order of the stages
  boundaries     between scans: logs, evaluations, checkpoints, signals
"""
