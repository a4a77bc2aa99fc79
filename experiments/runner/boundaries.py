"""What happens between scans: logs, evaluations, checkpoints and preemption, for every run of a
program (each run dir gets its own slice of the learner axis)."""

import dataclasses
import functools
import os
import time
from typing import Dict, Optional

import jax
import numpy as np
from tqdm import tqdm

from experiments.infra.checkpointing import Checkpointer
from experiments.infra.errors import UserError
from experiments.infra.logs import RunLogger
from experiments.infra.preemption import Interrupted
from experiments.runner.context import Context, chunk_policy


class TrainingDivergedError(UserError, RuntimeError):
    """A non-finite metric: training stops, keeping the last good checkpoint."""


@dataclasses.dataclass
class RunOutput:
    """One run directory's share of a program: its learners, logs, checkpoints and evaluations."""

    run_dir: str
    env_name: str
    learners: slice  # its slice of the learner axis
    seeds: list
    logger: RunLogger
    checkpointer: Checkpointer
    meta: Dict  # saved with each checkpoint
    evals: Optional["Evaluations"] = None


def take(tree, learners: slice, total: int):
    """The learners of one run from a learner-stacked tree (the tree itself when it is all of them)."""
    if learners == slice(0, total):
        return tree
    return jax.tree_util.tree_map(lambda x: x[learners], tree)


def check_finite(metrics: Dict[str, np.ndarray], phase: str, step: int, outputs, last_good) -> None:
    for name, values in metrics.items():
        bad = ~np.isfinite(values)
        if bad.any():
            learners = np.flatnonzero(bad.reshape(bad.shape[0], -1).any(axis=1)).tolist()
            runs = [o.run_dir for o in outputs if any(o.learners.start <= i < o.learners.stop for i in learners)]
            where = ", ".join(os.path.join(r, "checkpoints") for r in runs)
            kept = (f"the last good checkpoint (step {last_good}) in {where} is kept" if last_good is not None
                    else "no checkpoint had been saved yet, so a rerun starts afresh")
            raise TrainingDivergedError(
                f"{phase}: non-finite {name} in the {phase} updates up to step {step} (learner index {learners}). "
                f"Training stopped; {kept}.")


class Evaluations:
    """One run's evaluations: beside training (a BackgroundEvaluator, settings.evaluation.background) or blocking.

    Results are logged under their step, in step order. `pending()` lists the steps whose results are
    not logged yet; a blocking evaluation cut short by a signal stays pending. `num_workers` shares the
    CPU cores between the runs of a program.
    """

    def __init__(self, ctx: "Context", env_name: str, seeds: list, logger: RunLogger, num_workers: int):
        from experiments.evaluation import BackgroundEvaluator, Evaluator, background_episodes_per_round

        settings, spec = ctx.settings, ctx.spec
        self.ctx, self.env_name, self.seeds, self.logger = ctx, env_name, seeds, logger
        self.phase_of, self.waited_s = {}, 0.0
        self.act = chunk_policy(spec.offline, ctx.nets, spec.horizon, ctx.action_dim)
        # Envs per seed and round: set, or sized so that seeds x envs fill the free CPU cores. Both modes
        # use the same rounds, so they give the same numbers.
        per_round = settings.evaluation.envs_per_seed or background_episodes_per_round(
            len(seeds), settings.evaluation.episodes, num_workers)
        common = dict(max_episode_steps=spec.eval_steps, episodes_per_round=per_round)
        self.background, self.last_success, self._cut_short = None, None, []
        if settings.evaluation.background:
            self.background = BackgroundEvaluator(env_name, len(seeds), settings.evaluation.episodes, act_fn=self.act,
                                                  horizon=spec.horizon, num_workers=num_workers, **common)
        else:
            self.blocking = Evaluator(env_name, len(seeds), settings.evaluation.episodes, **common)

    def _seed_and_key(self, step: int):
        # Env seeds and the policy key depend on the step only, so a re-run repeats an evaluation exactly.
        seed = self.ctx.settings.seed
        return seed + step, jax.random.fold_in(jax.random.PRNGKey(seed), step)

    def submit(self, step: int, phase: str, actor) -> None:
        self.phase_of[step] = phase
        seed, key = self._seed_and_key(step)
        if self.background is not None:
            self.background.submit(step, actor, seed, key)
            return
        self._cut_short = [step]
        with self.ctx.preempt.immediate():
            result = self.blocking.run(functools.partial(self.act, actor), seed=seed, horizon=self.ctx.spec.horizon,
                                       key=key)
        self._cut_short = []
        self._log(step, result)

    def pending(self):
        return list(self._cut_short) + (self.background.pending() if self.background is not None else [])

    def _log(self, step: int, result) -> None:
        with self.ctx.preempt.critical():
            self.logger.log_eval(step, self.phase_of.pop(step), self.seeds, result.success_rate, result.mean_return)
        self.last_success = result.success_rate

    def collect(self, before: Optional[int] = None) -> None:
        """Logs the finished results. With `before`, first waits until no evaluation of an earlier step is
        in flight (a signal stops the wait at once)."""
        started = time.time()
        while True:
            for step, result in (self.background.poll() if self.background is not None else []):
                self._log(step, result)
            if before is None or not any(step < before for step in self.pending()):
                break
            self.ctx.preempt.check()
            time.sleep(0.02)
        if before is not None:
            self.waited_s += time.time() - started

    def close(self) -> None:
        if self.background is not None:
            self.background.close()
        else:
            self.blocking.close()


class Boundaries:
    """Logging, evaluation, checkpoints and preemption at the boundaries of one phase's updates, for
    every run of the program (each gets its own learners' slice)."""

    def __init__(self, ctx: Context, name: str, outputs, start: int, end: int, unit: str = "step",
                 step_offset: int = 0):
        self.ctx, self.name, self.outputs = ctx, name, list(outputs)
        self.total = len(ctx.learner_seeds)
        self.end_step = step_offset + end  # in the run's step count (online: offline_steps + env steps)
        self.offset = step_offset
        # The newest step that every run has (they are saved together).
        common = set.intersection(*(set(o.checkpointer.steps()) for o in self.outputs))
        self.last_good = max(common) if common else None
        # A run's bar names its task; BC's (one output for the domain) and a program's name the domain.
        label = self.outputs[0].env_name if len(self.outputs) == 1 else f"{ctx.spec.domain} ({self.total} learners)"
        self.bar = None if end <= start else tqdm(total=end, initial=start, desc=f"{label} {name}", unit=unit,
                                                   dynamic_ncols=True)

    def _pending(self):
        return [step for o in self.outputs if o.evals is not None for step in o.evals.pending()]

    def log(self, step: int, host: Dict[str, np.ndarray]) -> None:
        check_finite(host, self.name, step, self.outputs, self.last_good)
        with self.ctx.preempt.critical():
            for o in self.outputs:
                o.logger.log_train(step, self.name, o.seeds, {k: v[o.learners] for k, v in host.items()})

    def save(self, step: int, states, replay=None, unsubmitted=()) -> None:
        """A checkpoint at `step` in every run dir. An evaluation of this step still in flight, or due but not
        started (`unsubmitted`: a signal came first), is recorded, so a resume runs it again from the saved
        state (`boundary` has waited for the earlier ones)."""
        with self.ctx.preempt.critical():
            for o in self.outputs:
                o.logger.flush()
            for o in self.outputs:
                pending = o.evals.pending() if o.evals is not None else []
                o.checkpointer.save(step, take(states, o.learners, self.total),
                                    {**o.meta, "phase": self.name, "step": step,
                                     "eval_pending": step in pending or o in unsubmitted},
                                    replay=None if replay is None else take(replay, o.learners, self.total))
            self.last_good = step

    def stop(self, signum: int, step: int, states, replay=None, unsubmitted=()):
        """On a signal: save here unless an evaluation of an earlier step is still running (its actor is
        gone); the resume then starts from the last checkpoint, and repeats that work exactly."""
        if self.last_good != step and not any(s < step for s in self._pending()):
            self.save(step, states, replay, unsubmitted)
        raise Interrupted(signum, self.last_good, self.name, self.offset)

    def boundary(self, step: int, states, eval_due: bool, save_due: bool, replay=None) -> None:
        evaluated = [o for o in self.outputs if o.evals is not None]
        unsubmitted = list(evaluated) if eval_due else []  # a blocking evaluation may be cut short by a signal
        try:
            for o in evaluated:
                if eval_due:
                    o.evals.submit(step, self.name, take(states.actor, o.learners, self.total))
                    unsubmitted.remove(o)
            for o in evaluated:
                # A phase's last evaluation is awaited before its last checkpoint.
                last = step >= self.end_step
                o.evals.collect(before=(step + 1 if last else step) if save_due else None)
            successes = [o.evals.last_success for o in evaluated if o.evals.last_success is not None]
            if self.bar is not None and successes:
                self.bar.set_postfix(success=f"{np.mean(np.concatenate(successes)):.2f}")
            if save_due:
                self.save(step, states, replay)
            self.ctx.preempt.check(step, self.name)
        except Interrupted as e:
            if e.again:  # a second signal: stop at once (a save it came during has completed)
                raise
            self.stop(e.signum, step, states, replay, unsubmitted)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
