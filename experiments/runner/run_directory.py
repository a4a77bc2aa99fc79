"""The run directory: may this run start or continue, from where, and what it says when it ends.

Before anything is read or changed, the config is compared with the saved one (every change but raising
offline_steps / online_steps is refused, naming the fields); then the newest readable checkpoint is
restored (damaged ones are moved aside, never deleted). Each run dir is locked while a job trains it.
At the end, summary.json is written from the numbers the run logged.
"""

import contextlib
import dataclasses
import fcntl
import os
from typing import Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np

from experiments.infra import files
from experiments.infra.checkpointing import Checkpointer, config_differences, flatten
from experiments.infra.checkpointing import Restored
from experiments.infra.errors import UserError
from experiments.infra.preemption import NEVER, Preemption
from experiments.runner import plan
from experiments.runner.spec import Settings, TaskSpec
from trqam_jax import agent, chunks


# Config fields that do not identify a run: where it lives, where the data lives, and how the task
# was named on the command line (the run dir is keyed by the task already).
NOT_IDENTITY = ("output_dir", "dataset_dir", "env_name", "suite", "tasks", "sweep.kl_budget", "sweep.inv_temp",
                "sweep.gap_reg_coef",
                "learners_per_program", "wandb.project", "wandb.entity", "wandb.group")
# Raising these extends a run; they are checked separately.
EXTENDABLE = ("offline_steps", "online_steps")
# Config fields added after runs were saved, with the value that reproduces such a run: a saved config
# without one compares as that value, so the run resumes. (Fields added as None placeholders need none.)
ADDED_FIELDS = {"agent.compute_dtype": "float32"}


class RunDirExistsError(UserError, RuntimeError):
    """A run dir with a checkpoint, and no --resume."""


class ConfigMismatchError(UserError, RuntimeError):
    """--resume with a config other than the saved one (beyond raising the step counts)."""


class RunDirBusyError(UserError, RuntimeError):
    """Another job holds the run dir's lock."""


class RunDirUnwritableError(UserError, RuntimeError):
    """The run dir (or its lock file) cannot be created."""


LOCK_FILE = ".lock"  # in each run dir: held (flock) by the job that trains it


@contextlib.contextmanager
def run_dir_locks(run_dirs):
    """Holds each run dir's lock while this job trains it; a second job on the same run dir is refused at
    once. Directories this creates for a run that never started are removed again."""
    created, handles = [], []
    try:
        for run_dir in run_dirs:
            missing = []
            path = os.path.abspath(run_dir)
            while not os.path.isdir(path):
                missing.append(path)
                path = os.path.dirname(path)
            try:
                os.makedirs(run_dir, exist_ok=True)
                created.extend(reversed(missing))
                handle = open(os.path.join(run_dir, LOCK_FILE), "a")
            except OSError as e:
                raise RunDirUnwritableError(f"Cannot write the run directory {run_dir} ({e.strerror}); choose a "
                                            f"writable --output_dir.") from None
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.close()
                raise RunDirBusyError(f"{run_dir} is being trained by another job right now; wait for it to end, or "
                                      f"choose another --output_dir (nothing was changed).") from None
            handles.append(handle)
        yield
    finally:
        for handle in handles:
            handle.close()  # releases the lock
        for path in reversed(created):  # a run dir holding only its lock file: nothing started there
            if os.path.isdir(path) and set(os.listdir(path)) <= {LOCK_FILE}:
                with contextlib.suppress(OSError):
                    if os.path.exists(os.path.join(path, LOCK_FILE)):
                        os.remove(os.path.join(path, LOCK_FILE))
                    os.rmdir(path)


# The run directory: validation before anything is written, resume and extension.


def check_run_dir(run_dir: str, resume: bool, config: Dict, saved_step: Optional[int],
                  saved_config: Optional[Dict]) -> bool:
    """Decides, before anything is read or changed, whether this run may start or continue. True: continue.

    Every change other than raising offline_steps / online_steps is refused, naming the fields."""
    if saved_step is None:
        if saved_config is not None:
            print(f"{run_dir} holds no checkpoint (an earlier attempt stopped before its first save): starting "
                  f"it afresh.")
        return False
    if not resume:
        raise RunDirExistsError(
            f"The run directory {run_dir} already exists with a checkpoint at step {saved_step}. Pass --resume to "
            f"continue it, or choose another --output_dir (nothing was changed).")
    check_saved_config(run_dir, saved_config or {}, config)
    return True


def check_saved_config(run_dir: str, saved: Dict, config: Dict, saved_phase: Optional[str] = None) -> None:
    """Refuses to resume `run_dir` with a config (`plan.Run.config`) that differs from its saved one
    (ConfigMismatchError)."""
    current = config
    saved = {**ADDED_FIELDS, **flatten(saved)}
    diffs = config_differences(saved, current, ignore=NOT_IDENTITY + EXTENDABLE)
    if diffs:
        raise ConfigMismatchError(
            f"Cannot resume {run_dir}: the config differs from the saved one in {'; '.join(diffs)}. "
            f"Use the saved config, or another --output_dir; nothing was changed. (Raising offline_steps or "
            f"online_steps extends a run.)")
    for name in EXTENDABLE:
        old, new = saved.get(name), current[name]
        if old is not None and new < old:
            raise ConfigMismatchError(f"Cannot resume {run_dir}: {name} can only be raised to extend a run "
                                      f"({old} -> {new}). Use {old}, or another --output_dir.")
    old_offline = saved.get("offline_steps")
    if old_offline is not None and current["offline_steps"] != old_offline and saved_phase == "online":
        raise ConfigMismatchError(f"Cannot resume {run_dir}: it is already in its online phase, so offline_steps "
                                  f"cannot change ({old_offline} -> {current['offline_steps']}).")


def _state_target(num_seeds: int, spec: TaskSpec):
    """The abstract training state and replay of a run checkpoint, from its meta (no dataset needed)."""

    def like(meta):
        chunk_dim = spec.horizon * meta["action_dim"]
        nets = agent.make_networks(spec.offline, chunk_dim)
        return jax.eval_shape(lambda: agent.init_learners(np.arange(num_seeds), spec.offline, nets,
                                                          meta["obs_dim"], chunk_dim))

    def replay_like(meta):
        capacity = max(meta["config"]["online_steps"], 1)
        return jax.eval_shape(lambda: chunks.init_online(capacity, meta["obs_dim"], meta["action_dim"],
                                                         num_seeds=num_seeds))

    return like, replay_like


def _grow_online(buffer: chunks.OnlineBuffer, capacity: int) -> chunks.OnlineBuffer:
    """A restored replay in a larger buffer (a run extended with more online_steps)."""
    old = buffer.rewards.shape[1]
    if old >= capacity:
        return buffer

    def pad(x):
        return jnp.pad(x, [(0, 0), (0, capacity - old)] + [(0, 0)] * (x.ndim - 2)) if x.ndim >= 2 else x

    return jax.tree_util.tree_map(pad, buffer)


@dataclasses.dataclass
class Resumable:
    """A run of the program that still has work, and where it starts (None: afresh)."""

    run: plan.Run
    restored: Optional[Restored] = None  # its newest readable checkpoint

    @property
    def start(self):
        """Runs that start from the same point train together."""
        if self.restored is None:
            return (0, "", False)
        meta = self.restored.meta
        return (self.restored.step, meta.get("phase", ""), bool(meta.get("eval_pending")))


def inspect_run(run: plan.Run, resume: bool, preempt: Preemption = NEVER) -> Optional[Resumable]:
    """Whether a run has work left (None: finished). Its config is compared with the saved one before
    any checkpoint is read: a refused change leaves the run directory exactly as it was."""
    config, spec, run_dir, keep = run.config, run.spec, run.run_dir, run.settings.schedule.keep_checkpoints
    directory = os.path.join(run_dir, "checkpoints")
    steps, saved_config = [], files.read_json(os.path.join(run_dir, "config.json"))
    if os.path.isdir(directory):
        with Checkpointer(directory, keep=keep, read_only=True) as found:  # only look
            steps = found.steps()
            if steps and saved_config is None:  # config.json lost: the newest readable checkpoint has it
                saved_config = _saved_config(found, steps)
    if not check_run_dir(run_dir, resume, config, steps[-1] if steps else None, saved_config):
        return Resumable(run)
    # The newest readable checkpoint; damaged ones are moved aside (and a leftover save), never deleted.
    with preempt.critical(), Checkpointer(directory, keep=keep) as found:
        restored = found.restore(*_state_target(run.settings.num_seeds, spec),
                                 check_meta=lambda meta: check_saved_config(run_dir, meta["config"], config,
                                                                            meta.get("phase")))
    if restored is None:
        print(f"{run_dir} holds no readable checkpoint (each was moved aside): starting it afresh.")
        return Resumable(run)
    saved_step, saved_meta = restored.step, restored.meta
    if saved_step >= run.settings.schedule.total_steps(spec.method) and not saved_meta.get("eval_pending"):
        print(f"{run_dir} is already finished (step {saved_step}); nothing to do.")
        return None
    return Resumable(run, restored)


def _saved_config(checkpointer: Checkpointer, steps) -> Optional[Dict]:
    for step in reversed(steps):
        try:
            return checkpointer.read_meta(step)["config"]
        except Exception:  # a damaged step: the previous one may still say
            continue
    return None


def system_info(settings: Settings) -> Dict:
    """What the numbers were computed on: recorded in every checkpoint and in summary.json."""
    device = jax.devices()[0]
    return {"device_kind": device.device_kind, "platform": device.platform, "device_count": jax.device_count(),
            "jax_version": jax.__version__, "matmul_precision": settings.matmul_precision}


def write_summary(run_dir: str, spec: TaskSpec, wall: Dict, system: Dict, train: Dict[int, Dict],
                  evals: Dict[int, Dict]) -> Dict:
    """The end-of-run summary, printed and saved as summary.json, from each seed's newest train and eval
    rows as the run logged them (`logs.RunLogger.last_rows`)."""
    success = {seed: float(r["success"]) for seed, r in sorted(evals.items())}
    values = np.array(list(success.values()))
    final = {name: {seed: float(r[name]) for seed, r in sorted(train.items()) if r.get(name) not in (None, "")}
             for name in ("kl_hat", "lambda_eff")}
    summary = {
        "env_name": spec.env_name, "method": spec.method, "run_dir": os.path.abspath(run_dir),
        "final_step": int(next(iter(evals.values()))["step"]) if evals else None,
        "success_per_seed": success,
        "success_mean": float(values.mean()) if len(values) else None,
        "success_std_ddof1": float(values.std(ddof=1)) if len(values) > 1 else None,
        "final_kl_hat": final["kl_hat"], "final_lambda_eff": final["lambda_eff"],
        "wall_s": {k: round(v, 1) for k, v in wall.items()}, "system": system,
        "files": {name: os.path.join(os.path.abspath(run_dir), name)
                  for name in ("train.csv", "eval.csv", "tensorboard", "checkpoints", "config.json", "task.json")},
    }
    files.write_json(os.path.join(run_dir, "summary.json"), summary)
    std = "" if summary["success_std_ddof1"] is None else f" ± {100 * summary['success_std_ddof1']:.1f}"
    mean = "n/a" if summary["success_mean"] is None else f"{100 * summary['success_mean']:.1f}{std}%"
    kl = ", ".join(f"{v:.3g}" for v in final["kl_hat"].values()) or "n/a"
    lam = ", ".join(f"{v:.3g}" for v in final["lambda_eff"].values()) or "n/a"
    print(f"Summary of {run_dir} at step {summary['final_step']}: success {mean} (mean ± std over "
          f"{len(values)} seeds, ddof=1; per seed {[round(100 * v, 1) for v in success.values()]}); final kl_hat "
          f"[{kl}], lambda_eff [{lam}]; wall time {', '.join(f'{k} {v:.0f} s' for k, v in wall.items())}; "
          f"written to {os.path.abspath(run_dir)} (summary.json).")
    return summary
