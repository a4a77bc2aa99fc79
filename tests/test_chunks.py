"""Chunk sampling (conventions §9) and online replay (conventions §10) against a slow, obviously-correct loop."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trqam_jax import chunks

GAMMA = 0.9
OBS_DIM, ACT_DIM = 3, 2


def make_transitions(traj_lengths, seed=0, mask_zero_rows=()):
    """Trajectories of the given lengths back to back; the last one may be cut (no final terminal)
    when its length is negative. observations[:, 0] = row index for easy checks."""
    rng = np.random.default_rng(seed)
    terms = []
    for length in traj_lengths:
        n = abs(length)
        t = np.zeros(n, np.float32)
        if length > 0:
            t[-1] = 1.0
        terms.append(t)
    terminals = np.concatenate(terms)
    n = terminals.shape[0]
    obs = rng.normal(size=(n, OBS_DIM)).astype(np.float32)
    obs[:, 0] = np.arange(n)
    next_obs = rng.normal(size=(n, OBS_DIM)).astype(np.float32)
    next_obs[:, 0] = np.arange(n) + 1000
    actions = rng.uniform(-1.2, 1.2, size=(n, ACT_DIM)).astype(np.float32)
    rewards = rng.integers(-3, 1, size=n).astype(np.float32)
    masks = np.ones(n, np.float32)
    masks[list(mask_zero_rows)] = 0.0
    return dict(
        observations=obs,
        actions=actions,
        rewards=rewards,
        masks=masks,
        terminals=terminals,
        next_observations=next_obs,
    )


def reference_chunk(d, i, horizon, gamma, size=None):
    """Slow loop over k following conventions §9 word by word."""
    size = len(d['rewards']) if size is None else size
    valid_steps = [0]  # the first step is always valid
    for k in range(1, horizon):
        before = range(i, i + k)
        # valid while no trajectory end (terminal, or the end of the rows) lies before it
        if i + k < size and all(d['terminals'][j] == 0 for j in before):
            valid_steps.append(k)
        else:
            break
    rows = [i + k for k in valid_steps]
    R = sum(gamma**k * d['rewards'][i + k] for k in valid_steps)
    mask = min(d['masks'][r] for r in rows)
    acts = [d['actions'][r] for r in rows] + [d['actions'][rows[-1]]] * (horizon - len(rows))
    acts = np.clip(np.stack(acts), -1 + 1e-5, 1 - 1e-5)
    return dict(
        observations=d['observations'][i],
        actions=acts,
        rewards=R,
        masks=mask,
        next_observations=d['next_observations'][rows[-1]],
        valid=float(len(valid_steps) == horizon),
        step_valid=np.arange(horizon) < len(valid_steps),
    )


def check_batch(batch, d, starts, horizon, size=None):
    batch = jax.tree_util.tree_map(np.asarray, batch)
    for b, i in enumerate(np.asarray(starts)):
        ref = reference_chunk(d, int(i), horizon, GAMMA, size)
        for name in ('observations', 'actions', 'rewards', 'masks', 'next_observations', 'valid'):
            np.testing.assert_allclose(
                getattr(batch, name)[b], ref[name], rtol=1e-6, atol=1e-6, err_msg=f'{name} at i={i}'
            )


# Trajectory ends inside chunks, a length-1 trajectory, success masks, and a cut last trajectory.
TRAJ = [7, 1, 3, 9, -4]
MASK0 = [2, 5, 8, 14, 15, 22]


@pytest.fixture(scope='module')
def data_np():
    return make_transitions(TRAJ, mask_zero_rows=MASK0)


@pytest.mark.parametrize('horizon', [1, 5])
def test_offline_full_table_matches_loop(data_np, horizon):
    data = chunks.make_chunk_data(**data_np)
    n = len(data_np['rewards'])
    starts = jnp.arange(n)
    batch = jax.jit(chunks.gather_chunks, static_argnums=(2,))(data, starts, horizon, GAMMA)
    check_batch(batch, data_np, starts, horizon)
    idx, step_valid, valid_last = chunks.chunk_table(data, starts, horizon)
    for i in range(n):
        ref = reference_chunk(data_np, i, horizon, GAMMA)
        np.testing.assert_array_equal(np.asarray(step_valid[i]), ref['step_valid'])
    assert bool(valid_last[0]) == (horizon <= 7)
    # Both valid and invalid chunks occur.
    assert 0 < float(batch.valid.sum()) < n or horizon == 1
    # The array end is a trajectory end: the last rows cannot hold a full H = 5 chunk.
    if horizon == 5:
        assert float(batch.valid[-1]) == 0.0


@pytest.mark.parametrize('horizon', [1, 5])
def test_sampler_is_uniform_and_matches_loop(data_np, horizon):
    data = chunks.make_chunk_data(**data_np)
    n = len(data_np['rewards'])
    sample = jax.jit(functools.partial(chunks.sample_chunks, batch_size=4096, horizon=horizon, discount=GAMMA))
    batch = sample(data, jax.random.PRNGKey(0))
    starts = np.asarray(batch.observations[:, 0]).astype(int)
    assert starts.min() >= 0 and starts.max() < n
    counts = np.bincount(starts, minlength=n)
    assert counts.min() > 4096 / n * 0.5  # every start index is drawn, roughly uniformly
    check_batch(jax.tree_util.tree_map(lambda x: x[:300], batch), data_np, starts[:300], horizon)
    assert batch.actions.shape == (4096, horizon, ACT_DIM)
    assert batch.rewards.shape == batch.masks.shape == batch.valid.shape == (4096,)


def test_padding_is_never_sampled(data_np):
    n = len(data_np['rewards'])
    data = chunks.make_chunk_data(**data_np, capacity=n + 17)
    assert data.observations.shape[0] == n + 17 and int(data.size) == n
    batch = jax.jit(chunks.sample_chunks, static_argnums=(2, 3))(data, jax.random.PRNGKey(1), 500, 5, GAMMA)
    assert np.asarray(batch.observations[:, 0]).max() < n
    check_batch(batch, data_np, np.asarray(batch.observations[:, 0]).astype(int), 5)


def test_steps_left():
    np.testing.assert_array_equal(
        chunks.compute_steps_left(np.array([0, 0, 1, 1, 0, 0])), [3, 2, 1, 1, 2, 1]
    )
    np.testing.assert_array_equal(chunks.compute_steps_left(np.array([0, 0, 1, 0]), size=2), [2, 1, 0, 0])


def online_from(d, capacity, blocks):
    buf = chunks.init_online(capacity, OBS_DIM, ACT_DIM)
    app = jax.jit(chunks.append)
    pos = 0
    for t in blocks:
        block = chunks.Transitions(**{k: jnp.asarray(v[pos : pos + t]) for k, v in d.items()})
        buf = app(buf, block)
        pos += t
    return buf


@pytest.mark.parametrize('horizon', [1, 5])
def test_online_append_and_chunks_match_loop(data_np, horizon):
    n = len(data_np['rewards'])
    filled = 21  # cut inside the 4th trajectory: the filled end acts as a trajectory end
    buf = online_from(data_np, capacity=32, blocks=[1, 6, 1, 13])
    assert int(buf.size) == filled
    np.testing.assert_array_equal(np.asarray(buf.observations[:filled]), data_np['observations'][:filled])
    assert float(jnp.abs(buf.observations[filled:]).sum()) == 0.0
    starts = jnp.arange(filled)
    batch = chunks.gather_online_chunks(buf, starts, horizon, GAMMA)
    check_batch(batch, {k: v[:filled] for k, v in data_np.items()}, starts, horizon, size=filled)
    # The on-the-fly online table agrees with the precomputed offline one on the same rows.
    off = chunks.make_chunk_data(**{k: v[:filled] for k, v in data_np.items()})
    off_batch = chunks.gather_chunks(off, starts, horizon, GAMMA)
    jax.tree_util.tree_map(np.testing.assert_array_equal, off_batch, batch)
    assert n > filled


def test_append_count_and_overflow(data_np):
    buf = chunks.init_online(10, OBS_DIM, ACT_DIM)
    block = chunks.Transitions(**{k: jnp.asarray(v[:6]) for k, v in data_np.items()})
    buf = chunks.append(buf, block, count=4)
    assert int(buf.size) == 4
    assert float(buf.observations[4, 0]) == 0.0 and float(buf.observations[3, 0]) == 3.0
    buf = chunks.append(buf, block)  # rows 4..9 written, the last 0 rows of the block fit
    assert int(buf.size) == 10
    buf = chunks.append(buf, block)  # full: dropped, size saturates
    assert int(buf.size) == 10
    np.testing.assert_array_equal(np.asarray(buf.observations[4:, 0]), np.arange(6))


@pytest.mark.parametrize('horizon', [1, 5])
def test_replay_positions_match_loop(data_np, horizon):
    off_np = make_transitions([4, 6, -3], seed=1, mask_zero_rows=[1, 9])
    n_off = len(off_np['rewards'])
    buf = online_from(data_np, capacity=40, blocks=[11, 7])
    filled = 18
    data = chunks.ReplayData(chunks.make_chunk_data(**off_np), buf)
    u = jnp.arange(n_off + filled)
    batch = jax.jit(chunks.gather_replay, static_argnums=(2,))(data, u, horizon, GAMMA)
    off_part = jax.tree_util.tree_map(lambda x: x[:n_off], batch)
    on_part = jax.tree_util.tree_map(lambda x: x[n_off:], batch)
    check_batch(off_part, off_np, np.arange(n_off), horizon)  # no chunk runs into the online rows
    check_batch(on_part, {k: v[:filled] for k, v in data_np.items()}, np.arange(filled), horizon, size=filled)


def test_replay_sampler_uniform_over_offline_plus_online(data_np):
    off_np = make_transitions([10, -10], seed=2)
    data = chunks.ReplayData(chunks.make_chunk_data(**off_np), online_from(data_np, 64, [20, 4]))
    u, from_off = jax.jit(chunks.replay_starts, static_argnums=2)(data, jax.random.PRNGKey(3), 20000)
    assert int(u.min()) == 0 and int(u.max()) == 20 + 24 - 1
    assert abs(float(from_off.mean()) - 20 / 44) < 0.02
    batch = jax.jit(chunks.sample_replay, static_argnums=(2, 3))(data, jax.random.PRNGKey(3), 256, 5, GAMMA)
    obs0 = np.asarray(batch.observations[:, 0])
    # offline rows have observations[:, 0] < 20, online rows come from data_np rows < 24
    assert np.all(obs0 < 24)


def test_vmap_over_seeds_with_shared_offline(data_np):
    """The seed-vmapped scan pattern: offline data shared (axis None), online per seed (axis 0)."""
    num_seeds = 3
    off_np = make_transitions([6, 5, -4], seed=3, mask_zero_rows=[2])
    offline = chunks.make_chunk_data(**off_np)
    online = chunks.init_online(16, OBS_DIM, ACT_DIM, num_seeds=num_seeds)
    # Each seed appends a different block (different lengths via count).
    t = 8
    blocks = chunks.Transitions(
        **{k: jnp.stack([jnp.asarray(v[s * t : (s + 1) * t]) for s in range(num_seeds)]) for k, v in data_np.items()}
    )
    counts = jnp.array([8, 5, 2])
    online = jax.jit(jax.vmap(chunks.append))(online, blocks, counts)
    np.testing.assert_array_equal(np.asarray(online.size), [8, 5, 2])
    data = chunks.ReplayData(offline, online)

    sample_fn = functools.partial(chunks.sample_replay, batch_size=64, horizon=5, discount=GAMMA)

    def run(key, data):
        def body(carry, k):
            b = sample_fn(data, k)
            return carry + b.rewards.sum(), b.observations[:, 0]

        return jax.lax.scan(body, 0.0, jax.random.split(key, 4))

    keys = jax.random.split(jax.random.PRNGKey(0), num_seeds)
    _, obs0 = jax.jit(jax.vmap(run, in_axes=(0, chunks.REPLAY_IN_AXES)))(keys, data)
    assert obs0.shape == (num_seeds, 4, 64)
    # Per-seed online rows: seed s only ever sees its own online block (obs0 in [s*t, s*t+count)).
    n_off = len(off_np['rewards'])
    for s in range(num_seeds):
        vals = np.asarray(obs0[s]).ravel()
        online_vals = vals[(vals >= s * t) & (vals < s * t + int(counts[s]))]
        assert np.all((vals < n_off) | ((vals >= s * t) & (vals < s * t + int(counts[s]))))
        assert online_vals.size > 0

    # Exactness under vmap: a seed's batch equals the unvmapped sampler on that seed's slice.
    seed1 = chunks.ReplayData(offline, jax.tree_util.tree_map(lambda x: x[1], online))
    direct = jax.jit(sample_fn)(seed1, jax.random.PRNGKey(7))
    vm = jax.jit(jax.vmap(sample_fn, in_axes=(chunks.REPLAY_IN_AXES, None)))(data, jax.random.PRNGKey(7))
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(a, b[1]), direct, vm)

    # Offline-only training: data shared by all seeds with OFFLINE_IN_AXES.
    off_fn = functools.partial(chunks.sample_chunks, batch_size=8, horizon=5, discount=GAMMA)
    out = jax.jit(jax.vmap(off_fn, in_axes=(chunks.OFFLINE_IN_AXES, 0)))(offline, keys)
    assert out.actions.shape == (num_seeds, 8, 5, ACT_DIM)


def test_nbytes(data_np):
    n = len(data_np['rewards'])
    data = chunks.make_chunk_data(**data_np)
    assert chunks.tree_nbytes(data) == chunks.chunk_data_nbytes(n, OBS_DIM, ACT_DIM) + 4
