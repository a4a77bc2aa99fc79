"""Learners (task, seed, budget) vmapped in one program equal separate single-learner runs.

A program of L learners reads a domain's shared data through `chunks.TaskData` (per-task (T, N)
rewards and masks, a task index per learner) and per-learner `agent.Hyperparams` from the state. Each
test compares it leaf by leaf (final state and every metric) with separate 1-learner runs on a
`ChunkData` holding only that task's rewards and masks, with a config holding that learner's
hyperparameters, and the same PRNG seeds. The networks are tiny and every program scans a few
updates; the compared programs are compiled ahead of time at XLA's lowest backend optimisation level
(both sides alike), and equal programs compile once. The one-compile test calls the jit itself, as
the launcher does.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src import dispatch

from trqam_jax import agent, chunks

OBS, A, H = 3, 2, 2
D = H * A
N = 240  # offline rows; a trajectory ends every 20 rows
STEPS = 4  # scanned updates per program
BATCH = 8
SEED0, SEED1 = 3, 7
TOL = dict(rtol=1e-5, atol=1e-5)


def config(**kw):
    return agent.AgentConfig(**{**dict(hidden_dims=(16, 16), num_critics=2, flow_steps=3, batch_size=BATCH), **kw})


def domain_arrays(num_tasks=2, n=N, seed=0):
    """Host arrays of one synthetic domain: rewards and masks (T, n) differ by task, the rest is shared."""
    rng = np.random.default_rng(seed)
    rewards = rng.normal(size=(num_tasks, n)) + 2.0 * np.arange(num_tasks)[:, None]
    masks = (rng.random((num_tasks, n)) > 0.1 + 0.2 * np.arange(num_tasks)[:, None]).astype(np.float32)
    return dict(
        observations=rng.normal(size=(n, OBS)),
        actions=np.clip(rng.normal(size=(n, A)), -1, 1),
        rewards=rewards,
        masks=masks,
        terminals=(np.arange(n) % 20 == 19).astype(np.float32),
        next_observations=rng.normal(size=(n, OBS)),
    )


def domain_data(arrays):
    """The domain's ChunkData: (T, N) rewards and masks."""
    return chunks.make_chunk_data(**arrays)


def task_data(arrays, task):
    """A single-task ChunkData: 1-D rewards and masks, the task's row."""
    return chunks.make_chunk_data(**{**arrays, "rewards": arrays["rewards"][task], "masks": arrays["masks"][task]})


def sampler_kwargs(cfg):
    return dict(batch_size=cfg.batch_size, horizon=H, discount=cfg.discount)


# The programs here run once or a few times: XLA's backend optimisations would cost more than they save.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


@functools.lru_cache(maxsize=None)
def train_fn(cfg, kind):
    """`agent.make_train_fn` for a config and a kind of data (the jit as the launcher builds it).

    kind: "offline" (ChunkData), "task" (TaskData over ChunkData), "replay" (ReplayData) or
    "task_replay" (TaskData over ReplayData).
    """
    sample, in_axes = {
        "offline": (functools.partial(chunks.sample_chunks, **sampler_kwargs(cfg)), chunks.OFFLINE_IN_AXES),
        "task": (chunks.task_sampler(chunks.sample_chunks, **sampler_kwargs(cfg)), chunks.TASK_OFFLINE_IN_AXES),
        "replay": (functools.partial(chunks.sample_replay, **sampler_kwargs(cfg)), chunks.REPLAY_IN_AXES),
        "task_replay": (chunks.task_sampler(chunks.sample_replay, **sampler_kwargs(cfg)),
                        chunks.TASK_REPLAY_IN_AXES),
    }[kind]
    return agent.make_train_fn(cfg, agent.make_networks(cfg, D), sample, STEPS, data_in_axes=in_axes)


_COMPILED = {}


def compiled_train(cfg, kind, states, data):
    """train_fn(cfg, kind) compiled ahead of time for these shapes (cached: equal programs compile once)."""
    key = (cfg, kind, jax.tree_util.tree_structure((states, data)),
           tuple((x.shape, str(x.dtype)) for x in jax.tree_util.tree_leaves((states, data))))
    if key not in _COMPILED:
        _COMPILED[key] = train_fn(cfg, kind).lower(states, data).compile(compiler_options=FAST_COMPILE)
    return _COMPILED[key]


@functools.lru_cache(maxsize=None)
def _jitted_init(cfg):
    # agent.init_learners under one jit: run eagerly, its vmapped Flax init compiles every op (seconds).
    nets = agent.make_networks(cfg, D)
    return jax.jit(lambda seeds, hparams: agent.init_learners(seeds, cfg, nets, OBS, D, hparams=hparams),
                   compiler_options=FAST_COMPILE)


def init_states(cfg, seeds, hparams=None):
    """Fresh states of `agent.init_learners` (learner i seeded with seeds[i]); the train fns donate them."""
    return _jitted_init(cfg)(jnp.asarray(seeds, jnp.int32), hparams)


def run(cfg, kind, seeds, data, hparams=None):
    """Fresh states for the seeds, trained by one call of the (config, kind) program: (states, metrics)."""
    states = init_states(cfg, seeds, hparams)
    return jax.device_get(compiled_train(cfg, kind, states, data)(states, data))


def assert_learner_equals(multi, i, single):
    """Learner i of a multi-learner run equals the only learner of a single run: every state leaf and metric."""
    (states, metrics), (single_states, single_metrics) = multi, single
    assert set(metrics) == set(single_metrics)

    def check(path, m, s):
        assert s.shape[0] == 1, path
        np.testing.assert_allclose(np.asarray(m[i]), np.asarray(s[0]), **TOL,
                                   err_msg=f"learner {i}: {jax.tree_util.keystr(path)}")

    jax.tree_util.tree_map_with_path(check, (states, metrics), (single_states, single_metrics))


def max_abs_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
               for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def online_buffers(num_learners, capacity=64, block=40, seed=1):
    """Per-learner online regions, each filled by `chunks.append` (under vmap) with its own transitions."""
    rng = np.random.default_rng(seed)
    shape = (num_learners, block)
    blocks = chunks.Transitions(
        observations=jnp.asarray(rng.normal(size=shape + (OBS,)), jnp.float32),
        actions=jnp.asarray(np.clip(rng.normal(size=shape + (A,)), -1, 1), jnp.float32),
        rewards=jnp.asarray(rng.normal(size=shape), jnp.float32),
        masks=jnp.asarray(rng.random(shape) > 0.2, jnp.float32),
        terminals=jnp.asarray(np.broadcast_to(np.arange(block) % 9 == 8, shape), jnp.float32),
        next_observations=jnp.asarray(rng.normal(size=shape + (OBS,)), jnp.float32),
    )
    counts = jnp.asarray(np.linspace(block, block // 2, num_learners).astype(np.int32))
    empty = chunks.init_online(capacity, OBS, A, num_seeds=num_learners)
    return jax.vmap(chunks.append)(empty, blocks, counts)


def learner(tree, i):
    """Learner i of a stacked pytree, keeping a leading axis of 1."""
    return jax.tree_util.tree_map(lambda x: x[i:i + 1], tree)


# 2 tasks x 2 seeds: learner i has task TASKS[i] and seed SEEDS[i].
TASKS = np.array([0, 0, 1, 1], np.int32)
SEEDS = np.array([SEED0, SEED1, SEED0, SEED1])


def test_tasks_and_seeds_equal_single_task_runs():
    """2 tasks x 2 seeds in one program (TaskData over (2, N) rewards and masks) = 4 single-task runs."""
    cfg = config()
    arrays = domain_arrays()
    multi = run(cfg, "task", SEEDS, chunks.TaskData(domain_data(arrays), jnp.asarray(TASKS)))
    singles = {(task, seed): run(cfg, "offline", [seed], task_data(arrays, task))
               for task in (0, 1) for seed in (SEED0, SEED1)}
    for i, (task, seed) in enumerate(zip(TASKS, SEEDS)):
        assert_learner_equals(multi, i, singles[(int(task), int(seed))])
    # The tasks matter: the same seed trained on the other task's rewards and masks ends elsewhere.
    critic_0, critic_1 = (singles[(t, SEED0)][0].critic for t in (0, 1))
    assert max_abs_diff(critic_0, critic_1) > 1e-3
    assert max_abs_diff(singles[(0, SEED0)][1]["target_mean"], singles[(1, SEED0)][1]["target_mean"]) > 1e-2


@pytest.mark.parametrize("method, field, values", [
    ("trqam", "kl_budget", (1.0, 0.05)),
    ("qam", "inv_temp", (1.0, 4.0)),
])
def test_hyperparameter_axis_equals_separate_configs(method, field, values):
    """Learner i has task TASKS[i] and the value values[i % 2] in its state; all share one seed.

    Each equals a separate run whose AgentConfig holds that value (and whose state has it from init_learners).
    The first value is the config's default, so that run shares a program with the other tests; were
    the update to read the config's value instead of the state's, the check that the values bite fails.
    """
    cfg = config(method=method)
    arrays = domain_arrays()
    per_learner = np.asarray(values)[np.arange(len(TASKS)) % 2]
    hparams = agent.hyperparams(cfg, **{field: per_learner})
    multi = run(cfg, "task", [SEED0] * len(TASKS), chunks.TaskData(domain_data(arrays), jnp.asarray(TASKS)),
                hparams=hparams)
    offline = [task_data(arrays, task) for task in (0, 1)]
    for i, (task, value) in enumerate(zip(TASKS, per_learner)):
        single = run(config(method=method, **{field: float(value)}), "offline", [SEED0], offline[task])
        np.testing.assert_allclose(getattr(single[0].hparams, field), [value])
        assert_learner_equals(multi, i, single)
    # The values bite: learners 0 and 1 (same seed, same task) end with different multipliers and actors.
    states, metrics = multi
    assert abs(float(metrics["lambda_eff"][0, -1] - metrics["lambda_eff"][1, -1])) > 1e-3
    if method == "trqam":
        assert abs(float(states.dual.lam[0] - states.dual.lam[1])) > 1e-3
    assert max_abs_diff(learner(states.actor, 0), learner(states.actor, 1)) > 1e-6


def test_online_replay_tasks_equal_single_runs():
    """TaskData over ReplayData (per-task offline rows, per-learner online buffers) = single replay runs."""
    cfg = config()
    arrays = domain_arrays()
    online = online_buffers(len(TASKS))
    assert len(set(np.asarray(online.size).tolist())) > 1  # the learners' buffers differ in size too
    data = chunks.TaskData(chunks.ReplayData(domain_data(arrays), online), jnp.asarray(TASKS))
    multi = run(cfg, "task_replay", SEEDS, data)
    offline = [task_data(arrays, task) for task in (0, 1)]
    for i, (task, seed) in enumerate(zip(TASKS, SEEDS)):
        single = run(cfg, "replay", [seed], chunks.ReplayData(offline[task], learner(online, i)))
        assert_learner_equals(multi, i, single)
    # Learners 0 and 2 share a seed but not a task (nor a buffer): they end apart.
    assert max_abs_diff(learner(multi[0].critic, 0), learner(multi[0].critic, 2)) > 1e-3


class CompileCounter:
    """Counts jaxpr traces and XLA backend compiles while active (jax.monitoring events)."""

    def __init__(self):
        self.events = []

    def _listen(self, event, duration, **kwargs):
        if event in (dispatch.JAXPR_TRACE_EVENT, dispatch.BACKEND_COMPILE_EVENT):
            self.events.append(event)

    def count(self, event):
        return self.events.count(event)

    def __enter__(self):
        jax.monitoring.register_event_duration_secs_listener(self._listen)
        return self

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self._listen)


def test_hparams_and_tasks_share_one_compiled_program():
    """Calls with other hyperparameter values and task indices neither retrace nor recompile the train fn."""
    # The property holds for any config: a smaller program than the others' (K = 1) compiles faster.
    cfg = config(hidden_dims=(8,), flow_steps=1)
    nets = agent.make_networks(cfg, D)
    # A fresh jit at default compiler options, as the launcher calls it: its first call must compile,
    # which shows the counter is live.
    train = agent.make_train_fn(cfg, nets, chunks.task_sampler(chunks.sample_chunks, **sampler_kwargs(cfg)),
                                STEPS, data_in_axes=chunks.TASK_OFFLINE_IN_AXES)
    domain = domain_data(domain_arrays())
    sweeps = [
        (None, [0, 0, 1, 1]),  # the config's scalars, broadcast by vmap in init_learners
        (agent.hyperparams(cfg, kl_budget=np.array([0.5, 1.0, 2.0, 4.0])), [1, 0, 1, 0]),
        (agent.hyperparams(cfg, kl_budget=np.array([0.05, 0.1, 0.2, 0.3]), dual_lr=np.full(4, 0.1),
                           lam_scale=np.array([1.0, 2.0, 3.0, 4.0])), [1, 1, 1, 0]),
    ]
    inputs = [(init_states(cfg, SEEDS, hp), chunks.TaskData(domain, jnp.asarray(t, jnp.int32))) for hp, t in sweeps]
    jax.block_until_ready(inputs)
    assert train._cache_size() == 0
    lams = []
    with CompileCounter() as counter:
        for call, (states, data) in enumerate(inputs):
            states, _ = train(states, data)
            lams.append(np.asarray(states.dual.lam))
            # Exactly one trace and one backend compile, on the first call only.
            assert counter.count(dispatch.JAXPR_TRACE_EVENT) == 1, call
            assert counter.count(dispatch.BACKEND_COMPILE_EVENT) == 1, call
            assert train._cache_size() == 1, call
    # The values reached the program (they are not baked-in constants of the first call).
    assert np.max(np.abs(lams[1] - lams[0])) > 1e-3 and np.max(np.abs(lams[2] - lams[1])) > 1e-3
