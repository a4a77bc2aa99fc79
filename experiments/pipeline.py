"""The stages of one task: BC pretraining (cached per domain), offline and online fine-tuning,
periodic evaluation and checkpoints. Seeds are vmapped, and sharded across local devices.

Lifecycle guarantees (README, "Failure and recovery"):
- the whole config is validated before anything is written;
- a run directory with no checkpoint may be started afresh, with or without --resume;
- --resume is idempotent: no run dir starts fresh, a partial run continues, a finished run exits;
- a SIGTERM / SIGINT stops at the next safe point with a checkpoint there (`preemption`);
- a damaged checkpoint is moved aside and the run trains through it (`checkpointing`).
"""

import contextlib
import dataclasses
import fcntl
import functools
import json
import os
import re
import time
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
from experiments.preemption import NEVER, Interrupted, Preemption
from experiments.spec import TaskSpec, resolve
from trqam_jax import agent, chunks


BC_DIR = "_pretrained_bc"  # <output_dir>/_pretrained_bc/<domain>: the shared BC checkpoints
# Config fields that do not identify a run: where it lives, where the data lives, and how the task
# was named on the command line (the run dir is keyed by the task already).
NOT_IDENTITY = ("output_dir", "dataset_dir", "env_name", "suite", "wandb.project", "wandb.entity", "wandb.group")
# Raising these extends a run; they are checked separately.
EXTENDABLE = ("offline_steps", "online_steps")


class RunDirExistsError(RuntimeError):
    pass


class ConfigMismatchError(RuntimeError):
    pass


class TrainingDivergedError(RuntimeError):
    pass


def run_name(config, method: str) -> str:
    """The run's directory name under its task: the method, plus the budget when it is set explicitly,
    so that an eps (or QAM inverse-temperature) sweep writes one run dir per value and shares one BC."""
    if method == "trqam" and config.agent.kl_budget is not None:
        return f"trqam_eps{config.agent.kl_budget:g}"
    if method == "qam" and config.agent.inv_temp is not None:
        return f"qam_beta{config.agent.inv_temp:g}"
    return method


def run_dir_of(config, env_name: str, method: str) -> str:
    return os.path.join(os.path.expanduser(config.output_dir), env_name, run_name(config, method))


def total_steps(config, method: str) -> int:
    """The step of a finished run's last checkpoint."""
    if method == "bc":
        return config.bc_steps
    return config.offline_steps + config.online_steps


# ------------------------------------------------------------------------------------------------
# Data and devices.


def open_dataset(config, spec: TaskSpec, env) -> data.ShardWindow:
    """The offline data (on device, or a rotating window of shards); generates it if allowed."""
    try:
        data.find_dataset_files(spec.env_name, config.dataset_dir)
    except data.DatasetMissingError as missing:
        info = data.parse_env_name(spec.env_name)
        if not config.generate_missing_data or info.spec.navigation:
            raise
        if info.spec.size_m > 1:
            # A single generated file would be rejected by this task's shard layout: give the command.
            command = re.search(r"python -m experiments\.make_dataset [^\n]*", str(missing))
            raise data.DatasetMissingError(
                f"{spec.env_name} needs {info.spec.size_m}M transitions in 1M shards, which "
                f"config.generate_missing_data does not make; generate them with: "
                f"{command.group(0) if command else 'python -m experiments.make_dataset'}") from None
        from experiments import make_dataset

        print(f"Generating {info.dataset} in {config.dataset_dir} with the ogbench oracles ...")
        kwargs = {} if config.generate_episode_length is None else {"episode_length": config.generate_episode_length}
        make_dataset.generate_dataset(info.dataset, config.dataset_dir, num_episodes=config.generate_num_episodes,
                                      seed=config.seed, num_workers=max(1, min(4, os.cpu_count() or 1)), **kwargs)
    free = data.device_memory_bytes()  # None on CPU: hold everything
    budget = None if free is None else int(config.dataset_memory_fraction * free)
    window = data.ShardWindow(spec.env_name, config.dataset_dir, spec.sparse, env=env, budget_bytes=budget,
                              shards_per_window=config.shards_in_memory or None,
                              rotate_every=config.shard_rotate_every)
    print(f"Dataset {window.info.dataset}: {window.total_nbytes() / 2**30:.2f} GiB in all; "
          f"{'held whole on the device' if window.fits else f'{window.num_windows} windows of {window.nbytes() / 2**30:.2f} GiB, rotated every {window.rotate_every} steps'}.")
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
# The context of one task, and the bookkeeping shared by every phase.


@dataclasses.dataclass
class Context:
    config: object
    spec: TaskSpec
    nets: agent.Networks
    window: Optional[data.ShardWindow]
    seeds: list
    obs_dim: int
    action_dim: int
    per_seed: object = None  # sharding of seed-stacked trees
    replicated: object = None  # sharding of shared data
    preempt: Preemption = NEVER

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
            kept = (f"the last good checkpoint (step {last_good}) in {checkpoint_dir} is kept" if last_good is not None
                    else "no checkpoint had been saved yet, so a rerun starts afresh")
            raise TrainingDivergedError(
                f"{phase}: non-finite {name} in the {phase} updates up to step {step} (seed index {seeds}). "
                f"Training stopped; {kept}.")


class Evaluations:
    """The run's evaluations: beside training (a BackgroundEvaluator, config.eval_async) or blocking.

    Results are logged under their step, in step order. `pending()` lists the steps whose results are
    not logged yet; a blocking evaluation cut short by a signal stays pending.
    """

    def __init__(self, ctx: "Context", logger: RunLogger):
        from experiments.evaluation import (BackgroundEvaluator, Evaluator, background_episodes_per_round,
                                            default_num_workers)

        config, spec = ctx.config, ctx.spec
        self.ctx, self.logger, self.phase_of, self.waited_s = ctx, logger, {}, 0.0
        self.act = make_chunk_policy(spec.offline, ctx.nets, spec.horizon, ctx.action_dim)
        # Envs per seed and round: set, or sized so that seeds x envs fill the free CPU cores. Both modes
        # use the same rounds, so they give the same numbers.
        per_round = config.eval_envs_per_seed or background_episodes_per_round(
            len(ctx.seeds), config.eval_episodes, default_num_workers())
        common = dict(max_episode_steps=spec.eval_steps, episodes_per_round=per_round)
        self.background, self.last_success, self._cut_short = None, None, []
        if config.eval_async:
            self.background = BackgroundEvaluator(spec.env_name, len(ctx.seeds), config.eval_episodes,
                                                  act_fn=self.act, horizon=spec.horizon, **common)
        else:
            self.blocking = Evaluator(spec.env_name, len(ctx.seeds), config.eval_episodes, **common)

    def _seed_and_key(self, step: int):
        # Env seeds and the policy key depend on the step only, so a re-run repeats an evaluation exactly.
        seed = self.ctx.config.seed
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
        self.logger.log_eval(step, self.phase_of.pop(step), self.ctx.seeds, result.success_rate, result.mean_return)
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


class Phase:
    """Logging, evaluation, checkpoints and preemption at the boundaries of one phase's updates."""

    def __init__(self, ctx: Context, name: str, checkpointer: Checkpointer, logger: RunLogger, meta: Dict,
                 start: int, end: int, evals: Optional[Evaluations] = None, unit: str = "step", step_offset: int = 0):
        self.ctx, self.name, self.checkpointer, self.logger = ctx, name, checkpointer, logger
        self.meta, self.evals = meta, evals
        self.end_step = step_offset + end  # in the run's step count (online: offline_steps + env steps)
        self.last_good = (checkpointer.steps() or [None])[-1]
        self.bar = None if end <= start else tqdm(total=end, initial=start, desc=f"{ctx.spec.env_name} {name}",
                                                   unit=unit, dynamic_ncols=True)

    def log(self, step: int, host: Dict[str, np.ndarray]) -> None:
        check_finite(host, self.name, step, self.checkpointer.directory, self.last_good)
        self.logger.log_train(step, self.name, self.ctx.seeds, host)

    def save(self, step: int, states, replay=None) -> None:
        """A checkpoint at `step`. An evaluation of this step still in flight is recorded, so a resume runs
        it again from the saved state (`boundary` has waited for the earlier ones)."""
        pending = self.evals.pending() if self.evals is not None else []
        self.checkpointer.save(step, states, {**self.meta, "phase": self.name, "step": step,
                                              "eval_pending": step in pending}, replay=replay)
        self.last_good = step

    def stop(self, signum: int, step: int, states, replay=None):
        """On a signal: save here unless an evaluation of an earlier step is still running (its actor is
        gone); the resume then starts from the last checkpoint, and repeats that work exactly."""
        pending = self.evals.pending() if self.evals is not None else []
        if self.last_good != step and not any(s < step for s in pending):
            self.save(step, states, replay)
        raise Interrupted(signum, self.last_good, self.name)

    def boundary(self, step: int, states, eval_due: bool, save_due: bool, replay=None) -> None:
        try:
            if self.evals is not None:
                if eval_due:
                    self.evals.submit(step, self.name, states.actor)
                # A phase's last evaluation is awaited before its last checkpoint.
                last = step >= self.end_step
                self.evals.collect(before=(step + 1 if last else step) if save_due else None)
                if self.bar is not None and self.evals.last_success is not None:
                    self.bar.set_postfix(success=f"{np.mean(self.evals.last_success):.2f}")
            if save_due:
                self.save(step, states, replay)
            self.ctx.preempt.check(step, self.name)
        except Interrupted as e:
            self.stop(e.signum, step, states, replay)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def scanned_phase(ctx: Context, cfg: agent.AgentConfig, states, start: int, end: int, phase: str,
                  checkpointer: Checkpointer, logger: RunLogger, meta: Dict, evals: Optional[Evaluations] = None):
    """Runs updates start..end in scans of log_every, with logging, evaluation and checkpoints."""
    config = ctx.config
    sample = functools.partial(chunks.sample_chunks, batch_size=cfg.batch_size, horizon=ctx.spec.horizon,
                               discount=cfg.discount)
    train = agent.make_train_fn(cfg, ctx.nets, sample, config.log_every)
    bookkeeping = Phase(ctx, phase, checkpointer, logger, meta, start, end, evals)
    try:
        with ctx.preempt.deferred():
            for step in range(start, end, config.log_every):
                states, metrics = train(states, ctx.offline_data(step))
                done = step + config.log_every
                bookkeeping.log(done, {k: np.asarray(v).mean(axis=1) for k, v in jax.device_get(metrics).items()})
                bookkeeping.bar.update(config.log_every)
                bookkeeping.boundary(done, states, eval_due=done % config.eval_every == 0 or done == end,
                                     save_due=done % config.save_every == 0 or done == end)
    finally:
        bookkeeping.close()
    return states


# ------------------------------------------------------------------------------------------------
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
            "bc_steps": ctx.config.bc_steps, "seeds": ctx.seeds, "obs_dim": ctx.obs_dim, "action_dim": ctx.action_dim}


def bc_networks(ctx: Context) -> agent.Networks:
    """BC trains only the actor; a one-head critic keeps the cache independent of the critic's settings."""
    config = dataclasses.replace(ctx.spec.bc, num_critics=1)
    return agent.make_networks(config, ctx.chunk_dim)


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


def import_bc(ctx: Context):
    """Seed-stacked BC actor params from a reference-code checkpoint (config.bc_checkpoint).

    The path may hold '{seed}', filled with each seed of the run; otherwise every seed starts from it.
    """
    from experiments import reference_checkpoint

    like = ctx.nets.actor.init(jax.random.PRNGKey(0), jnp.zeros(ctx.obs_dim), jnp.zeros(ctx.chunk_dim), 0.0)
    paths = [os.path.expanduser(ctx.config.bc_checkpoint.format(seed=seed)) for seed in ctx.seeds]
    params = [reference_checkpoint.import_actor(path, like, which="actor_bc") for path in paths]
    print(f"BC pretraining: imported from {paths[0] if len(set(paths)) == 1 else ', '.join(paths)}.")
    return _put(jax.tree_util.tree_map(lambda *x: jnp.stack(x), *params), ctx.per_seed)


def pretrain_bc(ctx: Context):
    """Seed-stacked BC actor params: loaded from <output_dir>/_pretrained_bc/<domain>, or trained there."""
    if ctx.config.bc_checkpoint:
        return import_bc(ctx)
    bc_dir = os.path.join(os.path.expanduser(ctx.config.output_dir), BC_DIR, ctx.spec.domain)
    identity = bc_identity(ctx)
    nets = bc_networks(ctx)

    def check(meta):
        diffs = config_differences(meta["bc"], identity)
        if diffs:
            raise ConfigMismatchError(
                f"The BC checkpoint in {bc_dir} was made with other settings: "
                f"{'; '.join(d.replace(': ', ' ', 1) for d in diffs)}. Use another --output_dir for these settings "
                f"(the cached BC is valid and was left as it is).")

    with file_lock(os.path.join(bc_dir, "lock")), \
            Checkpointer(os.path.join(bc_dir, "checkpoints"), keep=ctx.config.keep_checkpoints) as checkpointer:
        states = _put(agent.init_seeds(ctx.seeds, ctx.spec.bc, nets, ctx.obs_dim, ctx.chunk_dim), ctx.per_seed)
        restored = checkpointer.restore(states, items=("state",), check_meta=check)
        start = 0
        if restored is not None:
            start, saved_states, _, _ = restored
            states = _put(saved_states, ctx.per_seed)
            if start >= ctx.config.bc_steps:
                print(f"BC pretraining: reusing {bc_dir} (step {start}).")
                return states.actor_bc
            print(f"BC pretraining: resuming {bc_dir} from step {start}.")
        logger = RunLogger(bc_dir, resume_step=start if start else -1)
        try:
            bc_ctx = dataclasses.replace(ctx, nets=nets)
            states = scanned_phase(bc_ctx, ctx.spec.bc, states, start, ctx.config.bc_steps, "bc", checkpointer,
                                   logger, {"bc": identity})
            if ctx.config.bc_steps == 0:
                checkpointer.save(0, states, {"bc": identity, "phase": "bc", "step": 0})
        finally:
            logger.close()
        return states.actor_bc


# ------------------------------------------------------------------------------------------------
# Evaluation.


# Evaluations: see `Evaluations` above.


# ------------------------------------------------------------------------------------------------
# Online fine-tuning.


def online_phase(ctx: Context, states, replay, start: int, checkpointer: Checkpointer, logger: RunLogger,
                 meta: Dict, evals: Evaluations):
    """One env step per seed per iteration, one update per env step after online_start_steps.

    Chunks run open-loop. Every H env steps the new transitions are appended to each seed's replay
    region, and H updates run in one scan over dataset + online data (docs/conventions.md, online
    update timing). A signal stops at the next chunk boundary, where the replay is consistent.
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
                      max_episode_steps=spec.eval_steps, vectorization="async" if config.online_envs_async else "sync")
    pending, logged, chunk = [], [], None
    bookkeeping = Phase(ctx, "online", checkpointer, logger, meta, start, end, evals, unit="env step",
                        step_offset=offset)
    try:
        with ctx.preempt.deferred():
            for t in range(start, end):
                if chunk is None or envs.needs_chunk.any():
                    chunk = act(states.actor, envs.observations[:, None], jax.random.fold_in(policy_key, t))[:, 0]
                transition, _ = envs.step(chunk)
                pending.append(transition)
                done = t + 1
                bookkeeping.bar.update(1)
                if len(pending) < horizon:
                    continue
                block = chunks.Transitions(**{f: jnp.asarray(np.stack([getattr(tr, f) for tr in pending], axis=1))
                                              for f in chunks.Transitions._fields})
                pending = []
                replay = replay._replace(online=append(replay.online, block))
                if done > config.online_start_steps:
                    replay = replay._replace(offline=ctx.offline_data(offset + t))
                    states, metrics = train(states, replay)
                    logged.append({k: np.asarray(v).mean(axis=1) for k, v in jax.device_get(metrics).items()})
                if done % config.log_every == 0 and logged:
                    bookkeeping.log(offset + done, {k: np.mean([m[k] for m in logged], axis=0) for k in logged[0]})
                    logged = []
                bookkeeping.boundary(offset + done, states, eval_due=done % config.eval_every == 0 or done == end,
                                     save_due=done % config.save_every == 0 or done == end, replay=replay.online)
    finally:
        bookkeeping.close()
        envs.close()
    return states


# ------------------------------------------------------------------------------------------------
# The run directory: validation before anything is written, resume and extension.


def _read_json(path: str) -> Optional[Dict]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _write_json(path: str, value) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(value, f, indent=2)
    os.replace(path + ".tmp", path)


def check_run_dir(run_dir: str, resume: bool, config, saved_step: Optional[int], saved_phase: Optional[str]) -> bool:
    """Decides, before anything is written, whether this run may start or continue. True: continue."""
    saved = _read_json(os.path.join(run_dir, "config.json"))
    if saved_step is None:
        if saved is not None:
            print(f"{run_dir} holds no checkpoint (an earlier attempt stopped before its first save): starting "
                  f"it afresh.")
        return False
    saved = saved or {}
    if not resume:
        raise RunDirExistsError(
            f"The run directory {run_dir} already exists with a checkpoint at step {saved_step}. Pass --resume to "
            f"continue it, or choose another --output_dir (nothing was changed).")
    current = json.loads(config.to_json())
    diffs = config_differences(saved, current, ignore=NOT_IDENTITY + EXTENDABLE)
    if diffs:
        raise ConfigMismatchError(
            f"Cannot resume {run_dir}: the config differs from the saved one in {'; '.join(diffs)}. "
            f"Use the saved config, or another --output_dir. (Raising offline_steps or online_steps extends a run.)")
    for name in EXTENDABLE:
        old, new = saved.get(name), current[name]
        if old is not None and new < old:
            raise ConfigMismatchError(f"Cannot resume {run_dir}: {name} can only be raised to extend a run "
                                      f"({old} -> {new}). Use {old}, or another --output_dir.")
    old_offline = saved.get("offline_steps")
    if old_offline is not None and current["offline_steps"] != old_offline and saved_phase == "online":
        raise ConfigMismatchError(f"Cannot resume {run_dir}: it is already in its online phase, so offline_steps "
                                  f"cannot change ({old_offline} -> {current['offline_steps']}).")
    return True


def _state_target(config, spec: TaskSpec):
    """The abstract training state and replay of a run checkpoint, from its meta (no dataset needed)."""

    def like(meta):
        chunk_dim = spec.horizon * meta["action_dim"]
        nets = agent.make_networks(spec.offline, chunk_dim)
        return jax.eval_shape(lambda: agent.init_seeds(np.arange(config.num_seeds), spec.offline, nets,
                                                       meta["obs_dim"], chunk_dim))

    def replay_like(meta):
        capacity = max(meta["config"]["online_steps"], 1)
        return jax.eval_shape(lambda: chunks.init_online(capacity, meta["obs_dim"], meta["action_dim"],
                                                         num_seeds=config.num_seeds))

    return like, replay_like


def _grow_online(buffer: chunks.OnlineBuffer, capacity: int) -> chunks.OnlineBuffer:
    """A restored replay in a larger buffer (a run extended with more online_steps)."""
    old = buffer.rewards.shape[1]
    if old >= capacity:
        return buffer

    def pad(x):
        return jnp.pad(x, [(0, 0), (0, capacity - old)] + [(0, 0)] * (x.ndim - 2)) if x.ndim >= 2 else x

    return jax.tree_util.tree_map(pad, buffer)


def run_task(config, env_name: Optional[str] = None, resume: bool = False, preempt: Preemption = NEVER) -> str:
    """Runs every stage of one task; returns its run directory."""
    spec = resolve(config, env_name)  # validates every value before anything is written
    run_dir = run_dir_of(config, spec.env_name, spec.method)
    horizon = spec.horizon
    restored, saved_step = None, None
    if os.path.isdir(os.path.join(run_dir, "checkpoints")):
        # Without --resume nothing is changed: only look (a leftover save is moved aside on resume).
        with Checkpointer(os.path.join(run_dir, "checkpoints"), keep=config.keep_checkpoints,
                          read_only=not resume) as found:
            steps = found.steps()
            saved_step = steps[-1] if steps else None
            if steps and resume:  # the newest readable checkpoint; damaged ones are moved aside
                restored = found.restore(*_state_target(config, spec))
                saved_step = None if restored is None else restored[0]
    saved_meta = restored[3] if restored is not None else {}
    continuing = check_run_dir(run_dir, resume, config, saved_step, saved_meta.get("phase"))
    if continuing and saved_step >= total_steps(config, spec.method) and not saved_meta.get("eval_pending"):
        print(f"{run_dir} is already finished (step {saved_step}); nothing to do.")
        return run_dir

    env = data.make_env(spec.env_name, seed=config.seed)
    window = open_dataset(config, spec, env)  # before the run dir is written: missing data leaves nothing
    first = window.data_at(0)
    obs_dim, action_dim = first.observations.shape[1], first.actions.shape[1]
    os.makedirs(run_dir, exist_ok=True)
    _write_json(os.path.join(run_dir, "config.json"), json.loads(config.to_json()))
    _write_json(os.path.join(run_dir, "task.json"), json.loads(json.dumps(dataclasses.asdict(spec))))
    per_seed, replicated = seed_shardings(config.num_seeds)
    ctx = Context(config, spec, agent.make_networks(spec.offline, horizon * action_dim), window,
                  [config.seed + i for i in range(config.num_seeds)], obs_dim, action_dim, per_seed, replicated,
                  preempt)
    meta = {"env_name": spec.env_name, "method": spec.method, "obs_dim": obs_dim, "action_dim": action_dim,
            "config": json.loads(config.to_json())}
    online = _put(chunks.init_online(max(config.online_steps, 1), obs_dim, action_dim, num_seeds=config.num_seeds),
                  per_seed)
    step, eval_pending = 0, False
    if continuing:
        step, states, saved_online, _ = restored
        states = _put(states, per_seed)
        if saved_online is not None:
            online = _put(_grow_online(saved_online, max(config.online_steps, 1)), per_seed)
        eval_pending = bool(saved_meta.get("eval_pending"))
        wall = dict(saved_meta.get("wall_s", {}))
        print(f"Resuming {run_dir} from step {step}.")
    else:
        started = time.time()
        bc_actor = pretrain_bc(ctx)
        wall = {"bc": time.time() - started}
        states = _put(agent.init_seeds(ctx.seeds, spec.offline, ctx.nets, obs_dim, ctx.chunk_dim,
                                       pretrained_actor=bc_actor), per_seed)
    replay = chunks.ReplayData(offline=None, online=online)

    meta["system"] = system_info(config)
    # An evaluation that a signal cut short is run again, so its rows (if any) are dropped too.
    wandb = None if not config.wandb.project else dict(
        project=config.wandb.project, entity=config.wandb.entity, group=config.wandb.group,
        name=f"{spec.env_name}/{run_name(config, spec.method)}", config=json.loads(config.to_json()))
    logger = RunLogger(run_dir, resume_step=step if continuing else -1,
                       eval_resume_step=(step - eval_pending) if continuing else -1, wandb=wandb)
    checkpointer = Checkpointer(os.path.join(run_dir, "checkpoints"), keep=config.keep_checkpoints)
    evals = Evaluations(ctx, logger)
    meta["wall_s"] = wall  # the same dict: saved checkpoints carry the time spent so far

    @contextlib.contextmanager
    def timed(phase):
        started = time.time()
        try:
            yield
        finally:
            wall[phase] = wall.get(phase, 0.0) + time.time() - started

    try:
        with preempt.deferred():  # a signal during these saves takes effect after them
            if spec.method == "bc":  # BC alone: evaluate the BC policy once, and save
                Phase(ctx, "offline", checkpointer, logger, meta, config.bc_steps, config.bc_steps, evals).boundary(
                    config.bc_steps, states, eval_due=True, save_due=True)
                step = config.offline_steps + config.online_steps  # nothing left to train
            elif eval_pending:  # an evaluation that a signal cut short: run it again from the saved state
                phase = saved_meta["phase"]
                # Mid-run, the next checkpoint records it; at the end, save again so the run reads as finished.
                Phase(ctx, phase, checkpointer, logger, meta, step, step, evals).boundary(
                    step, states, eval_due=True, save_due=step >= total_steps(config, spec.method),
                    replay=online if phase == "online" else None)
            elif step == 0:  # the BC policy, evaluated once at step 0 of fine-tuning
                evals.submit(0, "offline", states.actor)
        if step < config.offline_steps:
            with timed("offline"):
                states = scanned_phase(ctx, spec.offline, states, step, config.offline_steps, "offline",
                                       checkpointer, logger, meta, evals)
            step = config.offline_steps
        if config.online_steps > 0 and step < config.offline_steps + config.online_steps:
            with timed("online"):
                states = online_phase(ctx, states, replay, step - config.offline_steps, checkpointer, logger, meta,
                                      evals)
    finally:
        evals.close()
        logger.close()
        checkpointer.close()
    wall["waiting_for_eval"] = wall.get("waiting_for_eval", 0.0) + evals.waited_s
    print(f"Training waited {evals.waited_s:.1f} s for evaluation in all "
          f"({'beside training' if config.eval_async else 'blocking'}).")
    write_summary(run_dir, spec, wall, meta["system"])
    return run_dir


def system_info(config) -> Dict:
    """What the numbers were computed on: recorded in every checkpoint and in summary.json."""
    device = jax.devices()[0]
    return {"device_kind": device.device_kind, "platform": device.platform, "device_count": jax.device_count(),
            "jax_version": jax.__version__, "matmul_precision": config.matmul_precision}


def _last_rows(path: str) -> Dict[int, Dict]:
    """The last row of each seed in a run's CSV."""
    import csv

    if not os.path.exists(path):
        return {}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {int(r["seed"]): r for r in rows}


def write_summary(run_dir: str, spec: TaskSpec, wall: Dict, system: Dict) -> Dict:
    """The end-of-run summary, printed and saved as summary.json."""
    evals, train = _last_rows(os.path.join(run_dir, "eval.csv")), _last_rows(os.path.join(run_dir, "train.csv"))
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
    _write_json(os.path.join(run_dir, "summary.json"), summary)
    std = "" if summary["success_std_ddof1"] is None else f" ± {100 * summary['success_std_ddof1']:.1f}"
    mean = "n/a" if summary["success_mean"] is None else f"{100 * summary['success_mean']:.1f}{std}%"
    kl = ", ".join(f"{v:.3g}" for v in final["kl_hat"].values()) or "n/a"
    lam = ", ".join(f"{v:.3g}" for v in final["lambda_eff"].values()) or "n/a"
    print(f"Summary of {run_dir} at step {summary['final_step']}: success {mean} (mean ± std over "
          f"{len(values)} seeds, ddof=1; per seed {[round(100 * v, 1) for v in success.values()]}); final kl_hat "
          f"[{kl}], lambda_eff [{lam}]; wall time {', '.join(f'{k} {v:.0f} s' for k, v in wall.items())}; "
          f"written to {os.path.abspath(run_dir)} (summary.json).")
    return summary
