"""OGBench in one place: names, files, loading and generation of the offline datasets.

The modules, in the order data flows:
* `names`: the domains (from `experiments.configs.domains`) and their dataset layouts; env ids; the
  base of the data errors, `DataError`.
* `files`: the files an env id needs, found and checked on disk; missing / damaged file errors with
  how to get a good copy.
* `loading`: raw files read, relabelled per task and post-processed (conventions §9); `ShardWindow`,
  the training loop's data on the device; the envs that relabel (`make_env`); memory sizes.
* `generation_plan`, `collection`, `generation_pool`, `generation`: regenerating the manipulation
  play datasets offline (`python -m experiments.make_dataset`): names to file pairs, episodes
  collected by the scripted oracles, the worker pool, and the atomic writing of the files.

Re-exported here: what the runner and its tests use as `data.X`.
"""

from experiments.data.files import DatasetMissingError, find_dataset_files
from experiments.data.loading import ShardWindow, device_memory_bytes, make_env
from experiments.data.names import DataError, UnknownEnvError, domain_env_names, is_domain_name, parse_env_name

__all__ = [
    'DataError',
    'DatasetMissingError',
    'ShardWindow',
    'UnknownEnvError',
    'device_memory_bytes',
    'domain_env_names',
    'find_dataset_files',
    'is_domain_name',
    'make_env',
    'parse_env_name',
]
