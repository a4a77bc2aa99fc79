"""Tests for offline regeneration of OGBench play datasets (`experiments.data.generation` and its command,
`python -m experiments.make_dataset`).

Expectations are derived independently of the generator: from the episode sizes, from the
environment's own MuJoCo model (joint addresses, observation layout) and from ogbench's task
definitions (`task_infos`), not from the generator's own output.
"""

import hashlib
import os
import subprocess
import sys
import urllib.request
import warnings

import numpy as np
import pytest

from experiments.data import collection, generation
from experiments.data import generation_plan as plan

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DOMAINS = ['cube-single', 'cube-double', 'cube-triple', 'cube-quadruple', 'scene', 'puzzle-3x3', 'puzzle-4x4']
N_TRAIN = 2
N_VAL = 1
LENGTH = 60  # Rows per episode.
VAL_FRACTION = 0.5  # round(0.5 * 2) = 1 val episode.

pytestmark = pytest.mark.filterwarnings('ignore')


def _sha256(path):
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def _generate(domain, directory, **kwargs):
    args = dict(
        dataset_dir=str(directory),
        num_episodes=N_TRAIN,
        episode_length=LENGTH,
        val_fraction=VAL_FRACTION,
        seed=0,
        num_workers=1,
        progress=False,
    )
    args.update(kwargs)
    return generation.generate_dataset(f'{domain}-play-v0', **args)


@pytest.fixture(scope='module')
def tiny_dirs(tmp_path_factory):
    """One tiny dataset per domain, generated once for the module."""
    dirs = {}
    for domain in DOMAINS:
        directory = tmp_path_factory.mktemp(domain)
        written = _generate(domain, directory)
        assert sorted(written) == sorted(
            [str(directory / f'{domain}-play-v0.npz'), str(directory / f'{domain}-play-v0-val.npz')]
        )
        dirs[domain] = directory
    return dirs


@pytest.fixture
def no_download(monkeypatch):
    """Any download attempt by ogbench fails the test."""

    def fail(*args, **kwargs):
        raise AssertionError(f'ogbench tried to download: {args}')

    monkeypatch.setattr(urllib.request, 'urlopen', fail)


def _load(env_name, **kwargs):
    import ogbench

    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return ogbench.make_env_and_datasets(env_name, **kwargs)


@pytest.mark.parametrize('domain', DOMAINS)
def test_layout_and_ogbench_loading(domain, tiny_dirs, no_download):
    directory = tiny_dirs[domain]
    env, train, val = _load(f'{domain}-play-singletask-task1-v0', dataset_dir=str(directory))
    model = env.unwrapped._model
    has_buttons = domain.startswith(('scene', 'puzzle'))

    for path, n_eps, loaded in (
        (directory / f'{domain}-play-v0.npz', N_TRAIN, train),
        (directory / f'{domain}-play-v0-val.npz', N_VAL, val),
    ):
        rows = n_eps * LENGTH
        with np.load(path) as f:
            raw = {k: f[k] for k in f.files}
        expected_keys = ['observations', 'actions', 'terminals', 'qpos', 'qvel']
        if has_buttons:
            expected_keys.append('button_states')
        assert list(raw) == expected_keys

        # Dtypes and shapes of the official files.
        assert raw['observations'].dtype == np.float32
        assert raw['observations'].shape == (rows, *env.observation_space.shape)
        assert raw['actions'].dtype == np.float32 and raw['actions'].shape == (rows, 5)
        assert raw['terminals'].dtype == np.bool_ and raw['terminals'].shape == (rows,)
        assert raw['qpos'].dtype == np.float32 and raw['qpos'].shape == (rows, model.nq)
        assert raw['qvel'].dtype == np.float32 and raw['qvel'].shape == (rows, model.nv)
        if has_buttons:
            assert raw['button_states'].dtype == np.int64
            assert raw['button_states'].shape == (rows, env.unwrapped._num_buttons)
        assert np.all(np.isfinite(raw['observations'])) and np.all(np.abs(raw['actions']) <= 1.0)
        assert raw['actions'].std() > 0

        # Terminals exactly at the last row of each episode.
        np.testing.assert_array_equal(np.flatnonzero(raw['terminals']), np.arange(1, n_eps + 1) * LENGTH - 1)

        # qpos row t is the state of observation row t: the first 6 observation entries are the arm
        # joint positions, which sit at the arm joints' qpos addresses in the MuJoCo model.
        arm_addr = model.jnt_qposadr[[model.joint(f'ur5e/{j}').id for j in (
            'shoulder_pan_joint', 'shoulder_lift_joint', 'elbow_joint',
            'wrist_1_joint', 'wrist_2_joint', 'wrist_3_joint')]]
        np.testing.assert_array_equal(raw['observations'][:, :6], raw['qpos'][:, arm_addr])
        if domain.startswith('puzzle'):
            # Observation layout: 19 proprio entries, then per button [one-hot(2), pos, vel].
            n_buttons = raw['button_states'].shape[1]
            onehots = raw['observations'][:, 19:].reshape(rows, n_buttons, 4)[:, :, :2]
            np.testing.assert_array_equal(onehots.argmax(-1), raw['button_states'])

        # ogbench's loader: one transition less per episode, next_observations shifted by one row.
        keep = ~raw['terminals']
        n_trans = n_eps * (LENGTH - 1)
        assert loaded['observations'].shape == (n_trans, raw['observations'].shape[1])
        np.testing.assert_array_equal(loaded['observations'], raw['observations'][keep])
        np.testing.assert_array_equal(loaded['next_observations'], raw['observations'][np.roll(keep, 1)])
        np.testing.assert_array_equal(np.flatnonzero(loaded['terminals']), np.arange(1, n_eps + 1) * (LENGTH - 1) - 1)
        # Relabeled task-1 rewards: integer number of unmet subgoals, mask 0 exactly at reward 0.
        assert loaded['rewards'].shape == (n_trans,) and loaded['masks'].shape == (n_trans,)
        assert np.all(loaded['rewards'] <= 0) and np.all(loaded['rewards'] == np.round(loaded['rewards']))
        np.testing.assert_array_equal(loaded['masks'] == 0, loaded['rewards'] == 0)


def _expected_rewards(domain, env, raw):
    """Task rewards computed from the raw rows and ogbench's task definition (task_infos)."""
    unwrapped = env.unwrapped
    model = unwrapped._model
    info = unwrapped.cur_task_info
    successes = []
    if domain == 'puzzle-3x3':
        successes.append(raw['button_states'] == info['goal_button_states'][None])
    elif domain == 'scene':
        goal = info['goal']
        addr = model.jnt_qposadr[model.joint('object_joint_0').id]
        cube = np.linalg.norm(raw['qpos'][:, addr : addr + 3] - goal['block_xyzs'][0], axis=-1) <= 0.04
        drawer = raw['qpos'][:, model.jnt_qposadr[model.joint('drawer_slide').id]]
        window = raw['qpos'][:, model.jnt_qposadr[model.joint('window_slide').id]]
        successes += [
            cube[:, None],
            raw['button_states'] == goal['button_states'][None],
            (np.abs(drawer - goal['drawer_pos']) <= 0.04)[:, None],
            (np.abs(window - goal['window_pos']) <= 0.04)[:, None],
        ]
    elif domain == 'cube-single':
        addr = model.jnt_qposadr[model.joint('object_joint_0').id]
        dist = np.linalg.norm(raw['qpos'][:, addr : addr + 3] - info['goal_xyzs'][0], axis=-1)
        successes.append((dist <= 0.04)[:, None])
    successes = np.concatenate(successes, axis=-1)
    return (successes.sum(-1) - successes.shape[-1]).astype(np.float32)


@pytest.mark.parametrize('domain', ['puzzle-3x3', 'scene', 'cube-single'])
def test_relabel_all_five_tasks(domain, tiny_dirs, no_download):
    directory = tiny_dirs[domain]
    with np.load(directory / f'{domain}-play-v0.npz') as f:
        raw = {k: f[k] for k in f.files}
    keep = ~raw['terminals']
    raw = {k: v[keep] for k, v in raw.items()}
    distinct = set()
    for task in range(1, 6):
        env, train, _ = _load(f'{domain}-play-singletask-task{task}-v0', dataset_dir=str(directory))
        assert env.unwrapped.cur_task_id == task
        expected = _expected_rewards(domain, env, raw)
        np.testing.assert_array_equal(train['rewards'], expected)
        np.testing.assert_array_equal(train['masks'], (expected != 0).astype(np.float32))
        distinct.add(tuple(np.unique(expected)))
    if domain != 'cube-single':
        # The tiny data is rich enough that the check is not vacuous.
        assert any(len(values) > 1 for values in distinct)


def test_same_seed_same_bytes_any_worker_count(tiny_dirs, tmp_path):
    domain = 'cube-single'
    ref = tiny_dirs[domain]
    _generate(domain, tmp_path / 'w2', num_workers=2, chunk_episodes=1)
    for name in (f'{domain}-play-v0.npz', f'{domain}-play-v0-val.npz'):
        assert _sha256(tmp_path / 'w2' / name) == _sha256(ref / name)
    assert sorted(os.listdir(tmp_path / 'w2')) == sorted([f'{domain}-play-v0.npz', f'{domain}-play-v0-val.npz',
                                                         f'{domain}-play-v0.generation.json'])  # how it was made

    _generate(domain, tmp_path / 's1', seed=1)
    with np.load(ref / f'{domain}-play-v0.npz') as a, np.load(tmp_path / 's1' / f'{domain}-play-v0.npz') as b:
        assert not np.array_equal(a['observations'], b['observations'])
        np.testing.assert_array_equal(a['terminals'], b['terminals'])


def test_existing_files_are_skipped_unless_overwrite(tmp_path):
    (tmp_path / 'cube-single-play-v0.npz').write_bytes(b'old')
    (tmp_path / 'cube-single-play-v0-val.npz').write_bytes(b'old')
    assert _generate('cube-single', tmp_path, episode_length=10) == []
    assert (tmp_path / 'cube-single-play-v0.npz').read_bytes() == b'old'


@pytest.mark.parametrize('num_workers', [1, 2])
def test_interrupted_write_leaves_no_final_file(tmp_path, monkeypatch, num_workers):
    real_collect = collection._collect_chunk

    def failing_collect(task):
        if task.split_id == 1:  # The val chunk fails after the train chunks have been written.
            raise RuntimeError('simulated worker crash')
        return real_collect(task)

    monkeypatch.setattr(collection, '_collect_chunk', failing_collect)
    # A previous complete file pair must survive a failed overwrite untouched.
    (tmp_path / 'keep').mkdir()
    old = tmp_path / 'keep' / 'cube-single-play-v0.npz'
    old.write_bytes(b'previous')
    with pytest.raises(RuntimeError, match='simulated worker crash'):
        # 'fork' so that the worker processes see the patched function.
        _generate('cube-single', tmp_path / 'new', episode_length=20, num_workers=num_workers,
                  chunk_episodes=1, start_method='fork')
    with pytest.raises(RuntimeError, match='simulated worker crash'):
        _generate('cube-single', tmp_path / 'keep', episode_length=20, num_workers=num_workers,
                  chunk_episodes=1, start_method='fork', overwrite=True)
    assert os.listdir(tmp_path / 'new') == []  # No final file and no temporary left behind.
    assert os.listdir(tmp_path / 'keep') == ['cube-single-play-v0.npz']
    assert old.read_bytes() == b'previous'


def test_crash_while_writing_a_final_file_leaves_nothing(tmp_path, monkeypatch):
    real_write = collection._write_npz
    calls = []

    def crashing_write(path, arrays, compress):
        calls.append(os.path.basename(path))
        if compress:  # Worker parts are uncompressed; the merged files are compressed.
            with open(path, 'wb') as f:
                f.write(b'PK\x03\x04 half-written')
            raise OSError('simulated disk full')
        return real_write(path, arrays, compress)

    monkeypatch.setattr(collection, '_write_npz', crashing_write)
    with pytest.raises(OSError, match='simulated disk full'):
        _generate('cube-single', tmp_path, episode_length=20)
    assert len(calls) == 4  # Three worker parts (2 train episodes, 1 val), then the crashing merge.
    assert os.listdir(tmp_path) == []


def test_sharded_layout(tmp_path, no_download):
    name = 'cube-single-play-100m-v0'
    kw = dict(dataset_dir=str(tmp_path / 'all'), num_episodes=1, episode_length=20, val_fraction=0.1,
              progress=False)
    written = generation.generate_dataset(name, num_shards=2, **kw)
    shard_dir = tmp_path / 'all' / name
    expected = ['cube-single-play-v0-000-val.npz', 'cube-single-play-v0-000.npz',
                'cube-single-play-v0-001-val.npz', 'cube-single-play-v0-001.npz']
    records = ['cube-single-play-v0-000.generation.json', 'cube-single-play-v0-001.generation.json']
    assert sorted(os.listdir(shard_dir)) == sorted(expected + records)
    assert sorted(written) == sorted(str(shard_dir / n) for n in expected)
    assert plan.dataset_file_paths(name, str(tmp_path / 'all'), num_shards=2) == [
        (str(shard_dir / 'cube-single-play-v0-000.npz'), str(shard_dir / 'cube-single-play-v0-000-val.npz')),
        (str(shard_dir / 'cube-single-play-v0-001.npz'), str(shard_dir / 'cube-single-play-v0-001-val.npz')),
    ]
    with np.load(shard_dir / expected[1]) as a, np.load(shard_dir / expected[3]) as b:
        assert a['observations'].shape == (20, 28)
        assert not np.array_equal(a['observations'], b['observations'])

    # A shard written on its own is identical to the same shard written in a batch.
    kw['dataset_dir'] = str(tmp_path / 'one')
    generation.generate_dataset(name, num_shards=1, shard_start=1, **kw)
    assert os.listdir(tmp_path / 'one' / name) != []
    for n in expected[2:]:
        assert _sha256(tmp_path / 'one' / name / n) == _sha256(shard_dir / n)

    # Each shard loads through ogbench's loader from its path (the shard-loader convention).
    _, train, val = _load('cube-single-play-singletask-task2-v0', dataset_path=str(shard_dir / expected[1]))
    assert train['observations'].shape == (19, 28) and val['observations'].shape == (19, 28)


def test_defaults_match_official_sizes():
    assert plan.DEFAULT_EPISODE_LENGTH == 1001
    for name, n in [('cube-single-play-v0', 1000), ('cube-double-play-v0', 1000), ('scene-play-v0', 1000),
                    ('puzzle-3x3-play-v0', 1000), ('puzzle-4x4-play-v0', 1000),
                    ('cube-triple-play-v0', 3000), ('cube-quadruple-play-v0', 5000),
                    ('cube-triple-play-100m-v0', 1000), ('puzzle-4x4-play-100m-v0', 1000)]:
        assert plan.default_num_episodes(name) == n
    assert plan.num_val_episodes(1000, 0.1) == 100
    assert plan.num_val_episodes(2, 0.1) == 1
    assert len(plan.dataset_file_paths('cube-quadruple-play-100m-v0', '/d')) == 100
    assert plan.dataset_file_paths('cube-quadruple-play-100m-v0', '/d')[-1] == (
        '/d/cube-quadruple-play-100m-v0/cube-quadruple-play-v0-099.npz',
        '/d/cube-quadruple-play-100m-v0/cube-quadruple-play-v0-099-val.npz',
    )


def test_name_parsing():
    spec = plan.parse_dataset_name('cube-double-play-singletask-task2-v0')
    assert (spec.dataset_name, spec.env_name, spec.sharded) == ('cube-double-play-v0', 'cube-double-v0', False)
    assert plan.parse_dataset_name('puzzle-4x4-play-singletask-v0').dataset_name == 'puzzle-4x4-play-v0'
    spec = plan.parse_dataset_name('cube-triple-play-100m-v0')
    assert (spec.env_name, spec.sharded, spec.file_stem) == ('cube-triple-v0', True, 'cube-triple-play-v0')
    for bad in ['cube-double-noisy-v0', 'visual-cube-double-play-v0', 'cube-nine-play-v0', 'scene-play']:
        with pytest.raises(plan.UnsupportedDatasetError):
            plan.parse_dataset_name(bad)
    with pytest.raises(plan.MakeDatasetError):
        generation.generate_dataset('cube-double-play-v0', '/nonexistent', num_shards=2)


@pytest.mark.parametrize('name', ['antmaze-large-navigate-v0', 'humanoidmaze-medium-navigate-singletask-task1-v0'])
def test_navigation_datasets_give_a_clear_error(name, tmp_path):
    with pytest.raises(plan.UnsupportedDatasetError, match='expert'):
        generation.generate_dataset(name, str(tmp_path))
    assert os.listdir(tmp_path) == []


def test_cli_navigation_error_is_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, '-m', 'experiments.make_dataset', '--dataset=antmaze-giant-navigate-v0',
         f'--dataset_dir={tmp_path}'],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert 'antmaze-giant-navigate-v0' in lines[0] and 'internet' in lines[0]
    assert 'Traceback' not in proc.stderr


# ----------------------------------------------------------------------------------------------
# A killed generation: the workers die with their parent, and the next run cleans up after it.

# Big enough that orphaned workers would still be collecting 2 s after the kill (about 3000 rows).
_KILL_ARGS = dict(num_episodes=30, episode_length=100, val_fraction=0.1, seed=3, chunk_episodes=1)


def _proc_state(pid):
    """The /proc state letter of pid, or None when the process no longer exists."""
    try:
        with open(f'/proc/{pid}/stat') as f:
            return f.read().rsplit(')', 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def _children(pid):
    out = []
    for name in os.listdir('/proc'):
        if name.isdigit():
            try:
                with open(f'/proc/{name}/stat') as f:
                    if int(f.read().rsplit(')', 1)[1].split()[1]) == pid:
                        out.append(int(name))
            except (OSError, IndexError, ValueError):
                pass
    return out


def _alive(pid):
    return _proc_state(pid) not in (None, 'Z')


def _hidden(directory):
    return sorted(n for n in os.listdir(directory) if n.startswith('.'))


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='reads /proc')
def test_workers_die_with_a_killed_parent_and_the_next_run_cleans_up(tmp_path):
    import signal
    import time

    out = tmp_path / 'data'
    out.mkdir()
    script = (
        'import sys; from experiments.data.generation import generate_dataset; '
        f'generate_dataset("cube-single-play-v0", sys.argv[1], num_workers=2, progress=False, **{_KILL_ARGS!r})'
    )
    parent = subprocess.Popen([sys.executable, '-c', script, str(out)], cwd=REPO_ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers = []
    try:
        deadline = time.time() + 180
        while not any(n.endswith('.part.tmp') for n in os.listdir(out)):  # the workers are writing
            assert parent.poll() is None and time.time() < deadline, 'no part file appeared'
            time.sleep(0.02)
        workers = _children(parent.pid)
        assert len(workers) >= 2
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        deadline = time.time() + 2
        while any(_alive(p) for p in workers) and time.time() < deadline:
            time.sleep(0.05)
        assert not [p for p in workers if _alive(p)], 'worker processes outlived their killed parent'
    finally:
        for p in workers:  # Never leave orphans behind, even when the check fails.
            if _alive(p):
                os.kill(p, signal.SIGKILL)
        if parent.poll() is None:
            parent.kill()
    stale = _hidden(out)
    assert stale and not any(n.endswith('.npz') for n in os.listdir(out))  # the kill left part files
    time.sleep(1.0)
    assert _hidden(out) == stale  # and nothing writes new ones

    # The next run removes the stale part files and writes the same bytes as an uninterrupted run
    # (the same bytes for any worker count: test_same_seed_same_bytes_any_worker_count).
    written = generation.generate_dataset('cube-single-play-v0', str(out), num_workers=2, progress=False, **_KILL_ARGS)
    assert len(written) == 2
    assert sorted(os.listdir(out)) == ['cube-single-play-v0-val.npz', 'cube-single-play-v0.generation.json',
                                       'cube-single-play-v0.npz']
    generation.generate_dataset('cube-single-play-v0', str(tmp_path / 'ref'), num_workers=2, progress=False,
                                **_KILL_ARGS)
    for name in ('cube-single-play-v0.npz', 'cube-single-play-v0-val.npz'):
        assert _sha256(out / name) == _sha256(tmp_path / 'ref' / name)


def test_stale_temporaries_of_live_processes_and_other_datasets_are_kept(tmp_path):
    dead = subprocess.Popen([sys.executable, '-c', 'pass'])
    dead.wait()  # a pid that no longer exists
    names = {
        f'.cube-single-play-v0.npz.{dead.pid}-0123abcd.0-000001.part.tmp': False,  # stale part: removed
        f'.cube-single-play-v0-val.npz.{dead.pid}-0123abcd.tmp': False,  # stale merge file: removed
        f'.cube-single-play-v0.npz.{os.getppid()}-0123abcd.0-000001.part.tmp': True,  # live writer
        f'.cube-double-play-v0.npz.{dead.pid}-0123abcd.0-000001.part.tmp': True,  # another dataset
        '.unrelated.tmp': True,
    }
    for name in names:
        (tmp_path / name).write_bytes(b'x')
    units = plan.plan_units(plan.parse_dataset_name('cube-single-play-v0'), str(tmp_path), None, 0)
    removed = generation.remove_stale_temporaries(units)
    assert sorted(os.path.basename(p) for p in removed) == sorted(n for n, keep in names.items() if not keep)
    assert sorted(os.listdir(tmp_path)) == sorted(n for n, keep in names.items() if keep)


def test_ten_m_layout_equals_the_first_shards_of_the_100m_release(tmp_path):
    """`<domain>-play-10m-v0` (named by the launcher's missing-data message) is shards 000-009."""
    spec = plan.parse_dataset_name('cube-single-play-10m-v0')
    assert (spec.sharded, spec.file_stem, spec.max_shards) == (True, 'cube-single-play-v0', 10)
    paths = plan.dataset_file_paths('cube-single-play-10m-v0', '/d')
    assert len(paths) == 10 and paths[-1][0] == '/d/cube-single-play-10m-v0/cube-single-play-v0-009.npz'
    with pytest.raises(plan.MakeDatasetError, match='shards 0..9'):
        plan.dataset_file_paths('cube-single-play-10m-v0', '/d', num_shards=2, shard_start=9)
    kw = dict(num_episodes=1, episode_length=20, val_fraction=0.1, progress=False, num_shards=1, shard_start=1)
    generation.generate_dataset('cube-single-play-10m-v0', str(tmp_path), **kw)
    generation.generate_dataset('cube-single-play-100m-v0', str(tmp_path), **kw)
    for name in ('cube-single-play-v0-001.npz', 'cube-single-play-v0-001-val.npz'):
        assert _sha256(tmp_path / 'cube-single-play-10m-v0' / name) == \
            _sha256(tmp_path / 'cube-single-play-100m-v0' / name)
