"""The learners of a program: which runs it trains, with which tasks, seeds and hyperparameters.

A learner is one (task, seed, budget). A program trains the learners of one domain, one method and one
network shape in one jitted function (`trqam_jax.agent.make_train_fn` vmaps them). Its runs are the
(task, budget) pairs; each run has `num_seeds` learners and its own run directory, exactly the one a
single-task command would write, so the report and `experiments.policy` read it unchanged.

  --env_name=cube-double-play                  the five tasks of the domain
  --env_name=cube-double-play --tasks=1,3      two of them
  --config.sweep.kl_budget=0.25,0.5,1.0        a budget axis (TRQAM's or SQAM's eps); sweep.inv_temp for QAM
  --config.sweep.gap_reg_coef=0,0.3            SQAM's value-penalty axis, crossed with sweep.kl_budget if both

Learners are ordered run by run (task-major, then budget), and seed by seed inside a run, so run k owns
the learner slice [k * S, (k + 1) * S).
"""

import dataclasses
import itertools
import json
import math
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from ml_collections import config_dict

from experiments import data
from experiments.runner.spec import ConfigError, Settings, TaskSpec, check_inputs, resolve, resolve_settings
from trqam_jax import agent

# sweep.<field> -> the methods it belongs to; each sets agent.<field>.
SWEEPS = {"kl_budget": ("trqam", "sqam"), "inv_temp": ("qam",), "gap_reg_coef": ("sqam",)}
ZERO_ALLOWED = ("gap_reg_coef",)  # 0 turns SQAM's value penalty off; every other swept value must be > 0


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


@dataclasses.dataclass(frozen=True)
class Run:
    """One (task, budget) of a program: num_seeds learners and one run directory, resolved from the config."""

    spec: TaskSpec  # the run's task and update settings (task.json)
    settings: Settings  # what the program's runs share: schedule, evaluation, data, seeds
    run_dir: str
    name: str  # the run dir's name under its task (`run_name`)
    config: Dict  # the config a single-task command for this run would have, as JSON (config.json, resume check)
    task: int = 0  # row of the run's task in the program's (T, N) rewards and masks


def _parse_values(text: str, field: str) -> Tuple[float, ...]:
    try:
        values = tuple(float(v) for v in str(text).split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"config.sweep.{field}={text!r} must be comma-separated numbers, e.g. 0.25,0.5,1.0.") \
            from None
    if any(not math.isfinite(v) for v in values):  # would also write Infinity, not JSON, into config.json
        raise ConfigError(f"config.sweep.{field}={text!r}: every value must be a finite number.")
    if field in ZERO_ALLOWED and any(not v >= 0 for v in values):
        raise ConfigError(f"config.sweep.{field}={text!r}: every value must be >= 0.")
    if field not in ZERO_ALLOWED and any(not v > 0 for v in values):
        raise ConfigError(f"config.sweep.{field}={text!r}: every value must be > 0.")
    if len(set(values)) != len(values):
        raise ConfigError(f"config.sweep.{field}={text!r} repeats a value: list each once.")
    return values


def sweep_axes(config) -> List[Tuple[str, Tuple[float, ...]]]:
    """[(agent field, values)] of the budget axes, in SWEEPS order; [] without one. SQAM may cross
    sweep.kl_budget with sweep.gap_reg_coef (every pair is a run)."""
    given = [(f, config.sweep.get(f)) for f in SWEEPS if config.sweep.get(f)]
    fields = [f for f, _ in given]
    if "kl_budget" in fields and "inv_temp" in fields:
        raise ConfigError("Set one of config.sweep.kl_budget (TRQAM, SQAM) and config.sweep.inv_temp (QAM), not both.")
    axes = []
    for field, text in given:
        if config.method not in SWEEPS[field]:
            other = [f for f, methods in SWEEPS.items() if config.method in methods]
            fix = (f"use config.sweep.{' or config.sweep.'.join(other)}" if other
                   else "BC has no budget to sweep; drop it")
            raise ConfigError(f"config.sweep.{field} is a {' / '.join(m.upper() for m in SWEEPS[field])} budget but "
                              f"config.method={config.method!r}: {fix}.")
        if config.agent.get(field) is not None:
            raise ConfigError(f"config.agent.{field}={config.agent[field]} and config.sweep.{field}={text!r} are both "
                              f"set: keep one (a single value is a sweep of one).")
        axes.append((field, _parse_values(text, field)))
    return axes


def task_names(config, env_name: Optional[str] = None) -> Tuple[str, ...]:
    """The env ids named by env_name (a single-task id, or a domain) and config.tasks."""
    env_name = env_name or config.env_name
    if data.is_domain_name(env_name):
        tasks = None
        if config.tasks:
            try:
                tasks = [int(t) for t in str(config.tasks).split(",") if t.strip()]
            except ValueError:
                raise ConfigError(f"--tasks={config.tasks!r} must be task numbers, e.g. 1,3.") from None
        return data.domain_env_names(env_name, tasks)
    if config.tasks:
        raise ConfigError(f"--tasks={config.tasks} picks tasks of a domain, but {env_name!r} is one task: pass "
                          f"the domain instead, e.g. --env_name={data.parse_env_name(env_name).domain}.")
    return (env_name,)


def run_config(config, env_name: str, budgets: Sequence[Tuple[str, float]] = ()):
    """The config a single-task command for this run would have: a copy, with the task, and each budget
    (field, value) set in agent.<field>; the program's own settings (tasks, sweep) cleared."""
    run = config_dict.ConfigDict(config.to_dict())
    run.env_name, run.tasks, run.suite = env_name, "", ""
    for name in SWEEPS:
        if name in run.sweep:
            run.sweep[name] = ""
    for field, value in budgets:
        run.agent[field] = float(value)
    run.lock()
    return run


def plan(config, env_names: Sequence[str]) -> List[Run]:
    """The runs of a program, every config checked before anything is written."""
    axes = sweep_axes(config)
    settings = resolve_settings(config)  # the runs differ in their task and budgets only, none of these
    runs = []
    for env_name in env_names:
        for values in itertools.product(*(values for _, values in axes)):
            cfg = run_config(config, env_name, [(field, value) for (field, _), value in zip(axes, values)])
            spec = resolve(cfg, env_name)  # checks every value before anything is written
            name = run_name(cfg, spec.method)
            runs.append(Run(spec, settings, os.path.join(settings.output_dir, env_name, name), name,
                            json.loads(cfg.to_json())))
    domains = {run.spec.domain for run in runs}
    if len(domains) > 1:
        raise ConfigError(f"A program trains one domain; got {', '.join(sorted(domains))}.")
    check_distinct_run_dirs(runs, [field for field, _ in axes])
    check_inputs(config, [run.run_dir for run in runs])
    return runs


def check_distinct_run_dirs(runs: Sequence[Run], fields: Sequence[str]) -> None:
    """Two runs writing one run directory would mix their checkpoints and logs: refuse, naming both. (The
    directory name keeps a swept value to 6 significant digits, `run_name`.)"""
    seen: Dict[str, Run] = {}
    for run in runs:
        other = seen.setdefault(run.run_dir, run)
        if other is run:
            continue
        differ = [f for f in fields if other.config['agent'][f] != run.config['agent'][f]]
        if differ:
            values = " and ".join(", ".join(f"{f}={r.config['agent'][f]!r}" for f in differ) for r in (other, run))
            raise ConfigError(f"config.sweep.{'/'.join(differ)}: the runs with {values} would share the run "
                              f"directory {run.run_dir} (its name keeps 6 significant digits): use values that "
                              f"differ in their first 6 significant digits.")
        raise ConfigError(f"Two runs of {run.spec.env_name} would share the run directory {run.run_dir}: list "
                          f"each task and value once.")


def by_domain(env_names: Sequence[str]) -> List[Tuple[str, ...]]:
    """The env ids grouped by domain, in order: one program each (a suite slice may span two domains)."""
    groups: Dict[str, List[str]] = {}
    for name in env_names:
        groups.setdefault(data.parse_env_name(name).domain, []).append(name)
    return [tuple(names) for names in groups.values()]


@dataclasses.dataclass(frozen=True)
class Learners:
    """The learners of one jitted program: its runs, each with the same num_seeds seeds."""

    runs: Tuple[Run, ...]
    seeds: Tuple[int, ...]  # the seeds of every run: config.seed + i

    @property
    def num_seeds(self) -> int:
        return len(self.seeds)

    def __len__(self) -> int:
        return len(self.runs) * self.num_seeds

    def of_run(self, k: int) -> slice:
        """The learner slice of run k."""
        return slice(k * self.num_seeds, (k + 1) * self.num_seeds)

    @property
    def learner_seeds(self) -> List[int]:
        return [seed for _ in self.runs for seed in self.seeds]

    @property
    def tasks(self) -> np.ndarray:
        """(L,) int32: each learner's row in the program's per-task rewards and masks."""
        return np.repeat(np.array([run.task for run in self.runs], np.int32), self.num_seeds)

    def hparams(self, phase: str) -> agent.Hyperparams:
        """(L,) per-learner hyperparameters of a phase ("offline" or "online"), from each run's spec."""
        configs = [getattr(run.spec, phase) for run in self.runs]
        values = {name: np.repeat(np.array([getattr(c, name) for c in configs], np.float32), self.num_seeds)
                  for name in agent.Hyperparams._fields}
        return agent.Hyperparams(**values)

    def describe(self) -> str:
        tasks = len({run.spec.env_name for run in self.runs})
        budgets = len(self.runs) // max(tasks, 1)
        return (f"{len(self)} learners ({tasks} task{'s' * (tasks > 1)} x {budgets} budget{'s' * (budgets > 1)} x "
                f"{self.num_seeds} seed{'s' * (self.num_seeds > 1)})")
