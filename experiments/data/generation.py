"""Generating an OGBench manipulation play dataset offline (`generate_dataset`, the core of
`python -m experiments.make_dataset`): the file pairs planned, the episode chunks collected in-process
or by the worker pool, the parts merged, and each file made visible atomically.

Files appear atomically: each is written under a hidden temporary name ending in `.tmp` in the same
directory and renamed at the end; an interrupted run leaves no file with a final name, and the next
run removes the temporaries of writers that are no longer alive.
"""

from __future__ import annotations

import math
import os
import re
import sys
import time
import uuid
from typing import Iterator, Sequence

import numpy as np

from experiments.data.collection import ChunkTask, merge_parts, worker_entry
from experiments.data.files import generation_record_path
from experiments.data.generation_plan import (DEFAULT_EPISODE_LENGTH, MakeDatasetError, Unit, default_num_episodes,
                                              num_val_episodes, parse_dataset_name, plan_units)
from experiments.data.generation_pool import WorkerPool
from experiments.data.names import DEFAULT_DATASET_DIR
from experiments.env_workers import pid_alive
from experiments.infra.files import write_json


def _hidden_tmp(path: str, token: str, tag: str = '') -> str:
    directory, base = os.path.split(path)
    return os.path.join(directory, f'.{base}.{token}{tag}.tmp')


_TMP_NAME_RE = re.compile(r'^\.(?P<base>.+)\.(?P<pid>\d+)-(?P<hex>[0-9a-f]{8})(?P<tag>\.[0-9]+-[0-9]+\.part)?\.tmp$')


def remove_stale_temporaries(units: Sequence[Unit]) -> list[str]:
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


def _write_generation_record(train_path: str, record: dict) -> None:
    write_json(generation_record_path(train_path), record)


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
    release = parse_dataset_name(dataset_name)
    if num_episodes is None:
        num_episodes = default_num_episodes(release.dataset_name)
    if num_episodes < 1:
        raise MakeDatasetError('num_episodes must be at least 1.')
    if episode_length < 2:
        raise MakeDatasetError('episode_length must be at least 2 (rows per episode, one more than transitions).')
    if not 0.0 < val_fraction <= 1.0:
        raise MakeDatasetError('val_fraction must be in (0, 1].')
    dataset_dir = os.path.abspath(os.path.expanduser(dataset_dir))
    units = plan_units(release, dataset_dir, num_shards, shard_start)

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

    tasks: list[ChunkTask] = []
    chunks_left: dict[int, int] = {}
    for unit in todo:
        for split_id, n in ((0, num_episodes), (1, n_val)):
            for start in range(0, n, chunk_episodes):
                end = min(n, start + chunk_episodes)
                part = _hidden_tmp(unit.train_path, token, f'.{split_id}-{start:06d}.part')
                tasks.append(
                    ChunkTask(
                        domain=release.domain,
                        env_name=release.env_name,
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
    done_parts: dict[int, list[ChunkTask]] = {u.index: [] for u in todo}

    total_episodes = len(todo) * (num_episodes + n_val)
    bar = _progress_bar(total_episodes, release.dataset_name, progress)
    written: list[str] = []
    pool = None
    t0 = time.time()
    rows = 0
    ok = False
    try:
        if num_workers == 1 or len(tasks) == 1:
            results: Iterator = (worker_entry(t) for t in tasks)
        else:
            pool = WorkerPool(min(num_workers, len(tasks)), start_method)
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
                    merge_parts([t.part_path for t in parts], tmp_paths[final], compress)
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
        f'{release.dataset_name}: {rows} rows ({rows - total_episodes} transitions) in {elapsed:.1f}s '
        f'= {rows / max(elapsed, 1e-9):.0f} steps/s with {num_workers} worker(s).',
        file=sys.stderr,
    )
    return written
