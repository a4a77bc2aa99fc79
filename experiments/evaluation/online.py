"""Online env stepping: `OnlineEnvs` keeps one env per seed for online RL (conventions §9).

It yields single-step transitions in the dataset convention, as `trqam_jax.chunks.Transitions` of
numpy arrays (S, ...), ready for a per-seed replay buffer.

OGBench single-task envs (`success_timing='pre'`) compute reward, success and termination from the
state *before* the action, which is exactly the dataset relabeling: for the transition
(s_t, a_t, r_t, s_{t+1}), r_t = (subgoals met in s_t) - (subgoals) (navigation: success(s_t) - 1), and
the episode terminates (terminated=True) on the step taken from a solved state, so
mask_t = 1 - terminated_t = 1 - success(s_t).
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Optional

import numpy as np
from gymnasium.vector import AutoresetMode

from experiments.evaluation.vector import DEFAULT_ASYNC_CONTEXT, make_vector_env

if TYPE_CHECKING:
    from trqam_jax.chunks import Transitions


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

    def step(self, actions) -> tuple[Transitions, dict[str, np.ndarray]]:
        """One env step per seed. Returns the transitions and an info dict of (S,) arrays:
        success (the step's success flag), done, and episode_return / episode_length / episode_success
        (meaningful where done).

        The transitions are `trqam_jax.chunks.Transitions` of numpy float32 arrays: observations (S, O)
        s_t; actions (S, A) the executed action (clipped to the action space); rewards (S,) r_t (after
        the sparse option, if on); masks (S,) 1 - terminated, 0 only where s_t solves the task;
        terminals (S,) 1 where the trajectory ends here (terminated or truncated); next_observations
        (S, O) s_{t+1} (the true final obs when the episode ends).
        """
        # Imported here, so that importing experiments.evaluation does not import JAX.
        from trqam_jax.chunks import Transitions

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
        transition = Transitions(
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
