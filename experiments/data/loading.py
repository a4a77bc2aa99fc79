"""Loading a domain's OGBench data (conventions §9): raw npz files read once, relabelled per task,
post-processed, concatenated over shards, and put on the device, all or a rotating window of shards.

The IO side of `trqam_jax.chunks`. Main entry points:

* `ShardWindow(env_names, dataset_dir)`: the offline data of the training loop for the tasks of ONE
  domain (see `names.domain_env_names`): the whole dataset on device when it fits, otherwise a window
  of shards rotated every `rotate_every` steps; the domain's data is held once, with (T, N) rewards
  and masks, one row per task (`trqam_jax.chunks.TaskData` samples one learner's row).
* `load_shard_tasks(path, env_names, envs)`: one raw file read once, relabelled for several tasks.
* `dataset_nbytes(env_name, dataset_dir)`: device bytes the dataset needs (from the npz headers).
* `to_device(dataset)`: numpy dict -> `trqam_jax.chunks.ChunkData`.

jax (through `trqam_jax.chunks`) is imported only where data goes to the device: `make_dataset` and
its worker processes import this package and must stay jax-free.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Callable, Dict, Optional, Sequence, Tuple

import numpy as np

from experiments import env_workers
from experiments.data.files import READ_ERRORS, blame, file_rows_and_dims, find_dataset_files
from experiments.data.names import DEFAULT_DATASET_DIR, DataError, EnvInfo, parse_domain_env_names, parse_env_name

if TYPE_CHECKING:  # annotations only (see above)
    from trqam_jax import chunks

ACTION_CLIP_EPS = 1e-5
KEYS = ('observations', 'actions', 'rewards', 'masks', 'terminals', 'next_observations')
TASK_KEYS = ('rewards', 'masks')  # what relabelling writes: (T, N) in a domain's data
SHARED_KEYS = tuple(k for k in KEYS if k not in TASK_KEYS)  # the same for every task of a domain
INFO_KEYS = ('qpos', 'qvel', 'button_states')  # what relabelling reads


def sparsify_rewards(rewards):
    """conventions §9 sparse option (scene, puzzles): r <- -1 if r != 0 else 0. Apply it to online rewards too."""
    rewards = np.asarray(rewards)
    return np.where(rewards != 0, -1.0, 0.0).astype(np.float32)


def postprocess(dataset: Dict[str, np.ndarray], sparse: bool = False, action_clip_eps: float = ACTION_CLIP_EPS):
    """conventions §9 post-processing of an ogbench dataset dict (already relabeled): keeps the six
    transition keys as float32, clips actions to [-1 + eps, 1 - eps], and sparsifies rewards."""
    _check_keys(dataset, KEYS)
    shared = _postprocess_shared(dataset, action_clip_eps)
    rewards, masks = _postprocess_task(dataset['rewards'], dataset['masks'], sparse)
    return {k: rewards if k == 'rewards' else masks if k == 'masks' else shared[k] for k in KEYS}


def _check_keys(dataset, keys):
    missing = [k for k in keys if k not in dataset]
    if missing:
        raise DataError(f'dataset lacks keys {missing} (has {sorted(dataset)})')


def _postprocess_shared(dataset, action_clip_eps):
    """`postprocess` of the keys every task of a domain shares."""
    out = {k: np.asarray(dataset[k], dtype=np.float32) for k in SHARED_KEYS}
    if action_clip_eps is not None:
        out['actions'] = np.clip(out['actions'], -1 + action_clip_eps, 1 - action_clip_eps).astype(np.float32)
    return out


def _postprocess_task(rewards, masks, sparse):
    """`postprocess` of one task's relabelled rewards and masks."""
    rewards = np.asarray(rewards, dtype=np.float32)
    if sparse:
        rewards = sparsify_rewards(rewards)
    return rewards, np.asarray(masks, dtype=np.float32)


def make_env(env_name: str, seed: int = 0):
    """The env that relabels `env_name`'s data: `env_workers.make_env`'s env (through ogbench, so no
    dataset is touched), reset once with `seed`.

    ogbench's relabeling calls an unseeded env.reset(), and cube tasks draw a random block
    permutation there: seeding the env first makes the relabeled rewards the same on every load
    (so a resumed run sees the data of the original run).
    """
    parse_env_name(env_name)
    env = env_workers.make_env(env_name)
    env.reset(seed=seed)
    return env


def _in_shard_dir(path: str, info: EnvInfo) -> bool:
    return os.path.basename(os.path.dirname(path)) in info.layout.shard_dirs


def _read_raw(path: str, info: EnvInfo):
    """A raw OGBench npz read as `ogbench.make_env_and_datasets` reads a single-task train file
    (float32 observations and actions, next_observations, the info keys relabelling needs)."""
    import ogbench

    try:
        return ogbench.load_dataset(path, compact_dataset=False, add_info=True)
    except READ_ERRORS as e:
        blame([path], info.env_name, os.path.dirname(os.path.dirname(path)) if _in_shard_dir(path, info)
              else os.path.dirname(path), e)


def check_task_envs(infos: Sequence[EnvInfo], envs) -> Tuple:
    """The envs of a domain's tasks, one per env id in order (each must be that task's env)."""
    if isinstance(envs, (str, bytes)) or not isinstance(envs, (list, tuple)) or len(envs) != len(infos):
        raise ValueError(
            f'expected a list of {len(infos)} envs, one per env id of {[i.env_name for i in infos]} in that '
            f'order (make each with experiments.data.make_env(name, seed=...)), got {envs!r}'
        )
    for info, env in zip(infos, envs):
        task = getattr(getattr(env, 'unwrapped', env), '_reward_task_id', None)
        if isinstance(task, (int, np.integer)) and task not in (0, info.task):
            raise ValueError(f'the env given for {info.env_name} is the env of task {task}: give the envs in the '
                             'order of the env ids')
    return tuple(envs)


def load_shard_tasks(
    path: str,
    env_names: Sequence[str],
    envs: Sequence,
    sparse: bool = False,
    action_clip_eps: float = ACTION_CLIP_EPS,
) -> Dict[str, np.ndarray]:
    """One raw OGBench npz (the standard file or a shard), read ONCE, relabelled for each task of a
    domain: a numpy dict of the shared keys (observations, actions, terminals, next_observations; n
    rows) and rewards and masks of shape (T, n), row t relabelled with envs[t] for env_names[t].
    Row t is what `ogbench.make_env_and_datasets` gives for that task (same reading and relabelling),
    then `postprocess`."""
    from ogbench.relabel_utils import relabel_dataset

    infos = parse_domain_env_names(env_names)
    envs = check_task_envs(infos, envs)
    ds = _read_raw(path, infos[0])
    _check_keys(ds, SHARED_KEYS)
    rewards, masks = [], []
    for info, env in zip(infos, envs):
        task_ds = {k: ds[k] for k in INFO_KEYS if k in ds}  # relabel_dataset only adds rewards and masks
        relabel_dataset(info.ogbench_env, env, task_ds)
        r, m = _postprocess_task(task_ds['rewards'], task_ds['masks'], sparse)
        rewards.append(r)
        masks.append(m)
    out = _postprocess_shared(ds, action_clip_eps)
    out['rewards'] = np.stack(rewards)
    out['masks'] = np.stack(masks)
    return out


def load_shards(
    paths: Sequence[str],
    env_names: Sequence[str],
    envs: Sequence,
    sparse: bool = False,
    action_clip_eps: float = ACTION_CLIP_EPS,
    load_fn: Optional[Callable] = None,
):
    """Loads and concatenates shards into arrays preallocated from the npz headers (peak host
    memory: the result plus one shard). Each shard's last row is a trajectory end.

    env_names: T env ids of one domain, with `envs` the matching list of envs: each shard is read
    once and relabelled per task (`load_fn(path, env_names, envs, sparse, action_clip_eps)`, default
    `load_shard_tasks`), and rewards and masks are (T, n)."""
    env_names = tuple(env_names)
    envs = check_task_envs(parse_domain_env_names(env_names), envs)
    load_fn = load_fn or load_shard_tasks
    lead = (len(env_names),)
    dims = [file_rows_and_dims(p) for p in paths]
    total = sum(r for r, _, _ in dims)
    obs_dim, act_dim = dims[0][1], dims[0][2]
    shapes = dict(observations=(total, obs_dim), actions=(total, act_dim), rewards=lead + (total,),
                  masks=lead + (total,), terminals=(total,), next_observations=(total, obs_dim))
    out = {k: np.empty(shapes[k], np.float32) for k in KEYS}
    n = 0
    for p in paths:
        ds = load_fn(p, env_names, envs, sparse, action_clip_eps)
        m = ds['terminals'].shape[0]
        for k in KEYS:
            expected = lead + (m,) if k in TASK_KEYS else (m,)
            if tuple(ds[k].shape[: len(expected)]) != expected:
                raise DataError(f'{p}: {k} has shape {ds[k].shape}, expected {expected} + ... ({m} transitions, '
                                f'{len(lead)} task(s))')
            if k in TASK_KEYS:
                out[k][..., n : n + m] = ds[k]
            else:
                out[k][n : n + m] = ds[k]
        out['terminals'][n + m - 1] = 1.0
        n += m
    return {k: v[..., :n] if k in TASK_KEYS else v[:n] for k, v in out.items()}


def to_device(dataset: Dict[str, np.ndarray], capacity: Optional[int] = None, device=None) -> chunks.ChunkData:
    """A loaded numpy dict -> `trqam_jax.chunks.ChunkData` on the device (padded to `capacity`)."""
    from trqam_jax import chunks

    return chunks.make_chunk_data(**{k: dataset[k] for k in KEYS}, capacity=capacity, device=device)


def dataset_nbytes(
    env_name: str,
    dataset_dir: str = DEFAULT_DATASET_DIR,
    standard: bool = False,
    per_shard: bool = False,
    num_tasks: int = 1,
) -> int:
    """Device bytes the training dataset needs as `ChunkData` (float32 arrays, next_observations
    included), from the npz headers only (an upper bound: raw rows counted as transitions).
    per_shard: the bytes of the largest single file instead of the total. num_tasks: rewards and
    masks held for that many tasks of the domain (a domain window)."""
    from trqam_jax import chunks

    files = find_dataset_files(env_name, dataset_dir, standard)
    sizes = [chunks.chunk_data_nbytes(*file_rows_and_dims(p), num_tasks=num_tasks) for p in files.train]
    return max(sizes) if per_shard else sum(sizes)


def device_memory_bytes(device=None) -> Optional[int]:
    """Free memory of the accelerator (bytes_limit - bytes_in_use), or None where JAX does not say
    (e.g. CPU)."""
    import jax

    device = device or jax.devices()[0]
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - backends without memory stats
        return None
    if not stats or 'bytes_limit' not in stats:
        return None
    return int(stats['bytes_limit']) - int(stats.get('bytes_in_use', 0))


# --------------------------------------------------------------------------------------------
# The training loop's offline data: everything on device, or a rotating window of shards.
# --------------------------------------------------------------------------------------------


class ShardWindow:
    """Offline `ChunkData` for the training loop (conventions §9/10).

    When the whole dataset fits (`shards_per_window` >= number of files, the default when the
    budget allows or is unknown for a 1M file), it is loaded once and never changes. Otherwise the
    shards are split into consecutive windows of `shards_per_window` files, and the window in use
    at step s is (s // rotate_every) % num_windows (cycling in order; with 1 shard per window this
    is the reference's one-shard-every-N-steps rotation). Windows are padded to one capacity, so
    the jitted training scan does not recompile when the window changes (sampling stays uniform
    over the window's real rows). Call `data_at(step)` between scans; make the scan length divide
    `rotate_every`.

    The data of the tasks `env_names` (a list/tuple of T env ids of ONE domain, even T = 1; see
    `domain_env_names`): `data_at` gives a `ChunkData` whose rewards and masks are (T, N), row t
    relabelled for env_names[t], everything else held once; every file is read once per window load
    and relabelled once per task (`load_shard_tasks`). `env` is a list of T envs in the same order
    (default: `make_env(name)` for each), and `load_fn`, when given, is called per file as
    `load_fn(path, env_names, envs, sparse, action_clip_eps)` and must return what
    `load_shard_tasks` does.
    """

    def __init__(
        self,
        env_names: Sequence[str],
        dataset_dir: str = DEFAULT_DATASET_DIR,
        sparse: bool = False,
        *,
        env=None,
        shards_per_window: Optional[int] = None,
        budget_bytes: Optional[int] = None,
        rotate_every: int = 1000,
        action_clip_eps: float = ACTION_CLIP_EPS,
        standard: bool = False,
        device=None,
        load_fn: Optional[Callable] = None,
    ):
        from trqam_jax import chunks

        self.infos = parse_domain_env_names(env_names)
        self.info = self.infos[0]  # info.dataset / info.domain are the domain's
        self.env_names = tuple(i.env_name for i in self.infos)
        self.num_tasks = len(self.env_names)
        self.files = find_dataset_files(self.info.env_name, dataset_dir, standard)
        self.paths = list(self.files.train)
        self.file_nbytes = [
            chunks.chunk_data_nbytes(*file_rows_and_dims(p), num_tasks=self.num_tasks) for p in self.paths
        ]
        if shards_per_window is None:
            if budget_bytes is None:
                shards_per_window = len(self.paths)
            else:
                shards_per_window = max(1, int(budget_bytes // max(self.file_nbytes)))
        self.shards_per_window = int(min(max(1, shards_per_window), len(self.paths)))
        self.windows = [
            self.paths[i : i + self.shards_per_window] for i in range(0, len(self.paths), self.shards_per_window)
        ]
        self.rotate_every = int(rotate_every)
        if self.rotate_every <= 0:
            raise ValueError('rotate_every must be positive')
        self.sparse = sparse
        self.action_clip_eps = action_clip_eps
        self.device = device
        self.load_fn = load_fn
        # The tasks' envs, in the order of env_names.
        self.envs = check_task_envs(self.infos, env) if env is not None else tuple(
            make_env(name) for name in self.env_names)
        self.capacity = None
        self.index = None
        self._data = None

    @property
    def num_windows(self) -> int:
        return len(self.windows)

    @property
    def fits(self) -> bool:
        """True when the whole dataset is held on the device (a single window)."""
        return self.num_windows == 1

    def nbytes(self) -> int:
        """Device bytes of one window (upper bound from the npz headers; rewards and masks of every
        task counted)."""
        step = self.shards_per_window
        return max(sum(self.file_nbytes[i : i + step]) for i in range(0, len(self.paths), step))

    def total_nbytes(self) -> int:
        """Device bytes of the whole dataset (upper bound from the npz headers)."""
        return sum(self.file_nbytes)

    def window_index(self, step: int) -> int:
        return (int(step) // self.rotate_every) % self.num_windows

    def _load(self, index: int) -> chunks.ChunkData:
        # Each file read once, relabelled per task: rewards and masks (T, n).
        train = load_shards(self.windows[index], self.env_names, self.envs, self.sparse, self.action_clip_eps,
                            self.load_fn)
        n = train['terminals'].shape[0]
        if self.num_windows > 1:
            # One shape for every window: the largest window's header row count (an upper bound).
            bound = max(sum(file_rows_and_dims(p)[0] for p in w) for w in self.windows)
            self.capacity = max(self.capacity or 0, bound, n)
        self._data = None  # free the previous window's device arrays first
        return to_device(train, capacity=self.capacity, device=self.device)

    def data_at(self, step: int) -> chunks.ChunkData:
        """The `ChunkData` to train on at `step` (loads the next window when the step crosses a
        multiple of `rotate_every`)."""
        index = self.window_index(step)
        if index != self.index or self._data is None:
            self._data = self._load(index)
            self.index = index
        return self._data

    @property
    def data(self) -> chunks.ChunkData:
        """The current window's data (the first window before any `data_at` call)."""
        return self.data_at(0) if self._data is None else self._data
