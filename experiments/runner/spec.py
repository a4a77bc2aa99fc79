"""The config, resolved once into frozen settings, and every check of its values.

`resolve` gives one task's settings (`TaskSpec`: the updates of its phases, horizon, evaluation length),
`resolve_settings` what the runs of a program share (`Settings`: seeds, schedule, evaluation, data). Both
run in `plan.plan`, before anything is written; nothing below reads the ConfigDict. Config fields left as
None take the value of the task's domain in experiments/configs/domains.py. The checks (`check_values`,
`check_schedule`, `check_inputs`, `task_list`) raise one ConfigError naming the field and the fix.
"""

import dataclasses
import importlib
import math
import os
from typing import Optional, Sequence, Tuple

from experiments import data
from experiments.configs.domains import DOMAIN_SETTINGS, SUITES
from experiments.infra.errors import UserError
from trqam_jax.agent import METHODS, AgentConfig
from trqam_jax.networks import COMPUTE_DTYPES


class ConfigError(UserError, ValueError):
    """A config value that cannot run; the message names the field and the fix."""


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    env_name: str  # the OGBench single-task id
    domain: str  # e.g. cube-double-play
    method: str  # trqam, qam, sqam or bc
    horizon: int  # H
    sparse: bool  # sparse-reward option
    eval_steps: int  # evaluation episode length
    bc: AgentConfig  # the BC pretraining update
    offline: AgentConfig  # the offline fine-tuning update
    online: AgentConfig  # the online update (its own eps if online_kl_budget is set)


@dataclasses.dataclass(frozen=True)
class Schedule:
    """The steps of a run's phases and of its boundaries (the config fields of the same names)."""

    bc_steps: int
    offline_steps: int
    online_steps: int  # env steps, after offline_steps
    online_start_steps: int  # env steps collected before the online updates start
    log_every: int  # updates per jitted scan and per log row
    eval_every: int
    save_every: int
    keep_checkpoints: int

    def total_steps(self, method: str) -> int:
        """The step of a finished run's last checkpoint."""
        return self.bc_steps if method == "bc" else self.offline_steps + self.online_steps


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """How policies are evaluated and online envs stepped."""

    episodes: int  # config.eval_episodes: per seed
    envs_per_seed: Optional[int]  # config.eval_envs_per_seed; None: sized to fill the free cores
    background: bool  # config.eval_async: beside training, in worker processes; False: blocking
    online_envs_async: bool  # config.online_envs_async: online envs in worker processes


@dataclasses.dataclass(frozen=True)
class DataSource:
    """Where the offline data comes from and how much of it the device holds."""

    dataset_dir: str
    generate_missing: bool  # config.generate_missing_data
    generate_num_episodes: Optional[int]
    generate_episode_length: Optional[int]
    shards_in_memory: int
    shard_rotate_every: int
    memory_fraction: float  # config.dataset_memory_fraction


@dataclasses.dataclass(frozen=True)
class Settings:
    """What every run of a program shares, resolved once from the config: nothing below `experiments.runner.plan`
    reads the ConfigDict (each run's own JSON copy is only saved and compared, `plan.Run.config`)."""

    method: str
    seed: int  # learner i of a run uses seed + i
    num_seeds: int
    output_dir: str  # expanded
    bc_checkpoint: str  # "": pretrain BC
    learners_per_program: int  # 0: as many as fit
    matmul_precision: str
    wandb: Tuple[str, str, str]  # (project, entity, group); project "": no wandb
    schedule: Schedule
    evaluation: Evaluation
    data: DataSource

    @property
    def seeds(self) -> Tuple[int, ...]:
        return tuple(range(self.seed, self.seed + self.num_seeds))


def _pick(value, default):
    return default if value is None else value


def resolve(config, env_name: Optional[str] = None) -> TaskSpec:
    """The settings of one task. Validates every value first, so a bad config writes nothing."""
    env_name = env_name or config.env_name
    info = data.parse_env_name(env_name)  # raises UnknownEnvError listing the valid domains
    if info.task is None:
        raise ConfigError(f"{env_name!r} is ogbench's alias for a default task; name the task explicitly, "
                          f"e.g. {info.domain}-singletask-task1-v0 (tasks are task1..task5).")
    if config.method not in METHODS:
        raise ConfigError(f"config.method={config.method!r} is unknown: use one of {', '.join(METHODS)}.")
    if config.agent.get("compute_dtype", "float32") not in COMPUTE_DTYPES:
        raise ConfigError(f"config.agent.compute_dtype={config.agent.compute_dtype!r} is unknown: use one of "
                          f"{', '.join(COMPUTE_DTYPES)}.")
    check_values(config)
    domain = DOMAIN_SETTINGS[info.domain]
    a = config.agent
    width = _pick(a.width, domain.width)
    common = dict(
        hidden_dims=(width,) * a.depth,
        actor_layer_norm=_pick(a.actor_layer_norm, domain.actor_layer_norm),
        num_critics=a.num_critics,
        flow_steps=a.flow_steps,
        discount=_pick(a.discount, domain.discount),
        rho=_pick(a.rho, domain.rho),
        tau=a.tau,
        learning_rate=a.learning_rate,
        grad_clip_norm=a.grad_clip_norm,
        batch_size=a.batch_size,
        lam_scale=a.lam_scale,
        lam_init=a.lam_init,
        dual_lr=a.dual_lr,
        kl_ema_decay=a.kl_ema_decay,
        kl_clip_factor=a.kl_clip_factor,
        lam_min=a.lam_min,
        lam_max=a.lam_max,
        inv_temp=_pick(a.inv_temp, domain.qam_inv_temp),
        compute_dtype=a.get("compute_dtype", "float32"),  # .get: configs saved before the switch lack it
        # SQAM's settings (conventions §12); .get: configs saved before SQAM existed lack them.
        n_bridge=_pick(a.get("n_bridge"), AgentConfig.n_bridge),
        gap_reg_coef=_pick(a.get("gap_reg_coef"), domain.sqam_gap_reg_coef),
    )
    eps = _pick(a.kl_budget, domain.sqam_kl_budget if config.method == "sqam" else domain.kl_budget)
    fine_tune_method = "trqam" if config.method == "bc" else config.method
    offline = AgentConfig(method=fine_tune_method, kl_budget=eps, **common)
    online = dataclasses.replace(offline, kl_budget=_pick(config.online_kl_budget, eps))
    spec = TaskSpec(
        env_name=env_name,
        domain=info.domain,
        method=config.method,
        horizon=_pick(a.horizon, domain.horizon),
        sparse=_pick(a.sparse, domain.sparse),
        eval_steps=_pick(config.eval_steps, domain.eval_steps),
        bc=dataclasses.replace(offline, method="bc"),
        offline=offline,
        online=online,
    )
    check_schedule(config, spec.horizon)
    return spec


def resolve_settings(config) -> Settings:
    """The program-wide settings of a checked config (`resolve` checks it first)."""
    return Settings(
        method=config.method, seed=config.seed, num_seeds=config.num_seeds,
        output_dir=os.path.expanduser(config.output_dir), bc_checkpoint=config.bc_checkpoint,
        learners_per_program=config.learners_per_program, matmul_precision=config.matmul_precision,
        wandb=(config.wandb.project, config.wandb.entity, config.wandb.group),
        schedule=Schedule(**{f.name: config[f.name] for f in dataclasses.fields(Schedule)}),
        evaluation=Evaluation(episodes=config.eval_episodes, envs_per_seed=config.eval_envs_per_seed,
                              background=config.eval_async, online_envs_async=config.online_envs_async),
        data=DataSource(dataset_dir=config.dataset_dir, generate_missing=config.generate_missing_data,
                        generate_num_episodes=config.generate_num_episodes,
                        generate_episode_length=config.generate_episode_length,
                        shards_in_memory=config.shards_in_memory, shard_rotate_every=config.shard_rotate_every,
                        memory_fraction=config.dataset_memory_fraction))


# (field, test, what is allowed) for every value with a range; None (a domain default) is skipped.
_RANGES = (
    ("num_seeds", lambda v: v >= 1, ">= 1"),
    ("learners_per_program", lambda v: v >= 0, ">= 0 (0: as many as fit)"),
    ("agent.batch_size", lambda v: v >= 1, ">= 1"),
    ("agent.horizon", lambda v: v >= 1, ">= 1"),
    ("agent.flow_steps", lambda v: v >= 1, ">= 1"),
    ("agent.num_critics", lambda v: v >= 1, ">= 1"),
    ("agent.width", lambda v: v >= 1, ">= 1"),
    ("agent.depth", lambda v: v >= 1, ">= 1"),
    ("eval_episodes", lambda v: v >= 1, ">= 1"),
    ("eval_envs_per_seed", lambda v: v >= 1, ">= 1"),
    ("eval_steps", lambda v: v >= 1, ">= 1"),
    ("agent.discount", lambda v: 0 < v <= 1, "in (0, 1]"),
    ("agent.kl_budget", lambda v: v > 0, "> 0"),
    ("online_kl_budget", lambda v: v > 0, "> 0"),
    ("agent.inv_temp", lambda v: v > 0, "> 0"),
    ("agent.gap_reg_coef", lambda v: v >= 0, ">= 0 (0: no value penalty)"),
    ("agent.n_bridge", lambda v: v >= 1, ">= 1"),
    ("agent.learning_rate", lambda v: v > 0, "> 0"),
    ("agent.dual_lr", lambda v: v > 0, "> 0"),
    ("agent.lam_scale", lambda v: v > 0, "> 0"),
    ("agent.grad_clip_norm", lambda v: v > 0, "> 0"),
    ("agent.tau", lambda v: 0 < v <= 1, "in (0, 1]"),
    ("agent.rho", lambda v: v >= 0, ">= 0"),
    ("agent.kl_ema_decay", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("agent.lam_min", lambda v: v > 0, "> 0"),
    ("agent.lam_max", lambda v: v > 0, "> 0"),
    ("agent.lam_init", lambda v: v > 0, "> 0"),
    ("agent.kl_clip_factor", lambda v: v > 0, "> 0"),
    ("online_steps", lambda v: v >= 0, ">= 0"),
    ("online_start_steps", lambda v: v >= 0, ">= 0"),
    ("bc_steps", lambda v: v >= 0, ">= 0"),
    ("offline_steps", lambda v: v >= 0, ">= 0"),
    ("keep_checkpoints", lambda v: v >= 1, ">= 1"),
    ("shards_in_memory", lambda v: v >= 0, ">= 0 (0: as many as fit)"),
    ("shard_rotate_every", lambda v: v >= 1, ">= 1"),
    ("dataset_memory_fraction", lambda v: 0 < v <= 1, "in (0, 1]"),
)


def _numbers(tree, prefix=""):
    """(dotted name, value) of every number in a config (nested dicts), bools left out."""
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _numbers(value, f"{prefix}{key}.")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield f"{prefix}{key}", value


def check_values(config) -> None:
    """One ConfigError naming the field, its value and what is allowed."""
    allowed_of = {name: allowed for name, _, allowed in _RANGES}
    for name, value in _numbers(config.to_dict()):  # inf would train nonsense and write Infinity into JSON
        if not math.isfinite(value):
            allowed = f" {allowed_of[name]}" if name in allowed_of else ""
            raise ConfigError(f"config.{name}={value!r} is out of range: it must be a finite number{allowed}.")
    for name, ok, allowed in _RANGES:
        value = config
        for part in name.split("."):
            value = value.get(part) if hasattr(value, "get") else None
        if value is not None and not ok(value):
            raise ConfigError(f"config.{name}={value!r} is out of range: it must be {allowed}.")
    if config.agent.lam_min > config.agent.lam_max:
        raise ConfigError(f"config.agent.lam_min={config.agent.lam_min} must not exceed "
                          f"config.agent.lam_max={config.agent.lam_max}.")
    if config.matmul_precision not in MATMUL_PRECISIONS:
        raise ConfigError(f"config.matmul_precision={config.matmul_precision!r} is unknown: use one of "
                          f"{', '.join(MATMUL_PRECISIONS)}.")


MATMUL_PRECISIONS = ("default", "high", "highest", "bfloat16", "tensorfloat32", "float32")


def check_inputs(config, run_dirs: Sequence[str] = ()) -> None:
    """What the runs write and read besides their config, checked before anything is written: their run
    directories can be created, wandb imports if config.wandb.project asks for it, and every seed's
    config.bc_checkpoint file exists (unless each run dir already has a checkpoint: it is resumed or refused,
    and reads no BC). One ConfigError naming the field and the fix."""
    for run_dir in run_dirs or (os.path.expanduser(config.output_dir),):
        _check_writable(config.output_dir, run_dir)
    if config.wandb.project:
        try:
            importlib.import_module("wandb")
        except Exception as e:  # not installed, or an install that cannot import
            raise ConfigError(f"config.wandb.project={config.wandb.project!r} asks for Weights & Biases logging, but "
                              f"wandb cannot be imported ({type(e).__name__}: {e}): pip install wandb, or leave "
                              f"config.wandb.project empty.") from None
    if config.bc_checkpoint and (not run_dirs or not all(_has_checkpoint(d) for d in run_dirs)):
        for seed in range(config.seed, config.seed + config.num_seeds):
            try:
                path = os.path.expanduser(config.bc_checkpoint.format(seed=seed))
            except (KeyError, IndexError, ValueError) as e:
                raise ConfigError(f"config.bc_checkpoint={config.bc_checkpoint!r} cannot be filled in ({e!r}): the "
                                  f"only field allowed is {{seed}}, e.g. /path/params_{{seed}}.pkl.") from None
            if not os.path.isfile(path) or not os.access(path, os.R_OK):
                why = ("is a directory" if os.path.isdir(path) else "cannot be read" if os.path.exists(path)
                       else "does not exist")
                raise ConfigError(f"config.bc_checkpoint={config.bc_checkpoint!r}: {path} (seed {seed}) {why}: give a "
                                  f"reference-code params_<step>.pkl, or leave config.bc_checkpoint empty to pretrain "
                                  f"BC.")


def _check_writable(output_dir: str, run_dir: str) -> None:
    path = os.path.abspath(run_dir)
    while not os.path.lexists(path):  # the nearest part of the path that exists: the run dir is made under it
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        raise ConfigError(f"config.output_dir={output_dir!r} cannot hold the run directory {run_dir}: {path} is not "
                          f"a directory. Choose another --output_dir (nothing was written).")
    if not os.access(path, os.W_OK | os.X_OK):
        why = "is on a read-only file system" if os.statvfs(path).f_flag & os.ST_RDONLY else "is not writable by you"
        raise ConfigError(f"config.output_dir={output_dir!r} is not writable: {path} {why}. Choose a writable "
                          f"--output_dir (nothing was written).")


def _has_checkpoint(run_dir: str) -> bool:
    directory = os.path.join(run_dir, "checkpoints")
    return os.path.isdir(directory) and bool(os.listdir(directory))


def check_schedule(config, horizon: int) -> None:
    """Step counts must be whole numbers of scanned calls; say which field to change."""
    every = config.log_every
    if every <= 0:
        raise ConfigError(f"config.log_every must be positive, got {every}.")
    for name in ("bc_steps", "offline_steps", "eval_every", "save_every"):
        value = getattr(config, name)
        if value < 0 or value % every:
            raise ConfigError(f"config.{name}={value} must be a non-negative multiple of config.log_every={every}.")
    if config.eval_every == 0 or config.save_every == 0:
        raise ConfigError("config.eval_every and config.save_every must be positive.")
    if config.online_steps > 0:
        for name in ("online_steps", "online_start_steps", "log_every", "eval_every", "save_every"):
            if getattr(config, name) % horizon:
                raise ConfigError(f"config.{name}={getattr(config, name)} must be a multiple of the chunk length "
                                  f"H={horizon} in the online phase.")
    if config.eval_envs_per_seed is not None and config.eval_episodes % config.eval_envs_per_seed:
        raise ConfigError(f"config.eval_envs_per_seed={config.eval_envs_per_seed} must divide "
                          f"config.eval_episodes={config.eval_episodes}.")
    if config.num_seeds < 1:
        raise ConfigError(f"config.num_seeds must be >= 1, got {config.num_seeds}.")


def task_list(config, shard: str = "") -> Tuple[str, ...]:
    """The env names this invocation runs: config.env_name, or a slice of a suite."""
    if config.suite:
        if config.tasks:
            raise ConfigError(f"--tasks={config.tasks} picks tasks of a domain; with --suite use --shard.")
        if config.suite not in SUITES:
            raise ConfigError(f"unknown suite {config.suite!r}: valid suites are {', '.join(SUITES)}.")
        tasks = SUITES[config.suite]
    else:
        tasks = (config.env_name,)
    if not shard:
        return tasks
    if not config.suite:
        raise ConfigError(f"--shard={shard} needs a suite to slice: add --suite=ogbench50.")
    try:
        index, count = (int(x) for x in shard.split("/"))
        assert 0 <= index < count
    except (ValueError, AssertionError):
        raise ConfigError(f"--shard={shard!r} must look like i/n with 0 <= i < n, e.g. 3/10.") from None
    # Contiguous slices, so that with n = 10 each job runs one domain and pretrains its BC once.
    selected = tasks[index * len(tasks) // count:(index + 1) * len(tasks) // count]
    if not selected:
        raise ConfigError(f"--shard={shard} selects no task of the {len(tasks)} in {config.suite}: use n <= "
                          f"{len(tasks)}.")
    return selected
