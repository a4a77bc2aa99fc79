"""Run config for one OGBench single-task problem (or a suite of them).

  python -m experiments.train --config=experiments/configs/ogbench.py --env_name=cube-double-play-singletask-task2-v0

Fields set to None (placeholders) come from the domain table in experiments/configs/domains.py for
the task's domain; set them to override the table. The defaults are the paper's protocol (conventions §10).
"""

from ml_collections import config_dict

placeholder = config_dict.placeholder


def get_config():
    config = config_dict.ConfigDict()
    config.env_name = "cube-double-play-singletask-task2-v0"  # OGBench single-task env id, or a domain (its tasks).
    config.suite = ""  # "ogbench50" runs all 50 tasks (then env_name is ignored); "" runs env_name.
    config.tasks = ""  # with a domain as env_name: the tasks to train, e.g. "1,3"; "": all five.
    config.method = "trqam"  # "trqam", "qam", "sqam" or "bc" (BC only: pretraining, then evaluation).
    config.seed = 0  # base seed; seed i of the run is seed + i.
    config.matmul_precision = "default"  # jax_default_matmul_precision; "default" as the reference runs.
    config.num_seeds = 4  # seeds trained in parallel, vmapped inside one program.
    config.learners_per_program = 0  # learners (task, seed, budget) per jitted program; 0: as many as fit.
    config.output_dir = "runs"  # root of the run directories: <output_dir>/<env_name>/<method>.
    config.dataset_dir = "~/.ogbench/data"  # where ogbench's <dataset>.npz files live.
    config.generate_missing_data = False  # generate a missing manipulation dataset (size below).
    config.generate_num_episodes = placeholder(int)  # episodes to generate; None: official size.
    config.generate_episode_length = placeholder(int)  # steps per generated episode; None: 1001.

    config.bc_steps = 300_000  # BC pretraining steps (shared by every method and task of a domain).
    config.offline_steps = 1_000_000  # offline fine-tuning steps.
    config.online_steps = 500_000  # online env steps after offline (0: offline only).
    config.online_start_steps = 5_000  # env steps collected before online updates start.
    config.online_kl_budget = placeholder(float)  # eps in the online phase; None: same as offline.
    config.bc_checkpoint = ""  # a reference-code params_<step>.pkl ('{seed}' allowed) used as BC; "": train BC.

    config.log_every = 1_000  # updates per jitted call (lax.scan length) and per log row.
    config.eval_every = 50_000  # evaluate every this many steps of each phase, and at its end.
    config.eval_episodes = 50  # evaluation episodes per seed.
    config.eval_envs_per_seed = placeholder(int)  # envs per seed, episodes in rounds (~150 MB an env); None: fill the free cores.
    config.eval_steps = placeholder(int)  # evaluation episode length; None: domain table.
    config.eval_async = True  # evaluate beside training (worker processes); False: block training.
    config.online_envs_async = True  # online envs step in worker processes (one per seed).
    config.save_every = 100_000  # checkpoint every this many steps, and at the end of each phase.
    config.keep_checkpoints = 3  # how many recent checkpoints to keep.
    config.shards_in_memory = 1  # 1M-transition shards on the device at once (1: the reference; 0: all that fit).
    config.shard_rotate_every = 1_000  # steps between shard-window rotations (the reference: 1000).
    config.dataset_memory_fraction = 0.5  # share of free device memory the dataset may take; beyond, stream.

    config.wandb = config_dict.ConfigDict()  # optional Weights & Biases logging (CSV and TensorBoard stay).
    config.wandb.project = ""  # wandb project; "" turns wandb off. WANDB_MODE=offline needs no network.
    config.wandb.entity = ""  # wandb entity (team or user); "": your default.
    config.wandb.group = ""  # wandb group, e.g. a sweep's name; "": none.

    config.sweep = config_dict.ConfigDict()  # a budget axis: one run dir per value, all in one program.
    config.sweep.kl_budget = ""  # TRQAM eps values, e.g. "0.25,0.5,1.0"; "": agent.kl_budget alone.
    config.sweep.inv_temp = ""  # QAM inverse temperatures, e.g. "1,3,10"; "": agent.inv_temp alone.
    config.sweep.gap_reg_coef = ""  # SQAM value-penalty coefficients, e.g. "0,0.3"; crossed with sweep.kl_budget.

    config.agent = config_dict.ConfigDict()  # the update's hyperparameters (trqam_jax.agent.AgentConfig).
    config.agent.width = placeholder(int)  # hidden width (4 layers); None: domain table.
    config.agent.depth = 4  # number of hidden layers.
    config.agent.actor_layer_norm = placeholder(bool)  # None: domain table.
    config.agent.horizon = placeholder(int)  # H, action-chunk length; None: domain table.
    config.agent.discount = placeholder(float)  # gamma; None: domain table.
    config.agent.rho = placeholder(float)  # critic-target pessimism; None: domain table.
    config.agent.sparse = placeholder(bool)  # sparse-reward option; None: domain table.
    config.agent.kl_budget = placeholder(float)  # TRQAM / SQAM eps; None: domain table (per method).
    config.agent.inv_temp = placeholder(float)  # QAM inverse temperature; None: domain table.
    config.agent.gap_reg_coef = placeholder(float)  # SQAM value-penalty coefficient c; None: domain table.
    config.agent.n_bridge = placeholder(int)  # SQAM bridge states per example, M; None: 10 (the reference).
    config.agent.num_critics = 10  # critic ensemble size.
    config.agent.flow_steps = 10  # K, flow integration steps.
    config.agent.tau = 0.005  # EMA rate of the target critic and actor_ref.
    config.agent.learning_rate = 3e-4  # Adam learning rate.
    config.agent.grad_clip_norm = 1.0  # global gradient-norm clip.
    config.agent.batch_size = 256  # B.
    config.agent.lam_scale = 3.0  # lambda_eff = lam_scale * lam.
    config.agent.lam_init = 1.0  # initial lam.
    config.agent.dual_lr = 0.01  # dual step size (linear space).
    config.agent.kl_ema_decay = 0.9  # EMA decay of the clipped KL estimate.
    config.agent.kl_clip_factor = 2.0  # the KL estimate is clipped at this times eps.
    config.agent.lam_min = 0.01  # lower bound of lam.
    config.agent.lam_max = 100.0  # upper bound of lam.
    config.agent.compute_dtype = "float32"  # matmul inputs: "float32" (reference) or "bfloat16" (a deviation:
    #   bf16 matmul inputs, float32 accumulation, parameters and everything else; docs/conventions.md §1).
    return config
