"""Evaluation episodes: S seeds x E episodes in one vector env, and the helpers around them (conventions §10).

Evaluation runs S seeds x E episodes in one `gymnasium.vector` env of S*E OGBench single-task envs
(sub-env index = s * E + e): seed s's policy acts on its own E envs, every env plays exactly one
episode, and action chunks of length H run open-loop (H env steps per policy call, the last chunk cut
by the episode end). Success is the `success` flag in the info of an episode's final step. To bound
memory, the E episodes can run in rounds of E_r on S*E_r envs (`episodes_per_round` picks E_r; an
env's memory is in `experiments.evaluation.vector`).

This module imports JAX lazily (inside the functions that use it).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, NamedTuple, Optional

import numpy as np
from gymnasium.vector import AutoresetMode

from experiments.evaluation.vector import DEFAULT_ASYNC_CONTEXT, episode_steps, make_vector_env


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


def episodes_per_round(episodes: int, envs_per_seed: int) -> int:
    """The largest divisor of `episodes` that is at most `envs_per_seed` (the envs built per seed), at least 1."""
    envs_per_seed = max(1, min(int(envs_per_seed), int(episodes)))
    return max(d for d in range(1, envs_per_seed + 1) if episodes % d == 0)


def random_act_fn(num_seeds: int, num_episodes: int, horizon: int, action_dim: int) -> ActFn:
    """A jitted uniform-random policy with the evaluator's act_fn signature."""
    import jax

    shape = (num_seeds, num_episodes, horizon, action_dim)
    sample = jax.jit(lambda key: jax.random.uniform(key, shape, minval=-1.0, maxval=1.0))
    return lambda observations, key: sample(key)
