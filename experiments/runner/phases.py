"""The phases of fine-tuning: offline updates in scans of log_every, online env steps with one
update per step, and the order of the stages of a program (BC policy evaluation, offline, online)."""

import contextlib
import time
from typing import Dict

import jax
import jax.numpy as jnp
import numpy as np

from experiments.runner import plan
from experiments.runner.boundaries import Boundaries, take
from experiments.runner.context import Context, chunk_policy, compile_train, place, train_scan
from trqam_jax import agent, chunks


def train_stages(ctx: Context, team: plan.Learners, outputs, states, online, step: int, saved_meta: Dict,
                 eval_pending: bool, wall: Dict) -> None:
    """A program's fine-tuning from `step`: the BC policy's evaluation (or one a signal cut short), the
    offline phase, then the online phase, each with its runs' per-learner hyperparameters."""
    spec, schedule = ctx.spec, ctx.settings.schedule

    @contextlib.contextmanager
    def timed(phase):
        started = time.time()
        try:
            yield
        finally:
            wall[phase] = wall.get(phase, 0.0) + time.time() - started

    with ctx.preempt.deferred():  # a signal during these saves takes effect after them
        if spec.method == "bc":  # BC alone: evaluate the BC policy once, and save
            Boundaries(ctx, "offline", outputs, schedule.bc_steps, schedule.bc_steps).boundary(
                schedule.bc_steps, states, eval_due=True, save_due=True)
            step = schedule.offline_steps + schedule.online_steps  # nothing left to train
        elif eval_pending:  # an evaluation that a signal cut short: run it again from the saved state
            phase = saved_meta["phase"]
            # Mid-run, the next checkpoint records it; at the end, save again so the run reads as finished.
            Boundaries(ctx, phase, outputs, step, step).boundary(
                step, states, eval_due=True, save_due=step >= schedule.total_steps(spec.method),
                replay=online if phase == "online" else None)
        elif step == 0:  # the BC policy, evaluated once at step 0 of fine-tuning
            for o in outputs:
                o.evals.submit(0, "offline", take(states.actor, o.learners, len(team)))
    if step < schedule.offline_steps:
        states = states.replace(hparams=place(team.hparams("offline"), ctx.per_learner))
        with timed("offline"):
            states = scanned_phase(ctx, spec.offline, states, step, schedule.offline_steps, "offline", outputs)
        step = schedule.offline_steps
    if schedule.online_steps > 0 and step < schedule.offline_steps + schedule.online_steps:
        states = states.replace(hparams=place(team.hparams("online"), ctx.per_learner))
        with timed("online"):
            online_phase(ctx, states, online, step - schedule.offline_steps, outputs)


def scanned_phase(ctx: Context, cfg: agent.AgentConfig, states, start: int, end: int, phase: str, outputs):
    """Runs updates start..end in scans of log_every, with logging, evaluation and checkpoints."""
    schedule = ctx.settings.schedule
    train = train_scan(cfg, ctx.nets, ctx.spec.horizon, schedule.log_every, online=False)
    boundaries = Boundaries(ctx, phase, outputs, start, end)
    try:
        with ctx.preempt.deferred():
            if start < end:
                train = compile_train(train, states, ctx.offline_data(start), f"{ctx.spec.domain} {phase}")
            for step in range(start, end, schedule.log_every):
                states, metrics = train(states, ctx.offline_data(step))
                done = step + schedule.log_every
                boundaries.log(done, {k: np.asarray(v).mean(axis=1) for k, v in jax.device_get(metrics).items()})
                boundaries.bar.update(schedule.log_every)
                boundaries.boundary(done, states, eval_due=done % schedule.eval_every == 0 or done == end,
                                    save_due=done % schedule.save_every == 0 or done == end)
    finally:
        boundaries.close()
    return states


def online_phase(ctx: Context, states, online, start: int, outputs):
    """One env step per learner per iteration, one update per env step after online_start_steps.

    Each run steps its own envs (its task, its seeds' env seeds), and each learner appends to its own
    replay region. Chunks run open-loop. Every H env steps the new transitions are appended, and H
    updates run in one scan over dataset + online data (docs/conventions.md, online update timing). A
    signal stops at the next chunk boundary, where the replay is consistent.
    """
    from experiments.evaluation import OnlineEnvs

    settings, spec, schedule = ctx.settings, ctx.spec, ctx.settings.schedule
    horizon, offset, end = spec.horizon, schedule.offline_steps, schedule.online_steps
    cfg = spec.online
    train = train_scan(cfg, ctx.nets, horizon, horizon, online=True)
    append = jax.jit(jax.vmap(chunks.append), donate_argnums=0)
    act = chunk_policy(cfg, ctx.nets, horizon, ctx.action_dim)
    policy_key = jax.random.fold_in(jax.random.PRNGKey(settings.seed), 7)
    num_seeds = len(outputs[0].seeds)
    vectorization = "async" if settings.evaluation.online_envs_async else "sync"
    envs = []
    boundaries = Boundaries(ctx, "online", outputs, start, end, unit="env step", step_offset=offset)
    pending, logged, chunk, compiled = [], [], None, False
    try:
        for o in outputs:
            envs.append(OnlineEnvs(o.env_name, len(o.seeds), settings.seed + start, sparse=spec.sparse,
                                   max_episode_steps=spec.eval_steps, vectorization=vectorization))
        with ctx.preempt.deferred():
            for t in range(start, end):
                if chunk is None or any(e.needs_chunk.any() for e in envs):
                    # Every run draws with the keys of a separate run (split over its seeds), so a run's
                    # chunks do not depend on the other runs of the program.
                    keys = jnp.tile(jax.random.split(jax.random.fold_in(policy_key, t), num_seeds), (len(outputs), 1))
                    observations = np.concatenate([e.observations for e in envs])
                    chunk = act(states.actor, observations[:, None], keys)[:, 0]
                blocks = [e.step(chunk[o.learners])[0] for o, e in zip(outputs, envs)]
                pending.append(chunks.Transitions(*(np.concatenate(f) for f in zip(*blocks))))
                done = t + 1
                boundaries.bar.update(1)
                if len(pending) < horizon:
                    continue
                block = chunks.Transitions(**{f: jnp.asarray(np.stack([getattr(tr, f) for tr in pending], axis=1))
                                              for f in chunks.Transitions._fields})
                pending = []
                online = append(online, block)
                if done > schedule.online_start_steps:
                    replay = chunks.TaskData(chunks.ReplayData(ctx.offline_data(offset + t).data, online), ctx.tasks)
                    if not compiled:
                        train, compiled = compile_train(train, states, replay, f"{spec.domain} online"), True
                    states, metrics = train(states, replay)
                    logged.append({k: np.asarray(v).mean(axis=1) for k, v in jax.device_get(metrics).items()})
                if done % schedule.log_every == 0 and logged:
                    boundaries.log(offset + done, {k: np.mean([m[k] for m in logged], axis=0) for k in logged[0]})
                    logged = []
                boundaries.boundary(offset + done, states, eval_due=done % schedule.eval_every == 0 or done == end,
                                    save_due=done % schedule.save_every == 0 or done == end, replay=online)
    finally:
        boundaries.close()
        for e in envs:
            e.close()
    return states
