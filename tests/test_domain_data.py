"""Domain windows (several single tasks of one domain in one program): the raw data read once per
load, relabelled per task into (T, N) rewards and masks that equal what ogbench's own loader gives
each task exactly, everything else held once; device bytes; the sharded layout; env-name validation."""

import numpy as np
import ogbench
import pytest
from ogbench.relabel_utils import relabel_dataset

from experiments.data import loading
from experiments.data.names import DOMAINS, DataError, UnknownEnvError, domain_env_names, is_domain_name, parse_env_name
from trqam_jax import chunks

DOMAIN = 'cube-single-play'
# On the tiny generated data (tests/conftest.py) the cube reaches task 2's and task 4's goals at
# different rows (task 1, 3 and 5 never succeed there), so these two tasks' rewards differ.
TASKS = (2, 4)
SHARED = ('observations', 'actions', 'terminals', 'next_observations', 'steps_left', 'size')


def host(x):
    return np.asarray(x)


@pytest.fixture(scope='module')
def task_envs():
    """One env per task, re-seeded before each use (as `make_env` leaves a fresh one)."""
    return {t: loading.make_env(f'{DOMAIN}-singletask-task{t}-v0') for t in TASKS}


def fresh(envs, tasks):
    out = []
    for t in tasks:
        envs[t].reset(seed=0)  # the state make_env(name, seed=0) leaves
        out.append(envs[t])
    return out


def ogbench_task_data(name, dataset_dir, env, sparse=False):
    """One task's train data as `ogbench.make_env_and_datasets` loads the standard file, post-processed
    (conventions §9): the reference a domain window's row must equal."""
    train, _ = ogbench.make_env_and_datasets(name, dataset_dir=dataset_dir, dataset_only=True, cur_env=env)
    return loading.postprocess(train, sparse)


def ogbench_shard_data(path, name, env):
    """The same reference for one raw file of a sharded layout, read as ogbench reads a train file."""
    ds = ogbench.load_dataset(path, compact_dataset=False, add_info=True)
    relabel_dataset(parse_env_name(name).ogbench_env, env, ds)
    return loading.postprocess(ds)


@pytest.fixture
def count_reads(monkeypatch):
    calls = []
    real = ogbench.load_dataset

    def counting(path, *args, **kwargs):
        calls.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(ogbench, 'load_dataset', counting)
    return calls


def test_domain_window_equals_ogbench_per_task(dataset_dir, task_envs, count_reads):
    names = domain_env_names(DOMAIN, TASKS)
    singles = []
    for t, name in zip(TASKS, names):
        singles.append(loading.to_device(ogbench_task_data(name, dataset_dir, fresh(task_envs, [t])[0])))
        assert singles[-1].rewards.ndim == 1
    count_reads.clear()

    w = loading.ShardWindow(list(names), dataset_dir, env=fresh(task_envs, TASKS))
    assert w.env_names == names and w.num_tasks == 2 and w.fits
    d = w.data
    assert len(count_reads) == 1  # the raw file read once for both tasks
    n = int(d.size)
    assert n == 8 * 100 and d.rewards.shape == d.masks.shape == (2, n)
    for t, single in enumerate(singles):
        np.testing.assert_equal(host(d.rewards[t]).dtype, np.float32)
        assert np.array_equal(host(d.rewards[t]), host(single.rewards))
        assert np.array_equal(host(d.masks[t]), host(single.masks))
        for k in SHARED:
            assert np.array_equal(host(getattr(d, k)), host(getattr(single, k))), k
    # The two tasks' rows differ (else this test could not tell them apart) and both have successes.
    assert not np.array_equal(host(d.rewards[0]), host(d.rewards[1]))
    assert not np.array_equal(host(d.masks[0]), host(d.masks[1]))
    assert all((host(d.rewards[t]) == 0).any() for t in range(2))

    # Device bytes: the shared arrays once, plus one extra reward row and mask row (float32) per task.
    single_bytes, domain_bytes = chunks.tree_nbytes(singles[0]), chunks.tree_nbytes(d)
    assert domain_bytes == single_bytes + (2 - 1) * 2 * 4 * n
    assert domain_bytes < 2 * single_bytes
    assert single_bytes == chunks.chunk_data_nbytes(n, 28, 5) + 4  # + the () int32 size
    # The header bound (808 raw rows) counts both tasks' rewards and masks.
    assert w.total_nbytes() == w.nbytes() == chunks.chunk_data_nbytes(808, 28, 5, num_tasks=2)
    assert w.total_nbytes() == loading.dataset_nbytes(names[0], dataset_dir) + 2 * 4 * 808
    assert loading.dataset_nbytes(names[0], dataset_dir, num_tasks=2) == w.total_nbytes()

    # A list of one task is a domain window too: (1, N) rows, equal to ogbench's for that task.
    one_window = loading.ShardWindow([names[1]], dataset_dir, env=fresh(task_envs, TASKS[1:]))
    assert one_window.env_names == (names[1],) and one_window.num_tasks == 1
    one = one_window.data
    assert one.rewards.shape == (1, n)
    assert np.array_equal(host(one.rewards[0]), host(singles[1].rewards))
    assert np.array_equal(host(one.masks[0]), host(singles[1].masks))

    # The per-task samplers read each task's row of the shared data.
    starts = np.flatnonzero(host(d.rewards[0]) != host(d.rewards[1]))[:4]
    for t, single in enumerate(singles):
        got = chunks.gather_chunks(d, starts, 3, 0.9, task=t)
        want = chunks.gather_chunks(single, starts, 3, 0.9)
        assert np.array_equal(host(got.rewards), host(want.rewards))
        assert np.array_equal(host(got.masks), host(want.masks))


def test_load_shard_tasks_reads_once_and_sparsifies(dataset_dir, task_envs, count_reads):
    names = domain_env_names(DOMAIN, TASKS)
    path = f'{dataset_dir}/{DOMAIN}-v0.npz'
    out = loading.load_shard_tasks(path, names, fresh(task_envs, TASKS), sparse=True)
    assert len(count_reads) == 1
    assert out['rewards'].shape == out['masks'].shape == (2, out['terminals'].shape[0])
    assert set(np.unique(out['rewards'])) == {-1.0, 0.0}
    for t, (task, name) in enumerate(zip(TASKS, names)):
        single = ogbench_task_data(name, dataset_dir, fresh(task_envs, [task])[0], sparse=True)
        assert np.array_equal(out['rewards'][t], single['rewards'])
        assert np.array_equal(out['masks'][t], single['masks'])
        for k in ('observations', 'actions', 'terminals', 'next_observations'):
            assert np.array_equal(out[k], single[k])
    # The envs must be the tasks' own, in the order of the names.
    with pytest.raises(ValueError, match='order'):
        loading.load_shard_tasks(path, names, fresh(task_envs, TASKS[::-1]))
    with pytest.raises(ValueError, match='list of 2 envs'):
        loading.load_shard_tasks(path, names, fresh(task_envs, TASKS[:1]))


# --------------------------------------------------------------------------------------------
# Sharded layout (cube-triple 10M): per shard read once, relabelled per task, concatenated.
# --------------------------------------------------------------------------------------------

TRIPLE = 'cube-triple-play'
RAW = 8  # two trajectories of 4 raw rows -> 6 transitions per shard


@pytest.fixture(scope='module')
def triple(tmp_path_factory):
    root = tmp_path_factory.mktemp('ogb')
    d = root / f'{TRIPLE}-10m-v0'
    d.mkdir()
    names = domain_env_names(TRIPLE, (1, 2))
    envs = {t: loading.make_env(n) for t, n in zip((1, 2), names)}
    goals = [envs[t].unwrapped.task_infos[t - 1]['goal_xyzs'] for t in (1, 2)]
    rng = np.random.default_rng(0)
    for s in range(10):
        obs = rng.normal(size=(RAW, 46)).astype(np.float32)
        obs[:, 0] = 100 * s + np.arange(RAW)
        qpos = np.zeros((RAW, 35), np.float32)  # cubes far from every target
        for c in range(3):
            qpos[1 + s % 2, 14 + 7 * c : 17 + 7 * c] = goals[0][c]  # task 1 solved
        qpos[5, 14:17] = goals[1][0]  # one cube of task 2 placed
        np.savez(d / f'{TRIPLE}-v0-{s:03d}.npz', observations=obs,
                 actions=rng.uniform(-1.5, 1.5, size=(RAW, 5)).astype(np.float32),
                 terminals=np.tile([0, 0, 0, 1], 2).astype(np.float32), qpos=qpos,
                 qvel=np.zeros((RAW, 30), np.float32))
    return str(root), names, envs


def test_sharded_domain_window(triple, count_reads):
    root, names, envs = triple
    kw = dict(shards_per_window=4, rotate_every=10)
    singles = [loading.ShardWindow([n], root, env=fresh(envs, [t]), **kw) for t, n in zip((1, 2), names)]
    loads = []

    def load_fn(path, env_names, task_envs, sparse, eps):
        loads.append(env_names)
        return loading.load_shard_tasks(path, env_names, task_envs, sparse, eps)

    w = loading.ShardWindow(names, root, env=fresh(envs, (1, 2)), load_fn=load_fn, **kw)
    assert w.num_windows == 3 and w.num_tasks == 2
    assert w.nbytes() == 4 * chunks.chunk_data_nbytes(RAW, 46, 5, num_tasks=2)
    assert w.total_nbytes() == 10 * chunks.chunk_data_nbytes(RAW, 46, 5, num_tasks=2)
    for step, shards in [(0, 4), (10, 4), (20, 2), (30, 4)]:
        count_reads.clear()
        loads.clear()
        d = w.data_at(step)
        assert len(count_reads) == shards and loads == [names] * shards  # each shard read once
        assert int(d.size) == 6 * shards and d.rewards.shape == (2, 32)  # padded to the largest window (4 x 8)
        for t, single in enumerate(singles):
            s = single.data_at(step)
            assert np.array_equal(host(d.rewards[t]), host(s.rewards[0]))
            assert np.array_equal(host(d.masks[t]), host(s.masks[0]))
            for k in SHARED:
                assert np.array_equal(host(getattr(d, k)), host(getattr(s, k))), k
        assert not np.array_equal(host(d.rewards[0]), host(d.rewards[1]))
        # Each task's rows are what ogbench's reading and relabelling of the window's files give.
        for t, name in enumerate(names):
            ref = [ogbench_shard_data(p, name, envs[t + 1]) for p in w.windows[w.window_index(step)]]
            for key, got in (('rewards', d.rewards[t]), ('masks', d.masks[t])):
                assert np.array_equal(host(got)[:int(d.size)], np.concatenate([r[key] for r in ref])), key
    np.testing.assert_array_equal(host(d.rewards[:, :3]), [[-3, 0, -3], [-3, -3, -3]])


# --------------------------------------------------------------------------------------------
# Names.
# --------------------------------------------------------------------------------------------


def test_domain_env_names():
    assert domain_env_names('cube-double-play') == tuple(
        f'cube-double-play-singletask-task{i}-v0' for i in range(1, 6))
    assert domain_env_names('puzzle-4x4-play', [3, 1]) == (
        'puzzle-4x4-play-singletask-task3-v0', 'puzzle-4x4-play-singletask-task1-v0')
    for name in domain_env_names('antmaze-giant-navigate', np.arange(1, 3)):
        assert parse_env_name(name).domain == 'antmaze-giant-navigate'
    assert is_domain_name('cube-single-play')
    for name in ('cube-single-play-singletask-task1-v0', 'cube-single', 'cube-single-play-v0', '', None, 3):
        assert not is_domain_name(name)


@pytest.mark.parametrize('domain', ['cube-octuple-play', 'cube-single-play-singletask-task1-v0', ''])
def test_domain_env_names_unknown_domain(domain):
    with pytest.raises(UnknownEnvError) as e:
        domain_env_names(domain)
    assert 'valid domains' in str(e.value) and all(d in str(e.value) for d in DOMAINS)


@pytest.mark.parametrize('tasks, match', [([0], 'tasks are the integers 1..5'), ([1, 6], 'tasks are'),
                                          (['2'], 'tasks are'), ([True], 'tasks are'), ([1.0], 'tasks are'),
                                          ([2, 2], 'given twice'), ([], 'no tasks')])
def test_domain_env_names_bad_tasks(tasks, match):
    with pytest.raises(DataError, match=match) as e:
        domain_env_names('cube-double-play', tasks)
    msg = str(e.value)
    assert '\n' not in msg and 'cube-double-play' in msg
    assert 'tasks=(1, 3)' in msg or 'list each task once' in msg  # the fix


@pytest.mark.parametrize('names, match', [
    (['cube-single-play-singletask-task1-v0', 'cube-double-play-singletask-task2-v0'], 'ONE domain'),
    (['cube-single-play-singletask-task1-v0', 'cube-single-play-singletask-task1-v0'], 'given twice'),
    (['cube-single-play-singletask-v0', 'cube-single-play-singletask-task2-v0'], 'selects no task'),
    ([], 'at least one task'),
    (['cube-single-play-singletask-task9-v0'], 'task1..task5'),
])
def test_domain_window_rejects_bad_names_before_reading(names, match, tmp_path):
    with pytest.raises(DataError, match=match):
        loading.ShardWindow(names, str(tmp_path / 'nothing-here'))


def test_domain_window_env_list_must_match(dataset_dir, task_envs):
    names = list(domain_env_names(DOMAIN, TASKS))
    with pytest.raises(ValueError, match='list of 2 envs'):
        loading.ShardWindow(names, dataset_dir, env=task_envs[TASKS[0]])
    with pytest.raises(ValueError, match='order'):
        loading.ShardWindow(names, dataset_dir, env=[task_envs[t] for t in TASKS[::-1]])
