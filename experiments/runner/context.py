"""The program: one Context per group of learners (settings, networks, data, shardings), and its
jitted update scans, traced and compiled once per shape."""

import dataclasses
import functools
import time
from typing import Dict, Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm import tqdm

from experiments import data
from experiments.infra.preemption import NEVER, Preemption
from experiments.policy import make_chunk_policy
from experiments.runner.spec import Settings, TaskSpec
from trqam_jax import agent, chunks


def learner_shardings(num_learners: int):
    """(per-learner, replicated) shardings over the local devices, or (None, None) with one device."""
    devices = jax.local_devices()
    if len(devices) < 2:
        return None, None
    if num_learners % len(devices):
        print(f"{num_learners} learners do not divide over {len(devices)} devices: running them on one device.")
        return None, None
    mesh = Mesh(np.array(devices), ("learner",))
    return NamedSharding(mesh, PartitionSpec("learner")), NamedSharding(mesh, PartitionSpec())


_chunk_policy = functools.lru_cache(maxsize=None)(make_chunk_policy)


def chunk_policy(cfg: agent.AgentConfig, nets: agent.Networks, horizon: int, action_dim: int):
    """The jitted policy of a network shape, shared by the runs of a program and by every evaluation."""
    return _chunk_policy(agent.static_config(cfg), nets, horizon, action_dim)


def place(tree, sharding):
    """The tree on the devices of `sharding` (as it is with one device, where the sharding is None)."""
    return tree if sharding is None else jax.device_put(tree, sharding)


@dataclasses.dataclass
class Context:
    """What a program's phases share: the settings, the networks, the domain's data and the learners.

    `spec` is the first run's: every run of a program has the same domain, method and shapes, so its
    static update settings serve all learners (their budgets are in the state, `agent.Hyperparams`).
    """

    settings: Settings  # the program's schedule, evaluation, data and seeds
    spec: TaskSpec
    nets: agent.Networks
    window: Optional[data.ShardWindow]  # the domain's data, held once; rewards and masks (T, N)
    learner_seeds: list  # each learner's seed (L): the seeds of its run
    tasks: object  # (L,) int32: each learner's row of the per-task rewards and masks
    obs_dim: int
    action_dim: int
    per_learner: object = None  # sharding of learner-stacked trees
    replicated: object = None  # sharding of shared data
    preempt: Preemption = NEVER

    @property
    def chunk_dim(self):
        return self.spec.horizon * self.action_dim

    def offline_data(self, step: int) -> chunks.TaskData:
        return chunks.TaskData(place(self.window.data_at(step), self.replicated), self.tasks)


def train_scan(cfg: agent.AgentConfig, nets: agent.Networks, horizon: int, num_steps: int, online: bool):
    """The jitted scan of `num_steps` updates over learner-stacked states, offline or online. Cached, so
    programs of the same shape (memory groups, runs of one process) are traced and compiled once.

    This and `chunk_policy` are where a phase's AgentConfig loses the values that live in the state
    (`agent.static_config`): runs that differ only in a budget share one trace."""
    return _train_scan(agent.static_config(cfg), nets, horizon, num_steps, online)


@functools.lru_cache(maxsize=None)
def _train_scan(cfg: agent.AgentConfig, nets: agent.Networks, horizon: int, num_steps: int, online: bool):
    sampler, in_axes = ((chunks.sample_replay, chunks.TASK_REPLAY_IN_AXES) if online
                        else (chunks.sample_chunks, chunks.TASK_OFFLINE_IN_AXES))
    sample = chunks.task_sampler(sampler, batch_size=cfg.batch_size, horizon=horizon, discount=cfg.discount)
    return agent.make_train_fn(cfg, nets, sample, num_steps, data_in_axes=in_axes)


_COMPILED: Dict = {}


def _signature(tree):
    leaves, structure = jax.tree_util.tree_flatten(tree)
    return structure, tuple((x.shape, str(x.dtype), getattr(x, "sharding", None)) for x in leaves)


def xla_temp_bytes(compiled) -> Optional[int]:
    """XLA's temporary buffers of a compiled program (None where the backend does not say)."""
    analysis = compiled.memory_analysis()
    return getattr(analysis, "temp_size_in_bytes", None) if analysis is not None else None


def compile_train(train, states, data_example, label: str):
    """The ahead-of-time compiled program (once per shape), and one line on its memory: state, XLA temp
    and dataset."""
    key = (train, _signature(states), _signature(data_example))
    if key in _COMPILED:
        return _COMPILED[key]
    started = time.time()
    compiled = _COMPILED[key] = train.lower(states, data_example).compile()
    temp = xla_temp_bytes(compiled)
    mib = lambda b: "n/a" if b is None else f"{b / 2**20:.1f} MiB"
    online = isinstance(data_example.data, chunks.ReplayData)
    offline = data_example.data.offline if online else data_example.data
    replay = f", online replay {mib(chunks.tree_nbytes(data_example.data.online))}" if online else ""
    # tqdm.write: a line of its own above the phase's progress bar, not appended to it.
    tqdm.write(f"{label}: {len(np.asarray(data_example.task))} learners compiled in {time.time() - started:.1f} s; "
               f"memory: state {mib(chunks.tree_nbytes(states))}, XLA temp {mib(temp)}{replay}, dataset "
               f"{mib(chunks.tree_nbytes(offline))} (held once).")
    return compiled
