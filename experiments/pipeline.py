"""The stages of one task: BC pretraining (cached per domain), offline and online fine-tuning,
periodic evaluation and checkpoints. Seeds are vmapped, and sharded across local devices."""

import contextlib
import dataclasses
import fcntl
import functools
import json
import os
from typing import Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm import tqdm

from experiments import data
from experiments.checkpointing import Checkpointer, config_differences
from experiments.logs import RunLogger
from experiments.policy import make_chunk_policy
from experiments.spec import TaskSpec, resolve
from trqam_jax import agent, chunks


BC_DIR = "_pretrained_bc"  # <output_dir>/_pretrained_bc/<domain>: the shared BC checkpoints


class RunDirExistsError(RuntimeError):
    pass


class ConfigMismatchError(RuntimeError):
    pass


class TrainingDivergedError(RuntimeError):
    pass


def run_dir_of(config, env_name: str, method: str) -> str:
    return os.path.join(os.path.expanduser(config.output_dir), env_name, method)


# ------------------------------------------------------------------------------------------------
# Data and devices.


def open_dataset(config, spec: TaskSpec, env) -> data.ShardWindow:
    """The offline data (on device, or a rotating window of shards); generates it if allowed."""
    try:
        data.find_dataset_files(spec.env_name, config.dataset_dir)
    except data.DatasetMissingError:
        info = data.parse_env_name(spec.env_name)
        if not config.generate_missing_data or info.spec.navigation:
            raise
        from experiments import make_dataset

        print(f"Generating {info.dataset} in {config.dataset_dir} with the ogbench oracles ...")
        kwargs = {} if config.generate_episode_length is None else {"episode_length": config.generate_episode_length}
        make_dataset.generate_dataset(info.dataset, config.dataset_dir, num_episodes=config.generate_num_episodes,
                                      seed=config.seed, num_workers=max(1, min(4, os.cpu_count() or 1)), **kwargs)
    free = data.device_memory_bytes()  # None on CPU: hold everything
    budget = None if free is None else int(config.dataset_memory_fraction * free)
    window = data.ShardWindow(spec.env_name, config.dataset_dir, spec.sparse, env=env, budget_bytes=budget,
                              rotate_every=config.shard_rotate_every)
    print(f"Dataset {window.info.dataset}: {window.total_nbytes() / 2**30:.2f} GiB on device in all; "
          f"{'held whole' if window.fits else f'{window.num_windows} windows of {window.nbytes() / 2**30:.2f} GiB'}.")
    return window


def seed_shardings(num_seeds: int):
    """(per-seed, replicated) shardings over the local devices, or (None, None) with one device."""
    devices = jax.local_devices()
    if len(devices) < 2:
        return None, None
    if num_seeds % len(devices):
        print(f"num_seeds={num_seeds} does not divide over {len(devices)} devices: running on one device.")
        return None, None
    mesh = Mesh(np.array(devices), ("seed",))
    return NamedSharding(mesh, PartitionSpec("seed")), NamedSharding(mesh, PartitionSpec())


def _put(tree, sharding):
    return tree if sharding is None else jax.device_put(tree, sharding)


# ------------------------------------------------------------------------------------------------
# The scanned training loop shared by BC pretraining and offline fine-tuning.


@dataclasses.dataclass
class Context:
    config: object
    spec: TaskSpec
    nets: agent.Networks
    window: data.ShardWindow
    seeds: list
    obs_dim: int
    action_dim: int
    per_seed: object = None  # sharding of seed-stacked trees
    replicated: object = None  # sharding of shared data

    @property
    def chunk_dim(self):
        return self.spec.horizon * self.action_dim

    def offline_data(self, step: int):
        return _put(self.window.data_at(step), self.replicated)


def check_finite(metrics: Dict[str, np.ndarray], phase: str, step: int, checkpoint_dir: str, last_good) -> None:
    for name, values in metrics.items():
        bad = ~np.isfinite(values)
        if bad.any():
            seeds = np.flatnonzero(bad.reshape(bad.shape[0], -1).any(axis=1)).tolist()
            raise TrainingDivergedError(
                f"{phase}: non-finite {name} in the {phase} updates up to step {step} (seed index {seeds}). "
                f"Training stopped; the last good checkpoint (step {last_good}) in {checkpoint_dir} is kept.")


def scanned_phase(ctx: Context, cfg: agent.AgentConfig, states, start: int, end: int, phase: str,
                  checkpointer: Checkpointer, logger: RunLogger, meta: Dict, evaluate=None, step_offset: int = 0):
    """Runs updates start..end in scans of log_every, with logging, evaluation and checkpoints."""
    config = ctx.config
    sample = functools.partial(chunks.sample_chunks, batch_size=cfg.batch_size, horizon=ctx.spec.horizon,
                               discount=cfg.discount)
    train = agent.make_train_fn(cfg, ctx.nets, sample, config.log_every)
    last_good = (checkpointer.steps() or [None])[-1]
    bar = tqdm(total=end, initial=start, desc=f"{ctx.spec.env_name} {phase}", unit="step", dynamic_ncols=True)
    for step in range(start, end, config.log_every):
        states, metrics = train(states, ctx.offline_data(step))
        done = step + config.log_every
        host = {k: np.asarray(v).mean(axis=1) for k, v in jax.device_get(metrics).items()}
        check_finite(host, phase, step_offset + done, checkpointer.directory, last_good)
        logger.log_train(step_offset + done, phase, ctx.seeds, host)
        bar.update(config.log_every)
        if evaluate is not None and (done % config.eval_every == 0 or done == end):
            success = evaluate(states.actor, step_offset + done, phase)
            bar.set_postfix(success=f"{np.mean(success):.2f}")
        if done % config.save_every == 0 or done == end:
            checkpointer.save(step_offset + done, states, {**meta, "phase": phase, "step": step_offset + done})
            last_good = step_offset + done
    bar.close()
    return states


# ------------------------------------------------------------------------------------------------
# BC pretraining: once per domain, shared by every method and task.


def bc_identity(ctx: Context) -> Dict:
    """What a BC checkpoint must agree on to be reused."""
    return dict(domain=ctx.spec.domain, agent=json.loads(json.dumps(dataclasses.asdict(ctx.spec.bc))),
                horizon=ctx.spec.horizon, seeds=ctx.seeds, bc_steps=ctx.config.bc_steps,
                dataset_dir=os.path.abspath(os.path.expanduser(ctx.config.dataset_dir)), obs_dim=ctx.obs_dim,
                action_dim=ctx.action_dim, log_every=ctx.config.log_every)


@contextlib.contextmanager
def file_lock(path: str):
    """Jobs of one domain wait for each other's BC pretraining instead of racing on its directory."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def pretrain_bc(ctx: Context):
    """Seed-stacked BC actor params: loaded from <output_dir>/bc/<domain>, or trained and saved there."""
    bc_dir = os.path.join(os.path.expanduser(ctx.config.output_dir), BC_DIR, ctx.spec.domain)
    identity = bc_identity(ctx)
    with file_lock(os.path.join(bc_dir, "lock")):
        checkpointer = Checkpointer(os.path.join(bc_dir, "checkpoints"), keep=ctx.config.keep_checkpoints)
        states = _put(agent.init_seeds(ctx.seeds, ctx.spec.bc, ctx.nets, ctx.obs_dim, ctx.chunk_dim), ctx.per_seed)
        restored = checkpointer.restore(states, items=("state",))
        start = 0
        if restored is not None:
            step, saved_states, _, meta = restored
            diffs = config_differences(meta["bc"], identity)
            if diffs:
                raise ConfigMismatchError(
                    f"The BC checkpoint in {bc_dir} was made with other settings: {'; '.join(diffs)}. "
                    f"Delete {bc_dir} to pretrain again, or use another --output_dir.")
            states, start = _put(saved_states, ctx.per_seed), step
            if step >= ctx.config.bc_steps:
                print(f"BC pretraining: reusing {bc_dir} (step {step}).")
                checkpointer.close()
                return states.actor_bc
        logger = RunLogger(bc_dir, resume_step=start if start else -1)
        states = scanned_phase(ctx, ctx.spec.bc, states, start, ctx.config.bc_steps, "bc", checkpointer, logger,
                               {"bc": identity})
        if ctx.config.bc_steps == 0:
            checkpointer.save(0, states, {"bc": identity, "phase": "bc", "step": 0})
        logger.close()
        checkpointer.close()
        return states.actor_bc


# ------------------------------------------------------------------------------------------------
# Evaluation.


def make_evaluator(ctx: Context, logger: RunLogger):
    from experiments.evaluation import Evaluator

    config, spec = ctx.config, ctx.spec
    evaluator = Evaluator(spec.env_name, len(ctx.seeds), config.eval_episodes, max_episode_steps=spec.eval_steps,
                          episodes_per_round=config.eval_envs_per_seed)
    act = make_chunk_policy(spec.offline, ctx.nets, spec.horizon, ctx.action_dim)

    def evaluate(actor_params, step: int, phase: str):
        result = evaluator.run(functools.partial(act, actor_params), seed=config.seed + step, horizon=spec.horizon,
                               key=jax.random.fold_in(jax.random.PRNGKey(config.seed), step))
        logger.log_eval(step, phase, ctx.seeds, result.success_rate, result.mean_return)
        return result.success_rate

    return evaluate, evaluator


# ------------------------------------------------------------------------------------------------
# Online fine-tuning.


def online_phase(ctx: Context, states, replay, start: int, checkpointer: Checkpointer, logger: RunLogger,
                 meta: Dict, evaluate):
    """One env step per seed per iteration, one update per env step (after online_start_steps).

    Chunks run open-loop; every H env steps the new transitions are appended to each seed's replay
    region and H updates run in one scan over dataset + online data.
    """
    from experiments.evaluation import OnlineEnvs

    config, spec = ctx.config, ctx.spec
    horizon, offset, end = spec.horizon, config.offline_steps, config.online_steps
    cfg = spec.online
    sample = functools.partial(chunks.sample_replay, batch_size=cfg.batch_size, horizon=horizon,
                               discount=cfg.discount)
    train = agent.make_train_fn(cfg, ctx.nets, sample, horizon, data_in_axes=chunks.REPLAY_IN_AXES)
    append = jax.jit(jax.vmap(chunks.append), donate_argnums=0)
    act = make_chunk_policy(cfg, ctx.nets, horizon, ctx.action_dim)
    num_seeds = len(ctx.seeds)
    policy_key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 7)
    envs = OnlineEnvs(spec.env_name, num_seeds, config.seed + start, sparse=spec.sparse,
                      max_episode_steps=spec.eval_steps)
    pending, logged, chunk = [], [], None
    last_good = (checkpointer.steps() or [None])[-1]
    bar = tqdm(total=end, initial=start, desc=f"{spec.env_name} online", unit="env step", dynamic_ncols=True)
    for t in range(start, end):
        if chunk is None or envs.needs_chunk.any():
            chunk = act(states.actor, envs.observations[:, None], jax.random.fold_in(policy_key, t))[:, 0]
        transition, _ = envs.step(chunk)
        pending.append(transition)
        done = t + 1
        if len(pending) == horizon:
            block = chunks.Transitions(**{f: jnp.asarray(np.stack([getattr(tr, f) for tr in pending], axis=1))
                                          for f in chunks.Transitions._fields})
            pending = []
            replay = replay._replace(online=append(replay.online, block))
            if done > config.online_start_steps:
                replay = replay._replace(offline=ctx.offline_data(offset + t))
                states, metrics = train(states, replay)
                logged.append({k: np.asarray(v).mean(axis=1) for k, v in jax.device_get(metrics).items()})
        if done % config.log_every == 0 and logged:
            host = {k: np.mean([m[k] for m in logged], axis=0) for k in logged[0]}
            check_finite(host, "online", offset + done, checkpointer.directory, last_good)
            logger.log_train(offset + done, "online", ctx.seeds, host)
            logged = []
        bar.update(1)
        if done % config.eval_every == 0 or done == end:
            evaluate(states.actor, offset + done, "online")
        if done % config.save_every == 0 or done == end:
            checkpointer.save(offset + done, states, {**meta, "phase": "online", "step": offset + done},
                              replay=replay.online)
            last_good = offset + done
    bar.close()
    envs.close()
    return states


# ------------------------------------------------------------------------------------------------
# One task, end to end.


def prepare_run_dir(run_dir: str, resume: bool, config) -> None:
    config_path = os.path.join(run_dir, "config.json")
    current = json.loads(config.to_json())
    if os.path.exists(config_path):
        if not resume:
            raise RunDirExistsError(
                f"The run directory {run_dir} already exists. Pass --resume to continue it, or choose another "
                f"--output_dir (nothing was changed).")
        with open(config_path) as f:
            saved = json.load(f)
        diffs = config_differences(saved, current)
        if diffs:
            raise ConfigMismatchError(
                f"Cannot resume {run_dir}: the config differs from the saved one in {'; '.join(diffs)}. "
                f"Use the saved config, or another --output_dir.")
        return
    os.makedirs(run_dir, exist_ok=True)
    with open(config_path + ".tmp", "w") as f:
        json.dump(current, f, indent=2)
    os.replace(config_path + ".tmp", config_path)


def run_task(config, env_name: Optional[str] = None, resume: bool = False) -> str:
    """Runs every stage of one task; returns its run directory."""
    spec = resolve(config, env_name)
    run_dir = run_dir_of(config, spec.env_name, spec.method)
    env = data.make_env(spec.env_name, seed=config.seed)
    window = open_dataset(config, spec, env)  # before the run dir, so missing data leaves nothing behind
    prepare_run_dir(run_dir, resume, config)
    with open(os.path.join(run_dir, "task.json"), "w") as f:
        json.dump(json.loads(json.dumps(dataclasses.asdict(spec))), f, indent=2)
    first = window.data_at(0)
    obs_dim, action_dim = first.observations.shape[1], first.actions.shape[1]
    per_seed, replicated = seed_shardings(config.num_seeds)
    ctx = Context(config, spec, agent.make_networks(spec.offline, spec.horizon * action_dim), window,
                  [config.seed + i for i in range(config.num_seeds)], obs_dim, action_dim, per_seed, replicated)

    bc_actor = pretrain_bc(ctx)
    checkpointer = Checkpointer(os.path.join(run_dir, "checkpoints"), keep=config.keep_checkpoints)
    meta = {"env_name": spec.env_name, "method": spec.method, "obs_dim": obs_dim, "action_dim": action_dim,
            "config": json.loads(config.to_json())}
    states = _put(agent.init_seeds(ctx.seeds, spec.offline, ctx.nets, obs_dim, ctx.chunk_dim,
                                   pretrained_actor=bc_actor), per_seed)
    replay = chunks.ReplayData(offline=None, online=_put(
        chunks.init_online(max(config.online_steps, 1), obs_dim, action_dim, num_seeds=config.num_seeds), per_seed))
    step = 0
    restored = checkpointer.restore(states, replay.online) if resume else None
    if restored is not None:
        step, states, online, _ = restored
        states = _put(states, per_seed)
        if online is not None:
            replay = replay._replace(online=_put(online, per_seed))
        print(f"Resuming {run_dir} from step {step}.")
    logger = RunLogger(run_dir, resume_step=step if resume else -1)
    evaluate, evaluator = make_evaluator(ctx, logger)
    try:
        if spec.method == "bc":
            if step == 0:
                evaluate(states.actor_bc, config.bc_steps, "offline")
                checkpointer.save(config.bc_steps, states, {**meta, "phase": "offline", "step": config.bc_steps})
            return run_dir
        if step < config.offline_steps:
            states = scanned_phase(ctx, spec.offline, states, step, config.offline_steps, "offline", checkpointer,
                                   logger, meta, evaluate)
            step = config.offline_steps
        if config.online_steps > 0 and step < config.offline_steps + config.online_steps:
            states = online_phase(ctx, states, replay, step - config.offline_steps, checkpointer, logger, meta,
                                  evaluate)
    finally:
        evaluator.close()
        logger.close()
        checkpointer.close()
    return run_dir
