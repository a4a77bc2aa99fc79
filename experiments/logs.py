"""Per-run logs: train.csv and eval.csv (one row per seed), TensorBoard scalars (seed means)."""

import csv
import os
from typing import Dict, Sequence

import numpy as np

EVAL_FIELDS = ("step", "phase", "seed", "success", "episode_return")


class CsvLog:
    """Appends rows to a CSV with a fixed header. On resume, rows past the checkpoint are dropped,
    so a killed-and-resumed run logs exactly what an uninterrupted one would."""

    def __init__(self, path: str, fields: Sequence[str], resume_step: int = -1):
        self.path, self.fields = path, list(fields)
        rows = []
        if resume_step >= 0 and os.path.exists(path):
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
                # A resumed run keeps the header of the first run.
                self.fields = list(rows[0].keys()) if rows else self.fields
        tmp = path + ".tmp"
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, self.fields)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, path)

    def write(self, rows: Sequence[Dict]) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.fields, extrasaction="ignore").writerows(rows)


class RunLogger:
    """train.csv / eval.csv per seed, and TensorBoard event files of the means over seeds."""

    def __init__(self, run_dir: str, resume_step: int = -1):
        from tensorboardX import SummaryWriter

        self.run_dir, self.resume_step = run_dir, resume_step
        self.train = None  # created at the first row, when the metric names are known
        self.eval = None
        self.tb = SummaryWriter(os.path.join(run_dir, "tensorboard"))

    def log_train(self, step: int, phase: str, seeds: Sequence[int], metrics: Dict[str, np.ndarray]) -> None:
        """metrics[name]: (S,) host arrays, already averaged over the logged interval."""
        if self.train is None:
            self.train = CsvLog(os.path.join(self.run_dir, "train.csv"), ["step", "phase", "seed", *sorted(metrics)],
                                self.resume_step)
        self.train.write([{"step": step, "phase": phase, "seed": seed,
                           **{k: float(v[i]) for k, v in metrics.items()}} for i, seed in enumerate(seeds)])
        for name, values in metrics.items():
            self.tb.add_scalar(f"{phase}/{name}", float(np.mean(values)), step)

    def log_eval(self, step: int, phase: str, seeds: Sequence[int], success, returns) -> None:
        if self.eval is None:
            self.eval = CsvLog(os.path.join(self.run_dir, "eval.csv"), EVAL_FIELDS, self.resume_step)
        self.eval.write([{"step": step, "phase": phase, "seed": seed, "success": float(success[i]),
                          "episode_return": float(returns[i])} for i, seed in enumerate(seeds)])
        self.tb.add_scalar(f"{phase}/eval_success", float(np.mean(success)), step)
        self.tb.add_scalar(f"{phase}/eval_return", float(np.mean(returns)), step)
        self.tb.flush()

    def close(self) -> None:
        self.tb.close()
