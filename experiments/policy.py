"""Restore a trained policy from a run directory and evaluate it (no optimizer, no critic).

  python -m experiments.policy --run_dir=runs/<env_name>/trqam --episodes=50
  python -m experiments.policy --run_dir=runs/<env_name>/trqam --episodes=50 --envs_per_seed=5 --step=200000

Memory is bounded: the episodes run in rounds of `--envs_per_seed` envs per seed (default: the
run's `eval_envs_per_seed`, else 5, lowered where S x that would not fit in half of the free memory).
The envs run in this process: about 160 MB each, plus 170 MB once (`experiments.env_workers`). The
episode length is the run's own (`eval_steps` in its task.json). A damaged newest checkpoint is
reported in one line and the previous one is used; a wrong run directory, a run without a
checkpoint, or one whose checkpoints are all damaged is one line of error, with no traceback.
"""

import contextlib
import io
import json
import os
from typing import Callable, List, NamedTuple, Optional

import numpy as np
from absl import app, flags, logging

from experiments.infra.errors import UserError

DEFAULT_ENVS_PER_SEED = 5


class PolicyError(UserError):
    """A run directory that cannot be evaluated; the message is one line, meant to be shown alone."""


class Policy(NamedTuple):
    env_name: str
    horizon: int
    action_dim: int
    params: object  # seed-stacked actor (v_theta) parameters
    act: object  # act(params, observations (S, E, O), key) -> chunks (S, E, H, A)
    step: int
    num_seeds: int = 0
    eval_steps: Optional[int] = None  # the run's evaluation episode length (task.json)
    run_config: Optional[dict] = None  # the run's config.json (None if absent)
    skipped: tuple = ()  # (step, reason) of newer checkpoints that could not be read


def _run_dirs_below(path: str, depth: int = 2) -> List[str]:
    """Run directories (holding task.json) up to `depth` levels below path."""
    found = []
    if depth == 0 or not os.path.isdir(path):
        return found
    for name in sorted(os.listdir(path)):
        sub = os.path.join(path, name)
        if name.startswith(".") or not os.path.isdir(sub):
            continue
        if os.path.isfile(os.path.join(sub, "task.json")):
            found.append(sub)
        else:
            found.extend(_run_dirs_below(sub, depth - 1))
    return found


def _not_a_run_dir(run_dir: str, why: str) -> PolicyError:
    below = _run_dirs_below(run_dir)
    if below:
        shown = ", ".join(below[:5]) + (f" (and {len(below) - 5} more)" if len(below) > 5 else "")
        return PolicyError(f"{run_dir} {why}; it holds the run directories {shown}: pass one of them as --run_dir.")
    return PolicyError(f"{run_dir} {why}: pass --run_dir=<output_dir>/<env_name>/<method>, the directory that "
                       "holds task.json and checkpoints/.")


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise PolicyError(f"{path} cannot be read ({type(e).__name__}: {e}); the run directory is damaged.") \
            from None


def _short(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:160]}{'...' if len(text) > 160 else ''}"


@contextlib.contextmanager
def _silenced_absl():
    """orbax logs each unreadable checkpoint step at ERROR; this module reports them itself, once."""
    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.FATAL)
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)


def load_policy(run_dir: str, step: Optional[int] = None, report: Optional[Callable[[str], None]] = None) -> Policy:
    """The fine-tuned actor of the newest readable checkpoint (or of `step`) in run_dir.

    A newer checkpoint that cannot be read is skipped; `report` (if given) gets one line about it.
    Raises PolicyError (one line) for a wrong directory, no checkpoint, or no readable checkpoint.
    """
    run_dir = os.path.abspath(os.path.expanduser(run_dir))
    if not os.path.isdir(run_dir):
        raise PolicyError(f"{run_dir} is not a directory: pass --run_dir=<output_dir>/<env_name>/<method>.")
    task_path = os.path.join(run_dir, "task.json")
    if not os.path.isfile(task_path):
        raise _not_a_run_dir(run_dir, "is not a run directory (no task.json)")
    task = _read_json(task_path)
    config_path = os.path.join(run_dir, "config.json")
    run_config = _read_json(config_path) if os.path.isfile(config_path) else None
    ckpt_dir = os.path.join(run_dir, "checkpoints")
    if not os.path.isdir(ckpt_dir):
        raise PolicyError(f"No checkpoint in {ckpt_dir} (the directory does not exist): the run has not saved one "
                          "yet (checkpoints are written every save_every steps and at the end of each phase).")
    with _silenced_absl():
        return _restore(run_dir, ckpt_dir, task_path, task, run_config, step, report)


def _restore(run_dir, ckpt_dir, task_path, task, run_config, step, report) -> Policy:
    import jax
    import jax.numpy as jnp

    from experiments.infra.checkpointing import Checkpointer
    from trqam_jax import agent

    # Read-only: evaluating never moves, deletes or writes a checkpoint, damaged or not.
    checkpointer = Checkpointer(ckpt_dir, read_only=True)
    try:
        steps = checkpointer.steps()
        if not steps:
            raise PolicyError(f"No checkpoint in {ckpt_dir}: the run has not saved one yet (checkpoints are "
                              "written every save_every steps and at the end of each phase).")
        if step is not None:
            if step not in steps:
                raise PolicyError(f"No checkpoint of step {step} in {ckpt_dir}; saved steps: "
                                  f"{', '.join(map(str, steps))}.")
            candidates = [step]
        else:
            candidates = list(reversed(steps))
        try:
            cfg = agent.AgentConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in task["offline"].items()})
            horizon = int(task["horizon"])
        except (KeyError, TypeError, ValueError) as e:
            raise PolicyError(f"{task_path} does not describe a run ({_short(e)}).") from None
        skipped = []
        for candidate in candidates:
            # The checkpointer says a line per damaged step on stderr; this function reports the
            # fallback itself, once, so those lines are dropped (the reason is in checkpointer.damaged).
            held = io.StringIO()
            try:
                with contextlib.redirect_stderr(held):
                    meta = checkpointer.read_meta(candidate)
                action_dim, obs_dim = int(meta["action_dim"]), int(meta["obs_dim"])
                num_seeds = int(meta["config"]["num_seeds"])
                nets = agent.make_networks(cfg, horizon * action_dim)
                like = jax.vmap(lambda k: nets.actor.init(k, jnp.zeros(obs_dim), jnp.zeros(horizon * action_dim), 0.0))(
                    jax.random.split(jax.random.PRNGKey(0), num_seeds))
                with contextlib.redirect_stderr(held):
                    restored = checkpointer.restore(like, items=("policy",), step=candidate)
                if restored is None:
                    raise RuntimeError("unreadable")
                found_step, params = restored.step, restored.state
            except Exception as e:  # noqa: BLE001 - orbax raises many types for a damaged step
                skipped.append((candidate, checkpointer.damaged.get(candidate) or _short(e)))
                continue
            if skipped and report is not None:
                names = ", ".join(str(s) for s, _ in skipped)
                report(f"Checkpoint step {names} in {ckpt_dir} is damaged ({skipped[0][1]}); "
                       f"using the previous one, step {found_step}.")
            act = make_chunk_policy(cfg, nets, horizon, action_dim)
            return Policy(task["env_name"], horizon, action_dim, params, act, int(found_step), num_seeds,
                          task.get("eval_steps"), run_config, tuple(skipped))
        what = f"step {step} is" if step is not None else f"all {len(steps)} checkpoints (steps " \
                                                           f"{', '.join(map(str, steps))}) are"
        raise PolicyError(f"No readable checkpoint in {ckpt_dir}: {what} damaged ({skipped[0][1]}). "
                          "Re-run training with --resume from an earlier checkpoint, or train again.")
    finally:
        checkpointer.close()


def make_chunk_policy(cfg, nets, horizon: int, action_dim: int):
    """act(seed-stacked actor params, observations (S, E, O), key) -> numpy chunks (S, E, H, A).

    The key is split over the S seeds, or is already one key per seed (shape (S, 2)); each seed samples
    its E chunks with the ODE (conventions §2).
    """
    import jax
    import jax.numpy as jnp

    from trqam_jax import agent

    act_seeds = jax.jit(jax.vmap(agent.make_act_fn(cfg, nets), in_axes=(0, 0, 0)))

    def act(params, observations, key):
        s, e = observations.shape[:2]
        keys = key if jnp.ndim(key) == 2 else jax.random.split(key, s)
        out = act_seeds(params, jnp.asarray(observations), keys)
        return np.asarray(out).reshape(s, e, horizon, action_dim)

    return act


def default_envs_per_seed(run_value: Optional[int], num_seeds: int, available_mb: Optional[float]) -> int:
    """The run's `eval_envs_per_seed` (else DEFAULT_ENVS_PER_SEED), lowered so that num_seeds x it fit
    in half of `available_mb` (MemAvailable; None: not lowered), at least 1."""
    from experiments.env_workers import in_process_envs_that_fit

    envs_per_seed = int(run_value or DEFAULT_ENVS_PER_SEED)
    fit = in_process_envs_that_fit(available_mb)
    if fit is not None and num_seeds * envs_per_seed > fit:
        envs_per_seed = max(1, fit // max(1, num_seeds))
    return envs_per_seed


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    from experiments.infra.checkpointing import quiet_orbax

    quiet_orbax()
    import warnings

    warnings.filterwarnings("ignore", message=".*precision lowered by casting.*")  # ogbench's Box spaces
    warnings.filterwarnings("ignore", message=".*DISPLAY environment variable.*")  # glfw without a screen
    if FLAGS.episodes < 1:
        raise SystemExit("policy: error: --episodes must be at least 1.")
    if FLAGS.envs_per_seed is not None and FLAGS.envs_per_seed < 1:
        raise SystemExit("policy: error: --envs_per_seed must be at least 1.")
    try:
        policy = load_policy(FLAGS.run_dir, FLAGS.step, report=print)
    except PolicyError as e:
        raise SystemExit(f"policy: error: {e}") from None

    from experiments.env_workers import in_process_envs_mb, mem_available_mb
    from experiments.evaluation import evaluate
    from experiments.evaluation.episodes import episodes_per_round

    envs_per_seed, lowered = FLAGS.envs_per_seed, ""
    if envs_per_seed is None:
        run_value = (policy.run_config or {}).get("eval_envs_per_seed") or DEFAULT_ENVS_PER_SEED
        envs_per_seed = default_envs_per_seed(run_value, policy.num_seeds, mem_available_mb())
        if envs_per_seed < run_value:
            lowered = f"; {run_value} per seed would not fit in half of the free memory"
    per_round = episodes_per_round(FLAGS.episodes, envs_per_seed)
    rounds = FLAGS.episodes // per_round
    eval_steps = FLAGS.episode_steps or policy.eval_steps
    length = f"{eval_steps} steps (the run's eval_steps)" if not FLAGS.episode_steps and eval_steps else \
        f"{eval_steps} steps" if eval_steps else "the env's default length"
    envs = policy.num_seeds * per_round
    print(f"{policy.env_name} step {policy.step}: {policy.num_seeds} seeds x {FLAGS.episodes} episodes of {length}, "
          f"in {rounds} round(s) of {per_round} env(s) per seed ({envs} envs at once, about "
          f"{in_process_envs_mb(envs) / 1024:.1f} GB{lowered}).", flush=True)
    result = evaluate(lambda obs, key: policy.act(policy.params, obs, key), policy.env_name, policy.num_seeds,
                      FLAGS.episodes, FLAGS.seed, policy.horizon, max_episode_steps=eval_steps,
                      episodes_per_round=per_round)
    print(f"{policy.env_name} step {policy.step}: success per seed {np.round(result.success_rate, 3).tolist()}, "
          f"mean {result.success_rate.mean():.3f} ({result.env_steps} env steps, longest episode "
          f"{int(result.episode_length.max())} steps).")


if __name__ == "__main__":
    flags.DEFINE_string("run_dir", None, "A run directory <output_dir>/<env_name>/<method>.", required=True)
    flags.DEFINE_integer("episodes", 50, "Evaluation episodes per seed.")
    flags.DEFINE_integer("envs_per_seed", None, "Envs built per seed; the episodes run in rounds of this many "
                         "(default: the run's eval_envs_per_seed, else 5, within half of the free memory). About 160 MB "
                         "per env.")
    flags.DEFINE_integer("episode_steps", None, "Episode length (default: the run's eval_steps from task.json).")
    flags.DEFINE_integer("step", None, "Evaluate this checkpoint step (default: the newest readable one).")
    flags.DEFINE_integer("seed", 0, "Evaluation seed.")
    FLAGS = flags.FLAGS
    app.run(main)
