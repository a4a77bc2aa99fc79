"""Gymnasium vector envs of OGBench single-task envs, and how many env worker processes to use.

`make_vector_env` builds N copies of an env in one Sync (in-process) or Async (one worker process per
env) vector env. An env costs about 160 MB in-process (sync; the first one about 330 MB) and an async
worker process about 390 MB (measured in `experiments.env_workers`; `ENV_WORKER_MB` = 450 adds a
margin), so `default_num_workers` sizes the async workers by the free CPU cores and memory.

The worker processes of async vector envs die with their parent process, kill -9 included (Linux:
prctl PR_SET_PDEATHSIG), and never load JAX: they import only `experiments.env_workers` (the env
factory), never the launcher's main module.
"""

from __future__ import annotations

import functools
import os
from typing import Optional

import gymnasium
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv

from experiments.env_workers import (
    children_skip_main,
    gym_env_id,
    make_env,
    make_worker_env,
    mem_available_mb,
    process_start_time,
    release_free_heap,
    workers_that_fit,
)

VECTORIZATIONS = ('sync', 'async')
# Workers of an async vector env start with 'forkserver' by default: forking a process that runs JAX
# (multithreaded) can deadlock, and 'spawn' re-imports the launcher's main module in every worker.
DEFAULT_ASYNC_CONTEXT = 'forkserver'


def episode_steps(env_name: str) -> int:
    """The env's own time limit (eval episode length): cube-single 200, cube-double 500, scene 750, ..."""
    import ogbench  # noqa: F401  (registers the OGBench ids)

    steps = gymnasium.spec(gym_env_id(env_name)).max_episode_steps
    if steps is None:
        raise ValueError(f'{env_name} has no time limit; pass max_episode_steps.')
    return int(steps)


def make_vector_env(
    env_name: str,
    num_envs: int,
    *,
    vectorization: str = 'sync',
    max_episode_steps: Optional[int] = None,
    autoreset_mode: AutoresetMode = AutoresetMode.NEXT_STEP,
    context: Optional[str] = DEFAULT_ASYNC_CONTEXT,
) -> gymnasium.vector.VectorEnv:
    """`num_envs` copies of the env in a gymnasium Sync or Async (one process per env) vector env.

    Async worker processes die with the process that built the vector env (see
    `experiments.env_workers.die_with_owner`). With the 'fork' and 'spawn' contexts, Linux ties
    PDEATHSIG to the building *thread*, so build async envs on a long-lived thread (the main one); the
    default 'forkserver' has no such caveat.
    """
    if vectorization == 'sync':
        env_fns = [functools.partial(make_env, env_name, max_episode_steps)] * num_envs
        return SyncVectorEnv(env_fns, autoreset_mode=autoreset_mode)
    if vectorization == 'async':
        owner = (os.getpid(), process_start_time(os.getpid()))
        env_fns = [functools.partial(make_worker_env, env_name, max_episode_steps, *owner)] * num_envs
        # The workers import experiments.env_workers (no jax), not the launcher's main module.
        with children_skip_main():
            envs = AsyncVectorEnv(env_fns, context=context, autoreset_mode=autoreset_mode)
        release_free_heap()  # gymnasium built (and dropped) one env here to read the spaces
        return envs
    raise ValueError(f'vectorization must be one of {VECTORIZATIONS}, got {vectorization!r}.')


def available_cpus() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_num_workers(cpus: Optional[int] = None, available_mb: Optional[float] = None) -> int:
    """Env worker processes for background evaluation: every core but one (kept for training), and no
    more than fit in half of the free memory (MemAvailable) at `ENV_WORKER_MB` each.

    `cpus` and `available_mb` default to this machine's (`available_cpus()`, `mem_available_mb()`);
    where the free memory cannot be read, the cores alone decide.
    """
    by_cores = max(1, (available_cpus() if cpus is None else int(cpus)) - 1)
    by_memory = workers_that_fit(mem_available_mb() if available_mb is None else available_mb)
    return by_cores if by_memory is None else min(by_cores, by_memory)
