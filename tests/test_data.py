"""OGBench loading (conventions §9/10) on tiny hand-made npz files: relabeling, sparse rewards, clipping,
missing-data errors (fast, no download), env-name validation, shards and the rotating window."""

import os
import time
import urllib.request

import gymnasium
import jax
import numpy as np
import ogbench
import ogbench.utils
import pytest

from experiments.data import files, loading, names
from trqam_jax import chunks

EPS = 1e-5


# --------------------------------------------------------------------------------------------
# Env names.
# --------------------------------------------------------------------------------------------


def test_parse_env_name():
    info = names.parse_env_name('cube-double-play-singletask-task2-v0')
    assert (info.domain, info.dataset, info.ogbench_env, info.task) == (
        'cube-double-play',
        'cube-double-play-v0',
        'cube-double-singletask-task2-v0',
        2,
    )
    info = names.parse_env_name('antmaze-large-navigate-singletask-task5-v0')
    assert info.dataset == 'antmaze-large-navigate-v0' and info.ogbench_env == 'antmaze-large-singletask-task5-v0'
    assert info.layout.navigation
    info = names.parse_env_name('puzzle-4x4-play-singletask-v0')  # default-task alias
    assert info.task is None and info.ogbench_env == 'puzzle-4x4-singletask-v0' and info.layout.size_m == 10
    assert len(names.DOMAINS) == 11 and 'cube-single-play' in names.DOMAINS


@pytest.mark.parametrize(
    'name', ['foo-play-singletask-task1-v0', 'cube-double-play-v0', 'cube-octuple-play-singletask-task1-v0', '']
)
def test_unknown_env_lists_valid_domains(name):
    with pytest.raises(names.UnknownEnvError) as e:
        loading.ShardWindow([name], dataset_dir='/nonexistent')
    msg = str(e.value)
    assert 'valid domains' in msg
    for domain in names.DOMAINS:
        assert domain in msg
    assert isinstance(e.value, names.DataError)


def test_bad_task_number():
    with pytest.raises(names.UnknownEnvError, match='task1..task5'):
        names.parse_env_name('cube-double-play-singletask-task6-v0')


# --------------------------------------------------------------------------------------------
# Missing data: clear error, before any ogbench call, fast.
# --------------------------------------------------------------------------------------------


@pytest.fixture
def no_ogbench(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError('ogbench / network must not be called when the data is missing')

    monkeypatch.setattr(ogbench, 'make_env_and_datasets', forbidden)
    monkeypatch.setattr(ogbench, 'download_datasets', forbidden)
    monkeypatch.setattr(ogbench.utils, 'download_datasets', forbidden)
    monkeypatch.setattr(ogbench.utils, 'make_env_and_datasets', forbidden)
    monkeypatch.setattr(urllib.request, 'urlopen', forbidden)
    monkeypatch.setattr(gymnasium, 'make', forbidden)


def _raises_fast(env_name, dataset_dir, **kw):
    t0 = time.perf_counter()
    with pytest.raises(files.DatasetMissingError) as e:
        loading.ShardWindow([env_name], dataset_dir=str(dataset_dir), **kw)
    assert time.perf_counter() - t0 < 0.5
    assert isinstance(e.value, names.DataError) and isinstance(e.value, FileNotFoundError)
    return str(e.value)


def test_missing_manipulation_data(tmp_path, no_ogbench):
    msg = _raises_fast('cube-double-play-singletask-task2-v0', tmp_path)
    assert str(tmp_path / 'cube-double-play-v0.npz') in msg
    assert str(tmp_path / 'cube-double-play-v0-val.npz') in msg
    assert f'python -m experiments.make_dataset --dataset=cube-double-play-v0 --dataset_dir={tmp_path}' in msg
    # Only the val file missing is still an error (ogbench would try to download it).
    np.savez(tmp_path / 'cube-double-play-v0.npz', observations=np.zeros((2, 3)))
    msg = _raises_fast('cube-double-play-singletask-task2-v0', tmp_path)
    assert 'cube-double-play-v0-val.npz' in msg and str(tmp_path / 'cube-double-play-v0.npz,') not in msg


def test_missing_navigation_data(tmp_path, no_ogbench):
    msg = _raises_fast('antmaze-large-navigate-singletask-task1-v0', tmp_path)
    assert 'antmaze-large-navigate-v0.npz' in msg
    assert 'internet' in msg and 'expert' in msg
    assert 'make_dataset' not in msg
    msg = _raises_fast('antmaze-giant-navigate-singletask-task1-v0', tmp_path)
    assert 'antmaze-giant-navigate-10m-v0' in msg and 'internet' in msg


def test_missing_sharded_data(tmp_path, no_ogbench):
    msg = _raises_fast('cube-triple-play-singletask-task2-v0', tmp_path)
    assert 'cube-triple-play-v0-000.npz' in msg and 'cube-triple-play-v0-009.npz' in msg
    assert str(tmp_path / 'cube-triple-play-10m-v0') in msg
    assert f'--dataset=cube-triple-play-10m-v0 --dataset_dir={tmp_path}' in msg
    # Too few shards is missing data too.
    d = tmp_path / 'cube-quadruple-play-100m-v0'
    d.mkdir()
    for i in range(3):
        np.savez(d / f'cube-quadruple-play-v0-{i:03d}.npz', x=np.zeros(1))
    msg = _raises_fast('cube-quadruple-play-singletask-task1-v0', tmp_path)
    assert '3 found' in msg and 'cube-quadruple-play-v0-099.npz' in msg


def test_100m_release_fallback(tmp_path):
    d = tmp_path / 'cube-triple-play-100m-v0'
    d.mkdir()
    for i in range(12):
        np.savez(d / f'cube-triple-play-v0-{i:03d}.npz', x=np.zeros(1))
        np.savez(d / f'cube-triple-play-v0-{i:03d}-val.npz', x=np.zeros(1))
    found = files.find_dataset_files('cube-triple-play-singletask-task1-v0', str(tmp_path))
    assert found.sharded and len(found.train) == 10
    assert [os.path.basename(p) for p in found.train] == [f'cube-triple-play-v0-{i:03d}.npz' for i in range(10)]
    assert found.val.endswith('cube-triple-play-v0-000-val.npz')
    # standard=True asks for the 1M file instead (missing here).
    with pytest.raises(files.DatasetMissingError, match='cube-triple-play-v0.npz'):
        files.find_dataset_files('cube-triple-play-singletask-task1-v0', str(tmp_path), standard=True)


# --------------------------------------------------------------------------------------------
# A tiny puzzle-3x3 pair through the loading path (relabeling computable from button_states).
# --------------------------------------------------------------------------------------------

PUZZLE = 'puzzle-3x3-play-singletask-task1-v0'
# Mismatched buttons per raw row; two trajectories of 6 raw rows (the last row of each is dropped).
MISMATCH = [3, 2, 1, 0, 0, 5, 9, 1, 0, 0, 2, 4]


@pytest.fixture(scope='module')
def puzzle_env():
    env = loading.make_env(PUZZLE)
    env.reset()
    return env


def write_raw(path, mismatch, obs_dim, act_dim, target, traj_len, seed=0, offset=0):
    rng = np.random.default_rng(seed)
    n = len(mismatch)
    obs = rng.normal(size=(n, obs_dim)).astype(np.float32)
    obs[:, 0] = offset + np.arange(n)
    actions = rng.uniform(-0.5, 0.5, size=(n, act_dim)).astype(np.float32)
    actions[0, :3] = [1.0, -1.0, 2.5]
    actions[1, :2] = [-3.0, 1 - 1e-6]
    terminals = np.zeros(n, np.float32)
    terminals[traj_len - 1 :: traj_len] = 1.0
    buttons = np.tile(target, (n, 1)).astype(np.int64)
    for i, m in enumerate(mismatch):
        buttons[i, :m] = 1 - buttons[i, :m]
    np.savez(path, observations=obs, actions=actions, terminals=terminals, button_states=buttons)
    return obs, actions


def load_pair(dataset_dir, env, sparse=False):
    """The train and val files of PUZZLE, each read and relabelled as the runner reads a file."""
    found = files.find_dataset_files(PUZZLE, str(dataset_dir))
    return [loading.load_shard_tasks(p, [PUZZLE], [env], sparse) for p in (found.train[0], found.val)]


def test_load_puzzle(tmp_path, puzzle_env):
    target = puzzle_env.unwrapped._target_button_states.copy()
    obs, actions = write_raw(tmp_path / 'puzzle-3x3-play-v0.npz', MISMATCH, 55, 5, target, 6)
    write_raw(tmp_path / 'puzzle-3x3-play-v0-val.npz', MISMATCH[:6], 55, 5, target, 6, seed=1)
    keep = [i for i in range(12) if i not in (5, 11)]  # ogbench drops each trajectory's last row

    train, val = load_pair(tmp_path, puzzle_env)
    assert set(train) == set(loading.KEYS) and all(v.dtype == np.float32 for v in train.values())
    expected_r = -np.array([MISMATCH[i] for i in keep], np.float32)
    assert train['rewards'].shape == train['masks'].shape == (1, 10)  # one task
    np.testing.assert_array_equal(train['rewards'][0], expected_r)  # (subgoals met) - (subgoals)
    np.testing.assert_array_equal(train['masks'][0], (expected_r != 0).astype(np.float32))
    np.testing.assert_array_equal(train['terminals'], [0, 0, 0, 0, 1, 0, 0, 0, 0, 1])
    np.testing.assert_array_equal(train['observations'], obs[keep])
    np.testing.assert_array_equal(train['next_observations'], obs[[i + 1 for i in keep]])
    hi, lo = np.float32(1 - EPS), np.float32(-1 + EPS)
    np.testing.assert_array_equal(train['actions'][0, :3], [hi, lo, hi])
    np.testing.assert_array_equal(train['actions'][1, :2], [lo, hi])
    np.testing.assert_array_equal(train['actions'], np.clip(actions[keep], -1 + EPS, 1 - EPS).astype(np.float32))
    assert train['actions'].max() <= 1 - EPS and train['actions'].min() >= -1 + EPS
    assert val['rewards'].shape == (1, 5)

    train_s, val_s = load_pair(tmp_path, puzzle_env, sparse=True)
    np.testing.assert_array_equal(train_s['rewards'][0], np.where(expected_r != 0, -1.0, 0.0))
    np.testing.assert_array_equal(train_s['masks'], train['masks'])
    np.testing.assert_array_equal(val_s['rewards'][0], [-1, -1, -1, 0, 0])

    # Into the chunk sampler, through the training loop's window (which relabels with the env given).
    w = loading.ShardWindow([PUZZLE], str(tmp_path), env=[puzzle_env])
    assert w.envs == (puzzle_env,) and w.fits
    cd = w.data
    for k in loading.KEYS:
        np.testing.assert_array_equal(np.asarray(getattr(cd, k)), train[k])
    assert int(cd.size) == 10 and cd.observations.shape == (10, 55)
    b = chunks.gather_chunks(cd, np.array([0, 3]), 5, 0.5, task=0)
    # start 0: rows 0..4 valid (trajectory end at row 4): R = -3 -1 -0.25 + 0 + 0
    np.testing.assert_allclose(np.asarray(b.rewards), [-3 - 1 - 0.25, 0.0])
    np.testing.assert_array_equal(np.asarray(b.valid), [1.0, 0.0])
    np.testing.assert_array_equal(np.asarray(b.masks), [0.0, 0.0])


def test_postprocess_and_sparsify():
    d = dict(
        observations=np.zeros((3, 2)),
        next_observations=np.ones((3, 2)),
        actions=np.array([[1.0, -1.0], [0.3, 7.0], [-2.0, 0.0]]),
        rewards=np.array([-2.0, 0.0, -1.0]),
        masks=np.array([1.0, 0.0, 1.0]),
        terminals=np.array([0.0, 0.0, 1.0]),
        qpos=np.zeros((3, 4)),
    )
    out = loading.postprocess(d, sparse=True)
    assert set(out) == set(loading.KEYS)
    np.testing.assert_array_equal(out['rewards'], [-1.0, 0.0, -1.0])
    np.testing.assert_array_equal(out['actions'], np.float32([[1 - EPS, -1 + EPS], [0.3, 1 - EPS], [-1 + EPS, 0]]))
    np.testing.assert_array_equal(loading.postprocess(d)['rewards'], [-2.0, 0.0, -1.0])
    with pytest.raises(names.DataError, match='masks'):
        loading.postprocess({k: v for k, v in d.items() if k != 'masks'})


# --------------------------------------------------------------------------------------------
# Shards (cube-triple 10M layout) and the rotating window.
# --------------------------------------------------------------------------------------------

TRIPLE = 'cube-triple-play-singletask-task2-v0'
SHARD_RAW = 8  # two trajectories of 4 raw rows -> 6 transitions per shard


@pytest.fixture(scope='module')
def triple(tmp_path_factory):
    root = tmp_path_factory.mktemp('ogb')
    d = root / 'cube-triple-play-10m-v0'
    d.mkdir()
    env = loading.make_env(TRIPLE)
    env.reset()
    targets = env.unwrapped._data.mocap_pos.copy()
    rng = np.random.default_rng(0)
    for s in range(10):
        obs = rng.normal(size=(SHARD_RAW, 46)).astype(np.float32)
        obs[:, 0] = 100 * s + np.arange(SHARD_RAW)
        qpos = np.zeros((SHARD_RAW, 35), np.float32)  # cubes far from the targets: reward -3
        for c in range(3):
            qpos[1, 14 + 7 * c : 17 + 7 * c] = targets[c]  # row 1: all three cubes placed: reward 0
        qpos[2, 14:17] = targets[0]  # row 2: one cube placed: reward -2
        np.savez(
            d / f'cube-triple-play-v0-{s:03d}.npz',
            observations=obs,
            actions=rng.uniform(-1.5, 1.5, size=(SHARD_RAW, 5)).astype(np.float32),
            terminals=np.tile([0, 0, 0, 1], 2).astype(np.float32),
            qpos=qpos,
            qvel=np.zeros((SHARD_RAW, 30), np.float32),
        )
    return root, env


def test_load_shards(triple):
    root, env = triple
    found = files.find_dataset_files(TRIPLE, str(root))
    assert found.sharded and found.val is None
    train = loading.load_shards([found.train[0], found.train[3]], [TRIPLE], [env])
    assert train['rewards'].shape == (1, 12)
    np.testing.assert_array_equal(train['observations'][:, 0], [0, 1, 2, 4, 5, 6, 300, 301, 302, 304, 305, 306])
    np.testing.assert_array_equal(train['rewards'][0, :3], [-3, 0, -2])
    np.testing.assert_array_equal(train['masks'][0, :3], [1, 0, 1])
    np.testing.assert_array_equal(train['terminals'], np.tile([0, 0, 1], 4))
    assert np.abs(train['actions']).max() <= 1 - EPS
    # Header-based size: 8 raw rows per shard counted (upper bound of the 6 transitions).
    per_shard = chunks.chunk_data_nbytes(SHARD_RAW, 46, 5)
    assert loading.dataset_nbytes(TRIPLE, str(root)) == 10 * per_shard
    assert loading.dataset_nbytes(TRIPLE, str(root), per_shard=True) == per_shard
    actual = chunks.tree_nbytes(loading.to_device(train))
    assert 2 * chunks.chunk_data_nbytes(6, 46, 5) + 4 == actual <= 2 * per_shard


def test_shard_window_rotation(triple):
    root, env = triple
    w = loading.ShardWindow([TRIPLE], str(root), env=[env], shards_per_window=4, rotate_every=10)
    assert w.num_windows == 3 and not w.fits
    seen = {}
    for step in [0, 9, 10, 25, 30, 45]:
        d = w.data_at(step)
        first = sorted(set((np.asarray(d.observations[: int(d.size), 0]) // 100).astype(int)))
        seen[step] = (first, int(d.size), d.observations.shape)
    assert seen[0][0] == [0, 1, 2, 3] and seen[0][1] == 24
    assert seen[9][0] == [0, 1, 2, 3]
    assert seen[10][0] == [4, 5, 6, 7]
    assert seen[25][0] == [8, 9] and seen[25][1] == 12
    assert seen[30][0] == [0, 1, 2, 3] and seen[45][0] == [4, 5, 6, 7]
    assert len({s[2] for s in seen.values()}) == 1  # one padded shape: no recompilation
    # The padding of the short window is never sampled.
    d = w.data_at(25)
    b = jax.jit(chunks.sample_chunks, static_argnums=(2, 3))(d, jax.random.PRNGKey(0), 512, 5, 0.99, 0)
    assert set((np.asarray(b.observations[:, 0]) // 100).astype(int)) == {8, 9}
    assert w.nbytes() == 4 * chunks.chunk_data_nbytes(SHARD_RAW, 46, 5)


def test_shard_window_budget(triple):
    root, env = triple
    per_shard = chunks.chunk_data_nbytes(SHARD_RAW, 46, 5)
    w = loading.ShardWindow([TRIPLE], str(root), env=[env], budget_bytes=int(2.5 * per_shard), rotate_every=5)
    assert w.shards_per_window == 2 and w.num_windows == 5
    w = loading.ShardWindow([TRIPLE], str(root), env=[env], budget_bytes=100 * per_shard)
    assert w.fits and w.total_nbytes() == 10 * per_shard
    d = w.data
    assert int(d.size) == 60 and d.observations.shape[0] == 60
    assert w.data_at(10**6) is d  # never rotates
