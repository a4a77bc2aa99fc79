"""Collecting episodes with OGBench's scripted plan oracles (what a dataset worker runs), and the
deterministic npz files they go to: a chunk of episodes per part file, parts merged in order.

Every episode is seeded from (seed, shard, split, episode index), so its content does not depend on
the worker that collects it. No jax here: the workers import this module.
"""

from __future__ import annotations

import dataclasses
import os
import zipfile
from typing import Sequence

import numpy as np

MAX_SCENE_ATTEMPTS = 1000  # Retries of an unhealthy scene episode before giving up.

# Uniform range of the per-episode probability of stacking the target cube on another cube.
_P_STACK_RANGE = {
    'cube-single': (0.0, 0.0),
    'cube-double': (0.0, 0.25),
    'cube-triple': (0.05, 0.35),
    'cube-quadruple': (0.1, 0.5),
    'cube-octuple': (0.0, 0.35),
}


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


@dataclasses.dataclass(frozen=True)
class ChunkTask:
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


def _get_collector(task: ChunkTask) -> _Collector:
    key = (task.domain, task.env_name, task.episode_length, task.noise, task.noise_smoothing)
    if key not in _COLLECTORS:
        _COLLECTORS.clear()
        _COLLECTORS[key] = _Collector(*key)
    return _COLLECTORS[key]


def _collect_chunk(task: ChunkTask) -> tuple[ChunkTask, int]:
    """Collect the episodes of a chunk and write them to its part file. Returns (task, rows)."""
    collector = _get_collector(task)
    episodes = [
        collector.collect(task.seed, task.layout_key, task.split_id, i)
        for i in range(task.episode_start, task.episode_end)
    ]
    arrays = {k: np.concatenate([ep[k] for ep in episodes], axis=0) for k in episodes[0]}
    _write_npz(task.part_path, arrays, compress=False)
    return task, len(arrays['terminals'])


def worker_entry(task: ChunkTask) -> tuple[ChunkTask, int]:
    # Looked up by name at call time so that a patched `_collect_chunk` is used (tests).
    return _collect_chunk(task)


def merge_parts(part_paths: Sequence[str], out_path: str, compress: bool) -> None:
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
