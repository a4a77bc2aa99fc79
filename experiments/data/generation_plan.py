"""What `make_dataset` writes for a dataset name: the release it names (`DatasetName`), its episode
counts, and its (train, val) file pairs (`Unit`), with the errors for names it cannot generate.

The naming and file layout are described in `experiments.make_dataset`'s docstring (its --help).
"""

from __future__ import annotations

import dataclasses
import os
import re

from absl import app

from experiments.data.names import DEFAULT_DATASET_DIR
from experiments.infra.errors import UserError

DEFAULT_EPISODE_LENGTH = 1001  # Rows per episode in the official play datasets (1000 transitions).
DEFAULT_NUM_SHARDS = 100  # Shards in OGBench's `-100m-v0` releases.
SHARDED_SUFFIX = '-100m-v0'
# The 10M sets (`<domain>-play-10m-v0/`, what the protocol trains cube-triple and puzzle-4x4 on) are
# shards 000-009 of the 100M release, written into their own directory.
TEN_M_SUFFIX = '-10m-v0'
TEN_M_NUM_SHARDS = 10

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

_NAVIGATION_PREFIXES = ('antmaze', 'humanoidmaze', 'pointmaze', 'antsoccer')


class MakeDatasetError(app.UsageError, UserError, ValueError):
    """Bad arguments to the dataset generator (a one-line message, no traceback on the CLI)."""


class UnsupportedDatasetError(MakeDatasetError):
    """The dataset cannot be generated offline by this script."""


@dataclasses.dataclass(frozen=True)
class DatasetName:
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


def parse_dataset_name(name: str) -> DatasetName:
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
    return DatasetName(
        dataset_name=name,
        domain=domain,
        env_name=f'{domain}-v0',
        sharded=match.group('big') is not None,
    )


def default_num_episodes(dataset_name: str) -> int:
    """Official number of train episodes (per shard for `-100m-v0` datasets)."""
    release = parse_dataset_name(dataset_name)
    return _SHARD_NUM_EPISODES if release.sharded else _OFFICIAL_NUM_EPISODES[release.domain]


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
    release = parse_dataset_name(dataset_name)
    dataset_dir = os.path.abspath(os.path.expanduser(dataset_dir))
    return [(p.train_path, p.val_path) for p in plan_units(release, dataset_dir, num_shards, shard_start)]


@dataclasses.dataclass
class Unit:
    """One (train, val) file pair to produce."""

    index: int
    layout_key: int
    train_path: str
    val_path: str


def plan_units(release: DatasetName, dataset_dir: str, num_shards: int | None, shard_start: int) -> list[Unit]:
    if release.sharded:
        num_shards = release.max_shards if num_shards is None else num_shards
        limit = TEN_M_NUM_SHARDS if release.max_shards == TEN_M_NUM_SHARDS else 1000
        if num_shards < 1 or shard_start < 0 or shard_start + num_shards > limit:
            raise MakeDatasetError(f'Invalid shard range: shard_start={shard_start}, num_shards={num_shards} '
                                   f'(shards 0..{limit - 1} exist for {release.dataset_name}).')
        out_dir = os.path.join(dataset_dir, release.dataset_name)
        units = []
        for i, shard in enumerate(range(shard_start, shard_start + num_shards)):
            stem = os.path.join(out_dir, f'{release.file_stem}-{shard:03d}')
            units.append(Unit(i, 1 + shard, f'{stem}.npz', f'{stem}-val.npz'))
        return units
    if num_shards not in (None, 1) or shard_start != 0:
        raise MakeDatasetError(
            f"'{release.dataset_name}' is a single-file dataset; num_shards/shard_start only apply to "
            f"'<domain>-play{SHARDED_SUFFIX}' datasets."
        )
    stem = os.path.join(dataset_dir, release.file_stem)
    return [Unit(0, 0, f'{stem}.npz', f'{stem}-val.npz')]
