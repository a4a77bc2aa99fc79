"""BC pretraining: once per domain, shared by every method, task and budget of that domain, cached in
<output_dir>/_pretrained_bc/<domain> (or imported from a reference-code checkpoint)."""

import contextlib
import dataclasses
import fcntl
import os
from typing import Dict

import jax
import jax.numpy as jnp

from experiments import data
from experiments.infra.checkpointing import Checkpointer, config_differences
from experiments.infra.logs import RunLogger
from experiments.infra.preemption import NEVER, Preemption
from experiments.runner.boundaries import RunOutput
from experiments.runner.context import Context, learner_shardings, place
from experiments.runner.phases import scanned_phase
from experiments.runner.run_directory import ConfigMismatchError
from trqam_jax import agent


BC_DIR = "_pretrained_bc"  # <output_dir>/_pretrained_bc/<domain>: the shared BC checkpoints


# BC pretraining: once per domain, shared by every method, task and budget of that domain.


def dataset_identity(window: data.ShardWindow) -> Dict:
    """The dataset by name and file sizes: a moved or copied dataset directory is the same dataset."""
    return {"name": window.info.dataset, "files": [[os.path.basename(p), os.path.getsize(p)] for p in window.paths]}


def bc_identity(ctx: Context) -> Dict:
    """Exactly what BC training depends on (fine-tuning fields such as kl_budget are not part of it).

    Keys are named like the config fields, so a mismatch reads 'agent.width: 32 -> 64'.
    """
    bc = ctx.spec.bc
    return {"dataset": dataset_identity(ctx.window), "agent.horizon": ctx.spec.horizon,
            "agent.width": bc.hidden_dims[0], "agent.depth": len(bc.hidden_dims),
            "agent.actor_layer_norm": bc.actor_layer_norm, "agent.batch_size": bc.batch_size,
            "agent.learning_rate": bc.learning_rate, "agent.grad_clip_norm": bc.grad_clip_norm, "optimizer": "adam",
            "bc_steps": ctx.settings.schedule.bc_steps, "seeds": ctx.learner_seeds, "obs_dim": ctx.obs_dim,
            "action_dim": ctx.action_dim}


def bc_networks(ctx: Context) -> agent.Networks:
    """BC trains only the actor; a one-head critic keeps the cache independent of the critic's settings."""
    config = dataclasses.replace(ctx.spec.bc, num_critics=1)
    return agent.make_networks(config, ctx.chunk_dim)


@contextlib.contextmanager
def file_lock(path: str, preempt: Preemption = NEVER):
    """Jobs of one domain wait for each other's BC pretraining instead of racing on its directory. The
    wait may take hours, so a signal stops it at once; the work under the lock is deferred as usual."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        with preempt.immediate():
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def import_bc(ctx: Context):
    """Seed-stacked BC actor params from a reference-code checkpoint (settings.bc_checkpoint).

    The path may hold '{seed}', filled with each seed of the run; otherwise every seed starts from it.
    """
    from experiments.infra import reference_checkpoint

    like = ctx.nets.actor.init(jax.random.PRNGKey(0), jnp.zeros(ctx.obs_dim), jnp.zeros(ctx.chunk_dim), 0.0)
    paths = [os.path.expanduser(ctx.settings.bc_checkpoint.format(seed=seed)) for seed in ctx.learner_seeds]
    params = [reference_checkpoint.import_actor(path, like, which="actor_bc") for path in paths]
    print(f"BC pretraining: imported from {paths[0] if len(set(paths)) == 1 else ', '.join(paths)}.")
    return place(jax.tree_util.tree_map(lambda *x: jnp.stack(x), *params), ctx.per_learner)


def bc_context(ctx: Context, seeds) -> Context:
    """BC's Context: BC is the same for every task and budget of a domain (it reads no reward), so one
    learner per seed, with BC's networks (`bc_networks`)."""
    per_learner, replicated = learner_shardings(len(seeds))
    tasks = place(jnp.zeros(len(seeds), jnp.int32), per_learner)
    return dataclasses.replace(ctx, nets=bc_networks(ctx), learner_seeds=list(seeds), tasks=tasks,
                               per_learner=per_learner, replicated=replicated)


def pretrain_bc(ctx: Context):
    """Seed-stacked BC actor params: loaded from <output_dir>/_pretrained_bc/<domain>, or trained there.

    `ctx` is BC's (`bc_context`)."""
    if ctx.settings.bc_checkpoint:
        return import_bc(ctx)
    schedule = ctx.settings.schedule
    bc_dir = os.path.join(ctx.settings.output_dir, BC_DIR, ctx.spec.domain)
    identity = bc_identity(ctx)

    def check(meta):
        diffs = config_differences(meta["bc"], identity)
        if diffs:
            raise ConfigMismatchError(
                f"The BC checkpoint in {bc_dir} was made with other settings: "
                f"{'; '.join(d.replace(': ', ' ', 1) for d in diffs)}. Use another --output_dir for these settings "
                f"(the cached BC is valid and was left as it is).")

    with file_lock(os.path.join(bc_dir, "lock"), ctx.preempt), \
            Checkpointer(os.path.join(bc_dir, "checkpoints"), keep=schedule.keep_checkpoints) as checkpointer:
        states = place(agent.init_learners(ctx.learner_seeds, ctx.spec.bc, ctx.nets, ctx.obs_dim, ctx.chunk_dim),
                       ctx.per_learner)
        with ctx.preempt.critical():
            restored = checkpointer.restore(states, items=("state",), check_meta=check)
        start = 0
        if restored is not None:
            start, states = restored.step, place(restored.state, ctx.per_learner)
            if start >= schedule.bc_steps:
                print(f"BC pretraining: reusing {bc_dir} (step {start}).")
                return states.actor_bc
            print(f"BC pretraining: resuming {bc_dir} from step {start}.")
        logger = RunLogger(bc_dir, resume_step=start if start else -1)
        try:
            output = RunOutput(bc_dir, ctx.spec.domain, slice(0, len(ctx.learner_seeds)), ctx.learner_seeds, logger,
                               checkpointer, {"bc": identity})
            states = scanned_phase(ctx, ctx.spec.bc, states, start, schedule.bc_steps, "bc", [output])
            if schedule.bc_steps == 0:
                checkpointer.save(0, states, {"bc": identity, "phase": "bc", "step": 0})
        finally:
            logger.close()
        return states.actor_bc
