"""The env factory of async env worker processes, and their memory. Imports no JAX, ever.

An async vector env (`experiments.evaluation.make_vector_env`) runs one OGBench env per worker
process. A worker unpickles `make_worker_env` from this module, so its import chain is this module's:
numpy, gymnasium, ogbench, mujoco, never jax or trqam_jax (dataset workers add
`experiments.make_dataset` and absl). `experiments/__init__.py` is empty, so importing
`experiments.env_workers` loads nothing else.

Multiprocessing would still import the launcher's main module in every worker: with the 'spawn' and
'forkserver' start methods, each child runs `python -m experiments.train` again as `__mp_main__`, and
that imports jax and jaxlib. `children_skip_main()` turns that off for the processes started inside
it; the workers need nothing from the main module, since their target (gymnasium's worker loop) and
their env factory are pickled by reference to importable modules.

Private memory of a worker (one env): Private_Clean + Private_Dirty of `/proc/<pid>/smaps_rollup`
(`private_mb`), after a reset and 50 steps, 'forkserver' workers of a launcher that runs jax
(`python -m experiments.env_workers --with_jax --env_name ...`), gymnasium 1.4, 2-core CPU machine:

    env              before (main module and jax in every worker)   now
    cube-single      531 MB                                          385 MB
    cube-double          -                                           385 MB
    cube-quadruple       -                                           387 MB
    scene                -                                           395 MB
    puzzle-3x3           -                                           392 MB
    puzzle-4x4           -                                           366 MB

About 60 MB of the 146 MB saved is jax; the rest is freed heap that building the env leaves and glibc
keeps, which the factory now hands back (`release_free_heap`). What remains is the env itself: the
dm_control MJCF tree with its mesh and texture assets, the compiled MjModel (a 63 MB buffer for
cube-single) and MuJoCo's allocations. `ENV_WORKER_MB` (450) is the largest figure plus a margin; the
default worker count is sized with it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
import warnings
from typing import Optional

# Private memory of one async env worker process (one OGBench manipulation env), with margin: see the
# module docstring for the measurement (`python -m experiments.env_workers` repeats it).
ENV_WORKER_MB = 450
# Default worker counts use at most this fraction of MemAvailable (the rest is left to training, the
# online env workers and the system).
WORKER_MEMORY_FRACTION = 0.5
# Envs built in one process (a sync vector env, as `experiments.policy` evaluates): about 160 MB each
# (151-160 MB measured per further env: cube-single, cube-quadruple, scene, puzzle-4x4), and about
# 170 MB more once, for the first (MuJoCo and dm_control state that every later env shares).
ENV_IN_PROCESS_MB = 160
IN_PROCESS_FIRST_MB = 170


# ---------------------------------------------------------------------------------------------------
# Envs.


def gym_env_id(env_name: str) -> str:
    """The gymnasium id behind an OGBench dataset-style name (the parse of `ogbench.make_env_and_datasets`).

    `cube-double-play-singletask-task2-v0` -> `cube-double-singletask-task2-v0`.
    """
    splits = env_name.split('-')
    if 'singletask' in splits:
        pos = splits.index('singletask')
        return '-'.join(splits[: pos - 1] + splits[pos:])
    if 'oraclerep' in splits:
        return '-'.join(splits[:-3] + splits[-1:])
    return '-'.join(splits[:-2] + splits[-1:])


def make_env(env_name: str, max_episode_steps: Optional[int] = None):
    """One OGBench env (no dataset files, no network). `max_episode_steps` overrides the time limit."""
    import ogbench

    kwargs = {} if max_episode_steps is None else {'max_episode_steps': int(max_episode_steps)}
    with warnings.catch_warnings():
        # mujoco's glfw complains about the missing DISPLAY; gymnasium about float64 Box bounds.
        warnings.simplefilter('ignore')
        return ogbench.make_env_and_datasets(env_name, env_only=True, **kwargs)


def release_free_heap() -> None:
    """Give the heap that malloc keeps after frees back to the OS (glibc `malloc_trim`; else nothing)."""
    try:
        import ctypes

        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


# ---------------------------------------------------------------------------------------------------
# Worker processes: their life is tied to the owner's.


def process_start_time(pid: int) -> Optional[int]:
    """A process's start time (clock ticks since boot, /proc/<pid>/stat field 22); None if it is gone
    or a zombie. With the pid, it names a process uniquely (pids are reused, start times are not)."""
    try:
        with open(f'/proc/{pid}/stat') as f:
            fields = f.read().rsplit(')', 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ('Z', 'X') else int(fields[19])


def pid_alive(pid: int) -> bool:
    """True when a process with this pid exists on this machine and is not a zombie."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f'/proc/{pid}/stat') as f:
            return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except (OSError, IndexError):
        return True


def owner_alive(owner_pid: int, owner_start: Optional[int]) -> bool:
    if owner_start is None:  # no /proc: fall back on the pid alone
        return pid_alive(owner_pid)
    return process_start_time(owner_pid) == owner_start


_PR_SET_PDEATHSIG = 1  # From <linux/prctl.h>.


def die_with_parent(parent_pid: int, poll_seconds: float = 0.5) -> None:
    """Make this worker process end when its parent does, even when the parent is killed with -9.

    On Linux the kernel sends SIGKILL to the worker when the parent dies (prctl PR_SET_PDEATHSIG).
    As a fallback (other systems, or a prctl failure), a daemon thread polls the parent pid and
    exits the process once the worker has been re-parented.
    """
    if sys.platform.startswith('linux'):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # The parent died before the death signal was armed.
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(poll_seconds)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name='parent-watchdog', daemon=True).start()


def die_with_owner(owner_pid: int, owner_start: Optional[int], poll_seconds: float = 0.2) -> None:
    """In an env worker process: end this process when the owner (the process that built the vector
    env) dies, kill -9 included.

    `die_with_parent` arms PDEATHSIG (SIGKILL from the kernel when the parent dies) and
    watches the parent pid. That suffices for the 'fork' and 'spawn' contexts, where the parent is the
    owner. With 'forkserver' the parent is the forkserver, which outlives the owner (every worker holds
    its liveness pipe), so a daemon thread also watches the owner itself. An idle worker also ends on
    its own when the owner's pipe end closes, unless another process (e.g. a forked child of the owner)
    still holds it.
    """
    die_with_parent(os.getppid())
    if os.getppid() == owner_pid:
        return
    if not owner_alive(owner_pid, owner_start):  # died before we started watching
        os._exit(1)

    def watch() -> None:
        while owner_alive(owner_pid, owner_start):
            time.sleep(poll_seconds)
        os._exit(1)

    threading.Thread(target=watch, name='owner-watchdog', daemon=True).start()


def make_worker_env(env_name: str, max_episode_steps: Optional[int], owner_pid: int,
                    owner_start: Optional[int] = None):
    """The env factory of async vector envs: in a worker process, first tie the worker's life to the
    owner's (see `die_with_owner`), then build the env and hand the heap its build freed back."""
    if os.getpid() == owner_pid:  # gymnasium builds one env in the owner to read the spaces
        return make_env(env_name, max_episode_steps)
    die_with_owner(owner_pid, owner_start)
    # The launcher silences these in its own process; a worker starts with default filters.
    warnings.filterwarnings('ignore', message='.*precision lowered by casting.*')  # ogbench's Box spaces
    warnings.filterwarnings('ignore', message='.*DISPLAY environment variable.*')  # glfw without a screen
    env = make_env(env_name, max_episode_steps)
    release_free_heap()
    return env


# ---------------------------------------------------------------------------------------------------
# Starting workers without the launcher's main module.

_skip_main = threading.local()
_install_lock = threading.Lock()


def _install_preparation_filter() -> None:
    """Wrap `multiprocessing.spawn.get_preparation_data` (once) so that, in a thread inside
    `children_skip_main()`, the data sent to a new 'spawn' or 'forkserver' child names no main module
    to import. Other threads, and this one outside the block, are not affected."""
    from multiprocessing import spawn

    with _install_lock:
        if getattr(spawn.get_preparation_data, 'skips_main_when_asked', False):
            return
        original = spawn.get_preparation_data

        def get_preparation_data(name):
            data = original(name)
            if getattr(_skip_main, 'active', False):
                data.pop('init_main_from_name', None)
                data.pop('init_main_from_path', None)
            return data

        get_preparation_data.skips_main_when_asked = True
        spawn.get_preparation_data = get_preparation_data


@contextlib.contextmanager
def children_skip_main():
    """Processes started by this thread inside the block do not import the launcher's main module.

    Their target and arguments must be picklable by reference to importable modules (not `__main__`).
    """
    _install_preparation_filter()
    previous = getattr(_skip_main, 'active', False)
    _skip_main.active = True
    try:
        yield
    finally:
        _skip_main.active = previous


# ---------------------------------------------------------------------------------------------------
# Memory.


def private_mb(pid: int) -> float:
    """A process's private memory in MB (Private_Clean + Private_Dirty of /proc/<pid>/smaps_rollup):
    what ending it would free. Raises OSError where there is no /proc."""
    fields = {}
    with open(f'/proc/{pid}/smaps_rollup') as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == 'kB':
                fields[parts[0].rstrip(':')] = int(parts[1])
    return (fields['Private_Clean'] + fields['Private_Dirty']) / 1024


def mem_available_mb(meminfo: str = '/proc/meminfo') -> Optional[float]:
    """MemAvailable in MB (the kernel's estimate of what can be allocated without swapping); None where
    it cannot be read."""
    try:
        with open(meminfo) as f:
            for line in f:
                if line.startswith('MemAvailable:'):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def workers_that_fit(available_mb: Optional[float], worker_mb: float = ENV_WORKER_MB,
                     fraction: float = WORKER_MEMORY_FRACTION) -> Optional[int]:
    """How many env workers fit in `fraction` of `available_mb` (at least 1); None if unknown."""
    if available_mb is None:
        return None
    return max(1, int(available_mb * fraction // worker_mb))


def in_process_envs_mb(num_envs: int) -> float:
    """The private memory of `num_envs` envs built in one process (see `ENV_IN_PROCESS_MB`)."""
    return IN_PROCESS_FIRST_MB + ENV_IN_PROCESS_MB * int(num_envs)


def in_process_envs_that_fit(available_mb: Optional[float], fraction: float = WORKER_MEMORY_FRACTION
                             ) -> Optional[int]:
    """How many envs fit in one process within `fraction` of `available_mb` (at least 1); None if unknown."""
    if available_mb is None:
        return None
    return max(1, int((available_mb * fraction - IN_PROCESS_FIRST_MB) // ENV_IN_PROCESS_MB))


def _measure(env_name: str, num_workers: int, steps: int) -> None:
    """Print each worker's private memory and whether it mapped jax (the figure of ENV_WORKER_MB)."""
    import numpy as np

    from experiments.evaluation import make_vector_env

    envs = make_vector_env(env_name, num_workers, vectorization='async')
    try:
        envs.reset(seed=list(range(num_workers)))
        for _ in range(steps):
            envs.step(np.stack([envs.single_action_space.sample() for _ in range(num_workers)]))
        for p in envs.processes:
            with open(f'/proc/{p.pid}/maps') as f:
                jax_mapped = any('jax' in line for line in f)
            print(f'{env_name} worker {p.pid}: private {private_mb(p.pid):.0f} MB, '
                  f'jax mapped: {"yes" if jax_mapped else "no"}', flush=True)
    finally:
        envs.close()


if __name__ == '__main__':
    import argparse

    parser = argparse.ArgumentParser(description='Measure the private memory of async env workers.')
    parser.add_argument('--env_name', nargs='+', default=['cube-single-play-singletask-task1-v0'])
    parser.add_argument('--num_workers', type=int, default=2)
    parser.add_argument('--steps', type=int, default=50)
    parser.add_argument('--with_jax', action='store_true',
                        help='import jax in this (the owner) process first, as the launcher does')
    args = parser.parse_args()
    if args.with_jax:
        import jax.numpy as jnp

        jnp.zeros(1).block_until_ready()
    for name in args.env_name:
        _measure(name, args.num_workers, args.steps)
