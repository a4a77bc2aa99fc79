"""Fixtures shared by the launcher, lifecycle and policy tests."""

import pytest


@pytest.fixture(scope="session")
def dataset_dir(tmp_path_factory):
    """A tiny generated cube-single play dataset (8 episodes x 101 steps) in OGBench's format."""
    from experiments.data.generation import generate_dataset

    path = str(tmp_path_factory.mktemp("data"))
    generate_dataset("cube-single-play-v0", path, num_episodes=8, episode_length=101, num_workers=1, progress=False)
    return path
