"""A CPU-scale learning check on real OGBench tasks with generated data (under an hour on 2 cores).

  bash experiments/learning_check.sh

It compares BC, QAM and TRQAM on cube-single and cube-double (task 1 each), 3 seeds, with small
networks and short schedules. It checks that the pipeline learns something; it is not the paper's
protocol (300K BC + 1M offline steps, width 512).
"""

from experiments.configs import ogbench


def get_config():
    config = ogbench.get_config()
    config.env_name = "cube-single-play-singletask-task1-v0"  # the launcher's --env_name picks the task.
    config.num_seeds = 3  # three seeds, vmapped.
    config.output_dir = "runs/learning_check"  # kept apart from other runs.
    config.dataset_dir = "data/learning_check"  # generated datasets, not ~/.ogbench/data.
    config.generate_missing_data = True  # generate them on first use.
    config.generate_num_episodes = 200  # 200 x 501 steps: 100K transitions per domain.
    config.generate_episode_length = 501  # shorter episodes than the official 1001.
    config.bc_steps = 10_000  # BC pretraining, shared by the three methods.
    config.offline_steps = 10_000  # offline fine-tuning.
    config.online_steps = 0  # offline only.
    config.log_every = 1_000  # updates per jitted call.
    config.eval_every = 2_000  # five evaluations.
    config.eval_episodes = 20  # episodes per seed.
    config.eval_envs_per_seed = 10  # two rounds of 10 envs per seed.
    config.save_every = 5_000  # two checkpoints.
    config.agent.width = 128  # a quarter of the paper's 512.
    config.agent.depth = 2  # 2 hidden layers instead of 4.
    config.agent.num_critics = 4  # 4 critics instead of 10.
    config.agent.batch_size = 128  # half the paper's batch.
    return config
