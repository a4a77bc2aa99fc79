"""Loading OGBench single-task data (conventions §9 and §10): files, checks, shards, device arrays.

The IO side of `trqam_jax.chunks`. Main entry points:

* `parse_env_name(env_name)`: env id -> domain, dataset name, ogbench env (validated).
* `find_dataset_files(env_name, dataset_dir)`: the files the protocol needs; raises
  `DatasetMissingError` (fast, before anything from ogbench runs) when they are absent.
* `load_dataset(env_name, dataset_dir, sparse)`: env + train/val numpy dicts, like
  `ogbench.make_env_and_datasets`, but never downloads, and with conventions §9's post-processing (action
  clipping, optional sparse rewards). Sharded (10M/100M) datasets are concatenated.
* `ShardWindow`: the offline data for the training loop: the whole dataset on device when it fits,
  otherwise a window of shards rotated every `rotate_every` steps. Given several env ids of one
  domain (a list, see `domain_env_names`), it holds the domain's data once with (T, N) rewards and
  masks, one row per task (`trqam_jax.chunks.TaskData` samples one learner's row).
* `domain_env_names(domain, tasks)`: the single-task env ids of a domain's tasks.
* `load_shard_tasks(path, env_names, envs)`: one raw file read once, relabelled for several tasks.
* `dataset_nbytes(env_name, dataset_dir)`: device bytes the dataset needs (from the npz headers).
* `to_device(dataset)`: numpy dict -> `trqam_jax.chunks.ChunkData`.

Errors derive from `DataError`; the launcher should print `str(err)` and exit (no traceback).

Large datasets (10M/100M) and where they live (the TRQAM and horizon-reduction releases):
  <dataset_dir>/antmaze-giant-navigate-10m-v0/antmaze-giant-navigate-v0-000.npz .. -009.npz
  <dataset_dir>/cube-triple-play-10m-v0/cube-triple-play-v0-000.npz .. -009.npz
  <dataset_dir>/puzzle-4x4-play-10m-v0/puzzle-4x4-play-v0-000.npz .. -009.npz
  <dataset_dir>/cube-quadruple-play-100m-v0/cube-quadruple-play-v0-000.npz .. -099.npz
Each shard holds 1000 episodes (1M transitions) in the raw OGBench npz format. The 10M cube-triple
and puzzle-4x4 sets are shards 000-009 of the official `<domain>-100m-v0` release, so a
`<domain>-100m-v0/` directory is accepted as a fallback (its first 10 shards). Shards are taken in
sorted file-name order, `*-val.npz` excluded (as in the reference loader).
"""

import glob
import os
import re
import zipfile
import zlib
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from experiments.configs.domains import DOMAIN_SETTINGS, TASKS  # noqa: F401 (TASKS: part of this module's API)
from trqam_jax import chunks

DEFAULT_DATASET_DIR = '~/.ogbench/data'
ACTION_CLIP_EPS = 1e-5
KEYS = ('observations', 'actions', 'rewards', 'masks', 'terminals', 'next_observations')
TASK_KEYS = ('rewards', 'masks')  # what relabelling writes: (T, N) in a domain's data
SHARED_KEYS = tuple(k for k in KEYS if k not in TASK_KEYS)  # the same for every task of a domain
INFO_KEYS = ('qpos', 'qvel', 'button_states')  # what relabelling reads


class DataError(Exception):
    """Base of the data errors; their message is meant to be shown alone, without a traceback."""


class DatasetMissingError(DataError, FileNotFoundError):
    """The dataset files are not on disk (nothing was downloaded)."""


class UnknownEnvError(DataError, ValueError):
    """The env id does not name a supported OGBench single-task env."""


class DatasetDamagedError(DataError, ValueError):
    """A dataset file is on disk but cannot be read (truncated, empty, corrupted)."""


# --------------------------------------------------------------------------------------------
# Domains (conventions §10, plus cube-single-play for quick tests).
# --------------------------------------------------------------------------------------------


class DomainSpec(NamedTuple):
    name: str  # e.g. 'cube-double-play'
    navigation: bool  # antmaze / humanoidmaze (data needs expert policies, not regenerable offline)
    size_m: int  # protocol dataset size, millions of transitions
    shard_dirs: Tuple[str, ...]  # sharded layout: candidate dirs under dataset_dir, preferred first
    num_shards: int  # 0 = the single standard file <domain>-v0.npz (+ -val.npz)


# The domains stored in shards (the others are one standard 1M file): size_m, candidate dirs, num_shards.
_SHARDED = {
    'antmaze-giant-navigate': (10, ('antmaze-giant-navigate-10m-v0',), 10),
    'puzzle-4x4-play': (10, ('puzzle-4x4-play-10m-v0', 'puzzle-4x4-play-100m-v0'), 10),
    'cube-triple-play': (10, ('cube-triple-play-10m-v0', 'cube-triple-play-100m-v0'), 10),
    'cube-quadruple-play': (100, ('cube-quadruple-play-100m-v0',), 100),
}

# One spec per domain of experiments.configs.domains, in its order.
DOMAINS: Dict[str, DomainSpec] = {
    name: DomainSpec(name, name.endswith('-navigate'), *_SHARDED.get(name, (1, (), 0))) for name in DOMAIN_SETTINGS
}

_ENV_RE = re.compile(r'^(?P<domain>[a-z0-9]+(?:-[a-z0-9]+)*?)-singletask(?:-task(?P<task>\d+))?-(?P<version>v\d+)$')


class EnvInfo(NamedTuple):
    env_name: str  # 'cube-double-play-singletask-task2-v0'
    domain: str  # 'cube-double-play'
    dataset: str  # 'cube-double-play-v0' (the standard 1M file's name)
    ogbench_env: str  # 'cube-double-singletask-task2-v0' (the gymnasium id; used for relabeling)
    task: Optional[int]  # 2; None for the default-task alias '<domain>-singletask-v0'
    version: str  # 'v0'
    spec: DomainSpec


def valid_domains_message() -> str:
    return 'valid domains: ' + ', '.join(DOMAINS)


def parse_env_name(env_name: str) -> EnvInfo:
    """`cube-double-play-singletask-task2-v0` -> domain `cube-double-play`, dataset
    `cube-double-play-v0`, ogbench env `cube-double-singletask-task2-v0`. Raises UnknownEnvError."""
    m = _ENV_RE.match(env_name or '')
    if m is None:
        raise UnknownEnvError(
            f'unknown env {env_name!r}: expected <domain>-singletask-task<1-5>-v0; {valid_domains_message()}'
        )
    domain, task, version = m.group('domain'), m.group('task'), m.group('version')
    if domain not in DOMAINS:
        raise UnknownEnvError(f'unknown domain {domain!r} in env {env_name!r}; {valid_domains_message()}')
    if task is not None and not 1 <= int(task) <= 5:
        raise UnknownEnvError(f'unknown task in env {env_name!r}: tasks are task1..task5')
    words = domain.split('-')
    ogbench_env = '-'.join(words[:-1] + ['singletask'] + ([f'task{task}'] if task else []) + [version])
    return EnvInfo(
        env_name=env_name,
        domain=domain,
        dataset=f'{domain}-{version}',
        ogbench_env=ogbench_env,
        task=None if task is None else int(task),
        version=version,
        spec=DOMAINS[domain],
    )




def is_domain_name(name) -> bool:
    """True when `name` is exactly a domain of `DOMAINS` (e.g. 'cube-double-play'), not an env id."""
    return isinstance(name, str) and name in DOMAINS


def domain_env_names(domain: str, tasks: Optional[Sequence[int]] = None) -> Tuple[str, ...]:
    """The env ids '<domain>-singletask-task<i>-v0' of `tasks` (default all five, 1..5), in the given
    order. Raises UnknownEnvError for an unknown domain (listing the valid ones) or task number."""
    if not is_domain_name(domain):
        raise UnknownEnvError(f'unknown domain {domain!r}; {valid_domains_message()}')
    tasks = TASKS if tasks is None else tuple(tasks)
    if not tasks:
        raise UnknownEnvError(f'no tasks given for domain {domain!r}: name some of 1..5, e.g. tasks=(1, 3)')
    seen = set()
    for t in tasks:
        ok = isinstance(t, (int, np.integer)) and not isinstance(t, (bool, np.bool_)) and 1 <= int(t) <= 5
        if not ok:
            raise UnknownEnvError(
                f'unknown task {t!r} for domain {domain!r}: tasks are the integers 1..5, e.g. tasks=(1, 3)'
            )
        if int(t) in seen:
            raise UnknownEnvError(f'task {int(t)} of domain {domain!r} given twice: list each task once')
        seen.add(int(t))
    return tuple(f'{domain}-singletask-task{int(t)}-v0' for t in tasks)


def parse_domain_env_names(env_names: Sequence[str]) -> Tuple[EnvInfo, ...]:
    """Validates the env ids of a domain program: one or more explicit tasks (task<i>) of ONE domain
    and version, none repeated. Raises UnknownEnvError / DataError with the fix."""
    if isinstance(env_names, str) or not isinstance(env_names, (list, tuple)):
        raise DataError(f'expected a list of env ids of one domain, got {env_names!r}')
    if not env_names:
        raise DataError('no env ids given: a domain window needs at least one task')
    infos = tuple(parse_env_name(n) for n in env_names)
    datasets = sorted({i.dataset for i in infos})
    if len(datasets) > 1:
        raise DataError(
            f'the env ids {list(env_names)} span several domains ({", ".join(datasets)}): a domain program '
            'trains the tasks of ONE domain; run the other domains separately'
        )
    alias = [i.env_name for i in infos if i.task is None]
    if alias:
        raise DataError(
            f'{alias[0]} selects no task: in a list of tasks name each explicitly, e.g. '
            f'{domain_env_names(infos[0].domain, (2,))[0]}'
        )
    repeated = sorted({n for n in env_names if list(env_names).count(n) > 1})
    if repeated:
        raise DataError(f'env id {repeated[0]} given twice: list each task of the domain once')
    return infos


# --------------------------------------------------------------------------------------------
# Files.
# --------------------------------------------------------------------------------------------


class DatasetFiles(NamedTuple):
    train: Tuple[str, ...]  # the standard file, or the shards in order
    val: Optional[str]  # may be None for sharded datasets
    sharded: bool
    directory: str


def _generation_hint(info: EnvInfo, dataset_dir: str, dataset_name: str) -> str:
    if info.spec.navigation:
        extra = ''
        if info.domain == 'antmaze-giant-navigate' and dataset_name != info.dataset:
            extra = (
                f' The 10M set is the TRQAM authors\' release (Hugging Face dataset '
                f'yonghoon96/antmaze-giant-navigate-10m-v0): copy its *.npz into {dataset_dir}/{dataset_name}/.'
            )
        return (
            'Navigation datasets (antmaze, humanoidmaze) cannot be generated here: they need OGBench\'s '
            'expert policies, which are not available offline. Download them with OGBench on a machine '
            f'with internet (python -c "import ogbench; ogbench.download_datasets([\'{info.dataset}\'], '
            f'dataset_dir=\'{dataset_dir}\')") and copy the files to {dataset_dir}.' + extra
        )
    hint = (
        'Generate it offline with:\n'
        f'  python -m experiments.make_dataset --dataset={dataset_name} --dataset_dir={dataset_dir}'
    )
    if info.spec.num_shards and dataset_name != info.dataset and info.spec.size_m == 10:
        hint += f'\n(or copy shards 000-009 of the official {info.domain}-100m-v0 release there)'
    return hint


# Errors that reading a damaged .npz raises (numpy, zipfile, zlib); a file is only blamed after
# `_damage` confirms it, so other errors of these types pass through unchanged.
_READ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError)


def _damage(path: str, full: bool = False) -> Optional[str]:
    """Why `path` is not a readable .npz (None if it is). Cheap by default (the zip directory);
    full=True also reads every member and checks its CRC."""
    try:
        if os.path.getsize(path) == 0:
            return 'it is empty (0 bytes)'
        with zipfile.ZipFile(path) as zf:
            if full:
                bad = zf.testzip()
                if bad is not None:
                    return f'member {bad} fails its CRC check'
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as e:
        reason = str(e).strip() or type(e).__name__
        return f'it is truncated or corrupted ({reason}; {os.path.getsize(path)} bytes)' if os.path.exists(path) \
            else f'it cannot be read ({reason})'
    return None


def _same_settings(path: str) -> str:
    """The make_dataset flags that rebuild the file pair of `path` as it was: from the record written
    beside it, else from its readable twin (train <-> val file), else none (the official settings)."""
    from experiments import make_dataset

    record = make_dataset.read_generation_record(path)
    if record is None:
        twin = path[:-len('-val.npz')] + '.npz' if path.endswith('-val.npz') else path[:-len('.npz')] + '-val.npz'
        try:
            with np.load(twin) as f:
                ends = int(np.asarray(f['terminals']).sum())
                rows = len(f['terminals'])
        except Exception:  # no twin, or damaged too: the official settings
            return ''
        if ends < 1:
            return ''
        episodes = round(ends / 0.1) if twin.endswith('-val.npz') else ends  # val: the default 10%
        record = {'num_episodes': episodes, 'episode_length': rows // ends}
    flags = {'num_episodes': record.get('num_episodes'), 'episode_length': record.get('episode_length'),
             'seed': record.get('seed'), 'val_fraction': record.get('val_fraction')}
    defaults = {'seed': 0, 'val_fraction': 0.1}
    return ''.join(f' --{k}={v}' for k, v in flags.items() if v is not None and defaults.get(k) != v)


def _repair_hint(path: str, info: EnvInfo, dataset_dir: str) -> str:
    """One line: how to get a good copy of the dataset file at `path`."""
    if info.spec.navigation:
        where = f'into {os.path.dirname(path)}'
        if info.domain == 'antmaze-giant-navigate' and os.path.basename(os.path.dirname(path)) != \
                os.path.basename(dataset_dir):
            source = ('the TRQAM authors\' 10M release (Hugging Face dataset yonghoon96/antmaze-giant-navigate-10m-v0)')
        else:
            source = (f'ogbench (python -c "import ogbench; ogbench.download_datasets([\'{info.dataset}\'], '
                      f'dataset_dir=\'{dataset_dir}\')")')
        return (f'Navigation datasets cannot be regenerated offline: download it again from {source} on a '
                f'machine with internet and copy it {where}.')
    shard = re.fullmatch(re.escape(info.dataset) + r'-(\d{3})(?:-val)?\.npz', os.path.basename(path))
    if shard is None:
        return ('Regenerate it with: python -m experiments.make_dataset '
                f'--dataset={info.dataset} --dataset_dir={dataset_dir}{_same_settings(path)} --overwrite')
    index = int(shard.group(1))
    release = os.path.basename(os.path.dirname(path))
    if release not in (f'{info.domain}-10m-v0', f'{info.domain}-100m-v0'):
        release = f'{info.domain}-100m-v0'
    hint = ('Regenerate it with: python -m experiments.make_dataset '
            f'--dataset={release} --dataset_dir={dataset_dir} --shard_start={index} --num_shards=1 --overwrite')
    generated = os.path.join(dataset_dir, release, os.path.basename(path))
    if os.path.abspath(generated) != os.path.abspath(path):
        hint += f' and copy {generated} over it'
    return hint


def damaged_file_error(path: str, env_name: str, dataset_dir: str, reason: str) -> 'DatasetDamagedError':
    """The one-line error for a dataset file that exists but cannot be read."""
    info = parse_env_name(env_name)
    dataset_dir = os.path.abspath(os.path.expanduser(dataset_dir))
    return DatasetDamagedError(
        f'dataset file {path} cannot be loaded: {reason}. {_repair_hint(path, info, dataset_dir)} '
        '(or restore the file from a good copy).'
    )


def check_files_readable(paths: Sequence[str], env_name: str, dataset_dir: str, full: bool = False) -> None:
    """Raises DatasetDamagedError, naming the file and how to regenerate or download it, for the first
    of `paths` that is not a readable .npz (zero bytes, truncated; with full=True also bad CRCs)."""
    for path in paths:
        reason = _damage(path, full)
        if reason is not None:
            raise damaged_file_error(path, env_name, dataset_dir, reason)


def _blame(paths: Sequence[str], env_name: str, dataset_dir: str, error: BaseException) -> None:
    """After a read error: raise DatasetDamagedError for the damaged file among `paths`, if one is."""
    for path in paths:
        if path is None:
            continue
        reason = _damage(path, full=True)
        if reason is not None:
            raise damaged_file_error(path, env_name, dataset_dir, reason) from None
    raise error


def _shard_paths(directory: str) -> List[str]:
    return [p for p in sorted(glob.glob(os.path.join(directory, '*.npz'))) if not p.endswith('-val.npz')]


def find_dataset_files(
    env_name: str,
    dataset_dir: str = DEFAULT_DATASET_DIR,
    standard: bool = False,
) -> DatasetFiles:
    """The files the protocol's dataset needs (conventions §10), checked on disk. Fast; never downloads.

    standard: use the standard 1M file `<domain>-v0.npz` even where the protocol uses 10M/100M
      (a deviation from conventions §10, e.g. for quick tests).
    Raises UnknownEnvError or DatasetMissingError (naming the missing files and how to get them).
    """
    info = parse_env_name(env_name)
    dataset_dir = os.path.abspath(os.path.expanduser(dataset_dir))
    spec = info.spec
    if spec.num_shards == 0 or standard:
        train = os.path.join(dataset_dir, f'{info.dataset}.npz')
        val = os.path.join(dataset_dir, f'{info.dataset}-val.npz')
        missing = [p for p in (train, val) if not os.path.isfile(p)]
        if missing:
            raise DatasetMissingError(
                f'dataset {info.dataset} for {env_name} not found: missing {", ".join(missing)}.\n'
                + _generation_hint(info, dataset_dir, info.dataset)
            )
        check_files_readable((train, val), env_name, dataset_dir)
        return DatasetFiles((train,), val, False, dataset_dir)

    found = []
    for sub in spec.shard_dirs:
        directory = os.path.join(dataset_dir, sub)
        shards = _shard_paths(directory)
        found.append((directory, len(shards)))
        if len(shards) >= spec.num_shards:
            shards = shards[: spec.num_shards]
            val = None
            for cand in (shards[0][: -len('.npz')] + '-val.npz', os.path.join(dataset_dir, f'{info.dataset}-val.npz')):
                if os.path.isfile(cand):
                    val = cand
                    break
            check_files_readable(shards + ([val] if val else []), env_name, dataset_dir)
            return DatasetFiles(tuple(shards), val, True, directory)
    main_dir = os.path.join(dataset_dir, spec.shard_dirs[0])
    last = spec.num_shards - 1
    looked = '; '.join(f'{d}: {n} found' for d, n in found)
    raise DatasetMissingError(
        f'dataset {spec.shard_dirs[0]} ({spec.size_m}M) for {env_name} not found: need {spec.num_shards} '
        f'shards {info.dataset}-000.npz .. {info.dataset}-{last:03d}.npz in {main_dir} ({looked}).\n'
        + _generation_hint(info, dataset_dir, spec.shard_dirs[0])
    )


def _npz_shape(path: str, key: str) -> Tuple[Tuple[int, ...], np.dtype]:
    """Shape and dtype of one array of an .npz, read from its header only (no data is loaded)."""
    try:
        with zipfile.ZipFile(path) as zf, zf.open(key + '.npy') as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as e:
        reason = _damage(path)
        if reason is None:
            raise
        raise DatasetDamagedError(f'dataset file {path} cannot be loaded: {reason}.') from None
    return shape, dtype


def file_rows_and_dims(path: str) -> Tuple[int, int, int]:
    """(raw rows, obs dim, action dim) of a raw OGBench npz, from its headers. The transitions are
    the raw rows minus one per trajectory (the final observation has no action)."""
    (rows, obs_dim), _ = _npz_shape(path, 'observations')
    (_, act_dim), _ = _npz_shape(path, 'actions')
    return int(rows), int(obs_dim), int(act_dim)


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
# Loading.
# --------------------------------------------------------------------------------------------


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


def make_env(env_name: str, seed: int = 0, **env_kwargs):
    """The single-task env (through ogbench, so no dataset is touched), reset once with `seed`.

    ogbench's relabeling calls an unseeded env.reset(), and cube tasks draw a random block
    permutation there: seeding the env first makes the relabeled rewards the same on every load
    (so a resumed run sees the data of the original run).
    """
    import ogbench

    parse_env_name(env_name)
    env = ogbench.make_env_and_datasets(env_name, env_only=True, **env_kwargs)
    env.reset(seed=seed)
    return env


def _in_shard_dir(path: str, info: EnvInfo) -> bool:
    return os.path.basename(os.path.dirname(path)) in info.spec.shard_dirs


def _read_raw(path: str, info: EnvInfo):
    """A raw OGBench npz read as `ogbench.make_env_and_datasets` reads a single-task train file
    (float32 observations and actions, next_observations, the info keys relabelling needs)."""
    import ogbench

    try:
        return ogbench.load_dataset(path, compact_dataset=False, add_info=True)
    except _READ_ERRORS as e:
        _blame([path], info.env_name, os.path.dirname(os.path.dirname(path)) if _in_shard_dir(path, info)
               else os.path.dirname(path), e)


def load_shard(path: str, env_name: str, env, sparse: bool = False, action_clip_eps: float = ACTION_CLIP_EPS):
    """One raw OGBench npz (e.g. a shard) -> post-processed numpy dict. Same processing as
    `ogbench.make_env_and_datasets` (next_observations, task relabeling with `env`), then conventions §9."""
    from ogbench.relabel_utils import relabel_dataset

    info = parse_env_name(env_name)
    ds = _read_raw(path, info)
    relabel_dataset(info.ogbench_env, env, ds)
    return postprocess(ds, sparse, action_clip_eps)


def _check_task_envs(infos: Sequence[EnvInfo], envs) -> Tuple:
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
    Row t equals what `load_shard(path, env_names[t], envs[t], ...)` (and the single-task
    `load_dataset`) gives: same reading, relabelling and post-processing."""
    from ogbench.relabel_utils import relabel_dataset

    infos = parse_domain_env_names(env_names)
    envs = _check_task_envs(infos, envs)
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
    env_name: str,
    env,
    sparse: bool = False,
    action_clip_eps: float = ACTION_CLIP_EPS,
    load_fn: Optional[Callable] = None,
):
    """Loads and concatenates shards into arrays preallocated from the npz headers (peak host
    memory: the result plus one shard). Each shard's last row is a trajectory end.

    env_name may be a list of T env ids of one domain, with `env` the matching list of envs: each
    shard is then read once and relabelled per task (`load_fn(path, env_names, envs, sparse,
    action_clip_eps)`, default `load_shard_tasks`), and rewards and masks are (T, n)."""
    multi = not isinstance(env_name, str)
    if multi:
        env_name = tuple(env_name)
        env = _check_task_envs(parse_domain_env_names(env_name), env)
    load_fn = load_fn or (load_shard_tasks if multi else load_shard)
    lead = (len(env_name),) if multi else ()
    dims = [file_rows_and_dims(p) for p in paths]
    total = sum(r for r, _, _ in dims)
    obs_dim, act_dim = dims[0][1], dims[0][2]
    shapes = dict(observations=(total, obs_dim), actions=(total, act_dim), rewards=lead + (total,),
                  masks=lead + (total,), terminals=(total,), next_observations=(total, obs_dim))
    out = {k: np.empty(shapes[k], np.float32) for k in KEYS}
    n = 0
    for p in paths:
        ds = load_fn(p, env_name, env, sparse, action_clip_eps)
        m = ds['terminals'].shape[0]
        for k in KEYS:
            expected = lead + (m,) if k in TASK_KEYS else (m,)
            if tuple(ds[k].shape[: len(expected)]) != expected:
                raise DataError(f'{p}: {k} has shape {ds[k].shape}, expected {expected} + ... ({m} transitions, '
                                f'{len(lead) or 1} task(s))')
            if k in TASK_KEYS:
                out[k][..., n : n + m] = ds[k]
            else:
                out[k][n : n + m] = ds[k]
        out['terminals'][n + m - 1] = 1.0
        n += m
    return {k: v[..., :n] if k in TASK_KEYS else v[:n] for k, v in out.items()}


def load_dataset(
    env_name: str,
    dataset_dir: str = DEFAULT_DATASET_DIR,
    sparse: bool = False,
    action_clip_eps: float = ACTION_CLIP_EPS,
    *,
    env_only: bool = False,
    dataset_only: bool = False,
    cur_env=None,
    standard: bool = False,
    shards: Optional[Sequence[int]] = None,
):
    """OGBench single-task data with conventions §9's post-processing, never downloading.

    Returns (env, train, val), or (train, val) with dataset_only, or env with env_only (the same
    switches as `ogbench.make_env_and_datasets`). train/val are numpy dicts with keys
    observations, actions, rewards, masks, terminals, next_observations (float32); val may be None
    for sharded datasets without a val file. Missing files raise DatasetMissingError before any
    ogbench call. cur_env: an already made env of this task to relabel with (else one is made).
    Sharded datasets (10M/100M) are concatenated (all shards, or the indices in `shards`); for the
    training loop prefer `ShardWindow`, which holds only what fits on the device.
    """
    info = parse_env_name(env_name)
    if env_only:
        return make_env(env_name)
    files = find_dataset_files(env_name, dataset_dir, standard)  # raises before ogbench is touched
    env = cur_env if cur_env is not None else make_env(env_name)
    if not files.sharded:
        import ogbench

        try:
            train, val = ogbench.make_env_and_datasets(
                env_name, dataset_dir=files.directory, dataset_only=True, cur_env=env
            )
        except _READ_ERRORS as e:
            _blame([*files.train, files.val], env_name, files.directory, e)
        train, val = postprocess(train, sparse, action_clip_eps), postprocess(val, sparse, action_clip_eps)
    else:
        paths = files.train if shards is None else [files.train[i] for i in shards]
        train = load_shards(paths, info.env_name, env, sparse, action_clip_eps)
        val = None if files.val is None else load_shard(files.val, info.env_name, env, sparse, action_clip_eps)
    return (train, val) if dataset_only else (env, train, val)


def to_device(dataset: Dict[str, np.ndarray], capacity: Optional[int] = None, device=None) -> chunks.ChunkData:
    """A loaded numpy dict -> `trqam_jax.chunks.ChunkData` on the device (padded to `capacity`)."""
    return chunks.make_chunk_data(**{k: dataset[k] for k in KEYS}, capacity=capacity, device=device)


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

    Domain window: `env_name` a list/tuple of T env ids of ONE domain (even T = 1; see
    `domain_env_names`). Then `data_at` gives a `ChunkData` whose rewards and masks are (T, N), row t
    relabelled for env_names[t], everything else held once; every file is read once per window load
    and relabelled once per task (`load_shard_tasks`). `env` is then a list of T envs in the same
    order (default: `make_env(name)` for each), and `load_fn`, when given, is called per file as
    `load_fn(path, env_names, envs, sparse, action_clip_eps)` and must return what
    `load_shard_tasks` does. With a single env id (a str), everything is as for one task: 1-D rewards
    and masks, `load_fn(path, env_name, env, sparse, action_clip_eps)` like `load_shard`.
    `env_names` (a tuple) and `num_tasks` say which case it is (1 task: `env_names[0]`).
    """

    def __init__(
        self,
        env_name: Union[str, Sequence[str]],
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
        self.domain_window = not isinstance(env_name, str)
        if self.domain_window:
            self.infos = parse_domain_env_names(env_name)
        else:
            self.infos = (parse_env_name(env_name),)
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
        if self.domain_window:
            # env: the list of the tasks' envs, in the order of env_names.
            self.env = _check_task_envs(self.infos, env) if env is not None else tuple(
                make_env(name) for name in self.env_names)
            self.envs = self.env
        else:
            self.env = env if env is not None else make_env(env_name)
            self.envs = (self.env,)
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
        paths = self.windows[index]
        if self.domain_window:
            # Each file read once, relabelled per task: rewards and masks (T, n).
            train = load_shards(paths, self.env_names, self.envs, self.sparse, self.action_clip_eps, self.load_fn)
        elif not self.files.sharded and self.load_fn is None:
            train, _ = load_dataset(
                self.info.env_name,
                self.files.directory,
                self.sparse,
                self.action_clip_eps,
                dataset_only=True,
                cur_env=self.env,
                standard=True,
            )
        else:
            train = load_shards(paths, self.info.env_name, self.env, self.sparse, self.action_clip_eps, self.load_fn)
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
