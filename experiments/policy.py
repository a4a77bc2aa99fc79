"""Restore a trained policy from a run directory for evaluation alone (no optimizer, no critic).

  python -m experiments.policy --run_dir=runs/<env_name>/trqam --episodes=50
"""

import json
import os
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from experiments.checkpointing import Checkpointer, CheckpointError
from trqam_jax import agent


class Policy(NamedTuple):
    env_name: str
    horizon: int
    action_dim: int
    params: object  # seed-stacked actor (v_theta) parameters
    act: object  # act(params, observations (S, E, O), key) -> chunks (S, E, H, A)
    step: int


def load_policy(run_dir: str, step: Optional[int] = None) -> Policy:
    """The fine-tuned actor of the newest readable checkpoint (or of `step`) in run_dir."""
    with open(os.path.join(run_dir, "task.json")) as f:
        task = json.load(f)
    checkpointer = Checkpointer(os.path.join(run_dir, "checkpoints"))
    steps = checkpointer.steps()
    if not steps:
        raise CheckpointError(f"No checkpoint in {run_dir}/checkpoints.")
    meta = checkpointer.read_meta(steps[-1] if step is None else step)
    cfg = agent.AgentConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in task["offline"].items()})
    horizon, action_dim, obs_dim = task["horizon"], meta["action_dim"], meta["obs_dim"]
    nets = agent.make_networks(cfg, horizon * action_dim)
    num_seeds = meta["config"]["num_seeds"]
    like = jax.vmap(lambda k: nets.actor.init(k, jnp.zeros(obs_dim), jnp.zeros(horizon * action_dim), 0.0))(
        jax.random.split(jax.random.PRNGKey(0), num_seeds))
    restored = checkpointer.restore(like, items=("policy",), step=step)
    checkpointer.close()
    found_step, params, _, _ = restored
    act = make_chunk_policy(cfg, nets, horizon, action_dim)
    return Policy(task["env_name"], horizon, action_dim, params, act, found_step)


def make_chunk_policy(cfg: agent.AgentConfig, nets: agent.Networks, horizon: int, action_dim: int):
    """act(seed-stacked actor params, observations (S, E, O), key) -> numpy chunks (S, E, H, A).

    The key is split over the S seeds; each seed samples its E chunks with the ODE (SPEC 2).
    """
    act_seeds = jax.jit(jax.vmap(agent.make_act_fn(cfg, nets), in_axes=(0, 0, 0)))

    def act(params, observations, key):
        s, e = observations.shape[:2]
        out = act_seeds(params, jnp.asarray(observations), jax.random.split(key, s))
        return np.asarray(out).reshape(s, e, horizon, action_dim)

    return act


def main(argv):
    from experiments.evaluation import evaluate

    policy = load_policy(FLAGS.run_dir)
    num_seeds = jax.tree_util.tree_leaves(policy.params)[0].shape[0]
    result = evaluate(lambda obs, key: policy.act(policy.params, obs, key), policy.env_name, num_seeds,
                      FLAGS.episodes, FLAGS.seed, policy.horizon)
    print(f"{policy.env_name} step {policy.step}: success per seed {np.round(result.success_rate, 3).tolist()}, "
          f"mean {result.success_rate.mean():.3f}")


if __name__ == "__main__":
    flags.DEFINE_string("run_dir", None, "A run directory <output_dir>/<env_name>/<method>.", required=True)
    flags.DEFINE_integer("episodes", 50, "Evaluation episodes per seed.")
    flags.DEFINE_integer("seed", 0, "Evaluation seed.")
    FLAGS = flags.FLAGS
    app.run(main)
