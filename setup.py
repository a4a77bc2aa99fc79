from setuptools import find_packages, setup

setup(
    name="trqam_jax",
    version="0.1.0",
    description="Trust Region Q-Adjoint Matching (TRQAM) in JAX/Flax",
    packages=find_packages(include=["trqam_jax", "trqam_jax.*", "experiments", "experiments.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.4.30",
        "flax>=0.10",
        "optax>=0.2.3",
        "chex>=0.1.86",
        "ogbench>=1.1",
        "ml_collections>=0.1.1",
        "orbax-checkpoint>=0.6",
        "absl-py>=2.0",
        "gymnasium>=1.1",  # AutoresetMode and reset_mask
        "tqdm>=4.60",
        "matplotlib>=3.7",
        "tensorboardX>=2.6",
        "rliable==1.2.0",  # the report's statistics (IQM, bootstrap CIs, probability of improvement)
        "pandas<3",  # rliable's arch 7.x does not import with pandas 3
    ],
    extras_require={
        "tensorboard": ["tensorboard>=2.12"],  # to view the logs: tensorboard --logdir runs
        "wandb": ["wandb>=0.17"],  # config.wandb.project turns it on
    },
)
