"""Training a program: the learners of one or more tasks of a domain (and a budget axis), vmapped and
sharded over the local devices, each run (task, budget) with its own run directory.

  run_program -> plan.plan (validated before anything is written) -> train_runs: run_directory.inspect_run
  -> open_dataset -> group_runs (memory groups) -> train_program -> bc.pretrain_bc / phases.train_stages
  -> run_directory.write_summary

Lifecycle guarantees (docs/recovery.md):
- the whole config is validated before anything is written;
- a run directory with no checkpoint may be started afresh, with or without --resume;
- --resume is idempotent: no run dir starts fresh, a partial run continues, a finished run exits;
- a SIGTERM / SIGINT stops at the next safe point with a checkpoint there (`preemption`);
- a damaged checkpoint is moved aside and the run trains through it (`checkpointing`).
"""

import dataclasses
import json
import os
import re
import time
from typing import Dict, List, Optional

import jax
import jax.numpy as jnp
import numpy as np

from experiments import data
from experiments.evaluation import default_num_workers
from experiments.infra import files
from experiments.infra.checkpointing import Checkpointer
from experiments.infra.logs import RunLogger
from experiments.infra.preemption import NEVER, Preemption
from experiments.runner import plan
from experiments.runner.bc import bc_context, pretrain_bc
from experiments.runner.boundaries import Evaluations, RunOutput
from experiments.runner.context import Context, learner_shardings, place, train_scan, xla_temp_bytes
from experiments.runner.phases import train_stages
from experiments.runner.run_directory import (Resumable, _grow_online, inspect_run, run_dir_locks, system_info,
                                        write_summary)
from experiments.runner.spec import Settings, TaskSpec
from trqam_jax import agent, chunks


def run_task(config, env_name: Optional[str] = None, resume: bool = False, preempt: Preemption = NEVER) -> str:
    """Runs every stage of one task (a program of one task); returns its run directory."""
    return run_program(config, [env_name or config.env_name], resume, preempt)[0]


def run_program(config, env_names, resume: bool = False, preempt: Preemption = NEVER) -> List[str]:
    """Trains the tasks `env_names` of one domain (with a budget axis, if config.sweep sets one) as one
    jitted program of learners, or a few when they do not fit; returns the run directories."""
    return train_runs(plan.plan(config, env_names), resume, preempt)


def train_runs(runs: List[plan.Run], resume: bool = False, preempt: Preemption = NEVER) -> List[str]:
    """Trains the planned runs of one program (`plan.plan` has checked every value and resolved the
    config: nothing from here on reads it); returns their run directories."""
    with run_dir_locks([run.run_dir for run in runs]):
        _run_locked(runs, resume, preempt)
    return [run.run_dir for run in runs]


def _run_locked(runs: List[plan.Run], resume: bool, preempt: Preemption) -> None:
    todo = [r for r in (inspect_run(run, resume, preempt) for run in runs) if r is not None]
    if not todo:
        return
    names = list(dict.fromkeys(r.run.spec.env_name for r in todo))  # the tasks left, in order
    for r in todo:
        r.run = dataclasses.replace(r.run, task=names.index(r.run.spec.env_name))
    spec, settings = todo[0].run.spec, todo[0].run.settings
    envs = [data.make_env(name, seed=settings.seed) for name in names]
    window = open_dataset(settings, spec, names, envs, preempt)  # missing data: the locked new run dirs are removed
    preempt.check()
    first = window.data_at(0)
    obs_dim, action_dim = first.observations.shape[1], first.actions.shape[1]
    seeds = list(settings.seeds)
    ctx_like = Context(settings, spec, agent.make_networks(spec.offline, spec.horizon * action_dim), window, seeds,
                       None, obs_dim, action_dim, preempt=preempt)
    groups = group_runs(settings, todo, len(seeds), memory_estimate(ctx_like, spec.offline, len(seeds)))
    preempt.check()
    if len(groups) > 1:
        starts = sorted({r.start[0] for r in todo})
        why = (f"they resume from different steps {starts}" if len(starts) > 1
               else "config.learners_per_program, or the device's memory, sets the size")
        print(f"{len(todo)} runs of {len(seeds)} seeds in {len(groups)} programs of up to "
              f"{max(len(g) for g in groups) * len(seeds)} learners, one after the other ({why}).")
    for group in groups:
        train_program(ctx_like, group, seeds, preempt)


def train_program(ctx_like: Context, group: List[Resumable], seeds: list, preempt: Preemption) -> None:
    """Every stage of one program: its runs start from the same point (afresh, or the same saved step)."""
    settings, spec, schedule = ctx_like.settings, ctx_like.spec, ctx_like.settings.schedule
    team = plan.Learners(tuple(r.run for r in group), tuple(seeds))
    num = len(team)
    per_learner, replicated = learner_shardings(num)
    ctx = dataclasses.replace(ctx_like, learner_seeds=team.learner_seeds,
                              tasks=place(jnp.asarray(team.tasks), per_learner),
                              per_learner=per_learner, replicated=replicated, preempt=preempt)
    if len(group) > 1:
        print(f"Program of {team.describe()}: {', '.join(r.run.run_dir for r in group)}.")
    obs_dim, action_dim = ctx.obs_dim, ctx.action_dim
    restored = [r.restored for r in group]
    continuing = restored[0] is not None
    step = restored[0].step if continuing else 0
    saved_meta = restored[0].meta if continuing else {}
    eval_pending = bool(saved_meta.get("eval_pending"))
    system = system_info(settings)
    outputs, wall = [], dict(saved_meta.get("wall_s", {})) if continuing else {}
    workers = max(1, default_num_workers() // len(group))
    try:
        for k, r in enumerate(group):
            run = r.run
            os.makedirs(run.run_dir, exist_ok=True)
            files.write_json(os.path.join(run.run_dir, "config.json"), run.config)
            files.write_json(os.path.join(run.run_dir, "task.json"),
                             json.loads(json.dumps(dataclasses.asdict(run.spec))))
            meta = {"env_name": run.spec.env_name, "method": run.spec.method, "obs_dim": obs_dim,
                    "action_dim": action_dim, "config": run.config, "system": system,
                    "wall_s": wall}  # the same dict: saved checkpoints carry the time spent so far
            project, entity, wandb_group = settings.wandb
            wandb = None if not project else dict(project=project, entity=entity, group=wandb_group,
                                                  name=f"{run.spec.env_name}/{run.name}", config=run.config)
            # An evaluation that a signal cut short is run again, so its rows (if any) are dropped too.
            logger = RunLogger(run.run_dir, resume_step=step if continuing else -1,
                               eval_resume_step=(step - eval_pending) if continuing else -1, wandb=wandb)
            output = RunOutput(run.run_dir, run.spec.env_name, team.of_run(k), list(seeds), logger,
                               Checkpointer(os.path.join(run.run_dir, "checkpoints"), keep=schedule.keep_checkpoints),
                               meta)
            outputs.append(output)
            output.evals = Evaluations(ctx, run.spec.env_name, list(seeds), logger, workers)
        preempt.check()  # the env workers have started: a signal during their start stops here
        capacity = max(schedule.online_steps, 1)
        online = place(chunks.init_online(capacity, obs_dim, action_dim, num_seeds=num), per_learner)
        if continuing:
            stack = lambda *trees: jax.tree_util.tree_map(lambda *x: jnp.concatenate(x), *trees)
            states = place(stack(*(r.state for r in restored)), per_learner)
            if restored[0].replay is not None:
                online = place(_grow_online(stack(*(r.replay for r in restored)), capacity), per_learner)
            print(f"Resuming {', '.join(o.run_dir for o in outputs)} from step {step}.")
        else:
            started = time.time()
            bc_actor = pretrain_bc(bc_context(ctx, seeds))  # one per seed, shared by every run
            wall["bc"] = time.time() - started
            bc_actor = jax.tree_util.tree_map(lambda x: jnp.concatenate([x] * len(group)), bc_actor)
            states = place(agent.init_learners(ctx.learner_seeds, spec.offline, ctx.nets, obs_dim, ctx.chunk_dim,
                                               pretrained_actor=bc_actor, hparams=team.hparams("offline")), per_learner)
        train_stages(ctx, team, outputs, states, online, step, saved_meta, eval_pending, wall)
    finally:
        for o in outputs:  # a signal may have come while they were being built
            if o.evals is not None:
                o.evals.close()
            o.logger.close()
            o.checkpointer.close()
    waited = sum(o.evals.waited_s for o in outputs)
    wall["waiting_for_eval"] = wall.get("waiting_for_eval", 0.0) + waited
    print(f"Training waited {waited:.1f} s for evaluation in all "
          f"({'beside training' if settings.evaluation.background else 'blocking'}).")
    for o, r in zip(outputs, group):
        write_summary(o.run_dir, r.run.spec, wall, system, o.logger.last_rows("train"), o.logger.last_rows("eval"))


def open_dataset(settings: Settings, spec: TaskSpec, env_names, envs, preempt: Preemption = NEVER) -> data.ShardWindow:
    """The domain's offline data for the tasks `env_names` (relabelled with `envs`): on the device once,
    with per-task (T, N) rewards and masks, or a rotating window of shards. Generates it if allowed."""
    try:
        data.find_dataset_files(spec.env_name, settings.data.dataset_dir)
    except data.DatasetMissingError as missing:
        info = data.parse_env_name(spec.env_name)
        if not settings.data.generate_missing or info.layout.navigation:
            raise
        if info.layout.size_m > 1:
            # A single generated file would be rejected by this task's shard layout: give the command.
            command = re.search(r"python -m experiments\.make_dataset [^\n]*", str(missing))
            raise data.DatasetMissingError(
                f"{spec.env_name} needs {info.layout.size_m}M transitions in 1M shards, which "
                f"config.generate_missing_data does not make; generate them with: "
                f"{command.group(0) if command else 'python -m experiments.make_dataset'}") from None
        from experiments import make_dataset

        print(f"Generating {info.dataset} in {settings.data.dataset_dir} with the ogbench oracles ...")
        source = settings.data
        kwargs = {} if source.generate_episode_length is None else {"episode_length": source.generate_episode_length}
        with preempt.immediate():  # minutes of work with nothing to save: a signal stops it at once
            make_dataset.generate_dataset(info.dataset, source.dataset_dir, num_episodes=source.generate_num_episodes,
                                          seed=settings.seed, num_workers=max(1, min(4, os.cpu_count() or 1)), **kwargs)
    free = data.device_memory_bytes()  # None on CPU: hold everything
    budget = None if free is None else int(settings.data.memory_fraction * free)
    window = data.ShardWindow(list(env_names), settings.data.dataset_dir, spec.sparse, env=list(envs),
                              budget_bytes=budget, shards_per_window=settings.data.shards_in_memory or None,
                              rotate_every=settings.data.shard_rotate_every)
    held = ("held whole on the device" if window.fits else f"{window.num_windows} windows of "
            f"{window.nbytes() / 2**30:.2f} GiB, rotated every {window.rotate_every} steps")
    print(f"Dataset {window.info.dataset} ({len(env_names)} task{'s' * (len(env_names) > 1)}): "
          f"{window.total_nbytes() / 2**30:.2f} GiB in all; {held}.")
    return window


def group_runs(settings: Settings, todo: List[Resumable], learners_of_run: int, estimate=None) -> List[List[Resumable]]:
    """The programs to run one after the other: runs with the same starting point, in groups that fit.

    settings.learners_per_program sets the group size (whole runs of num_seeds learners); 0 fits as many
    as the device holds, by `estimate(num_runs) -> bytes` against its free memory (everything on CPU).
    """
    by_start: Dict[tuple, List[Resumable]] = {}
    for r in todo:
        by_start.setdefault(r.start, []).append(r)
    groups = []
    for _, runs in sorted(by_start.items()):
        size = len(runs)
        if settings.learners_per_program:
            size = max(1, settings.learners_per_program // learners_of_run)
            if size * learners_of_run != settings.learners_per_program:
                print(f"config.learners_per_program={settings.learners_per_program} is not a multiple of the "
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
        states = jax.eval_shape(lambda: agent.init_learners(np.zeros(n, np.int32), cfg, ctx_like.nets, ctx_like.obs_dim,
                                                            ctx_like.chunk_dim))
        train = train_scan(cfg, ctx_like.nets, ctx_like.spec.horizon,
                              ctx_like.settings.schedule.log_every, online=False)
        example = chunks.TaskData(ctx_like.window.data_at(0), jax.ShapeDtypeStruct((n,), jnp.int32))
        temp = xla_temp_bytes(train.lower(states, example).compile()) or 0
        settings = ctx_like.settings
        replay = 0 if settings.schedule.online_steps == 0 else chunks.tree_nbytes(jax.eval_shape(
            lambda: chunks.init_online(settings.schedule.online_steps, ctx_like.obs_dim, ctx_like.action_dim,
                                       num_seeds=n)))
        need = chunks.tree_nbytes(states) + temp + replay
        print(f"Memory of {n} learners: state {chunks.tree_nbytes(states) / 2**20:.1f} MiB, XLA temp "
              f"{temp / 2**20:.1f} MiB, online replay {replay / 2**20:.1f} MiB; free {free_memory_bytes() / 2**20:.0f} "
              f"MiB.")
        return need

    return estimate

