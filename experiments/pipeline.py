"""The stages of a program (the learners of one or more tasks of a domain, see `experiments.learners`):
BC pretraining (cached per domain), offline and online fine-tuning, periodic evaluation and checkpoints.
The learners are vmapped, and sharded across local devices; each run (task, budget) keeps its own
run directory.

Lifecycle guarantees (docs/recovery.md):
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
from typing import Dict, List, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm import tqdm

from experiments import data, files, learners
from experiments.checkpointing import Checkpointer, config_differences, flatten
from experiments.logs import RunLogger
from experiments.policy import make_chunk_policy
from experiments.preemption import NEVER, Interrupted, Preemption
from experiments.spec import TaskSpec
from trqam_jax import agent, chunks


BC_DIR = "_pretrained_bc"  # <output_dir>/_pretrained_bc/<domain>: the shared BC checkpoints
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


class RunDirExistsError(RuntimeError):
    pass


class ConfigMismatchError(RuntimeError):
    pass


class RunDirBusyError(RuntimeError):
    pass


class TrainingDivergedError(RuntimeError):
    pass


def run_name(config, method: str) -> str:
    """The run's directory name under its task: the method, plus the budget when it is set explicitly,
    so that an eps (or QAM inverse-temperature, or SQAM value-penalty) sweep writes one run dir per value
    and shares one BC."""
    if method == "trqam" and config.agent.kl_budget is not None:
        return f"trqam_eps{config.agent.kl_budget:g}"
    if method == "sqam":  # sqam, sqam_eps0.5, sqam_gap0, sqam_eps0.5_gap0.3
        name = method if config.agent.kl_budget is None else f"{method}_eps{config.agent.kl_budget:g}"
        gap = config.agent.get("gap_reg_coef")
        return name if gap is None else f"{name}_gap{gap:g}"
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


def open_dataset(config, spec: TaskSpec, env_names, envs, preempt: Preemption = NEVER) -> data.ShardWindow:
    """The domain's offline data for the tasks `env_names` (relabelled with `envs`): on the device once,
    with per-task (T, N) rewards and masks, or a rotating window of shards. Generates it if allowed."""
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
        with preempt.immediate():  # minutes of work with nothing to save: a signal stops it at once
            make_dataset.generate_dataset(info.dataset, config.dataset_dir, num_episodes=config.generate_num_episodes,
                                      seed=config.seed, num_workers=max(1, min(4, os.cpu_count() or 1)), **kwargs)
    free = data.device_memory_bytes()  # None on CPU: hold everything
    budget = None if free is None else int(config.dataset_memory_fraction * free)
    window = data.ShardWindow(list(env_names), config.dataset_dir, spec.sparse, env=list(envs), budget_bytes=budget,
                              shards_per_window=config.shards_in_memory or None,
                              rotate_every=config.shard_rotate_every)
    print(f"Dataset {window.info.dataset} ({len(env_names)} task{'s' * (len(env_names) > 1)}): "
          f"{window.total_nbytes() / 2**30:.2f} GiB in all; "
          f"{'held whole on the device' if window.fits else f'{window.num_windows} windows of {window.nbytes() / 2**30:.2f} GiB, rotated every {window.rotate_every} steps'}.")
    return window


def learner_shardings(num_learners: int):
    """(per-learner, replicated) shardings over the local devices, or (None, None) with one device."""
    devices = jax.local_devices()
    if len(devices) < 2:
        return None, None
    if num_learners % len(devices):
        print(f"{num_learners} learners do not divide over {len(devices)} devices: running them on one device.")
        return None, None
    mesh = Mesh(np.array(devices), ("learner",))
    return NamedSharding(mesh, PartitionSpec("learner")), NamedSharding(mesh, PartitionSpec())


# The jitted policy of a network shape, shared by the runs of a program and by every evaluation.
chunk_policy = functools.lru_cache(maxsize=None)(make_chunk_policy)


def _put(tree, sharding):
    return tree if sharding is None else jax.device_put(tree, sharding)


# ------------------------------------------------------------------------------------------------
# The context of one program, where each run's learners are written, and the bookkeeping of a phase.


@dataclasses.dataclass
class Context:
    """What a program's phases share: the settings, the networks, the domain's data and the learners.

    `spec` is the first run's: every run of a program has the same domain, method and shapes, so its
    static update settings serve all learners (their budgets are in the state, `agent.Hyperparams`).
    """

    config: object  # the program's config (schedule, evaluation, data)
    spec: TaskSpec
    nets: agent.Networks
    window: Optional[data.ShardWindow]  # the domain's data, held once; rewards and masks (T, N)
    seeds: list  # each learner's seed (L)
    tasks: object  # (L,) int32: each learner's row of the per-task rewards and masks
    obs_dim: int
    action_dim: int
    per_learner: object = None  # sharding of learner-stacked trees
    replicated: object = None  # sharding of shared data
    preempt: Preemption = NEVER

    @property
    def chunk_dim(self):
        return self.spec.horizon * self.action_dim

    def offline_data(self, step: int) -> chunks.TaskData:
        return chunks.TaskData(_put(self.window.data_at(step), self.replicated), self.tasks)


@dataclasses.dataclass
class Output:
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
    """One run's evaluations: beside training (a BackgroundEvaluator, config.eval_async) or blocking.

    Results are logged under their step, in step order. `pending()` lists the steps whose results are
    not logged yet; a blocking evaluation cut short by a signal stays pending. `num_workers` shares the
    CPU cores between the runs of a program.
    """

    def __init__(self, ctx: "Context", env_name: str, seeds: list, logger: RunLogger, num_workers: int):
        from experiments.evaluation import BackgroundEvaluator, Evaluator, background_episodes_per_round

        config, spec = ctx.config, ctx.spec
        self.ctx, self.env_name, self.seeds, self.logger = ctx, env_name, seeds, logger
        self.phase_of, self.waited_s = {}, 0.0
        self.act = chunk_policy(agent.static_config(spec.offline), ctx.nets, spec.horizon, ctx.action_dim)
        # Envs per seed and round: set, or sized so that seeds x envs fill the free CPU cores. Both modes
        # use the same rounds, so they give the same numbers.
        per_round = config.eval_envs_per_seed or background_episodes_per_round(
            len(seeds), config.eval_episodes, num_workers)
        common = dict(max_episode_steps=spec.eval_steps, episodes_per_round=per_round)
        self.background, self.last_success, self._cut_short = None, None, []
        if config.eval_async:
            self.background = BackgroundEvaluator(env_name, len(seeds), config.eval_episodes, act_fn=self.act,
                                                  horizon=spec.horizon, num_workers=num_workers, **common)
        else:
            self.blocking = Evaluator(env_name, len(seeds), config.eval_episodes, **common)

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


class Phase:
    """Logging, evaluation, checkpoints and preemption at the boundaries of one phase's updates, for
    every run of the program (each gets its own learners' slice)."""

    def __init__(self, ctx: Context, name: str, outputs, start: int, end: int, unit: str = "step",
                 step_offset: int = 0):
        self.ctx, self.name, self.outputs = ctx, name, list(outputs)
        self.total = len(ctx.seeds)
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


@functools.lru_cache(maxsize=None)
def train_program(cfg: agent.AgentConfig, nets: agent.Networks, horizon: int, num_steps: int, online: bool):
    """The jitted scan of `num_steps` updates over learner-stacked states, offline or online. Cached, so
    programs of the same shape (memory groups, runs of one process) are traced and compiled once."""
    sampler, in_axes = ((chunks.sample_replay, chunks.TASK_REPLAY_IN_AXES) if online
                        else (chunks.sample_chunks, chunks.TASK_OFFLINE_IN_AXES))
    sample = chunks.task_sampler(sampler, batch_size=cfg.batch_size, horizon=horizon, discount=cfg.discount)
    return agent.make_train_fn(cfg, nets, sample, num_steps, data_in_axes=in_axes)


_COMPILED: Dict = {}


def _signature(tree):
    leaves, structure = jax.tree_util.tree_flatten(tree)
    return structure, tuple((x.shape, str(x.dtype), getattr(x, "sharding", None)) for x in leaves)


def xla_temp_bytes(compiled) -> Optional[int]:
    """XLA's temporary buffers of a compiled program (None where the backend does not say)."""
    analysis = compiled.memory_analysis()
    return getattr(analysis, "temp_size_in_bytes", None) if analysis is not None else None


def compile_train(train, states, data_example, label: str):
    """The ahead-of-time compiled program (once per shape), and one line on its memory: state, XLA temp
    and dataset."""
    key = (train, _signature(states), _signature(data_example))
    if key in _COMPILED:
        return _COMPILED[key]
    started = time.time()
    compiled = _COMPILED[key] = train.lower(states, data_example).compile()
    temp = xla_temp_bytes(compiled)
    mib = lambda b: "n/a" if b is None else f"{b / 2**20:.1f} MiB"
    online = isinstance(data_example.data, chunks.ReplayData)
    offline = data_example.data.offline if online else data_example.data
    replay = f", online replay {mib(chunks.tree_nbytes(data_example.data.online))}" if online else ""
    # tqdm.write: a line of its own above the phase's progress bar, not appended to it.
    tqdm.write(f"{label}: {len(np.asarray(data_example.task))} learners compiled in {time.time() - started:.1f} s; "
               f"memory: state {mib(chunks.tree_nbytes(states))}, XLA temp {mib(temp)}{replay}, dataset "
               f"{mib(chunks.tree_nbytes(offline))} (held once).")
    return compiled


def scanned_phase(ctx: Context, cfg: agent.AgentConfig, states, start: int, end: int, phase: str, outputs):
    """Runs updates start..end in scans of log_every, with logging, evaluation and checkpoints."""
    config = ctx.config
    train = train_program(agent.static_config(cfg), ctx.nets, ctx.spec.horizon, config.log_every, online=False)
    bookkeeping = Phase(ctx, phase, outputs, start, end)
    try:
        with ctx.preempt.deferred():
            if start < end:
                train = compile_train(train, states, ctx.offline_data(start), f"{ctx.spec.domain} {phase}")
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
                raise RunDirBusyError(f"Cannot write the run directory {run_dir} ({e.strerror}); choose a writable "
                                      f"--output_dir.") from None
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


def import_bc(ctx: Context):
    """Seed-stacked BC actor params from a reference-code checkpoint (config.bc_checkpoint).

    The path may hold '{seed}', filled with each seed of the run; otherwise every seed starts from it.
    """
    from experiments import reference_checkpoint

    like = ctx.nets.actor.init(jax.random.PRNGKey(0), jnp.zeros(ctx.obs_dim), jnp.zeros(ctx.chunk_dim), 0.0)
    paths = [os.path.expanduser(ctx.config.bc_checkpoint.format(seed=seed)) for seed in ctx.seeds]
    params = [reference_checkpoint.import_actor(path, like, which="actor_bc") for path in paths]
    print(f"BC pretraining: imported from {paths[0] if len(set(paths)) == 1 else ', '.join(paths)}.")
    return _put(jax.tree_util.tree_map(lambda *x: jnp.stack(x), *params), ctx.per_learner)


def bc_context(ctx: Context, seeds) -> Context:
    """BC is the same for every task and budget of a domain (it reads no reward): one learner per seed."""
    per_learner, replicated = learner_shardings(len(seeds))
    tasks = _put(jnp.zeros(len(seeds), jnp.int32), per_learner)
    return dataclasses.replace(ctx, seeds=list(seeds), tasks=tasks, per_learner=per_learner, replicated=replicated)


def pretrain_bc(ctx: Context):
    """Seed-stacked BC actor params: loaded from <output_dir>/_pretrained_bc/<domain>, or trained there.

    `ctx` has one learner per seed (`bc_context`)."""
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

    with file_lock(os.path.join(bc_dir, "lock"), ctx.preempt), \
            Checkpointer(os.path.join(bc_dir, "checkpoints"), keep=ctx.config.keep_checkpoints) as checkpointer:
        states = _put(agent.init_seeds(ctx.seeds, ctx.spec.bc, nets, ctx.obs_dim, ctx.chunk_dim), ctx.per_learner)
        with ctx.preempt.critical():
            restored = checkpointer.restore(states, items=("state",), check_meta=check)
        start = 0
        if restored is not None:
            start, saved_states, _, _ = restored
            states = _put(saved_states, ctx.per_learner)
            if start >= ctx.config.bc_steps:
                print(f"BC pretraining: reusing {bc_dir} (step {start}).")
                return states.actor_bc
            print(f"BC pretraining: resuming {bc_dir} from step {start}.")
        logger = RunLogger(bc_dir, resume_step=start if start else -1)
        try:
            bc_ctx = dataclasses.replace(ctx, nets=nets)
            output = Output(bc_dir, ctx.spec.domain, slice(0, len(ctx.seeds)), ctx.seeds, logger, checkpointer,
                            {"bc": identity})
            states = scanned_phase(bc_ctx, ctx.spec.bc, states, start, ctx.config.bc_steps, "bc", [output])
            if ctx.config.bc_steps == 0:
                checkpointer.save(0, states, {"bc": identity, "phase": "bc", "step": 0})
        finally:
            logger.close()
        return states.actor_bc


# ------------------------------------------------------------------------------------------------
# Online fine-tuning.


def online_phase(ctx: Context, states, online, start: int, outputs):
    """One env step per learner per iteration, one update per env step after online_start_steps.

    Each run steps its own envs (its task, its seeds' env seeds), and each learner appends to its own
    replay region. Chunks run open-loop. Every H env steps the new transitions are appended, and H
    updates run in one scan over dataset + online data (docs/conventions.md, online update timing). A
    signal stops at the next chunk boundary, where the replay is consistent.
    """
    from experiments.evaluation import OnlineEnvs

    config, spec = ctx.config, ctx.spec
    horizon, offset, end = spec.horizon, config.offline_steps, config.online_steps
    cfg = spec.online
    train = train_program(agent.static_config(cfg), ctx.nets, horizon, horizon, online=True)
    append = jax.jit(jax.vmap(chunks.append), donate_argnums=0)
    act = chunk_policy(agent.static_config(cfg), ctx.nets, horizon, ctx.action_dim)
    policy_key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 7)
    num_seeds = len(outputs[0].seeds)
    vectorization = "async" if config.online_envs_async else "sync"
    envs = []
    bookkeeping = Phase(ctx, "online", outputs, start, end, unit="env step", step_offset=offset)
    pending, logged, chunk, compiled = [], [], None, False
    try:
        for o in outputs:
            envs.append(OnlineEnvs(o.env_name, len(o.seeds), config.seed + start, sparse=spec.sparse,
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
                bookkeeping.bar.update(1)
                if len(pending) < horizon:
                    continue
                block = chunks.Transitions(**{f: jnp.asarray(np.stack([getattr(tr, f) for tr in pending], axis=1))
                                              for f in chunks.Transitions._fields})
                pending = []
                online = append(online, block)
                if done > config.online_start_steps:
                    replay = chunks.TaskData(chunks.ReplayData(ctx.offline_data(offset + t).data, online), ctx.tasks)
                    if not compiled:
                        train, compiled = compile_train(train, states, replay, f"{spec.domain} online"), True
                    states, metrics = train(states, replay)
                    logged.append({k: np.asarray(v).mean(axis=1) for k, v in jax.device_get(metrics).items()})
                if done % config.log_every == 0 and logged:
                    bookkeeping.log(offset + done, {k: np.mean([m[k] for m in logged], axis=0) for k in logged[0]})
                    logged = []
                bookkeeping.boundary(offset + done, states, eval_due=done % config.eval_every == 0 or done == end,
                                     save_due=done % config.save_every == 0 or done == end, replay=online)
    finally:
        bookkeeping.close()
        for e in envs:
            e.close()
    return states


# ------------------------------------------------------------------------------------------------
# The run directory: validation before anything is written, resume and extension.


def check_run_dir(run_dir: str, resume: bool, config, saved_step: Optional[int], saved_config: Optional[Dict]) -> bool:
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


def check_saved_config(run_dir: str, saved: Dict, config, saved_phase: Optional[str] = None) -> None:
    """Refuses to resume `run_dir` with a config that differs from its saved one (ConfigMismatchError)."""
    current = json.loads(config.to_json())
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


@dataclasses.dataclass
class Resumable:
    """A run of the program that still has work, and where it starts (None: afresh)."""

    run: learners.Run
    restored: Optional[tuple] = None  # (step, states, online replay, meta) of its newest readable checkpoint

    @property
    def start(self):
        """Runs that start from the same point train together."""
        if self.restored is None:
            return (0, "", False)
        meta = self.restored[3]
        return (self.restored[0], meta.get("phase", ""), bool(meta.get("eval_pending")))


def inspect_run(run: learners.Run, resume: bool, preempt: Preemption = NEVER) -> Optional[Resumable]:
    """Whether a run has work left (None: finished). Its config is compared with the saved one before
    any checkpoint is read: a refused change leaves the run directory exactly as it was."""
    config, spec, run_dir = run.config, run.spec, run.run_dir
    directory = os.path.join(run_dir, "checkpoints")
    steps, saved_config = [], files.read_json(os.path.join(run_dir, "config.json"))
    if os.path.isdir(directory):
        with Checkpointer(directory, keep=config.keep_checkpoints, read_only=True) as found:  # only look
            steps = found.steps()
            if steps and saved_config is None:  # config.json lost: the newest readable checkpoint has it
                saved_config = _saved_config(found, steps)
    if not check_run_dir(run_dir, resume, config, steps[-1] if steps else None, saved_config):
        return Resumable(run)
    # The newest readable checkpoint; damaged ones are moved aside (and a leftover save), never deleted.
    with preempt.critical(), Checkpointer(directory, keep=config.keep_checkpoints) as found:
        restored = found.restore(*_state_target(config, spec),
                                 check_meta=lambda meta: check_saved_config(run_dir, meta["config"], config,
                                                                            meta.get("phase")))
    if restored is None:
        print(f"{run_dir} holds no readable checkpoint (each was moved aside): starting it afresh.")
        return Resumable(run)
    saved_step, saved_meta = restored[0], restored[3]
    if saved_step >= total_steps(config, spec.method) and not saved_meta.get("eval_pending"):
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


def group_runs(config, todo: List[Resumable], learners_of_run: int, estimate=None) -> List[List[Resumable]]:
    """The programs to run one after the other: runs with the same starting point, in groups that fit.

    config.learners_per_program sets the group size (whole runs of num_seeds learners); 0 fits as many
    as the device holds, by `estimate(num_runs) -> bytes` against its free memory (everything on CPU).
    """
    by_start: Dict[tuple, List[Resumable]] = {}
    for r in todo:
        by_start.setdefault(r.start, []).append(r)
    groups = []
    for _, runs in sorted(by_start.items()):
        size = len(runs)
        if config.learners_per_program:
            size = max(1, config.learners_per_program // learners_of_run)
            if size * learners_of_run != config.learners_per_program:
                print(f"config.learners_per_program={config.learners_per_program} is not a multiple of the "
                      f"{learners_of_run} seeds of a run: {size * learners_of_run} learners per program.")
        elif estimate is not None:
            free = free_memory_bytes()
            while free is not None and size > 1 and estimate(size) > 0.9 * free:
                size = (size + 1) // 2
        groups.extend(runs[i:i + size] for i in range(0, len(runs), size))
    return groups


def free_memory_bytes():
    """Free memory of the device the learners live on: the accelerator's, or the host's available RAM
    when JAX runs on the CPU (None where neither is known)."""
    from experiments.env_workers import mem_available_mb

    free = data.device_memory_bytes()
    if free is None and jax.default_backend() == "cpu":
        available = mem_available_mb()  # the host's reader, shared with the env workers' sizing
        if available is not None:
            return int(round(available * 1024)) * 1024
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    return free


def memory_estimate(ctx_like: Context, cfg: agent.AgentConfig, num_seeds: int):
    """estimate(num_runs) -> device bytes of an offline program of num_runs * num_seeds learners (state and
    XLA temp, from a compile of abstract shapes); the dataset is already on the device."""

    def estimate(num_runs: int) -> int:
        n = num_runs * num_seeds
        states = jax.eval_shape(lambda: agent.init_seeds(np.zeros(n, np.int32), cfg, ctx_like.nets, ctx_like.obs_dim,
                                                         ctx_like.chunk_dim))
        train = train_program(agent.static_config(cfg), ctx_like.nets, ctx_like.spec.horizon,
                              ctx_like.config.log_every, online=False)
        example = chunks.TaskData(ctx_like.window.data_at(0), jax.ShapeDtypeStruct((n,), jnp.int32))
        temp = xla_temp_bytes(train.lower(states, example).compile()) or 0
        config = ctx_like.config
        replay = 0 if config.online_steps == 0 else chunks.tree_nbytes(jax.eval_shape(
            lambda: chunks.init_online(config.online_steps, ctx_like.obs_dim, ctx_like.action_dim, num_seeds=n)))
        need = chunks.tree_nbytes(states) + temp + replay
        print(f"Memory of {n} learners: state {chunks.tree_nbytes(states) / 2**20:.1f} MiB, XLA temp "
              f"{temp / 2**20:.1f} MiB, online replay {replay / 2**20:.1f} MiB; free {free_memory_bytes() / 2**20:.0f} "
              f"MiB.")
        return need

    return estimate


def run_task(config, env_name: Optional[str] = None, resume: bool = False, preempt: Preemption = NEVER) -> str:
    """Runs every stage of one task (a program of one task); returns its run directory."""
    return run_program(config, [env_name or config.env_name], resume, preempt)[0]


def run_program(config, env_names, resume: bool = False, preempt: Preemption = NEVER) -> List[str]:
    """Trains the tasks `env_names` of one domain (with a budget axis, if config.sweep sets one) as one
    jitted program of learners, or a few when they do not fit; returns the run directories."""
    runs = learners.plan(config, env_names, run_dir_of)  # validates every value before anything is written
    with run_dir_locks([run.run_dir for run in runs]):
        _run_locked(config, runs, resume, preempt)
    return [run.run_dir for run in runs]


def _run_locked(config, runs, resume: bool, preempt: Preemption) -> None:
    todo = [r for r in (inspect_run(run, resume, preempt) for run in runs) if r is not None]
    if not todo:
        return
    names = list(dict.fromkeys(r.run.spec.env_name for r in todo))  # the tasks left, in order
    for r in todo:
        r.run = dataclasses.replace(r.run, task=names.index(r.run.spec.env_name))
    spec = todo[0].run.spec
    envs = [data.make_env(name, seed=config.seed) for name in names]
    window = open_dataset(config, spec, names, envs, preempt)  # missing data: the locked new run dirs are removed
    preempt.check(phase="")
    first = window.data_at(0)
    obs_dim, action_dim = first.observations.shape[1], first.actions.shape[1]
    seeds = [config.seed + i for i in range(config.num_seeds)]
    ctx_like = Context(config, spec, agent.make_networks(spec.offline, spec.horizon * action_dim), window, seeds,
                       None, obs_dim, action_dim, preempt=preempt)
    groups = group_runs(config, todo, len(seeds), memory_estimate(ctx_like, spec.offline, len(seeds)))
    preempt.check(phase="")
    if len(groups) > 1:
        starts = sorted({r.start[0] for r in todo})
        why = (f"they resume from different steps {starts}" if len(starts) > 1
               else "config.learners_per_program, or the device's memory, sets the size")
        print(f"{len(todo)} runs of {len(seeds)} seeds in {len(groups)} programs of up to "
              f"{max(len(g) for g in groups) * len(seeds)} learners, one after the other ({why}).")
    for group in groups:
        train_group(ctx_like, group, seeds, preempt)


def train_group(ctx_like: Context, group: List[Resumable], seeds: list, preempt: Preemption) -> None:
    """Every stage of one program: its runs start from the same point (afresh, or the same saved step)."""
    config, spec = ctx_like.config, ctx_like.spec
    team = learners.Learners(tuple(r.run for r in group), tuple(seeds))
    num = len(team)
    per_learner, replicated = learner_shardings(num)
    ctx = dataclasses.replace(ctx_like, seeds=team.learner_seeds, tasks=_put(jnp.asarray(team.tasks), per_learner),
                              per_learner=per_learner, replicated=replicated, preempt=preempt)
    if len(group) > 1:
        print(f"Program of {team.describe()}: {', '.join(r.run.run_dir for r in group)}.")
    obs_dim, action_dim = ctx.obs_dim, ctx.action_dim
    restored = [r.restored for r in group]
    continuing = restored[0] is not None
    step = restored[0][0] if continuing else 0
    saved_meta = restored[0][3] if continuing else {}
    eval_pending = bool(saved_meta.get("eval_pending"))
    system = system_info(config)
    outputs, wall = [], dict(saved_meta.get("wall_s", {})) if continuing else {}
    workers = max(1, _eval_workers() // len(group))
    try:
        for k, r in enumerate(group):
            run = r.run
            os.makedirs(run.run_dir, exist_ok=True)
            files.write_json(os.path.join(run.run_dir, "config.json"), json.loads(run.config.to_json()))
            files.write_json(os.path.join(run.run_dir, "task.json"), json.loads(json.dumps(dataclasses.asdict(run.spec))))
            meta = {"env_name": run.spec.env_name, "method": run.spec.method, "obs_dim": obs_dim,
                    "action_dim": action_dim, "config": json.loads(run.config.to_json()), "system": system,
                    "wall_s": wall}  # the same dict: saved checkpoints carry the time spent so far
            # An evaluation that a signal cut short is run again, so its rows (if any) are dropped too.
            wandb = None if not config.wandb.project else dict(
                project=config.wandb.project, entity=config.wandb.entity, group=config.wandb.group,
                name=f"{run.spec.env_name}/{run_name(run.config, run.spec.method)}",
                config=json.loads(run.config.to_json()))
            logger = RunLogger(run.run_dir, resume_step=step if continuing else -1,
                               eval_resume_step=(step - eval_pending) if continuing else -1, wandb=wandb)
            output = Output(run.run_dir, run.spec.env_name, team.of_run(k), list(seeds), logger,
                            Checkpointer(os.path.join(run.run_dir, "checkpoints"), keep=config.keep_checkpoints), meta)
            outputs.append(output)
            output.evals = Evaluations(ctx, run.spec.env_name, list(seeds), logger, workers)
        preempt.check(phase="")  # the env workers have started: a signal during their start stops here
        online = _put(chunks.init_online(max(config.online_steps, 1), obs_dim, action_dim, num_seeds=num), per_learner)
        if continuing:
            stack = lambda *trees: jax.tree_util.tree_map(lambda *x: jnp.concatenate(x), *trees)
            states = _put(stack(*(r[1] for r in restored)), per_learner)
            if restored[0][2] is not None:
                online = _put(_grow_online(stack(*(r[2] for r in restored)), max(config.online_steps, 1)), per_learner)
            print(f"Resuming {', '.join(o.run_dir for o in outputs)} from step {step}.")
        else:
            started = time.time()
            bc_actor = pretrain_bc(bc_context(ctx, seeds))  # one per seed, shared by every run
            wall["bc"] = time.time() - started
            bc_actor = jax.tree_util.tree_map(lambda x: jnp.concatenate([x] * len(group)), bc_actor)
            states = _put(agent.init_seeds(ctx.seeds, spec.offline, ctx.nets, obs_dim, ctx.chunk_dim,
                                           pretrained_actor=bc_actor, hparams=team.hparams("offline")), per_learner)
        _train_stages(ctx, team, outputs, states, online, step, saved_meta, eval_pending, wall)
    finally:
        for o in outputs:  # a signal may have come while they were being built
            if o.evals is not None:
                o.evals.close()
            o.logger.close()
            o.checkpointer.close()
    waited = sum(o.evals.waited_s for o in outputs)
    wall["waiting_for_eval"] = wall.get("waiting_for_eval", 0.0) + waited
    print(f"Training waited {waited:.1f} s for evaluation in all "
          f"({'beside training' if config.eval_async else 'blocking'}).")
    for o, r in zip(outputs, group):
        write_summary(o.run_dir, r.run.spec, wall, system)


def _eval_workers() -> int:
    from experiments.evaluation import default_num_workers

    return default_num_workers()


def _train_stages(ctx: Context, team: learners.Learners, outputs, states, online, step: int, saved_meta: Dict,
                  eval_pending: bool, wall: Dict) -> None:
    config, spec = ctx.config, ctx.spec

    @contextlib.contextmanager
    def timed(phase):
        started = time.time()
        try:
            yield
        finally:
            wall[phase] = wall.get(phase, 0.0) + time.time() - started

    with ctx.preempt.deferred():  # a signal during these saves takes effect after them
        if spec.method == "bc":  # BC alone: evaluate the BC policy once, and save
            Phase(ctx, "offline", outputs, config.bc_steps, config.bc_steps).boundary(
                config.bc_steps, states, eval_due=True, save_due=True)
            step = config.offline_steps + config.online_steps  # nothing left to train
        elif eval_pending:  # an evaluation that a signal cut short: run it again from the saved state
            phase = saved_meta["phase"]
            # Mid-run, the next checkpoint records it; at the end, save again so the run reads as finished.
            Phase(ctx, phase, outputs, step, step).boundary(
                step, states, eval_due=True, save_due=step >= total_steps(config, spec.method),
                replay=online if phase == "online" else None)
        elif step == 0:  # the BC policy, evaluated once at step 0 of fine-tuning
            for o in outputs:
                o.evals.submit(0, "offline", take(states.actor, o.learners, len(team)))
    if step < config.offline_steps:
        states = states.replace(hparams=_put(team.hparams("offline"), ctx.per_learner))
        with timed("offline"):
            states = scanned_phase(ctx, spec.offline, states, step, config.offline_steps, "offline", outputs)
        step = config.offline_steps
    if config.online_steps > 0 and step < config.offline_steps + config.online_steps:
        states = states.replace(hparams=_put(team.hparams("online"), ctx.per_learner))
        with timed("online"):
            online_phase(ctx, states, online, step - config.offline_steps, outputs)


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
