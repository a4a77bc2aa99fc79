"""Vectorised evaluation and online env stepping for S seeds at once (conventions §9 and §10).

Evaluation runs S seeds x E episodes in one `gymnasium.vector` env of S*E OGBench single-task envs
(sub-env index = s * E + e): seed s's policy acts on its own E envs, every env plays exactly one
episode, and action chunks of length H run open-loop (H env steps per policy call, the last chunk cut
by the episode end). Success is the `success` flag in the info of an episode's final step. To bound
memory, the E episodes can run in rounds of E_r on S*E_r envs: an env costs about 160 MB in-process
(sync; the first one about 330 MB) and an async worker process about 390 MB (measured in
`experiments.env_workers`; `ENV_WORKER_MB` = 450 adds a margin).

Online RL keeps one env per seed (`OnlineEnvs`) and yields single-step transitions in the dataset
convention (conventions §9), ready for a per-seed replay buffer.

OGBench single-task envs (`success_timing='pre'`) compute reward, success and termination from the
state *before* the action, which is exactly the dataset relabeling: for the transition
(s_t, a_t, r_t, s_{t+1}), r_t = (subgoals met in s_t) - (subgoals) (navigation: success(s_t) - 1), and
the episode terminates (terminated=True) on the step taken from a solved state, so
mask_t = 1 - terminated_t = 1 - success(s_t).

Evaluation beside training: `BackgroundEvaluator` keeps one `Evaluator` (async by default, sized to
the free CPU cores and memory) and runs submitted evaluations on a background thread, in submission
order, while the caller keeps training. The worker processes of async vector envs die with their parent process,
kill -9 included (Linux: prctl PR_SET_PDEATHSIG).

This module imports JAX lazily. The env worker processes of an async vector env never load it: they
import only `experiments.env_workers` (the env factory), never the launcher's main module.

Speed benchmark: `python -m experiments.evaluation --benchmark` (see `--help`); with `--workers` it
prints env steps/s against the number of async worker processes.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import functools
import gc
import os
import threading
import time
from typing import Any, Callable, NamedTuple, Optional

import gymnasium
import numpy as np
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv

from experiments.env_workers import (
    ENV_WORKER_MB,
    children_skip_main,
    die_with_owner,
    gym_env_id,
    make_env,
    make_worker_env,
    mem_available_mb,
    owner_alive,
    process_start_time,
    release_free_heap,
    workers_that_fit,
)

VECTORIZATIONS = ('sync', 'async')
# Workers of an async vector env start with 'forkserver' by default: forking a process that runs JAX
# (multithreaded) can deadlock, and 'spawn' re-imports the launcher's main module in every worker.
DEFAULT_ASYNC_CONTEXT = 'forkserver'


# ---------------------------------------------------------------------------------------------------
# Env construction.


def episode_steps(env_name: str) -> int:
    """The env's own time limit (eval episode length): cube-single 200, cube-double 500, scene 750, ..."""
    import ogbench  # noqa: F401  (registers the OGBench ids)

    steps = gymnasium.spec(gym_env_id(env_name)).max_episode_steps
    if steps is None:
        raise ValueError(f'{env_name} has no time limit; pass max_episode_steps.')
    return int(steps)


# The factory and the death ties live in a module that never imports jax (the worker processes import it).
_gym_env_id = gym_env_id
_process_start_time = process_start_time
_owner_alive = owner_alive
_die_with_owner = die_with_owner
_make_worker_env = make_worker_env


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

    Async worker processes die with the process that built the vector env (see `_die_with_owner`).
    With the 'fork' and 'spawn' contexts, Linux ties PDEATHSIG to the building *thread*, so build async
    envs on a long-lived thread (the main one); the default 'forkserver' has no such caveat.
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


def reset_seeds(seed: int, num_seeds: int, num_episodes: int) -> list[int]:
    """Env reset seeds, flat in sub-env order s * E + e.

    Seed (s, e) depends only on (seed, s, e): seed s sees the same initial states whatever S and E.
    """
    return [
        int(np.random.SeedSequence(seed, spawn_key=(s, e)).generate_state(1)[0])
        for s in range(num_seeds)
        for e in range(num_episodes)
    ]


def _split_infos(infos: dict, lead: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Reshape the vector env's stacked info arrays (N, ...) to lead + (...), N = prod(lead)."""
    n = int(np.prod(lead))
    return {
        k: v.reshape(lead + v.shape[1:])
        for k, v in infos.items()
        if isinstance(v, np.ndarray) and v.ndim >= 1 and v.shape[0] == n
    }


def _merge_reset_infos(step_infos: dict, reset_infos: dict, done: np.ndarray) -> dict:
    """The info of each env's current state: reset info where `done`, step info elsewhere."""
    merged = dict(step_infos)
    for k, v in reset_infos.items():
        if k.startswith('_') or not isinstance(v, np.ndarray) or v.shape[:1] != done.shape:
            continue
        if k in merged and isinstance(merged[k], np.ndarray) and merged[k].shape == v.shape:
            cond = done.reshape(done.shape + (1,) * (v.ndim - 1))
            merged[k] = np.where(cond, v, merged[k])
        else:
            merged[k] = v
    return merged


# ---------------------------------------------------------------------------------------------------
# Evaluation.


class EvalResult(NamedTuple):
    """The outcome of S x E evaluation episodes. Per-seed fields are (S,), per-episode (S, E)."""

    success_rate: np.ndarray  # (S,)   mean over the seed's E episodes of the final step's success flag
    mean_return: np.ndarray  # (S,)   mean undiscounted episode return (raw env rewards)
    episode_success: np.ndarray  # (S, E) bool
    episode_return: np.ndarray  # (S, E) float64
    episode_length: np.ndarray  # (S, E) int, env steps in the episode
    env_steps: int  # sub-env steps simulated in all, counting the steps of envs already finished
    wall_time: float  # seconds spent in `run`, policy calls included


class EvaluationCancelled(Exception):
    """Raised inside `Evaluator.run` when a `BackgroundEvaluator` is closed mid-evaluation."""


# act_fn(observations (S, E, O) float32, key) -> actions (S, E, H', A) with H' >= horizon (or (S, E, A)
# when horizon == 1). With `with_infos=True` it is called as act_fn(observations, key, infos), infos a
# dict of arrays (S, E, ...) (privileged state for scripted oracles).
ActFn = Callable[..., Any]


class Evaluator:
    """The evaluation envs, built once and reused by every `run` (building costs about 1 s per env).

    By default all S*E episodes run at once on S*E envs. `episodes_per_round` = E_r (a divisor of E)
    builds only S*E_r envs and plays the E episodes in E / E_r rounds: an OGBench manipulation env
    holds about 160 MB in-process (meshes, textures) and an async worker process about 390 MB (see
    `experiments.env_workers`), so 4 seeds x 50 episodes at once would need 32 to 78 GB.
    Results do not depend on E_r except through the policy's key stream (see `run`).
    """

    def __init__(
        self,
        env_name: str,
        num_seeds: int,
        num_episodes: int,
        *,
        max_episode_steps: Optional[int] = None,
        episodes_per_round: Optional[int] = None,
        vectorization: str = 'sync',
        context: Optional[str] = DEFAULT_ASYNC_CONTEXT,
    ):
        self.env_name = env_name
        self.num_seeds = int(num_seeds)
        self.num_episodes = int(num_episodes)
        self.episodes_per_round = int(episodes_per_round or num_episodes)
        if self.num_episodes % self.episodes_per_round:
            raise ValueError(
                f'episodes_per_round={episodes_per_round} must divide num_episodes={num_episodes}.'
            )
        self.max_episode_steps = (
            episode_steps(env_name) if max_episode_steps is None else int(max_episode_steps)
        )
        # NEXT_STEP autoreset: an env that finishes is reset on its next step (its action ignored); the
        # evaluator masks such envs out from then on, so no second episode ever counts.
        self.envs = make_vector_env(
            env_name,
            self.num_seeds * self.episodes_per_round,
            vectorization=vectorization,
            max_episode_steps=self.max_episode_steps,
            autoreset_mode=AutoresetMode.NEXT_STEP,
            context=context,
        )
        space = self.envs.single_action_space
        self.action_dim = int(np.prod(space.shape))
        self.observation_dim = int(np.prod(self.envs.single_observation_space.shape))
        # Set by `BackgroundEvaluator`: when this event is set, `run` stops at the next env step and
        # raises `EvaluationCancelled`.
        self._cancel: Optional[threading.Event] = None
        self._low = np.asarray(space.low, np.float32)
        self._high = np.asarray(space.high, np.float32)

    def run(
        self,
        act_fn: ActFn,
        seed: int,
        horizon: int,
        *,
        key: Any = None,
        with_infos: bool = False,
    ) -> EvalResult:
        """One episode per (seed s, episode e); `key` defaults to jax.random.PRNGKey(seed).

        act_fn sees (S, E_r, O) observations (E_r = episodes_per_round, E by default). The key is split
        once per policy call (`key, sub = split(key)`; act_fn gets `sub` and splits it over seeds
        itself). Env reset seeds come from `seed` (see `reset_seeds`).
        """
        import jax

        S, E, Er = self.num_seeds, self.num_episodes, self.episodes_per_round
        horizon = int(horizon)
        if horizon < 1:
            raise ValueError(f'horizon must be >= 1, got {horizon}.')
        if key is None:
            key = jax.random.PRNGKey(seed)
        seeds = np.array(reset_seeds(seed, S, E)).reshape(S, E)

        start = time.perf_counter()
        success = np.zeros((S, E), bool)
        returns = np.zeros((S, E), np.float64)
        lengths = np.zeros((S, E), np.int64)
        env_steps = 0
        for r in range(E // Er):
            episodes = slice(r * Er, (r + 1) * Er)
            key, round_key = jax.random.split(key)
            out = self._run_round(act_fn, seeds[:, episodes], horizon, round_key, with_infos)
            success[:, episodes], returns[:, episodes], lengths[:, episodes], steps = out
            env_steps += steps
        return EvalResult(
            success_rate=success.mean(axis=1),
            mean_return=returns.mean(axis=1),
            episode_success=success,
            episode_return=returns,
            episode_length=lengths,
            env_steps=env_steps,
            wall_time=time.perf_counter() - start,
        )

    def _run_round(self, act_fn, seeds, horizon, key, with_infos):
        """One episode on each of the S*E_r envs, reset with `seeds` (S, E_r)."""
        import jax

        S, Er, A = self.num_seeds, self.episodes_per_round, self.action_dim
        N = S * Er
        obs, infos = self.envs.reset(seed=[int(x) for x in seeds.reshape(-1)])
        finished = np.zeros(N, bool)
        success = np.zeros(N, bool)
        returns = np.zeros(N, np.float64)
        lengths = np.zeros(N, np.int64)
        env_steps = 0

        while not finished.all():
            key, sub = jax.random.split(key)
            observations = np.asarray(obs, np.float32).reshape(S, Er, -1)
            if with_infos:
                chunk = act_fn(observations, sub, _split_infos(infos, (S, Er)))
            else:
                chunk = act_fn(observations, sub)
            chunk = np.asarray(chunk, np.float32)
            if chunk.ndim == 3:
                chunk = chunk[:, :, None]
            if chunk.ndim != 4 or chunk.shape[:2] != (S, Er) or chunk.shape[3] != A or (
                chunk.shape[2] < horizon
            ):
                raise ValueError(
                    f'act_fn must return ({S}, {Er}, H >= {horizon}, {A}) actions, got {chunk.shape}.'
                )
            chunk = np.clip(chunk.reshape(N, chunk.shape[2], A), self._low, self._high)

            for k in range(horizon):  # open loop
                if self._cancel is not None and self._cancel.is_set():
                    raise EvaluationCancelled('evaluation cancelled')
                obs, rewards, terminated, truncated, infos = self.envs.step(chunk[:, k])
                env_steps += N
                active = ~finished
                returns[active] += rewards[active]
                lengths[active] += 1
                ended = active & (terminated | truncated)
                if ended.any():
                    success[ended] = np.asarray(infos['success'])[ended].astype(bool)
                    finished |= ended
                    if finished.all():
                        break

        return success.reshape(S, Er), returns.reshape(S, Er), lengths.reshape(S, Er), env_steps

    def close(self) -> None:
        self.envs.close()

    def __enter__(self) -> 'Evaluator':
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def evaluate(
    act_fn: ActFn,
    env_name: str,
    num_seeds: int,
    num_episodes: int,
    seed: int,
    horizon: int,
    *,
    max_episode_steps: Optional[int] = None,
    episodes_per_round: Optional[int] = None,
    vectorization: str = 'sync',
    context: Optional[str] = DEFAULT_ASYNC_CONTEXT,
    key: Any = None,
    with_infos: bool = False,
) -> EvalResult:
    """Build S*E envs, run one episode on each, close them. See `Evaluator.run`.

    For repeated evaluations during training, keep an `Evaluator` instead (envs are built once).
    """
    with Evaluator(
        env_name,
        num_seeds,
        num_episodes,
        max_episode_steps=max_episode_steps,
        episodes_per_round=episodes_per_round,
        vectorization=vectorization,
        context=context,
    ) as evaluator:
        return evaluator.run(act_fn, seed, horizon, key=key, with_infos=with_infos)


# ---------------------------------------------------------------------------------------------------
# Evaluation beside training.


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


def background_episodes_per_round(num_seeds: int, num_episodes: int, num_workers: int) -> int:
    """The largest divisor E_r of `num_episodes` with num_seeds * E_r <= num_workers (at least 1)."""
    fits = [d for d in range(1, int(num_episodes) + 1) if num_episodes % d == 0 and num_seeds * d <= num_workers]
    return max(fits, default=1)


class BackgroundEvaluator:
    """Evaluations of S seeds x E episodes on a background thread, beside training.

    One `Evaluator` is built here (in the calling thread, blocking for the env builds) and reused by
    every evaluation. With vectorization='async' (the default) its S * E_r envs run in S * E_r worker
    processes, E_r = `background_episodes_per_round(S, E, num_workers)`, `num_workers` defaulting to
    every CPU core but one, within half of the free memory (`default_num_workers`); the E episodes run in E / E_r rounds, so memory stays bounded.

    `submit(step, params, seed, key)` copies `params` to host memory (`jax.device_get`) and returns at
    once. A `ThreadPoolExecutor` with one worker thread runs the evaluations in submission order, each
    exactly as `Evaluator.run(functools.partial(act_fn, params), seed=seed, horizon=horizon, key=key)`,
    so the results equal those of a blocking sync `Evaluator` with the same E_r, seeds and keys.
    `poll()` returns the finished `(step, EvalResult)` pairs in submission order (an earlier step is
    always returned before a later one), `wait()` blocks until all submitted work is done and returns
    the rest, `pending()` lists the steps submitted but not yet returned, and `waited_s` is the total
    time the caller spent blocked in `wait()`. An exception raised by an evaluation is re-raised by the
    next `poll()` / `wait()` (and `submit()`), and again at every later call; the evaluations queued
    after it do not run, and finished results not yet returned are dropped. `close()`
    cancels the evaluations not started, stops the running one at its next env step, and closes the
    envs; it does not wait for any evaluation to finish. Call the methods from one thread (the
    training loop's).

        evaluator = BackgroundEvaluator(env_name, S, E, act_fn=policy, horizon=H)
        for step in ...:
            train...
            if step % eval_every == 0:
                evaluator.submit(step, actor_params, seed=step, key=eval_key)
            for done_step, result in evaluator.poll():
                log(done_step, result)
        for done_step, result in evaluator.wait():
            log(done_step, result)
        evaluator.close()
    """

    def __init__(
        self,
        env_name: str,
        num_seeds: int,
        num_episodes: int,
        *,
        act_fn: Callable[[Any, np.ndarray, Any], Any],
        horizon: int,
        max_episode_steps: Optional[int] = None,
        episodes_per_round: Optional[int] = None,
        vectorization: str = 'async',
        num_workers: Optional[int] = None,
        context: Optional[str] = DEFAULT_ASYNC_CONTEXT,
        close_timeout_s: float = 30.0,
    ):
        self.num_workers = default_num_workers() if num_workers is None else max(1, int(num_workers))
        if episodes_per_round is None:
            episodes_per_round = background_episodes_per_round(num_seeds, num_episodes, self.num_workers)
        self.act_fn = act_fn
        self.horizon = int(horizon)
        self.close_timeout_s = float(close_timeout_s)
        self.evaluator = Evaluator(
            env_name,
            num_seeds,
            num_episodes,
            max_episode_steps=max_episode_steps,
            episodes_per_round=episodes_per_round,
            vectorization=vectorization,
            context=context,
        )
        self.waited_s = 0.0
        # One worker thread: the evaluations run one at a time, in submission order.
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix='background-evaluation')
        # (step, future) submitted and not yet returned, in submission order.
        self._futures: collections.deque[tuple[int, concurrent.futures.Future]] = collections.deque()
        self._error: Optional[BaseException] = None
        self._closed = False
        self._cancel = threading.Event()
        self.evaluator._cancel = self._cancel

    @property
    def episodes_per_round(self) -> int:
        return self.evaluator.episodes_per_round

    def submit(self, step: int, params: Any, seed: int, key: Any = None) -> None:
        """Queue an evaluation of `params` (copied to host now); returns at once."""
        import jax

        self._raise_error()
        if self._closed:
            raise RuntimeError('BackgroundEvaluator.submit after close().')
        future = self._executor.submit(self._run, jax.device_get(params), int(seed), key)
        self._futures.append((int(step), future))

    def poll(self) -> list[tuple[int, EvalResult]]:
        """The evaluations finished since the last poll/wait, in submission order; never blocks."""
        self._raise_error()
        return self._take()

    def wait(self) -> list[tuple[int, EvalResult]]:
        """Block until every submitted evaluation is done; return the ones not yet returned."""
        start = time.perf_counter()
        try:
            # After a failure the later evaluations end at once (`_run`), so this returns.
            concurrent.futures.wait(self._uncancelled())
        finally:
            self.waited_s += time.perf_counter() - start
        self._raise_error()
        return self._take()

    def pending(self) -> list[int]:
        """The steps submitted and not yet returned by poll/wait (queued, running or finished)."""
        return [step for step, _ in self._futures]

    def close(self) -> None:
        """Cancel queued evaluations, stop the running one, close the envs. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._cancel.set()
        self._executor.shutdown(wait=False, cancel_futures=True)
        _, running = concurrent.futures.wait(self._uncancelled(), timeout=self.close_timeout_s)
        if running:
            # The running evaluation is stuck in the policy (or in an env step): kill the workers; the
            # evaluation ends with an error nobody reads.
            envs = self.evaluator.envs
            if isinstance(envs, AsyncVectorEnv):
                for process in envs.processes:
                    if process.is_alive():
                        process.kill()
        else:
            self._executor.shutdown(wait=True)  # nothing is left to run: the thread ends at once
            self.evaluator.close()

    def __enter__(self) -> 'BackgroundEvaluator':
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # Internals.

    def _take(self) -> list[tuple[int, EvalResult]]:
        """Pop the finished results at the head of the queue (a later one waits for the earlier ones)."""
        out = []
        while self._futures:
            step, future = self._futures[0]
            if not future.done() or future.cancelled() or future.exception() is not None:
                break
            out.append((step, future.result()))
            self._futures.popleft()
        return out

    def _uncancelled(self) -> list[concurrent.futures.Future]:
        # A future cancelled before it started never counts as done in `concurrent.futures.wait`.
        return [future for _, future in self._futures if not future.cancelled()]

    def _raise_error(self) -> None:
        error = self._error
        if error is not None:
            raise error

    def _run(self, params: Any, seed: int, key: Any) -> EvalResult:
        """In the worker thread: one evaluation, unless an earlier one failed or `close` was called."""
        if self._error is not None or self._cancel.is_set():
            raise EvaluationCancelled('evaluation cancelled')
        try:
            return self.evaluator.run(
                functools.partial(self.act_fn, params), seed=seed, horizon=self.horizon, key=key)
        except EvaluationCancelled:
            raise
        except BaseException as e:  # re-raised in the caller by poll/wait/submit
            if not self._closed:
                self._error = e
            raise


# ---------------------------------------------------------------------------------------------------
# Online env stepping.


class Transition(NamedTuple):
    """One env step for each of S seeds, in the dataset convention (conventions §9).

    The field order is that of `trqam_jax.chunks.Transitions` (masks before terminals).
    """

    observations: np.ndarray  # (S, O) float32, s_t
    actions: np.ndarray  # (S, A) float32, the executed action (clipped to the action space)
    rewards: np.ndarray  # (S,)  float32, r_t (after the sparse option, if on)
    masks: np.ndarray  # (S,)  float32, 1 - terminated: 0 only where s_t solves the task
    terminals: np.ndarray  # (S,)  float32, 1 where the trajectory ends here (terminated or truncated)
    next_observations: np.ndarray  # (S, O) float32, s_{t+1} (the true final obs when the episode ends)


class OnlineEnvs:
    """S envs, one per seed, for online RL. Finished envs are reset (and their chunk queue cleared).

    `step(actions)` takes (S, A) actions, or (S, H, A) chunks: a seed whose chunk queue is empty loads
    its chunk (the other seeds' chunks are ignored), then every seed executes the next action of its
    queue. `needs_chunk` says which seeds will load. `observations` (S, O) float32 and `infos` (the
    vector env's info dict, arrays (S, ...), for scripted policies) describe the current states.
    Typical loop:

        envs = OnlineEnvs(env_name, S, seed)
        for i in range(steps):
            if envs.needs_chunk.any():
                chunks = policy(envs.observations, key)      # (S, H, A)
            transition, info = envs.step(chunks)             # append transition[s] to buffer s
    """

    def __init__(
        self,
        env_name: str,
        num_seeds: int,
        seed: int,
        *,
        sparse: bool = False,
        max_episode_steps: Optional[int] = None,
        vectorization: str = 'sync',
        context: Optional[str] = DEFAULT_ASYNC_CONTEXT,
    ):
        self.num_seeds = int(num_seeds)
        self.sparse = bool(sparse)
        # DISABLED autoreset: we reset finished envs ourselves (reset_mask), so every step's obs is the
        # true next observation and no reset step is wasted.
        self.envs = make_vector_env(
            env_name,
            self.num_seeds,
            vectorization=vectorization,
            max_episode_steps=max_episode_steps,
            autoreset_mode=AutoresetMode.DISABLED,
            context=context,
        )
        space = self.envs.single_action_space
        self.action_dim = int(np.prod(space.shape))
        self._low = np.asarray(space.low, np.float32)
        self._high = np.asarray(space.high, np.float32)
        # Reset seeds unlike the evaluation ones of the same `seed` (a spawn key no eval seed uses).
        seeds = [
            int(np.random.SeedSequence(seed, spawn_key=(2**31 - 1, s)).generate_state(1)[0])
            for s in range(self.num_seeds)
        ]
        obs, self.infos = self.envs.reset(seed=seeds)
        self.observations = np.asarray(obs, np.float32).reshape(self.num_seeds, -1)
        self._queues = [collections.deque() for _ in range(self.num_seeds)]
        self._episode_return = np.zeros(self.num_seeds, np.float64)
        self._episode_length = np.zeros(self.num_seeds, np.int64)

    @property
    def needs_chunk(self) -> np.ndarray:
        """(S,) bool: seeds whose chunk queue is empty (they load a chunk at the next `step`)."""
        return np.array([len(q) == 0 for q in self._queues])

    def step(self, actions) -> tuple[Transition, dict[str, np.ndarray]]:
        """One env step per seed. Returns the transitions and an info dict of (S,) arrays:
        success (the step's success flag), done, and episode_return / episode_length / episode_success
        (meaningful where done)."""
        actions = np.asarray(actions, np.float32)
        S, A = self.num_seeds, self.action_dim
        if actions.ndim == 3 and actions.shape[0] == S and actions.shape[2] == A:
            for queue, chunk in zip(self._queues, actions):
                if not queue:
                    queue.extend(chunk)
            action = np.stack([queue.popleft() for queue in self._queues])
        elif actions.shape == (S, A):
            if not self.needs_chunk.all():
                raise ValueError('(S, A) actions given while action chunks are still queued.')
            action = actions
        else:
            raise ValueError(f'actions must be ({S}, {A}) or ({S}, H, {A}), got {actions.shape}.')
        action = np.clip(action, self._low, self._high)

        next_obs, rewards, terminated, truncated, infos = self.envs.step(action)
        next_obs = np.asarray(next_obs, np.float32).reshape(S, -1)
        rewards = np.asarray(rewards, np.float32)
        if self.sparse:  # conventions §9: r <- -1 if r != 0 else 0
            rewards = np.where(rewards != 0, -1.0, 0.0).astype(np.float32)
        done = np.asarray(terminated | truncated)
        transition = Transition(
            observations=self.observations,
            actions=action,
            rewards=rewards,
            masks=1.0 - np.asarray(terminated, np.float32),
            terminals=done.astype(np.float32),
            next_observations=next_obs,
        )

        self._episode_return += rewards
        self._episode_length += 1
        success = np.asarray(infos['success']).astype(bool)
        info = dict(
            success=success,
            done=done,
            episode_return=self._episode_return.copy(),
            episode_length=self._episode_length.copy(),
            episode_success=success & done,
        )

        self.infos = infos
        self.observations = next_obs
        if done.any():
            obs, reset_infos = self.envs.reset(options={'reset_mask': done})
            obs = np.asarray(obs, np.float32).reshape(S, -1)
            self.observations = np.where(done[:, None], obs, next_obs)
            self.infos = _merge_reset_infos(infos, reset_infos, done)
            for s in np.flatnonzero(done):
                self._queues[s].clear()
            self._episode_return[done] = 0.0
            self._episode_length[done] = 0
        return transition, info

    def close(self) -> None:
        self.envs.close()

    def __enter__(self) -> 'OnlineEnvs':
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------------
# Speed benchmark.


def random_act_fn(num_seeds: int, num_episodes: int, horizon: int, action_dim: int) -> ActFn:
    """A jitted uniform-random policy with the evaluator's act_fn signature."""
    import jax

    shape = (num_seeds, num_episodes, horizon, action_dim)
    sample = jax.jit(lambda key: jax.random.uniform(key, shape, minval=-1.0, maxval=1.0))
    return lambda observations, key: sample(key)


def _parse_workers(text: str) -> list[int]:
    """'1,2,4' -> [1, 2, 4]; 'auto' -> 1, 2, 4, ... up to the CPU count (which is included)."""
    if text == 'auto':
        cpus = available_cpus()
        counts = [2**i for i in range(cpus.bit_length()) if 2**i <= cpus]
        return counts + ([cpus] if counts[-1] != cpus else [])
    counts = [int(x) for x in text.split(',') if x.strip()]
    if not counts or min(counts) < 1:
        raise ValueError(f'wants positive integers, got {text!r}.')
    return counts


def _time_evaluator(args: argparse.Namespace, num_seeds: int, num_episodes: int, vectorization: str):
    """Build an evaluator, warm it up, time `args.repeats` runs: (num_envs, T, build s, best s, result)."""
    H = args.horizon
    t0 = time.perf_counter()
    evaluator = Evaluator(
        args.env_name,
        num_seeds,
        num_episodes,
        max_episode_steps=args.max_episode_steps,
        episodes_per_round=args.episodes_per_round if not args.workers else None,
        vectorization=vectorization,
    )
    build = time.perf_counter() - t0
    act_fn = random_act_fn(num_seeds, evaluator.episodes_per_round, H, evaluator.action_dim)
    num_envs, max_steps = evaluator.envs.num_envs, evaluator.max_episode_steps
    with evaluator:
        evaluator.run(act_fn, 0, H)  # warm-up (jit, worker caches)
        times = []
        for rep in range(args.repeats):
            result = evaluator.run(act_fn, rep + 1, H)
            times.append(result.wall_time)
    del evaluator  # free the envs (160 to 390 MB each) before building the next set
    gc.collect()
    return num_envs, max_steps, build, min(times), result


def _benchmark(args: argparse.Namespace) -> None:
    S, E, H = args.num_seeds, args.num_episodes, args.horizon
    for vectorization in args.vectorization:
        num_envs, max_steps, build, best, result = _time_evaluator(args, S, E, vectorization)
        print(
            f'{vectorization:5s} S={S} E={E} ({num_envs} envs) H={H} T={max_steps}: build {build:.1f} s, '
            f'run {best:.2f} s (best of {args.repeats}), {result.env_steps / best:,.0f} env steps/s, '
            f'success {result.success_rate.mean():.2f}',
            flush=True,
        )


def _benchmark_workers(args: argparse.Namespace) -> None:
    """Env steps/s against the number of async worker processes (one env each), and sync in-process.

    Each row runs one episode on each of `workers` envs (1 seed x `workers` episodes, one round) with
    a random policy; the sync row runs max(workers) envs in this process.
    """
    counts = args.workers
    print(
        f'env {args.env_name}, {available_cpus()} CPUs, H={args.horizon}, random policy, '
        f'best of {args.repeats} after a warm-up run',
        flush=True,
    )
    print(f'{"mode":>5s} {"workers":>7s} {"envs":>5s} {"T":>4s} {"build s":>7s} {"run s":>6s} '
          f'{"env steps/s":>11s} {"per worker":>10s}', flush=True)
    rows = [('sync', max(counts))] + [('async', n) for n in counts]
    for vectorization, n in rows:
        num_envs, max_steps, build, best, result = _time_evaluator(args, 1, n, vectorization)
        workers = 0 if vectorization == 'sync' else num_envs
        rate = result.env_steps / best
        per_worker = f'{rate / workers:10,.0f}' if workers else f'{"-":>10s}'
        print(f'{vectorization:>5s} {workers:7d} {num_envs:5d} {max_steps:4d} {build:7.1f} {best:6.2f} '
              f'{rate:11,.0f} {per_worker}', flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--benchmark', action='store_true', help='time evaluation with a random policy')
    parser.add_argument('--env_name', default='cube-single-play-singletask-task1-v0')
    parser.add_argument('--num_seeds', type=int, default=4)
    parser.add_argument('--num_episodes', type=int, default=10)
    parser.add_argument('--horizon', type=int, default=5)
    parser.add_argument('--max_episode_steps', type=int, default=None)
    parser.add_argument('--episodes_per_round', type=int, default=None)
    parser.add_argument('--vectorization', nargs='+', default=list(VECTORIZATIONS), choices=VECTORIZATIONS)
    parser.add_argument('--repeats', type=int, default=1)
    parser.add_argument(
        '--workers',
        nargs='?',
        const='auto',
        default=None,
        help='env steps/s against async worker processes, e.g. --workers=1,2,4; bare --workers: '
        '1, 2, 4, ... up to the CPU count. Uses --env_name --horizon --max_episode_steps --repeats.',
    )
    args = parser.parse_args(argv)
    if not args.benchmark:
        parser.error('nothing to do: pass --benchmark')
    if args.workers is not None:
        try:
            args.workers = _parse_workers(args.workers)
        except (ValueError, argparse.ArgumentTypeError) as e:
            parser.error(f'--workers: {e}')
        _benchmark_workers(args)
    else:
        _benchmark(args)


if __name__ == '__main__':
    main()
