"""A real, small job for a 2-core CPU with no internet: about 2 minutes (2 min 7 s measured on a quiet
2-core machine on 2026-12-01, dataset generation included).

  python -m experiments.train        # this config is the default

It generates a small cube-single dataset with the ogbench oracles if none is present, BC-pretrains,
fine-tunes with TRQAM offline for 3 seeds with small networks, evaluates, and writes checkpoints,
CSV logs, curves and the results table under runs/quickstart/.
"""

from experiments.configs import ogbench


def get_config():
    config = ogbench.get_config()
    config.env_name = "cube-single-play-singletask-task1-v0"  # the easiest manipulation task.
    config.num_seeds = 3  # three seeds, vmapped.
    config.output_dir = "runs/quickstart"  # kept apart from full-size runs.
    config.dataset_dir = "data/quickstart"  # a small generated dataset, not ~/.ogbench/data.
    config.generate_missing_data = True  # generate it on first use.
    config.generate_num_episodes = 100  # 100 x 201 steps: about 20K transitions.
    config.generate_episode_length = 201  # shorter episodes than the official 1001.
    config.bc_steps = 4_000  # short BC pretraining.
    config.offline_steps = 4_000  # short offline fine-tuning.
    config.online_steps = 0  # offline only.
    config.log_every = 500  # updates per jitted call.
    config.eval_every = 2_000  # evaluate twice per phase.
    config.eval_episodes = 10  # episodes per seed.
    config.eval_envs_per_seed = 5  # two rounds of 5 envs per seed.
    config.save_every = 2_000  # checkpoint twice per phase.
    config.agent.width = 128  # small networks for the CPU.
    config.agent.depth = 2  # two hidden layers.
    config.agent.num_critics = 4  # a smaller critic ensemble.
    config.agent.batch_size = 128  # half the paper's batch.
    return config
