"""Per-run logs: train.csv and eval.csv (one row per seed), TensorBoard scalars (seed means)."""

import csv
import io
import os
import secrets
from typing import Dict, Optional, Sequence

import numpy as np

from experiments.infra import files

EVAL_FIELDS = ("step", "phase", "seed", "success", "episode_return")


class CsvLog:
    """Appends rows to a CSV with a fixed header. On resume, rows past the checkpoint are dropped,
    so a killed-and-resumed run logs exactly what an uninterrupted one would. `last` holds each seed's
    newest row (the kept ones included), for the run's summary."""

    def __init__(self, path: str, fields: Sequence[str], resume_step: int = -1):
        self.path, self.fields = path, list(fields)
        rows = []
        if resume_step >= 0 and os.path.exists(path):
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                rows = [r for r in reader if int(r["step"]) <= resume_step]
                # A resumed run keeps the header of the first run.
                self.fields = list(reader.fieldnames or self.fields)
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, self.fields)
        writer.writeheader()
        writer.writerows(rows)
        files.write_atomic(path, text.getvalue(), newline="")
        self.last: Dict[int, Dict] = {}
        self._remember(rows)

    def _remember(self, rows: Sequence[Dict]) -> None:
        self.last.update({int(row["seed"]): row for row in rows})

    def write(self, rows: Sequence[Dict]) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.fields, extrasaction="ignore").writerows(rows)
        self._remember(rows)


class WandbSink:
    """Optional Weights & Biases logging of the CSV metrics: the mean over seeds and each seed.

    The run id is kept in <run_dir>/wandb_id.txt, so a resumed run continues the same wandb run. The
    x-axis is a logged "step" metric rather than wandb's own step, which must only increase (a resume
    goes back to its checkpoint). WANDB_MODE=offline works with no network.
    """

    def __init__(self, run_dir: str, project: str, entity: str = "", group: str = "", name: str = "",
                 config: Optional[Dict] = None):
        import wandb

        id_path = os.path.join(run_dir, "wandb_id.txt")
        if os.path.exists(id_path):
            with open(id_path) as f:
                run_id = f.read().strip()
        else:
            run_id = secrets.token_hex(4)  # wandb run ids: short, unique, no special characters
            with open(id_path, "w") as f:
                f.write(run_id)
        self.run = wandb.init(project=project, entity=entity or None, group=group or None, name=name or None,
                              id=run_id, resume="allow", dir=run_dir, config=config, reinit="create_new")
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")

    def log(self, step: int, phase: str, seeds: Sequence[int], metrics: Dict[str, np.ndarray]) -> None:
        row = {"step": step}
        for name, values in metrics.items():
            row[f"{phase}/{name}"] = float(np.mean(values))
            row.update({f"{phase}/{name}/seed_{seed}": float(values[i]) for i, seed in enumerate(seeds)})
        self.run.log(row)

    def close(self) -> None:
        self.run.finish()


class RunLogger:
    """train.csv / eval.csv per seed, TensorBoard event files of the means over seeds, and optionally
    wandb (means and seeds)."""

    def __init__(self, run_dir: str, resume_step: int = -1, eval_resume_step: Optional[int] = None,
                 wandb: Optional[Dict] = None):
        """resume_step: keep the rows up to this step (-1: start the logs afresh). eval_resume_step: the
        same for eval.csv when it differs (an evaluation that was cut short is run again). wandb: the
        keyword arguments of WandbSink (project, ...), or None."""
        from tensorboardX import SummaryWriter

        self.run_dir, self.resume_step = run_dir, resume_step
        self.eval_resume_step = resume_step if eval_resume_step is None else eval_resume_step
        # A new run's logs are created at their first row, when the metric names are known; a resumed
        # run's at once, keeping its header and the rows up to its checkpoint.
        self.train = self._resumed("train.csv", resume_step)
        self.eval = self._resumed("eval.csv", self.eval_resume_step)
        # purge_step makes TensorBoard drop the events past the checkpoint, so resumed steps do not repeat.
        self.tb = SummaryWriter(os.path.join(run_dir, "tensorboard"), purge_step=max(resume_step, -1) + 1)
        self.wandb = WandbSink(run_dir, **wandb) if wandb else None

    def _resumed(self, name: str, resume_step: int) -> Optional[CsvLog]:
        path = os.path.join(self.run_dir, name)
        has_header = resume_step >= 0 and os.path.exists(path) and os.path.getsize(path) > 0
        return CsvLog(path, (), resume_step) if has_header else None

    def last_rows(self, name: str) -> Dict[int, Dict]:
        """Each seed's newest row of "train" or "eval" ({} before the first), as logged."""
        log = getattr(self, name)
        return {} if log is None else dict(log.last)

    def log_train(self, step: int, phase: str, seeds: Sequence[int], metrics: Dict[str, np.ndarray]) -> None:
        """metrics[name]: (S,) host arrays, already averaged over the logged interval."""
        if self.train is None:
            self.train = CsvLog(os.path.join(self.run_dir, "train.csv"), ["step", "phase", "seed", *sorted(metrics)],
                                self.resume_step)
        self.train.write([{"step": step, "phase": phase, "seed": seed,
                           **{k: float(v[i]) for k, v in metrics.items()}} for i, seed in enumerate(seeds)])
        for name, values in metrics.items():
            self.tb.add_scalar(f"{phase}/{name}", float(np.mean(values)), step)
        if self.wandb is not None:
            self.wandb.log(step, phase, seeds, metrics)

    def log_eval(self, step: int, phase: str, seeds: Sequence[int], success, returns) -> None:
        if self.eval is None:
            self.eval = CsvLog(os.path.join(self.run_dir, "eval.csv"), EVAL_FIELDS, self.eval_resume_step)
        self.eval.write([{"step": step, "phase": phase, "seed": seed, "success": float(success[i]),
                          "episode_return": float(returns[i])} for i, seed in enumerate(seeds)])
        self.tb.add_scalar(f"{phase}/eval_success", float(np.mean(success)), step)
        self.tb.add_scalar(f"{phase}/eval_return", float(np.mean(returns)), step)
        self.tb.flush()
        if self.wandb is not None:
            self.wandb.log(step, phase, seeds, {"eval_success": np.asarray(success),
                                                "eval_return": np.asarray(returns)})

    def flush(self) -> None:
        """Writes TensorBoard's buffered events: called before each checkpoint, so that a run resumed from
        it (even after kill -9) has every point its CSVs have up to that step."""
        self.tb.flush()

    def close(self) -> None:
        self.tb.close()
        if self.wandb is not None:
            self.wandb.close()
