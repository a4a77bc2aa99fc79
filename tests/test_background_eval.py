"""Tests for evaluation beside training (`BackgroundEvaluator`) and for async env workers dying with
their owner process, on cube-single task1 with short episodes (env creation costs about 1 s per env).
"""

import functools
import itertools
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import jax
import numpy as np
import pytest
from gymnasium.vector import AsyncVectorEnv

from experiments.evaluation import background, episodes, vector

ENV = 'cube-single-play-singletask-task1-v0'
pytestmark = pytest.mark.filterwarnings('ignore:.*precision lowered by casting to float32')
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

S, E, H, T = 2, 2, 5, 20


def make_policy(log, started=None, sleep_s=0.0):
    """act_fn(params, obs (S, E, O), key) -> (S, E, H, A) chunks that depend on params, obs and key.

    Appends (tag, obs) to `log` at every call; tag < 0 raises; sets `started` at the first call.
    """

    def act_fn(params, observations, key):
        if started is not None:
            started.set()
        if sleep_s:
            time.sleep(sleep_s)
        tag = int(params['tag'])
        if tag < 0:
            raise ValueError(f'policy failure {tag}')
        log.append((tag, np.array(observations)))
        s, e = observations.shape[:2]
        noise = np.asarray(jax.random.normal(key, (s, e, H, 5)))
        mean = np.tanh(observations[:, :, None, :5] * np.asarray(params['w']))
        return mean + 0.5 * noise

    return act_fn


def params(tag, w):
    return {'tag': jax.numpy.asarray(tag), 'w': jax.numpy.full((5,), w, jax.numpy.float32)}


def test_episodes_per_round_fits_workers():
    assert background.background_episodes_per_round(4, 50, 15) == 2  # 4 * 2 <= 15 < 4 * 5
    assert background.background_episodes_per_round(1, 10, 4) == 2
    assert background.background_episodes_per_round(2, 10, 3) == 1
    assert background.background_episodes_per_round(8, 50, 3) == 1  # more seeds than workers: one env each
    assert background.background_episodes_per_round(2, 2, 100) == 2
    # The largest divisor of E with S * E_r <= workers, for every small case.
    for s, e, w in itertools.product(range(1, 5), range(1, 13), range(30)):
        fits = [d for d in range(1, e + 1) if e % d == 0 and s * d <= w]
        assert background.background_episodes_per_round(s, e, w) == max(fits, default=1), (s, e, w)
    # Every core but one, within half of the free memory (tests/test_env_workers.py checks the sizing).
    assert vector.default_num_workers(cpus=vector.available_cpus(), available_mb=1e9) == max(1, vector.available_cpus() - 1)


def test_background_matches_blocking_sync():
    # The background evaluator (async worker processes, a background thread, params copied to host)
    # gives exactly what a blocking sync Evaluator gives for the same params, seeds and keys.
    jobs = [
        (10, params(1, 0.5), 3, jax.random.PRNGKey(5)),
        (20, params(2, -1.0), 4, jax.random.PRNGKey(6)),
        (30, params(3, 2.0), 3, None),  # key None: PRNGKey(seed)
    ]
    bg_log, sync_log = [], []
    with background.BackgroundEvaluator(
        ENV, S, E, act_fn=make_policy(bg_log), horizon=H, max_episode_steps=T, num_workers=2
    ) as bg:
        assert bg.episodes_per_round == 1 and bg.evaluator.envs.num_envs == 2  # S * E_r <= 2 workers
        assert isinstance(bg.evaluator.envs, AsyncVectorEnv)
        for step, p, seed, key in jobs:
            bg.submit(step, p, seed, key)
        assert bg.pending() == [10, 20, 30]
        got = []
        deadline = time.time() + 120
        while len(got) < 3 and time.time() < deadline:
            got += bg.poll()
            time.sleep(0.01)
        assert [step for step, _ in got] == [10, 20, 30]  # submission order, earlier first
        assert bg.pending() == [] and bg.wait() == [] and bg.poll() == []
        assert bg.waited_s >= 0.0

        # wait() returns the rest and counts the time blocked.
        bg.submit(40, params(4, 1.0), 5, jax.random.PRNGKey(7))
        rest = bg.wait()
        assert [step for step, _ in rest] == [40] and bg.pending() == []
        assert bg.waited_s > 0.0
    jobs.append((40, params(4, 1.0), 5, jax.random.PRNGKey(7)))
    got += rest

    with episodes.Evaluator(ENV, S, E, max_episode_steps=T, episodes_per_round=1, vectorization='sync') as ref:
        act_fn = make_policy(sync_log)
        for (step, p, seed, key), (got_step, result) in zip(jobs, got):
            want = ref.run(functools.partial(act_fn, p), seed=seed, horizon=H, key=key)
            assert got_step == step
            np.testing.assert_array_equal(result.episode_success, want.episode_success)
            np.testing.assert_array_equal(result.success_rate, want.success_rate)
            np.testing.assert_array_equal(result.episode_return, want.episode_return)
            np.testing.assert_array_equal(result.mean_return, want.mean_return)
            np.testing.assert_array_equal(result.episode_length, want.episode_length)
            assert result.env_steps == want.env_steps
    # The same observations at every policy call: the trajectories are identical, not just the scores.
    assert len(bg_log) == len(sync_log) == 4 * 2 * (T // H)  # 4 evaluations x 2 rounds x T/H calls
    for (tag_a, obs_a), (tag_b, obs_b) in zip(bg_log, sync_log):
        assert tag_a == tag_b
        np.testing.assert_array_equal(obs_a, obs_b)
    assert not np.array_equal(bg_log[0][1], bg_log[-1][1])


def test_background_error_reraised():
    log = []
    bg = background.BackgroundEvaluator(
        ENV, 1, 1, act_fn=make_policy(log), horizon=H, max_episode_steps=10, vectorization='sync'
    )
    try:
        bg.submit(1, params(1, 0.0), 0)
        bg.submit(2, params(-7, 0.0), 0)  # raises in the background thread
        bg.submit(3, params(3, 0.0), 0)
        with pytest.raises(ValueError, match='policy failure -7'):
            bg.wait()
        with pytest.raises(ValueError, match='policy failure -7'):
            bg.poll()
        assert {tag for tag, _ in log} == {1}  # nothing ran after the failure
    finally:
        bg.close()


def test_close_with_work_in_flight_does_not_hang():
    started = threading.Event()
    bg = background.BackgroundEvaluator(
        ENV, 1, 2, act_fn=make_policy([], started, sleep_s=0.05), horizon=1, max_episode_steps=25,
        num_workers=2,
    )
    processes = list(bg.evaluator.envs.processes)
    for step in range(3):  # 3 x 50 policy calls of 50 ms: about 8 s if run to the end
        bg.submit(step, params(1, 0.0), step)
    assert started.wait(60)
    t0 = time.perf_counter()
    bg.close()
    assert time.perf_counter() - t0 < 5.0
    assert not [t for t in threading.enumerate() if t.name.startswith('background-evaluation')]  # joined
    bg.close()  # idempotent
    for process in processes:
        process.join(5)
        assert not process.is_alive()
    with pytest.raises(RuntimeError):
        bg.submit(9, params(1, 0.0), 0)


PROBE = textwrap.dedent(
    """
    import os, sys, time, warnings
    warnings.filterwarnings('ignore')
    from experiments import evaluation as ev
    env = %r
    evaluator = ev.Evaluator(env, 1, 2, max_episode_steps=10, vectorization='async')
    online = ev.OnlineEnvs(env, 2, 0, max_episode_steps=10, vectorization='async')
    pids = [p.pid for p in evaluator.envs.processes + online.envs.processes]
    # A forked child holds the owner's pipe ends, so idle workers see no EOF when the owner dies: only
    # the death watch can end them.
    child = os.fork()
    if child == 0:
        time.sleep(120)
        os._exit(0)
    print(child, *pids, flush=True)
    time.sleep(600)
    """
    % ENV
)


def _alive(pid):
    try:
        with open(f'/proc/{pid}/stat') as f:
            return f.read().rsplit(')', 1)[1].split()[0] not in ('Z', 'X')
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='reads /proc')
def test_async_workers_die_with_owner_kill9():
    owner = subprocess.Popen(
        [sys.executable, '-c', PROBE], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    child, pids = None, []
    try:
        line = owner.stdout.readline()
        assert line, 'the probe printed no pids'
        child, *pids = [int(x) for x in line.split()]
        assert len(pids) == 4 and all(_alive(pid) for pid in pids)
        owner.send_signal(signal.SIGKILL)
        owner.wait(10)
        deadline = time.time() + 5
        while any(_alive(pid) for pid in pids) and time.time() < deadline:
            time.sleep(0.05)
        assert [pid for pid in pids if _alive(pid)] == []
    finally:
        if owner.poll() is None:
            owner.kill()
        for pid in pids + ([child] if child else []):
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
