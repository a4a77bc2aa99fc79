"""Issue acceptance: with no network, generate a small cube-double dataset, load it through ogbench,
sample chunks inside jit, and evaluate a policy on the env."""

import functools

import jax
import numpy as np

from experiments.data import files, loading
from experiments.data.generation import generate_dataset
from experiments.evaluation.episodes import evaluate, random_act_fn
from trqam_jax import chunks

ENV = "cube-double-play-singletask-task2-v0"


def test_generate_load_sample_evaluate_cube_double(tmp_path):
    generate_dataset("cube-double-play-v0", str(tmp_path), num_episodes=2, episode_length=61, num_workers=1,
                     progress=False)
    found = files.find_dataset_files(ENV, str(tmp_path))
    env = loading.make_env(ENV)
    train, val = (loading.load_shard_tasks(path, [ENV], [env]) for path in (found.train[0], found.val))
    assert train["observations"].shape[0] == 2 * 60 and val["observations"].shape[0] == 60
    assert np.all(np.abs(train["actions"]) <= 1 - 1e-5)
    # Relabeled for task 2: rewards are -(number of unmet subgoals) in {-2, -1, 0}.
    assert set(np.unique(train["rewards"])) <= {-2.0, -1.0, 0.0}

    device_data = loading.to_device(train)
    sample = jax.jit(functools.partial(chunks.sample_chunks, batch_size=64, horizon=5, discount=0.99, task=0))
    batch = sample(device_data, jax.random.PRNGKey(0))
    assert batch.actions.shape == (64, 5, 5) and batch.observations.shape == (64, train["observations"].shape[1])
    # A chunk that stays inside one trajectory repeats the dataset's consecutive actions.
    first = np.flatnonzero(np.asarray(batch.valid) == 1)[0]
    start = np.flatnonzero(np.all(train["observations"] == np.asarray(batch.observations[first]), axis=1))[0]
    np.testing.assert_array_equal(np.asarray(batch.actions[first]), train["actions"][start:start + 5])

    result = evaluate(random_act_fn(2, 2, 5, 5), ENV, num_seeds=2, num_episodes=2, seed=0, horizon=5,
                      max_episode_steps=20)
    assert result.success_rate.shape == (2,) and np.all(result.episode_length == 20)
