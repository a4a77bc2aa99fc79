r"""Regenerate OGBench manipulation `play` datasets offline with the scripted oracles.

OGBench downloads its datasets from the internet. The manipulation datasets (cube, scene, puzzle)
were collected by the scripted "plan" oracles that ship inside the pip package
(`ogbench.manipspace.oracles.plan`), so they can be regenerated on a machine without internet.
This module drives those oracles with its own collection loop and writes files with the same
keys, dtypes and row layout as the official ones, so that `ogbench.make_env_and_datasets(...,
dataset_dir=DIR)` loads them without trying to download anything.

File layout (one row per environment step; each episode has `episode_length` rows):

    observations  float32 (N, ob_dim)   observation s_t
    actions       float32 (N, 5)        oracle action a_t, clipped to [-1, 1]
    terminals     bool    (N,)          True on the last row of every episode
    qpos          float32 (N, nq)       MuJoCo qpos of s_t (used by ogbench to relabel rewards)
    qvel          float32 (N, nv)       MuJoCo qvel of s_t
    button_states int64   (N, buttons)  button states of s_t (scene and puzzle only)

With the official 1001 rows per episode, ogbench's loader turns each episode into 1000
transitions (the last row only provides the final next observation).

Naming:
  * `<domain>-play-v0`: `<dataset_dir>/<domain>-play-v0.npz` and `<dataset_dir>/<domain>-play-v0-val.npz`.
  * `<domain>-play-100m-v0` (OGBench's 100M release, 100 shards of 1M transitions):
    `<dataset_dir>/<domain>-play-100m-v0/<domain>-play-v0-000.npz` and `...-000-val.npz`, up to
    `-099`. `--num_shards`/`--shard_start` pick which shards to write, e.g. `--num_shards=10`
    gives the 10M subset (shards 000-009).
  * `<domain>-play-10m-v0` (the 10M sets of the protocol): shards 000-009, the same bytes as those of
    the 100M release, in `<dataset_dir>/<domain>-play-10m-v0/`.

Every episode is seeded from (seed, shard, split, episode index), so the output does not depend on
the number of workers, and the same seed gives byte-identical files. Files appear atomically: each
is written under a hidden temporary name ending in `.tmp` in the same directory and renamed at the
end; an interrupted run leaves no file with a final name.

Examples:
    python -m experiments.make_dataset --dataset=cube-double-play-v0 --num_workers=2
    python -m experiments.make_dataset --dataset=cube-single-play-v0 --num_episodes=10 \
        --episode_length=201 --dataset_dir=/tmp/ogbench_data
    python -m experiments.make_dataset --dataset=cube-triple-play-100m-v0 --num_shards=10
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import pickle
import re
import signal
import sys
import threading
import time
import uuid
import zipfile
from typing import Iterator, Sequence

import numpy as np
from absl import app

from experiments import files
from experiments.env_workers import children_skip_main, die_with_owner, pid_alive, process_start_time

DEFAULT_DATASET_DIR = '~/.ogbench/data'
DEFAULT_EPISODE_LENGTH = 1001  # Rows per episode in the official play datasets (1000 transitions).
DEFAULT_NUM_SHARDS = 100  # Shards in OGBench's `-100m-v0` releases.
SHARDED_SUFFIX = '-100m-v0'
# The 10M sets (`<domain>-play-10m-v0/`, what the protocol trains cube-triple and puzzle-4x4 on) are
# shards 000-009 of the 100M release, written into their own directory.
TEN_M_SUFFIX = '-10m-v0'
TEN_M_NUM_SHARDS = 10
MAX_SCENE_ATTEMPTS = 1000  # Retries of an unhealthy scene episode before giving up.

# Official episode counts of the single-file play datasets (ogbench's data_gen_scripts/commands.sh).
# Every shard of a `-100m-v0` dataset has 1000 episodes.
_OFFICIAL_NUM_EPISODES = {
    'cube-single': 1000,
    'cube-double': 1000,
    'cube-triple': 3000,
    'cube-quadruple': 5000,
    'cube-octuple': 1000,  # No official single-file dataset; only the 100M release exists.
    'scene': 1000,
    'puzzle-3x3': 1000,
    'puzzle-4x4': 1000,
    'puzzle-4x5': 3000,
    'puzzle-4x6': 5000,
}
_SHARD_NUM_EPISODES = 1000

# Uniform range of the per-episode probability of stacking the target cube on another cube.
_P_STACK_RANGE = {
    'cube-single': (0.0, 0.0),
    'cube-double': (0.0, 0.25),
    'cube-triple': (0.05, 0.35),
    'cube-quadruple': (0.1, 0.5),
    'cube-octuple': (0.0, 0.35),
}

_NAVIGATION_PREFIXES = ('antmaze', 'humanoidmaze', 'pointmaze', 'antsoccer')

class MakeDatasetError(app.UsageError, ValueError):
    """Bad arguments to the dataset generator (a one-line message, no traceback on the CLI)."""


class UnsupportedDatasetError(MakeDatasetError):
    """The dataset cannot be generated offline by this script."""


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What a dataset name resolves to."""

    dataset_name: str  # e.g. 'cube-double-play-v0' or 'cube-triple-play-100m-v0'.
    domain: str  # e.g. 'cube-double', 'scene', 'puzzle-3x3'.
    env_name: str  # Gymnasium id of the goal-conditioned environment, e.g. 'cube-double-v0'.
    sharded: bool  # True for the `-100m-v0` (and `-10m-v0`) shard layout.

    @property
    def max_shards(self) -> int:
        """Shards of the release: 100 for `-100m-v0`, 10 for `-10m-v0`, 1 otherwise."""
        if not self.sharded:
            return 1
        return TEN_M_NUM_SHARDS if self.dataset_name.endswith(TEN_M_SUFFIX) else DEFAULT_NUM_SHARDS

    @property
    def file_stem(self) -> str:
        """Stem of the files: the dataset name, or for shards the name without '-100m' / '-10m'."""
        if self.sharded:
            suffix = TEN_M_SUFFIX if self.dataset_name.endswith(TEN_M_SUFFIX) else SHARDED_SUFFIX
            return self.dataset_name[: -len(suffix)] + '-v0'
        return self.dataset_name


def _navigation_message(name: str) -> str:
    return (
        f"'{name}' is a navigation dataset: it was collected by trained expert locomotion policies, "
        'which are not available offline, so it cannot be generated here. Download it with ogbench '
        'on a machine with internet (ogbench.download_datasets) and copy the .npz files into the '
        'dataset directory.'
    )


def parse_dataset_name(name: str) -> DatasetSpec:
    """Resolve a dataset (or single-task environment) name.

    Accepts `<domain>-play-v0`, `<domain>-play-100m-v0`, and single-task environment names such as
    `cube-double-play-singletask-task2-v0` (mapped to `cube-double-play-v0`).

    Raises:
        UnsupportedDatasetError: for navigation, visual, powderworld, non-play or unknown names.
    """
    name = name.strip()
    if name.startswith(_NAVIGATION_PREFIXES):
        raise UnsupportedDatasetError(_navigation_message(name))
    parts = name.split('-')
    if 'singletask' in parts:
        pos = parts.index('singletask')
        parts = parts[:pos] + [p for p in parts[pos + 1 :] if not re.fullmatch(r'task\d+', p)]
        name = '-'.join(parts)
    if name.startswith(('visual-', 'powderworld')):
        raise UnsupportedDatasetError(f"'{name}': only state-based manipulation datasets are supported.")
    match = re.fullmatch(r'(?P<domain>[a-z0-9-]+?)-(?P<kind>[a-z]+)(?P<big>-100m|-10m)?-v0', name)
    if match is None or match.group('domain') not in _OFFICIAL_NUM_EPISODES:
        raise UnsupportedDatasetError(
            f"Unknown dataset '{name}'. Expected '<domain>-play-v0' or '<domain>-play-100m-v0' with "
            f'domain in {sorted(_OFFICIAL_NUM_EPISODES)}.'
        )
    if match.group('kind') != 'play':
        raise UnsupportedDatasetError(
            f"'{name}': only 'play' datasets (plan oracles) are supported, not '{match.group('kind')}'."
        )
    domain = match.group('domain')
    return DatasetSpec(
        dataset_name=name,
        domain=domain,
        env_name=f'{domain}-v0',
        sharded=match.group('big') is not None,
    )


def default_num_episodes(dataset_name: str) -> int:
    """Official number of train episodes (per shard for `-100m-v0` datasets)."""
    spec = parse_dataset_name(dataset_name)
    return _SHARD_NUM_EPISODES if spec.sharded else _OFFICIAL_NUM_EPISODES[spec.domain]


def num_val_episodes(num_episodes: int, val_fraction: float) -> int:
    """Episodes in the `-val` file: round(val_fraction * num_episodes), at least 1."""
    return max(1, int(round(val_fraction * num_episodes)))


def dataset_file_paths(
    dataset_name: str,
    dataset_dir: str = DEFAULT_DATASET_DIR,
    num_shards: int | None = None,
    shard_start: int = 0,
) -> list[tuple[str, str]]:
    """(train_path, val_path) of each file pair of a dataset, in shard order.

    `<domain>-play-v0` has one pair; `<domain>-play-100m-v0` has one pair per shard
    (`num_shards` shards from `shard_start`, default all 100).
    """
    spec = parse_dataset_name(dataset_name)
    dataset_dir = os.path.abspath(os.path.expanduser(dataset_dir))
    return [(p.train_path, p.val_path) for p in _plan_units(spec, dataset_dir, num_shards, shard_start)]


# ----------------------------------------------------------------------------------------------
# Deterministic npz writing.


def _write_npz(path: str, arrays: dict[str, np.ndarray], compress: bool) -> None:
    """Write an .npz readable by np.load, with fixed zip metadata so equal arrays give equal bytes.

    np.savez stamps the current time into the zip entries; this writer uses a constant date.
    """
    compression = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with open(path, 'wb') as raw:
        with zipfile.ZipFile(raw, mode='w', compression=compression, allowZip64=True) as zf:
            for key, value in arrays.items():
                info = zipfile.ZipInfo(f'{key}.npy', date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = compression
                info.external_attr = 0o644 << 16
                with zf.open(info, mode='w', force_zip64=True) as member:
                    np.lib.format.write_array(member, np.ascontiguousarray(value), allow_pickle=False)
        raw.flush()
        os.fsync(raw.fileno())


# ----------------------------------------------------------------------------------------------
# Episode collection (runs inside worker processes).


@dataclasses.dataclass(frozen=True)
class _ChunkTask:
    """A contiguous range of episodes of one split of one file pair, written to one part file."""

    domain: str
    env_name: str
    episode_length: int
    noise: float
    noise_smoothing: float
    seed: int
    layout_key: int  # 0 for a single-file dataset, 1 + shard index for shards.
    split_id: int  # 0 = train, 1 = val.
    episode_start: int
    episode_end: int
    part_path: str
    unit_index: int  # Index of the file pair in this run.


class _Collector:
    """One environment and its oracles, reused for many episodes in one process."""

    def __init__(self, domain: str, env_name: str, episode_length: int, noise: float, noise_smoothing: float):
        import gymnasium
        import ogbench.manipspace  # noqa: F401  (registers the environments)
        from ogbench.manipspace.oracles.plan.button_plan import ButtonPlanOracle
        from ogbench.manipspace.oracles.plan.cube_plan import CubePlanOracle
        from ogbench.manipspace.oracles.plan.drawer_plan import DrawerPlanOracle
        from ogbench.manipspace.oracles.plan.window_plan import WindowPlanOracle

        self.domain = domain
        self.episode_length = episode_length
        self.env = gymnasium.make(
            env_name,
            terminate_at_goal=False,
            mode='data_collection',
            max_episode_steps=episode_length,
        )
        kw = dict(noise=noise, noise_smoothing=noise_smoothing)
        if domain.startswith('cube'):
            self.oracles = {'cube': CubePlanOracle(env=self.env, **kw)}
        elif domain == 'scene':
            self.oracles = {
                'cube': CubePlanOracle(env=self.env, **kw),
                'button': ButtonPlanOracle(env=self.env, **kw),
                'drawer': DrawerPlanOracle(env=self.env, **kw),
                'window': WindowPlanOracle(env=self.env, **kw),
            }
        elif domain.startswith('puzzle'):
            self.oracles = {'button': ButtonPlanOracle(env=self.env, gripper_always_closed=True, **kw)}
        else:
            raise ValueError(f'Unsupported domain {domain}')
        self.has_buttons = hasattr(self.env.unwrapped, '_cur_button_states')

    def _rollout(self, env_seed: int, np_seed: int, p_stack: float) -> tuple[dict[str, np.ndarray], bool]:
        env = self.env
        length = self.episode_length
        # The plan oracles draw their noise from NumPy's global generator.
        np.random.seed(np_seed)
        ob, info = env.reset(seed=env_seed)
        oracle = self.oracles[info['privileged/target_task']]
        oracle.reset(ob, info)

        nq, nv = len(info['qpos']), len(info['qvel'])
        episode = {
            'observations': np.empty((length, len(ob)), dtype=np.float32),
            'actions': np.empty((length, env.action_space.shape[0]), dtype=np.float32),
            'terminals': np.zeros((length,), dtype=bool),
            'qpos': np.empty((length, nq), dtype=np.float32),
            'qvel': np.empty((length, nv), dtype=np.float32),
        }
        if self.has_buttons:
            episode['button_states'] = np.empty((length, len(info['button_states'])), dtype=np.int64)
        healthy = True

        for t in range(length):
            action = np.clip(np.asarray(oracle.select_action(ob, info), dtype=np.float64), -1.0, 1.0)
            next_ob, _, _, _, next_info = env.step(action)
            # `prev_*` in the step info is the state before the step, i.e. the state of `ob`.
            qpos = next_info['prev_qpos']
            episode['observations'][t] = ob
            episode['actions'][t] = action
            episode['qpos'][t] = qpos
            episode['qvel'][t] = next_info['prev_qvel']
            if self.has_buttons:
                episode['button_states'][t] = next_info['prev_button_states']
            if self.domain == 'scene':
                # Keep the cube visible: not too far right, and not far left unless in the drawer.
                x, y, z = qpos[14:17]
                if y >= 0.29 or (y <= -0.3 and (z < 0.06 or z > 0.08)):
                    healthy = False
            if oracle.done:
                # Sub-task finished: pick a new random target and a matching oracle.
                target_ob, target_info = env.unwrapped.set_new_target(p_stack=p_stack)
                oracle = self.oracles[target_info['privileged/target_task']]
                oracle.reset(target_ob, target_info)
            ob, info = next_ob, next_info

        episode['terminals'][-1] = True
        return episode, healthy

    def collect(self, seed: int, layout_key: int, split_id: int, episode_index: int) -> dict[str, np.ndarray]:
        """Collect one episode; its content depends only on the arguments."""
        saved_state = np.random.get_state()
        try:
            for attempt in range(MAX_SCENE_ATTEMPTS):
                seq = np.random.SeedSequence([seed, layout_key, split_id, episode_index, attempt])
                env_seed, np_seed, stack_seed = (int(s) for s in seq.generate_state(3))
                low, high = _P_STACK_RANGE.get(self.domain, (0.0, 0.0))
                p_stack = float(np.random.default_rng(stack_seed).uniform(low, high))
                episode, healthy = self._rollout(env_seed, np_seed, p_stack)
                if healthy:
                    return episode
            raise RuntimeError(f'No healthy episode after {MAX_SCENE_ATTEMPTS} attempts.')
        finally:
            np.random.set_state(saved_state)


_COLLECTORS: dict[tuple, _Collector] = {}


def _get_collector(task: _ChunkTask) -> _Collector:
    key = (task.domain, task.env_name, task.episode_length, task.noise, task.noise_smoothing)
    if key not in _COLLECTORS:
        _COLLECTORS.clear()
        _COLLECTORS[key] = _Collector(*key)
    return _COLLECTORS[key]


def _collect_chunk(task: _ChunkTask) -> tuple[_ChunkTask, int]:
    """Collect the episodes of a chunk and write them to its part file. Returns (task, rows)."""
    collector = _get_collector(task)
    episodes = [
        collector.collect(task.seed, task.layout_key, task.split_id, i)
        for i in range(task.episode_start, task.episode_end)
    ]
    arrays = {k: np.concatenate([ep[k] for ep in episodes], axis=0) for k in episodes[0]}
    _write_npz(task.part_path, arrays, compress=False)
    return task, len(arrays['terminals'])


def _worker_entry(task: _ChunkTask) -> tuple[_ChunkTask, int]:
    # Looked up by name at call time so that a patched `_collect_chunk` is used (tests).
    return _collect_chunk(task)


def _init_worker(owner_pid: int, owner_start: int | None, abort) -> None:
    """`ProcessPoolExecutor` initializer: tie the worker's life to the owner's (kill -9 included, see
    `env_workers.die_with_owner`), and end it when the owner sets `abort` (a shared flag, polled: a
    lock or an `Event` could be left held by a worker killed mid-call, and block the owner)."""
    import warnings

    die_with_owner(owner_pid, owner_start)
    warnings.filterwarnings('ignore')
    # The parent decides when to stop; Ctrl-C in the terminal should not kill workers mid-write.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch() -> None:
        while not abort.value:
            time.sleep(0.05)
        os._exit(1)

    threading.Thread(target=watch, name='abort-watchdog', daemon=True).start()


class _WorkerError(RuntimeError):
    """A worker process died, or raised an exception that cannot be sent to the parent (its text)."""


def _pool_task(task: _ChunkTask) -> tuple[_ChunkTask, int]:
    """In a worker process: one chunk. The executor sends its exception to the parent, which re-raises
    it; one that cannot make the trip goes as a `_WorkerError` with its text and traceback."""
    try:
        return _worker_entry(task)
    except Exception as e:
        import traceback

        try:
            pickle.loads(pickle.dumps(e))
        except Exception:
            raise _WorkerError(f'Worker failed with {e!r}:\n{traceback.format_exc()}') from None
        raise


class _WorkerPool:
    """A `ProcessPoolExecutor` whose workers die with this process and never import the launcher's main
    module; `close(abort=True)` stops them at once."""

    def __init__(self, num_workers: int, start_method: str):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        ctx = multiprocessing.get_context(start_method)
        self._abort = ctx.RawValue('b', 0)
        owner = (os.getpid(), process_start_time(os.getpid()))
        self._executor = ProcessPoolExecutor(
            num_workers, mp_context=ctx, initializer=_init_worker, initargs=(*owner, self._abort))

    def run(self, tasks: Sequence[_ChunkTask]) -> Iterator[tuple[_ChunkTask, int]]:
        """Yield results in completion order; raise the first worker error."""
        from concurrent.futures import as_completed
        from concurrent.futures.process import BrokenProcessPool

        # The executor starts its workers in `submit`. Started from the launcher (its auto-generation),
        # they would import its main module, and jax with it: they import this module instead. Run as
        # the main module itself, this module's functions and tasks are pickled as `__main__.*`, so the
        # workers need it (and it has no jax).
        with contextlib.nullcontext() if __name__ == '__main__' else children_skip_main():
            futures = [self._executor.submit(_pool_task, task) for task in tasks]
        for future in as_completed(futures):
            try:
                result = future.result()
            except BrokenProcessPool as e:
                raise _WorkerError(f'A worker process died ({e})') from e
            yield result

    def close(self, abort: bool) -> None:
        if abort:
            self._abort.value = 1  # the workers end at once; the executor sees them die and joins them
        self._executor.shutdown(wait=True, cancel_futures=abort)


# ----------------------------------------------------------------------------------------------
# Orchestration.


@dataclasses.dataclass
class _Unit:
    """One (train, val) file pair to produce."""

    index: int
    layout_key: int
    train_path: str
    val_path: str


def _plan_units(spec: DatasetSpec, dataset_dir: str, num_shards: int | None, shard_start: int) -> list[_Unit]:
    if spec.sharded:
        num_shards = spec.max_shards if num_shards is None else num_shards
        limit = TEN_M_NUM_SHARDS if spec.max_shards == TEN_M_NUM_SHARDS else 1000
        if num_shards < 1 or shard_start < 0 or shard_start + num_shards > limit:
            raise MakeDatasetError(f'Invalid shard range: shard_start={shard_start}, num_shards={num_shards} '
                                   f'(shards 0..{limit - 1} exist for {spec.dataset_name}).')
        out_dir = os.path.join(dataset_dir, spec.dataset_name)
        units = []
        for i, shard in enumerate(range(shard_start, shard_start + num_shards)):
            stem = os.path.join(out_dir, f'{spec.file_stem}-{shard:03d}')
            units.append(_Unit(i, 1 + shard, f'{stem}.npz', f'{stem}-val.npz'))
        return units
    if num_shards not in (None, 1) or shard_start != 0:
        raise MakeDatasetError(
            f"'{spec.dataset_name}' is a single-file dataset; num_shards/shard_start only apply to "
            f"'<domain>-play{SHARDED_SUFFIX}' datasets."
        )
    stem = os.path.join(dataset_dir, spec.file_stem)
    return [_Unit(0, 0, f'{stem}.npz', f'{stem}-val.npz')]


def _hidden_tmp(path: str, token: str, tag: str = '') -> str:
    directory, base = os.path.split(path)
    return os.path.join(directory, f'.{base}.{token}{tag}.tmp')


def _merge_parts(part_paths: Sequence[str], out_path: str, compress: bool) -> None:
    """Concatenate part files (in order) into one .npz at `out_path`."""
    sizes, layout = [], None
    for p in part_paths:
        with np.load(p) as f:
            if layout is None:
                layout = {k: (f[k].dtype, f[k].shape[1:]) for k in f.files}
            sizes.append(len(f['terminals']))
    total = sum(sizes)
    merged = {k: np.empty((total, *shape), dtype=dtype) for k, (dtype, shape) in layout.items()}
    offset = 0
    for p, n in zip(part_paths, sizes):
        with np.load(p) as f:
            for k in merged:
                merged[k][offset : offset + n] = f[k]
        offset += n
    _write_npz(out_path, merged, compress=compress)


_TMP_NAME_RE = re.compile(r'^\.(?P<base>.+)\.(?P<pid>\d+)-(?P<hex>[0-9a-f]{8})(?P<tag>\.[0-9]+-[0-9]+\.part)?\.tmp$')


def remove_stale_temporaries(units: Sequence['_Unit']) -> list[str]:
    """Remove the hidden part and merge files that a killed run left for these file pairs.

    Temporary names carry the writer's pid (`.<final name>.<pid>-<hex>[.<split>-<start>.part].tmp`);
    files of a process that is still alive (a concurrent run) are left alone.
    """
    bases = {}
    for unit in units:
        for path in (unit.train_path, unit.val_path):
            bases.setdefault(os.path.dirname(path), set()).add(os.path.basename(path))
    removed = []
    for directory, names in bases.items():
        if not os.path.isdir(directory):
            continue
        for name in os.listdir(directory):
            match = _TMP_NAME_RE.match(name)
            if match is None or match.group('base') not in names or pid_alive(int(match.group('pid'))):
                continue
            try:
                os.remove(os.path.join(directory, name))
                removed.append(os.path.join(directory, name))
            except FileNotFoundError:
                pass
    return removed


def _cleanup(directories: set[str], token: str) -> None:
    for directory in directories:
        if not os.path.isdir(directory):
            continue
        for name in os.listdir(directory):
            if name.startswith('.') and f'.{token}' in name and name.endswith('.tmp'):
                try:
                    os.remove(os.path.join(directory, name))
                except FileNotFoundError:
                    pass


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(total: int, desc: str, enabled: bool):
    """A tqdm bar, or a silent stand-in when disabled or when tqdm is not installed."""
    if enabled:
        try:
            from tqdm import tqdm
        except ImportError:
            return _NoBar()
        return tqdm(total=total, unit='ep', desc=desc, dynamic_ncols=True)
    return _NoBar()


def generation_record_path(npz_path: str) -> str:
    """The JSON beside a generated file pair (`<stem>.generation.json`) that records how it was made, so
    that a damaged file can be rebuilt exactly: the same settings give the same bytes."""
    stem = npz_path[:-len('-val.npz')] if npz_path.endswith('-val.npz') else npz_path[:-len('.npz')]
    return stem + '.generation.json'


def read_generation_record(npz_path: str) -> dict | None:
    return files.read_json(generation_record_path(npz_path))


def _write_generation_record(train_path: str, record: dict) -> None:
    files.write_json(generation_record_path(train_path), record)


def generate_dataset(
    dataset_name: str,
    dataset_dir: str = DEFAULT_DATASET_DIR,
    num_episodes: int | None = None,
    episode_length: int = DEFAULT_EPISODE_LENGTH,
    seed: int = 0,
    num_workers: int = 1,
    val_fraction: float = 0.1,
    num_shards: int | None = None,
    shard_start: int = 0,
    overwrite: bool = False,
    compress: bool = True,
    noise: float = 0.1,
    noise_smoothing: float = 0.5,
    chunk_episodes: int | None = None,
    start_method: str = 'spawn',
    progress: bool = True,
) -> list[str]:
    """Generate an OGBench manipulation play dataset and return the paths written by this call.

    Args:
        dataset_name: '<domain>-play-v0', '<domain>-play-100m-v0', or a single-task env name
            (e.g. 'cube-double-play-singletask-task2-v0', which maps to 'cube-double-play-v0').
        dataset_dir: Output directory (ogbench's `dataset_dir`); '~' is expanded.
        num_episodes: Train episodes per file pair; None uses the official count
            (see `default_num_episodes`).
        episode_length: Rows per episode (official: 1001, i.e. 1000 transitions). At least 2.
        seed: Base seed. Episode i of a split/shard is seeded from (seed, shard, split, i).
        num_workers: Worker processes; 1 runs in this process. Does not change the output.
        val_fraction: Val episodes = max(1, round(val_fraction * num_episodes)).
        num_shards: Shards to write for '-100m-v0' datasets (default 100).
        shard_start: First shard index for '-100m-v0' datasets.
        overwrite: Regenerate file pairs that already exist (otherwise they are skipped).
        compress: Deflate-compress the final files, like the official ones.
        noise, noise_smoothing: Plan-oracle noise settings (official: 0.1, 0.5).
        chunk_episodes: Episodes per worker part file (default: automatic).
        start_method: multiprocessing start method for the workers.
        progress: Show a tqdm progress bar.

    Returns:
        The final paths written, for each file pair the val file then the train file.

    Raises:
        UnsupportedDatasetError: for navigation or other datasets that cannot be generated here.
    """
    spec = parse_dataset_name(dataset_name)
    if num_episodes is None:
        num_episodes = default_num_episodes(spec.dataset_name)
    if num_episodes < 1:
        raise MakeDatasetError('num_episodes must be at least 1.')
    if episode_length < 2:
        raise MakeDatasetError('episode_length must be at least 2 (rows per episode, one more than transitions).')
    if not 0.0 < val_fraction <= 1.0:
        raise MakeDatasetError('val_fraction must be in (0, 1].')
    dataset_dir = os.path.abspath(os.path.expanduser(dataset_dir))
    units = _plan_units(spec, dataset_dir, num_shards, shard_start)

    stale = remove_stale_temporaries(units)
    if stale:
        print(f'Removed {len(stale)} temporary file(s) left by an interrupted run in '
              f'{", ".join(sorted({os.path.dirname(p) for p in stale}))}.', file=sys.stderr)
    todo = []
    for unit in units:
        if not overwrite and os.path.exists(unit.train_path) and os.path.exists(unit.val_path):
            print(f'Skipping existing {unit.train_path} (use overwrite to regenerate).', file=sys.stderr)
            continue
        todo.append(unit)
    if not todo:
        return []

    n_val = num_val_episodes(num_episodes, val_fraction)
    num_workers = max(1, int(num_workers))
    if chunk_episodes is None:
        chunk_episodes = int(np.clip(math.ceil(num_episodes / (4 * num_workers)), 1, 25))
    token = f'{os.getpid()}-{uuid.uuid4().hex[:8]}'
    directories = {os.path.dirname(u.train_path) for u in todo}
    for directory in directories:
        os.makedirs(directory, exist_ok=True)

    tasks: list[_ChunkTask] = []
    chunks_left: dict[int, int] = {}
    for unit in todo:
        for split_id, n in ((0, num_episodes), (1, n_val)):
            for start in range(0, n, chunk_episodes):
                end = min(n, start + chunk_episodes)
                part = _hidden_tmp(unit.train_path, token, f'.{split_id}-{start:06d}.part')
                tasks.append(
                    _ChunkTask(
                        domain=spec.domain,
                        env_name=spec.env_name,
                        episode_length=episode_length,
                        noise=noise,
                        noise_smoothing=noise_smoothing,
                        seed=seed,
                        layout_key=unit.layout_key,
                        split_id=split_id,
                        episode_start=start,
                        episode_end=end,
                        part_path=part,
                        unit_index=unit.index,
                    )
                )
                chunks_left[unit.index] = chunks_left.get(unit.index, 0) + 1
    units_by_index = {u.index: u for u in todo}
    done_parts: dict[int, list[_ChunkTask]] = {u.index: [] for u in todo}

    total_episodes = len(todo) * (num_episodes + n_val)
    bar = _progress_bar(total_episodes, spec.dataset_name, progress)
    written: list[str] = []
    pool = None
    t0 = time.time()
    rows = 0
    ok = False
    try:
        if num_workers == 1 or len(tasks) == 1:
            results: Iterator = (_worker_entry(t) for t in tasks)
        else:
            pool = _WorkerPool(min(num_workers, len(tasks)), start_method)
            results = pool.run(tasks)
        for task, n_rows in results:
            rows += n_rows
            bar.update(task.episode_end - task.episode_start)
            done_parts[task.unit_index].append(task)
            chunks_left[task.unit_index] -= 1
            if chunks_left[task.unit_index] == 0:
                unit = units_by_index[task.unit_index]
                tmp_paths = {}
                for split_id, final in ((0, unit.train_path), (1, unit.val_path)):
                    parts = sorted(
                        (t for t in done_parts[unit.index] if t.split_id == split_id),
                        key=lambda t: t.episode_start,
                    )
                    tmp_paths[final] = _hidden_tmp(final, token)
                    _merge_parts([t.part_path for t in parts], tmp_paths[final], compress)
                    for t in parts:
                        os.remove(t.part_path)
                _write_generation_record(unit.train_path, {
                    'num_episodes': num_episodes, 'episode_length': episode_length, 'seed': seed,
                    'val_fraction': val_fraction, 'noise': noise, 'noise_smoothing': noise_smoothing})
                # Val first: the train file appearing marks the pair as complete.
                for final in (unit.val_path, unit.train_path):
                    os.replace(tmp_paths[final], final)
                    written.append(final)
        ok = True
    finally:
        bar.close()
        if pool is not None:
            pool.close(abort=not ok)
        _cleanup(directories, token)

    elapsed = time.time() - t0
    print(
        f'{spec.dataset_name}: {rows} rows ({rows - total_episodes} transitions) in {elapsed:.1f}s '
        f'= {rows / max(elapsed, 1e-9):.0f} steps/s with {num_workers} worker(s).',
        file=sys.stderr,
    )
    return written


# ----------------------------------------------------------------------------------------------
# Command line.


def _define_flags():
    from absl import flags

    flags.DEFINE_list('dataset', None, 'Dataset name(s), e.g. cube-double-play-v0 or cube-triple-play-100m-v0.')
    flags.DEFINE_string('dataset_dir', DEFAULT_DATASET_DIR, 'Output directory (ogbench dataset_dir).')
    flags.DEFINE_integer('num_episodes', None, 'Train episodes per file (default: official count).')
    flags.DEFINE_integer('episode_length', DEFAULT_EPISODE_LENGTH, 'Rows per episode (transitions + 1).')
    flags.DEFINE_float('val_fraction', 0.1, 'Val episodes as a fraction of num_episodes (at least 1).')
    flags.DEFINE_integer('seed', 0, 'Base seed.')
    flags.DEFINE_integer('num_workers', os.cpu_count() or 1, 'Worker processes.')
    flags.DEFINE_integer('num_shards', None, 'Shards to write for -100m-v0 datasets (default 100).')
    flags.DEFINE_integer('shard_start', 0, 'First shard index for -100m-v0 datasets.')
    flags.DEFINE_bool('overwrite', False, 'Regenerate files that already exist.')
    flags.DEFINE_bool('compress', True, 'Compress the .npz files (like the official ones).')
    flags.DEFINE_float('noise', 0.1, 'Plan-oracle noise.')
    flags.DEFINE_float('noise_smoothing', 0.5, 'Plan-oracle noise smoothing.')
    flags.mark_flag_as_required('dataset')
    return flags.FLAGS


def main(argv):
    del argv
    from absl import flags

    FLAGS = flags.FLAGS
    # Turn SIGTERM into SystemExit so that the temporary files are removed on the way out.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        for name in FLAGS.dataset:
            paths = generate_dataset(
                name,
                dataset_dir=FLAGS.dataset_dir,
                num_episodes=FLAGS.num_episodes,
                episode_length=FLAGS.episode_length,
                seed=FLAGS.seed,
                num_workers=FLAGS.num_workers,
                val_fraction=FLAGS.val_fraction,
                num_shards=FLAGS.num_shards,
                shard_start=FLAGS.shard_start,
                overwrite=FLAGS.overwrite,
                compress=FLAGS.compress,
                noise=FLAGS.noise,
                noise_smoothing=FLAGS.noise_smoothing,
            )
            for path in paths:
                print(path)
    except MakeDatasetError as e:
        raise SystemExit(f'make_dataset: error: {e}') from None


if __name__ == '__main__':
    _define_flags()
    app.run(main)
