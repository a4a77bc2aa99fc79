"""The dataset files on disk: which files an env id needs (conventions §10), found and checked fast
(never downloading), and the one-line errors for a missing or damaged file with how to get a good
copy (`make_dataset`'s command, rebuilt with the settings of the generation record beside the file).

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
from typing import List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from experiments.data.names import DEFAULT_DATASET_DIR, DataError, EnvInfo, parse_env_name
from experiments.infra.files import read_json


class DatasetMissingError(DataError, FileNotFoundError):
    """The dataset files are not on disk (nothing was downloaded)."""



class DatasetDamagedError(DataError, ValueError):
    """A dataset file is on disk but cannot be read (truncated, empty, corrupted)."""



class DatasetFiles(NamedTuple):
    train: Tuple[str, ...]  # the standard file, or the shards in order
    val: Optional[str]  # may be None for sharded datasets
    sharded: bool
    directory: str


def generation_record_path(npz_path: str) -> str:
    """The JSON beside a generated file pair (`<stem>.generation.json`) that records how it was made, so
    that a damaged file can be rebuilt exactly: the same settings give the same bytes."""
    stem = npz_path[:-len('-val.npz')] if npz_path.endswith('-val.npz') else npz_path[:-len('.npz')]
    return stem + '.generation.json'


def read_generation_record(npz_path: str) -> dict | None:
    return read_json(generation_record_path(npz_path))


def _generation_hint(info: EnvInfo, dataset_dir: str, dataset_name: str) -> str:
    if info.layout.navigation:
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
    if info.layout.num_shards and dataset_name != info.dataset and info.layout.size_m == 10:
        hint += f'\n(or copy shards 000-009 of the official {info.domain}-100m-v0 release there)'
    return hint


# Errors that reading a damaged .npz raises (numpy, zipfile, zlib); a file is only blamed after
# `_damage` confirms it, so other errors of these types pass through unchanged.
READ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError)


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
    record = read_generation_record(path)
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
    if info.layout.navigation:
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


def blame(paths: Sequence[str], env_name: str, dataset_dir: str, error: BaseException) -> None:
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
    layout = info.layout
    if layout.num_shards == 0 or standard:
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
    for sub in layout.shard_dirs:
        directory = os.path.join(dataset_dir, sub)
        shards = _shard_paths(directory)
        found.append((directory, len(shards)))
        if len(shards) >= layout.num_shards:
            shards = shards[: layout.num_shards]
            val = None
            for cand in (shards[0][: -len('.npz')] + '-val.npz', os.path.join(dataset_dir, f'{info.dataset}-val.npz')):
                if os.path.isfile(cand):
                    val = cand
                    break
            check_files_readable(shards + ([val] if val else []), env_name, dataset_dir)
            return DatasetFiles(tuple(shards), val, True, directory)
    main_dir = os.path.join(dataset_dir, layout.shard_dirs[0])
    last = layout.num_shards - 1
    looked = '; '.join(f'{d}: {n} found' for d, n in found)
    raise DatasetMissingError(
        f'dataset {layout.shard_dirs[0]} ({layout.size_m}M) for {env_name} not found: need {layout.num_shards} '
        f'shards {info.dataset}-000.npz .. {info.dataset}-{last:03d}.npz in {main_dir} ({looked}).\n'
        + _generation_hint(info, dataset_dir, layout.shard_dirs[0])
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
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError):
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
