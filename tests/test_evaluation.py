"""Tests for experiments/evaluation/ (episodes, online, vector, the benchmark CLI) on cube-single task1 (move one cube 20 cm sideways).

The scripted OGBench Markov oracle solves task1 in about 40 env steps (closed loop, H = 1), so
episodes are cut to 60 steps to keep the tests fast. Env creation costs about 1 s per env.
"""

import types
import warnings

import jax
import numpy as np
import pytest

from experiments.evaluation import __main__ as benchmark
from experiments.evaluation import episodes, online, vector

ENV = 'cube-single-play-singletask-task1-v0'
# OGBench builds its float32 action Box from float64 bounds at every reset; gymnasium warns each time.
pytestmark = pytest.mark.filterwarnings('ignore:.*precision lowered by casting to float32')

T = 60  # episode length for the tests (the env's own limit is 200)
S, E = 2, 2


@pytest.fixture(scope='module')
def evaluator():
    with episodes.Evaluator(ENV, S, E, max_episode_steps=T) as evaluator:
        yield evaluator


def make_oracle(vector_env):
    """The OGBench cube Markov oracle, fed the single-task goal (task mode hides the target info)."""
    from ogbench.manipspace.oracles.markov.cube_markov import CubeMarkovOracle

    bounds = vector_env.get_attr('_arm_sampling_bounds')[0]
    task_id = vector_env.get_attr('_reward_task_id')[0]
    goal = np.asarray(vector_env.get_attr('task_infos')[0][task_id - 1]['goal_xyzs'][0])
    env_stub = types.SimpleNamespace(unwrapped=types.SimpleNamespace(_arm_sampling_bounds=bounds))
    oracle = CubeMarkovOracle(env=env_stub, min_norm=0.4)
    oracle.reset(None, None)

    def act(info):
        info = dict(info)
        info['privileged/target_block'] = 0
        info['privileged/target_block_pos'] = goal
        info['privileged/target_block_yaw'] = np.zeros(1)
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            return oracle.select_action(None, info)

    return act


def oracle_act_fn(vector_env, oracle_seeds, noise=0.0, horizon=1):
    """act_fn(obs, key, infos): the oracle for seeds in `oracle_seeds`, uniform random for the others.

    `noise` adds key-driven Gaussian noise to the oracle's actions (to test key reproducibility).
    """
    oracle = make_oracle(vector_env)

    def act_fn(observations, key, infos):
        num_seeds, num_episodes, _ = observations.shape
        key_noise, key_random = jax.random.split(key)
        shape = (num_seeds, num_episodes, horizon, 5)
        actions = np.array(jax.random.uniform(key_random, shape, minval=-1, maxval=1))
        eps = noise * np.asarray(jax.random.normal(key_noise, actions.shape))
        for s in oracle_seeds:
            for e in range(num_episodes):
                a = oracle({k: v[s, e] for k, v in infos.items()})
                actions[s, e] = a + eps[s, e]
        return actions

    return act_fn


def test_episode_steps_match_spec():
    assert vector.episode_steps('cube-single-play-singletask-task1-v0') == 200
    assert vector.episode_steps('cube-double-play-singletask-task2-v0') == 500
    assert vector.episode_steps('scene-play-singletask-task1-v0') == 750
    assert vector.episode_steps('puzzle-4x4-play-singletask-task3-v0') == 500
    assert vector.episode_steps('humanoidmaze-medium-navigate-singletask-task1-v0') == 2000


def test_oracle_succeeds_random_fails_per_seed(evaluator):
    # Seed 0's policy is the oracle, seed 1's is random: the per-seed success shows both that the
    # success metric is right and that each seed's policy acts on its own E envs.
    act_fn = oracle_act_fn(evaluator.envs, oracle_seeds=[0])
    result = evaluator.run(act_fn, seed=0, horizon=1, with_infos=True)
    np.testing.assert_array_equal(result.success_rate, [1.0, 0.0])
    assert result.episode_success.shape == (S, E)
    # The oracle's episodes end early (termination at the goal); cube-single rewards are -1 per step
    # until the step taken from the solved state, which gives 0.
    assert np.all(result.episode_length[0] < T)
    np.testing.assert_allclose(result.episode_return[0], -(result.episode_length[0] - 1))
    np.testing.assert_array_equal(result.episode_length[1], T)
    np.testing.assert_allclose(result.episode_return[1], -T)
    np.testing.assert_allclose(result.mean_return, result.episode_return.mean(axis=1))


def test_random_policy_full_length():
    act_fn = episodes.random_act_fn(1, 3, 5, 5)
    result = episodes.evaluate(act_fn, ENV, num_seeds=1, num_episodes=3, seed=0, horizon=5)
    assert result.success_rate.shape == (1,)
    assert result.success_rate[0] == 0.0
    np.testing.assert_array_equal(result.episode_length, 200)  # the env's own time limit


def test_reproducible(evaluator):
    act_fn = oracle_act_fn(evaluator.envs, oracle_seeds=[0, 1], noise=0.3)
    a = evaluator.run(act_fn, seed=3, horizon=1, with_infos=True)
    b = evaluator.run(act_fn, seed=3, horizon=1, with_infos=True)
    c = evaluator.run(act_fn, seed=4, horizon=1, with_infos=True)
    np.testing.assert_array_equal(a.episode_return, b.episode_return)
    np.testing.assert_array_equal(a.episode_length, b.episode_length)
    np.testing.assert_array_equal(a.episode_success, b.episode_success)
    assert not np.array_equal(a.episode_length, c.episode_length)
    # Reset seeds depend on (seed, s, e) only.
    assert episodes.reset_seeds(3, 2, 2) == [episodes.reset_seeds(3, 3, 3)[i] for i in (0, 1, 3, 4)]
    assert len(set(episodes.reset_seeds(3, 4, 10))) == 40


def test_rounds_match_all_at_once(evaluator):
    # Reset seeds depend on (seed, s, e) only, so a key-independent policy scores the same whether the
    # E episodes run at once or in rounds.
    a = evaluator.run(oracle_act_fn(evaluator.envs, [0, 1]), seed=7, horizon=1, with_infos=True)
    with episodes.Evaluator(ENV, S, E, max_episode_steps=T, episodes_per_round=1) as rounds:
        assert rounds.envs.num_envs == S
        b = rounds.run(oracle_act_fn(rounds.envs, [0, 1]), seed=7, horizon=1, with_infos=True)
    np.testing.assert_array_equal(a.episode_length, b.episode_length)
    np.testing.assert_array_equal(a.episode_success, b.episode_success)
    with pytest.raises(ValueError):
        episodes.Evaluator(ENV, S, 3, episodes_per_round=2)


def test_chunks_open_loop(evaluator):
    calls = []

    def act_fn(observations, key):
        calls.append(observations.shape)
        return np.zeros((S, E, 7, 5))  # longer than the horizon: the first 5 actions run

    result = evaluator.run(act_fn, seed=0, horizon=5)
    assert calls == [(S, E, evaluator.observation_dim)] * (T // 5)
    np.testing.assert_array_equal(result.episode_length, T)
    assert result.env_steps == S * E * T

    with pytest.raises(ValueError):
        evaluator.run(lambda o, k: np.zeros((S, E, 2, 5)), seed=0, horizon=5)


def test_online_envs_transitions():
    num_seeds = 2
    with online.OnlineEnvs(ENV, num_seeds, seed=0, max_episode_steps=T) as envs:
        oracle = make_oracle(envs.envs)
        chunks = np.zeros((num_seeds, 3, 5), np.float32)
        chunk_step = np.zeros(num_seeds, int)
        transitions, infos = [], []
        for i in range(T + 10):
            obs_before = envs.observations.copy()
            needs = envs.needs_chunk
            if needs.any():
                # Seed 0: a constant 3-step chunk of the oracle's action (open loop); seed 1: a chunk
                # with distinct actions, to check the queue order.
                a0 = oracle({k: v[0] for k, v in envs.infos.items() if not k.startswith('_')})
                chunks = np.stack([np.repeat(a0[None], 3, 0), np.linspace(-0.5, 0.5, 15).reshape(3, 5)])
                chunk_step = np.where(needs, 0, chunk_step)
            tr, info = envs.step(chunks)
            np.testing.assert_array_equal(tr.observations, obs_before)
            np.testing.assert_allclose(tr.actions[1], np.linspace(-0.5, 0.5, 15).reshape(3, 5)[chunk_step[1]])
            chunk_step = chunk_step + 1
            transitions.append(tr)
            infos.append(info)

    obs = np.stack([t.observations for t in transitions], 1)
    next_obs = np.stack([t.next_observations for t in transitions], 1)
    rewards = np.stack([t.rewards for t in transitions], 1)
    masks = np.stack([t.masks for t in transitions], 1)
    terminals = np.stack([t.terminals for t in transitions], 1)
    assert obs.dtype == np.float32 and obs.shape == (num_seeds, T + 10, 28)  # cube-single observation size
    assert transitions[0].actions.shape == (num_seeds, 5)

    # Seed 0 (oracle) solves the task: the terminal step is the one taken from the solved state,
    # with reward 0 and mask 0 (conventions §9: reward = met - subgoals, mask 0 only when all are met).
    t0 = int(np.flatnonzero(terminals[0])[0])
    assert t0 < T
    assert rewards[0, t0] == 0.0 and masks[0, t0] == 0.0 and infos[t0]['episode_success'][0]
    np.testing.assert_array_equal(rewards[0, :t0], -1.0)
    np.testing.assert_array_equal(masks[0, :t0], 1.0)
    assert infos[t0]['episode_length'][0] == t0 + 1
    # Seed 1 (fixed chunk) times out: a trajectory end with mask 1.
    assert terminals[1, T - 1] == 1.0 and masks[1, T - 1] == 1.0
    assert not infos[T - 1]['episode_success'][1]
    np.testing.assert_array_equal(masks[1], 1.0)
    # Masks are 0 exactly where the reward is 0 (cube-single: one subgoal).
    np.testing.assert_array_equal(masks == 0, rewards == 0)
    # Continuity within episodes, and a fresh reset after each end.
    for s in range(num_seeds):
        for t in range(T + 9):
            if terminals[s, t]:
                assert not np.array_equal(obs[s, t + 1], next_obs[s, t])
            else:
                np.testing.assert_array_equal(obs[s, t + 1], next_obs[s, t])


def test_online_envs_return_replay_blocks():
    # The launcher concatenates the seeds' transitions field by field into `trqam_jax.chunks.Transitions`.
    chunks = pytest.importorskip('trqam_jax.chunks')
    with online.OnlineEnvs(ENV, 2, seed=0, max_episode_steps=5) as envs:
        tr, _ = envs.step(np.zeros((2, 5)))
    assert type(tr) is chunks.Transitions
    assert all(isinstance(x, np.ndarray) and x.dtype == np.float32 and x.shape[0] == 2 for x in tr)
    assert tr.observations.shape == tr.next_observations.shape and tr.actions.shape == (2, 5)


def test_online_envs_sparse_and_plain_actions():
    with online.OnlineEnvs(ENV, 1, seed=1, sparse=True, max_episode_steps=5) as envs:
        dones, lengths = [], []
        for _ in range(6):
            tr, info = envs.step(np.zeros((1, 5)))
            assert tr.rewards.dtype == np.float32 and tr.rewards[0] in (-1.0, 0.0)
            dones.append(info['done'][0])
            lengths.append(info['episode_length'][0])
        assert dones == [False] * 4 + [True, False]
        assert lengths == [1, 2, 3, 4, 5, 1]
        envs.step(np.zeros((1, 3, 5)))
        with pytest.raises(ValueError):  # a chunk is still queued
            envs.step(np.zeros((1, 5)))


def test_async_matches_sync(evaluator):
    # Same seed -> same episodes whether the envs run in-process or in worker processes.
    a = evaluator.run(oracle_act_fn(evaluator.envs, [0, 1], noise=0.3), seed=5, horizon=1, with_infos=True)
    with episodes.Evaluator(ENV, S, E, max_episode_steps=T, vectorization='async') as async_evaluator:
        act_fn = oracle_act_fn(async_evaluator.envs, [0, 1], noise=0.3)
        b = async_evaluator.run(act_fn, seed=5, horizon=1, with_infos=True)
    np.testing.assert_array_equal(a.episode_return, b.episode_return)
    np.testing.assert_array_equal(a.episode_length, b.episode_length)
    np.testing.assert_array_equal(a.episode_success, b.episode_success)


def test_online_envs_async_matches_sync():
    # One env per seed in one async pool: the same transitions as in-process envs, resets included.
    out = {}
    for vectorization in ('sync', 'async'):
        with online.OnlineEnvs(ENV, 2, seed=3, max_episode_steps=7, vectorization=vectorization) as envs:
            rng = np.random.default_rng(0)
            steps = []
            for _ in range(16):
                tr, info = envs.step(rng.uniform(-1, 1, (2, 3, 5)))
                steps.append((tr, info))
            out[vectorization] = steps
    assert sum(info['done'].sum() for _, info in out['sync']) == 4  # 16 steps, episodes of 7, 2 seeds
    for (a, info_a), (b, info_b) in zip(out['sync'], out['async']):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
        for k in info_a:
            np.testing.assert_array_equal(info_a[k], info_b[k])


def test_episodes_per_round_divides_the_episodes():
    assert [episodes.episodes_per_round(50, k) for k in (1, 5, 7, 10, 50, 80)] == [1, 5, 5, 10, 50, 50]
    assert episodes.episodes_per_round(7, 5) == 1  # 7 is prime: one env per seed, 7 rounds


def test_benchmark_workers_flag():
    assert benchmark._parse_workers('1,2,4') == [1, 2, 4]
    auto = benchmark._parse_workers('auto')
    assert auto[0] == 1 and auto[-1] == vector.available_cpus() and auto == sorted(set(auto))
    with pytest.raises(ValueError):
        benchmark._parse_workers('0,2')
