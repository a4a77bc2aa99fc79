"""Device-side action-chunk datasets and samplers (conventions §9 and §10).

Everything here is pure JAX (plus a host-side NumPy precomputation in `make_chunk_data`): no IO.

Data layout
-----------
* `ChunkData`: the offline dataset as flat transition arrays of N rows (OGBench layout, conventions §9:
  `terminals` marks trajectory ends only, `masks` is 0 where the task is done) plus `steps_left`,
  precomputed once: the number of steps from row i to the end of its trajectory, inclusive, where
  the end of the used rows (`size`) also counts as a trajectory end. With it, the chunk table of a
  start index i is pure arithmetic: n_valid = min(steps_left[i], H) valid steps, step k's row is
  i + min(k, n_valid - 1), step k is valid iff k < n_valid, and valid_last = (n_valid == H).
  Sampling is then 1 + 3H + 2 gathers per batch row. Rows >= `size` are padding (never sampled), so
  a rotating window of dataset shards can keep one shape (no recompilation).
* `OnlineBuffer`: one seed's online replay region, preallocated with a fixed capacity on device and
  filled by the pure `append`. Its own `terminals` mark its episode ends; its filled end (`size`)
  counts as a trajectory end. Its chunk tables are computed on the fly from `terminals` (H - 1
  extra gathers), since appends change them.
* Tasks of one domain: after relabelling, the tasks of a domain share every array but `rewards` and
  `masks`. A domain's `ChunkData` holds those two as (T, N) (one row per task) and the rest once;
  `TaskData(data, task)` pairs the shared data with one learner's task row, which the samplers read
  with a single gather (`rewards[task, rows]`), so no learner copies a row.
* `ReplayData(offline, online)`: the online replay of conventions §10 (dataset + online transitions,
  sampled uniformly). Under `jax.vmap` over seeds, use `REPLAY_IN_AXES` (offline shared, axis None,
  not copied; online per seed, axis 0). For offline training, `ChunkData` alone with
  `OFFLINE_IN_AXES` (= None).

Chunk rules (conventions §9), for start index i and k = 0..H-1: the first step is always valid; step k is
valid while no trajectory end lies before it inside the chunk. R = sum_k gamma^k r_{i+k} over the
valid steps; mask = min of the masks over the valid steps; s' = next_observations of the last valid
step; valid = 1 only if the whole chunk lies in one trajectory (all H steps valid). Actions of the
invalid steps repeat the last valid step's action (padding only: such rows have valid = 0, and the
losses weight by valid_last, conventions §5 and 7).
"""

from typing import NamedTuple, Optional

import chex
import jax
import jax.numpy as jnp
import numpy as np

from trqam_jax.types import Batch

TRANSITION_FIELDS = ('observations', 'actions', 'rewards', 'masks', 'terminals', 'next_observations')

# Action clipping of conventions §9: the loaders apply it to the offline data; the chunks apply it
# again when assembled, so online transitions are clipped the same way.
ACTION_CLIP = 1.0 - 1e-5


class Transitions(NamedTuple):
    """A block of T transitions (leading axis T), e.g. what one seed collected online."""

    observations: jax.Array  # (T, O)
    actions: jax.Array  # (T, A)
    rewards: jax.Array  # (T,)
    masks: jax.Array  # (T,)   0 where the task is done (no bootstrap)
    terminals: jax.Array  # (T,)   1 at the last transition of an episode
    next_observations: jax.Array  # (T, O)


class ChunkData(NamedTuple):
    """Offline transitions plus the precomputed chunk index array (see the module docstring)."""

    observations: jax.Array  # (N, O)
    actions: jax.Array  # (N, A)
    rewards: jax.Array  # (N,), or (T, N): one row per task of a domain
    masks: jax.Array  # (N,), or (T, N)
    terminals: jax.Array  # (N,)
    next_observations: jax.Array  # (N, O)
    steps_left: jax.Array  # (N,) int32: steps from row i to its trajectory's end, inclusive
    size: jax.Array  # () int32: rows in use; rows >= size are padding


class OnlineBuffer(NamedTuple):
    """One seed's online replay region (capacity C rows, the first `size` filled). conventions §10."""

    observations: jax.Array  # (C, O)
    actions: jax.Array  # (C, A)
    rewards: jax.Array  # (C,)
    masks: jax.Array  # (C,)
    terminals: jax.Array  # (C,)
    next_observations: jax.Array  # (C, O)
    size: jax.Array  # () int32


class ReplayData(NamedTuple):
    """Online-phase replay (conventions §10): the offline dataset plus one online region per seed."""

    offline: ChunkData
    online: OnlineBuffer


class TaskData(NamedTuple):
    """One learner's view of shared data: the data, and the row of its (T, N) offline rewards and masks."""

    data: object  # ChunkData, or ReplayData (its offline part may hold (T, N) rewards and masks)
    task: jax.Array  # () int32; (L,) under the learner vmap


# vmap in_axes prefixes for the `data` argument of the seed-vmapped training scan.
OFFLINE_IN_AXES = None
REPLAY_IN_AXES = ReplayData(offline=None, online=0)
TASK_OFFLINE_IN_AXES = TaskData(data=None, task=0)  # the domain's data shared, a task index per learner
TASK_REPLAY_IN_AXES = TaskData(data=REPLAY_IN_AXES, task=0)


# --------------------------------------------------------------------------------------------
# Construction (host side, once).
# --------------------------------------------------------------------------------------------


def compute_steps_left(terminals, size: Optional[int] = None) -> np.ndarray:
    """steps_left[i] = (first j >= i with terminals[j] = 1 or j = size - 1) - i + 1, for i < size.

    NumPy, O(N). Entries i >= size are 0. The end of the used rows counts as a trajectory end.
    """
    terminals = np.asarray(terminals)
    n = terminals.shape[0]
    size = n if size is None else int(size)
    if not 0 < size <= n:
        raise ValueError(f'size must be in [1, {n}], got {size}')
    ends = terminals[:size] > 0
    ends[size - 1] = True
    rows = np.arange(size, dtype=np.int64)
    end_rows = np.where(ends, rows, size)
    next_end = np.minimum.accumulate(end_rows[::-1])[::-1]
    out = np.zeros(n, dtype=np.int32)
    out[:size] = (next_end - rows + 1).astype(np.int32)
    return out


def make_chunk_data(
    observations,
    actions,
    rewards,
    masks,
    terminals,
    next_observations,
    capacity: Optional[int] = None,
    device=None,
) -> ChunkData:
    """Builds `ChunkData` from host arrays (N rows) and puts it on `device` (default device).

    capacity: pad every array to this many rows (>= N) with zeros so that windows of different
    sizes share one shape; the padding is never sampled (`size` = N).
    rewards and masks may be (T, N): one row per task of a domain (sample with `TaskData`).
    """
    arrays = [np.asarray(a) for a in (observations, actions, rewards, masks, terminals, next_observations)]
    obs, act, rew, msk, term, nobs = arrays
    n = obs.shape[0]
    per_task = rew.ndim == 2
    chex.assert_rank([obs, act, rew, msk, term, nobs], [2, 2, 1 + per_task, 1 + per_task, 1, 2])
    chex.assert_equal_shape([obs, nobs])
    chex.assert_equal_shape([rew, msk])
    chex.assert_equal_shape_prefix([obs, act, term, nobs], 1)
    chex.assert_axis_dimension(rew, rew.ndim - 1, n)
    if n == 0:
        raise ValueError('empty dataset')
    capacity = n if capacity is None else int(capacity)
    if capacity < n:
        raise ValueError(f'capacity {capacity} < number of transitions {n}')
    steps_left = compute_steps_left(term)

    def pad(a, dtype, axis=0):
        a = a.astype(dtype, copy=False)
        if capacity > n:
            widths = [(0, 0)] * a.ndim
            widths[axis] = (0, capacity - n)
            a = np.pad(a, widths)
        return a

    host = ChunkData(
        observations=pad(obs, np.float32),
        actions=pad(act, np.float32),
        rewards=pad(rew, np.float32, rew.ndim - 1),
        masks=pad(msk, np.float32, rew.ndim - 1),
        terminals=pad(term, np.float32),
        next_observations=pad(nobs, np.float32),
        steps_left=pad(steps_left, np.int32),
        size=np.asarray(n, np.int32),
    )
    return jax.device_put(host, device)


def chunk_data_nbytes(num_transitions: int, obs_dim: int, action_dim: int, num_tasks: int = 1) -> int:
    """Device bytes of a `ChunkData` with that many rows (float32 arrays, int32 steps_left), with
    rewards and masks for `num_tasks` tasks."""
    per_row = 4 * (2 * obs_dim + action_dim) + 4 * (2 + 2 * int(num_tasks))
    return int(num_transitions) * per_row


def tree_nbytes(tree) -> int:
    """Total bytes of the arrays of a pytree (e.g. a `ChunkData` or `ReplayData`)."""
    return int(sum(np.dtype(x.dtype).itemsize * int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree)))


def init_online(capacity: int, obs_dim: int, action_dim: int, num_seeds: Optional[int] = None) -> OnlineBuffer:
    """An empty online region of `capacity` rows; with `num_seeds`, a leading seed axis (axis 0)."""
    lead = () if num_seeds is None else (int(num_seeds),)
    c = int(capacity)
    return OnlineBuffer(
        observations=jnp.zeros(lead + (c, obs_dim), jnp.float32),
        actions=jnp.zeros(lead + (c, action_dim), jnp.float32),
        rewards=jnp.zeros(lead + (c,), jnp.float32),
        masks=jnp.zeros(lead + (c,), jnp.float32),
        terminals=jnp.zeros(lead + (c,), jnp.float32),
        next_observations=jnp.zeros(lead + (c, obs_dim), jnp.float32),
        size=jnp.zeros(lead, jnp.int32),
    )


def append(buffer: OnlineBuffer, block: Transitions, count=None) -> OnlineBuffer:
    """Writes a block of T transitions of ONE seed after the filled part. Pure; vmap it over seeds.

    count: how many leading rows of the block to write (traced int allowed; default T). Rows that
    would go past the capacity are dropped and `size` saturates at the capacity, so size the
    region for all online steps (conventions §10: 500K) plus slack.
    """
    capacity = buffer.rewards.shape[0]
    t = block.rewards.shape[0]
    chex.assert_rank(list(block), [2, 2, 1, 1, 1, 2])
    chex.assert_equal_shape_prefix(list(block), 1)
    chex.assert_equal_shape_suffix([buffer.observations, block.observations], 1)
    chex.assert_equal_shape_suffix([buffer.actions, block.actions], 1)
    count = t if count is None else jnp.clip(jnp.asarray(count, jnp.int32), 0, t)
    offsets = jnp.arange(t, dtype=jnp.int32)
    rows = jnp.where(offsets < count, buffer.size + offsets, capacity)  # capacity = out of bounds
    new_fields = {
        name: getattr(buffer, name).at[rows].set(getattr(block, name).astype(getattr(buffer, name).dtype), mode='drop')
        for name in TRANSITION_FIELDS
    }
    size = jnp.minimum(buffer.size + count, capacity).astype(jnp.int32)
    return OnlineBuffer(**new_fields, size=size)


# --------------------------------------------------------------------------------------------
# Chunk tables and gathers (jittable).
# --------------------------------------------------------------------------------------------


def _table_from_n_valid(start, n_valid, horizon: int):
    k = jnp.arange(horizon, dtype=jnp.int32)
    step_valid = k[None, :] < n_valid[:, None]
    step_idx = start[:, None] + jnp.minimum(k[None, :], n_valid[:, None] - 1)
    return step_idx, step_valid, n_valid == horizon


def chunk_table(data: ChunkData, start, horizon: int):
    """The chunk table of start indices (B,): step row indices (B, H) int32, step validity (B, H)
    bool and valid_last (B,) bool. Invalid steps point at the last valid step's row."""
    start = jnp.asarray(start, jnp.int32)
    n_valid = jnp.clip(data.steps_left[start], 1, horizon)
    return _table_from_n_valid(start, n_valid, horizon)


def online_chunk_table(buffer: OnlineBuffer, start, horizon: int):
    """Same as `chunk_table` for an online region, computed from its `terminals` and `size`."""
    start = jnp.asarray(start, jnp.int32)
    if horizon == 1:
        n_valid = jnp.ones_like(start)
    else:
        m = jnp.arange(horizon - 1, dtype=jnp.int32)
        rows = start[:, None] + m[None, :]
        capacity = buffer.terminals.shape[0]
        term = buffer.terminals[jnp.minimum(rows, capacity - 1)]
        # Step m + 1 continues the chunk iff row m is not a trajectory end and row m + 1 is filled.
        cont = (term <= 0) & (rows + 1 < buffer.size)
        n_valid = 1 + jnp.sum(jnp.cumprod(cont.astype(jnp.int32), axis=1), axis=1)
    return _table_from_n_valid(start, n_valid, horizon)


def _task_rows(values, rows, task):
    """values[rows], or values[task, rows] for per-task (T, N) values (one gather, no row copied)."""
    return values[rows] if values.ndim == 1 else values[task, rows]


def _assemble(src, start, table, discount, task=None) -> Batch:
    step_idx, step_valid, valid_last = table
    horizon = step_idx.shape[1]
    n_valid = jnp.sum(step_valid, axis=1)
    last_idx = start + n_valid - 1
    disc = jnp.asarray(discount, jnp.float32) ** jnp.arange(horizon, dtype=jnp.float32)
    rewards = jnp.sum(_task_rows(src.rewards, step_idx, task) * disc[None, :] * step_valid, axis=1)
    # Invalid steps repeat the last valid row, so the plain min is the min over valid steps.
    masks = jnp.min(_task_rows(src.masks, step_idx, task), axis=1)
    actions = jnp.clip(src.actions[step_idx], -ACTION_CLIP, ACTION_CLIP)
    return Batch(
        observations=src.observations[start],
        actions=actions,
        rewards=rewards,
        masks=masks,
        next_observations=src.next_observations[last_idx],
        valid=valid_last.astype(jnp.float32),
    )


def gather_chunks(data: ChunkData, start, horizon: int, discount: float, task=None) -> Batch:
    """The batch of chunks starting at the given offline indices (B,) (conventions §9); `task` picks
    the row of per-task (T, N) rewards and masks."""
    start = jnp.asarray(start, jnp.int32)
    return _assemble(data, start, chunk_table(data, start, horizon), discount, task)


def gather_online_chunks(buffer: OnlineBuffer, start, horizon: int, discount: float) -> Batch:
    """The batch of chunks starting at the given indices (B,) of one seed's online region."""
    start = jnp.asarray(start, jnp.int32)
    return _assemble(buffer, start, online_chunk_table(buffer, start, horizon), discount)


def sample_chunks(data: ChunkData, key, batch_size: int, horizon: int, discount: float, task=None) -> Batch:
    """Offline sampler: start indices uniform over [0, size) (conventions §9). Jittable.

    Bind batch_size, horizon and discount with functools.partial to get `sample_fn(data, key)`. The
    draws do not depend on `task`: learners of one seed on different tasks see the same rows.
    """
    start = jax.random.randint(key, (batch_size,), 0, data.size, dtype=jnp.int32)
    return gather_chunks(data, start, horizon, discount, task)


def replay_starts(data: ReplayData, key, batch_size: int):
    """Uniform draws over the offline rows plus one seed's filled online rows (conventions §10).

    Returns (u, from_offline): u in [0, N_off + N_on); u < N_off is an offline start, otherwise
    u - N_off is an online start.
    """
    n_off = data.offline.size
    u = jax.random.randint(key, (batch_size,), 0, n_off + data.online.size, dtype=jnp.int32)
    return u, u < n_off


def gather_replay(data: ReplayData, u, horizon: int, discount: float, task=None) -> Batch:
    """Chunks at replay positions u (see `replay_starts`): offline for u < N_off, else online."""
    u = jnp.asarray(u, jnp.int32)
    n_off = data.offline.size
    from_offline = u < n_off
    off_start = jnp.clip(u, 0, n_off - 1)
    on_start = jnp.clip(u - n_off, 0, jnp.maximum(data.online.size - 1, 0))
    off = gather_chunks(data.offline, off_start, horizon, discount, task)
    on = gather_online_chunks(data.online, on_start, horizon, discount)

    def select(a, b):
        cond = from_offline.reshape(from_offline.shape + (1,) * (a.ndim - 1))
        return jnp.where(cond, a, b)

    return jax.tree_util.tree_map(select, off, on)


def sample_replay(data: ReplayData, key, batch_size: int, horizon: int, discount: float, task=None) -> Batch:
    """Online-phase sampler (conventions §10): uniform over dataset + this seed's online transitions.

    Chunks never cross from the offline rows into the online rows. Jittable; under the seed vmap
    use `REPLAY_IN_AXES` for `data`. `task` picks the row of per-task offline rewards and masks (the
    online region holds the learner's own task already).
    """
    u, _ = replay_starts(data, key, batch_size)
    return gather_replay(data, u, horizon, discount, task)


def task_sampler(sample, **kwargs):
    """sample_fn(TaskData, key) from `sample_chunks` or `sample_replay`: the learner's task row is used."""

    def sample_task(data: TaskData, key) -> Batch:
        return sample(data.data, key, task=data.task, **kwargs)

    return sample_task
