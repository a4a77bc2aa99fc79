"""OGBench names (conventions §10): the domains and their dataset layouts, and the single-task env ids.

The domains are those of the one domain table, `experiments.configs.domains`; `DOMAINS` adds what the
data needs of each (navigation or manipulation, protocol size, shard layout). Errors derive from
`DataError`, whose message is meant to be shown alone (the launcher prints `str(err)`, no traceback).
"""

import re
from typing import Dict, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from experiments.configs.domains import DOMAIN_SETTINGS, TASKS
from experiments.infra.errors import UserError

DEFAULT_DATASET_DIR = '~/.ogbench/data'


class DataError(UserError):
    """Base of the data errors; their message is meant to be shown alone, without a traceback."""


class UnknownEnvError(DataError, ValueError):
    """The env id does not name a supported OGBench single-task env."""


class DomainLayout(NamedTuple):
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

# One layout per domain of experiments.configs.domains, in its order.
DOMAINS: Dict[str, DomainLayout] = {
    name: DomainLayout(name, name.endswith('-navigate'), *_SHARDED.get(name, (1, (), 0))) for name in DOMAIN_SETTINGS
}

# The format of an OGBench single-task id; the task is optional (ogbench's default-task alias).
ENV_ID_RE = re.compile(r'^(?P<domain>[a-z0-9]+(?:-[a-z0-9]+)*?)-singletask(?:-task(?P<task>\d+))?-(?P<version>v\d+)$')


class EnvInfo(NamedTuple):
    env_name: str  # 'cube-double-play-singletask-task2-v0'
    domain: str  # 'cube-double-play'
    dataset: str  # 'cube-double-play-v0' (the standard 1M file's name)
    ogbench_env: str  # 'cube-double-singletask-task2-v0' (the gymnasium id; used for relabeling)
    task: Optional[int]  # 2; None for the default-task alias '<domain>-singletask-v0'
    version: str  # 'v0'
    layout: DomainLayout


def valid_domains_message() -> str:
    return 'valid domains: ' + ', '.join(DOMAINS)


def parse_env_name(env_name: str) -> EnvInfo:
    """`cube-double-play-singletask-task2-v0` -> domain `cube-double-play`, dataset
    `cube-double-play-v0`, ogbench env `cube-double-singletask-task2-v0`. Raises UnknownEnvError."""
    m = ENV_ID_RE.match(env_name or '')
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
        layout=DOMAINS[domain],
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
