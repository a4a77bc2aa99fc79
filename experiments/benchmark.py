"""Speed and memory of the TRQAM update at the reference configuration (conventions §1-8).

  python -m experiments.benchmark                       # reference sizes, S = 1, 2, 4, 8
  python -m experiments.benchmark --hidden=64 --num_critics=2 --seeds=1,2  # a quick look
  python -m experiments.benchmark --learners=1,5,10,20,40 --tasks=5  # L learners of one domain

Seeds mode (the default) prints, for each number S of vmapped seeds: compile time, updates/s per seed
and in total for the scanned mode (n updates per jitted call, batches sampled inside jit) and for one
jitted call per update, and memory (XLA's compiled buffer sizes, the device's peak where it reports
one, and the host process's peak RSS).

Learners mode (`--learners`) times L learners of one domain in one program: learner i trains on task
i % T of a synthetic domain dataset (rewards and masks (T, N), everything else shared and held once),
with the budget `--budgets` cycling every T learners (kl_budget for trqam, the inverse temperature for
qam) and a new seed after each full cycle. For each L it prints the compile time, learner-updates/s in
total and per learner (scanned mode), and memory: the stacked state, XLA's temporary buffers and the
domain dataset.
"""

import functools
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from trqam_jax import agent, chunks

flags.DEFINE_list("seeds", ["1", "2", "4", "8"], "Numbers S of vmapped seeds to time.")
flags.DEFINE_list("learners", None, "Numbers L of learners of one domain to time (learners mode; replaces --seeds).")
flags.DEFINE_integer("tasks", 5, "Learners mode: tasks T of the domain (learner i has task i % T).")
flags.DEFINE_list("budgets", ["0.5", "1", "2"], "Learners mode: the budget axis, kl_budget (trqam) or inv_temp (qam).")
flags.DEFINE_integer("hidden", 512, "Width of the 4 hidden layers (actor and critic).")
flags.DEFINE_integer("num_critics", 10, "Critic ensemble size.")
flags.DEFINE_integer("flow_steps", 10, "K.")
flags.DEFINE_integer("batch_size", 256, "B.")
flags.DEFINE_integer("obs_dim", 40, "Observation size O.")
flags.DEFINE_integer("action_dim", 5, "Action size A.")
flags.DEFINE_integer("horizon", 5, "Chunk length H.")
flags.DEFINE_integer("dataset_size", 100_000, "Transitions in the synthetic device-side dataset.")
flags.DEFINE_integer("scan_steps", 20, "Updates per jitted call in the scanned mode.")
flags.DEFINE_integer("repeats", 3, "Timed calls per mode (after one warm-up call).")
flags.DEFINE_enum("method", "trqam", ["bc", "trqam", "qam"], "Which update to time.")
flags.DEFINE_enum("matmul_precision", "default", ["default", "high", "highest", "bfloat16", "tensorfloat32", "float32"],
                  "jax_default_matmul_precision ('default': jax's own).")
FLAGS = flags.FLAGS

BUDGET_FIELD = {"trqam": "kl_budget", "qam": "inv_temp"}  # the hyperparameter the budget axis sweeps


def synthetic_data(n, obs_dim, action_dim, seed=0, num_tasks=None):
    """A device-side ChunkData of n transitions; with num_tasks, rewards and masks are (T, n), one row per task."""
    rng = np.random.default_rng(seed)
    terminals = (np.arange(n) % 1000 == 999).astype(np.float32)
    rows = (n,) if num_tasks is None else (num_tasks, n)
    return chunks.make_chunk_data(
        rng.normal(size=(n, obs_dim)), np.clip(rng.normal(size=(n, action_dim)), -1, 1),
        -rng.random(rows), (rng.random(rows) > 0.01).astype(np.float32), terminals,
        rng.normal(size=(n, obs_dim)))


def time_calls(fn, states, data, repeats):
    states, _ = fn(states, data)  # warm-up (and compile, if not compiled ahead of time)
    jax.block_until_ready(states)
    start = time.perf_counter()
    for _ in range(repeats):
        states, metrics = fn(states, data)
    jax.block_until_ready((states, metrics))
    return (time.perf_counter() - start) / repeats, states


def time_scanned(scanned, states, data, repeats):
    """Compiles the scanned train fn ahead of time and times it.

    Returns (compile_s, XLA temp MB, state MB, seconds per call, states).
    """
    start = time.perf_counter()
    compiled = scanned.lower(states, data).compile()
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    temp_mb = getattr(memory, "temp_size_in_bytes", 0) / 2**20 if memory is not None else float("nan")
    state_mb = chunks.tree_nbytes(states) / 2**20
    seconds, states = time_calls(compiled, states, data, repeats)
    return compile_s, temp_mb, state_mb, seconds, states


def device_peak_bytes():
    stats = jax.local_devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def learner_axes(num_learners, num_tasks, budgets):
    """(tasks, budgets, seeds) of L learners: task i % T, the budget cycling every T, then a new seed."""
    i = np.arange(num_learners)
    cycle = i // num_tasks
    tasks = (i % num_tasks).astype(np.int32)
    return tasks, np.asarray(budgets, np.float32)[cycle % len(budgets)], cycle // len(budgets)


def bench_seeds(cfg, nets, chunk_dim, sampler_kwargs):
    sample = functools.partial(chunks.sample_chunks, **sampler_kwargs)
    data = synthetic_data(FLAGS.dataset_size, FLAGS.obs_dim, FLAGS.action_dim)
    header = (f"{'S':>3} {'compile s':>9} {'scan upd/s/seed':>15} {'scan upd/s total':>16} "
              f"{'step upd/s/seed':>15} {'step upd/s total':>16} {'XLA temp MB':>11} {'state MB':>8}")
    print(header)
    for num_seeds in [int(s) for s in FLAGS.seeds]:
        states = agent.init_seeds(jnp.arange(num_seeds), cfg, nets, FLAGS.obs_dim, chunk_dim)
        scanned = agent.make_train_fn(cfg, nets, sample, FLAGS.scan_steps)
        compile_s, temp_mb, state_mb, seconds, states = time_scanned(scanned, states, data, FLAGS.repeats)
        scan_rate = FLAGS.scan_steps / seconds
        single = agent.make_train_fn(cfg, nets, sample, 1)
        seconds, states = time_calls(single, states, data, FLAGS.repeats * 2)
        step_rate = 1.0 / seconds
        print(f"{num_seeds:>3} {compile_s:>9.1f} {scan_rate:>15.1f} {scan_rate * num_seeds:>16.1f} "
              f"{step_rate:>15.1f} {step_rate * num_seeds:>16.1f} {temp_mb:>11.1f} {state_mb:>8.1f}")


def bench_learners(cfg, nets, chunk_dim, sampler_kwargs):
    domain = synthetic_data(FLAGS.dataset_size, FLAGS.obs_dim, FLAGS.action_dim, num_tasks=FLAGS.tasks)
    dataset_mb = chunks.tree_nbytes(domain) / 2**20
    budgets = [float(b) for b in FLAGS.budgets]
    field = BUDGET_FIELD.get(cfg.method)
    print(f"learners: task i % {FLAGS.tasks}, " + (f"{field} cycling over {budgets} every {FLAGS.tasks} learners, "
                                                  if field else "") + "then the next seed")
    # One jit for every L: the domain data is shared (vmap axis None), the task index is per learner.
    scanned = agent.make_train_fn(cfg, nets, chunks.task_sampler(chunks.sample_chunks, **sampler_kwargs),
                                  FLAGS.scan_steps, data_in_axes=chunks.TASK_OFFLINE_IN_AXES)
    print(f"{'L':>3} {'compile s':>9} {'upd/s total':>11} {'upd/s/learner':>13} {'state MB':>8} "
          f"{'XLA temp MB':>11} {'dataset MB':>10}")
    for num_learners in [int(n) for n in FLAGS.learners]:
        tasks, values, seeds = learner_axes(num_learners, FLAGS.tasks, budgets)
        hparams = agent.hyperparams(cfg, **{field: values}) if field else None
        states = agent.init_seeds(seeds, cfg, nets, FLAGS.obs_dim, chunk_dim, hparams=hparams)
        data = chunks.TaskData(domain, jnp.asarray(tasks))
        compile_s, temp_mb, state_mb, seconds, _ = time_scanned(scanned, states, data, FLAGS.repeats)
        rate = FLAGS.scan_steps / seconds  # updates/s of each learner
        print(f"{num_learners:>3} {compile_s:>9.1f} {rate * num_learners:>11.1f} {rate:>13.1f} {state_mb:>8.1f} "
              f"{temp_mb:>11.1f} {dataset_mb:>10.1f}")


def main(_):
    if FLAGS.learners and (FLAGS.tasks < 1 or min(int(n) for n in FLAGS.learners) < 1 or not FLAGS.budgets):
        raise app.UsageError("--learners needs learner counts >= 1, --tasks >= 1 and at least one --budgets value.")
    jax.config.update("jax_default_matmul_precision",
                      None if FLAGS.matmul_precision == "default" else FLAGS.matmul_precision)
    cfg = agent.AgentConfig(method=FLAGS.method, hidden_dims=(FLAGS.hidden,) * 4, num_critics=FLAGS.num_critics,
                            flow_steps=FLAGS.flow_steps, batch_size=FLAGS.batch_size)
    chunk_dim = FLAGS.horizon * FLAGS.action_dim
    nets = agent.make_networks(cfg, chunk_dim)
    sampler_kwargs = dict(batch_size=cfg.batch_size, horizon=FLAGS.horizon, discount=cfg.discount)
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}, "
          f"matmul precision {jax.config.jax_default_matmul_precision or 'default'}")
    print(f"config: method={cfg.method} width={FLAGS.hidden}x4 critics={cfg.num_critics} K={cfg.flow_steps} "
          f"B={cfg.batch_size} O={FLAGS.obs_dim} A={FLAGS.action_dim} H={FLAGS.horizon}, "
          f"scan_steps={FLAGS.scan_steps}")
    if FLAGS.learners:
        bench_learners(cfg, nets, chunk_dim, sampler_kwargs)
    else:
        bench_seeds(cfg, nets, chunk_dim, sampler_kwargs)
    peak = device_peak_bytes()
    if peak is not None:
        print(f"device peak memory: {peak / 2**30:.2f} GiB")
    print(f"host peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    app.run(main)
