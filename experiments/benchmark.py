"""Speed and memory of the TRQAM update at the reference configuration (conventions §1-8).

  python -m experiments.benchmark                       # reference sizes, S = 1, 2, 4, 8
  python -m experiments.benchmark --hidden=64 --num_critics=2 --seeds=1,2  # a quick look

Prints, for each number S of vmapped seeds: compile time, updates/s per seed and in total for the
scanned mode (n updates per jitted call, batches sampled inside jit) and for one jitted call per
update, and memory (XLA's compiled buffer sizes, the device's peak where it reports one, and the
host process's peak RSS).
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
FLAGS = flags.FLAGS


def synthetic_data(n, obs_dim, action_dim, seed=0):
    rng = np.random.default_rng(seed)
    terminals = (np.arange(n) % 1000 == 999).astype(np.float32)
    return chunks.make_chunk_data(
        rng.normal(size=(n, obs_dim)), np.clip(rng.normal(size=(n, action_dim)), -1, 1),
        -rng.random(n), (rng.random(n) > 0.01).astype(np.float32), terminals,
        rng.normal(size=(n, obs_dim)))


def time_calls(fn, states, data, repeats):
    states, _ = fn(states, data)  # warm-up (and compile, if not compiled ahead of time)
    jax.block_until_ready(states)
    start = time.perf_counter()
    for _ in range(repeats):
        states, metrics = fn(states, data)
    jax.block_until_ready((states, metrics))
    return (time.perf_counter() - start) / repeats, states


def device_peak_bytes():
    stats = jax.local_devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def main(_):
    cfg = agent.AgentConfig(method=FLAGS.method, hidden_dims=(FLAGS.hidden,) * 4, num_critics=FLAGS.num_critics,
                            flow_steps=FLAGS.flow_steps, batch_size=FLAGS.batch_size)
    chunk_dim = FLAGS.horizon * FLAGS.action_dim
    nets = agent.make_networks(cfg, chunk_dim)
    data = synthetic_data(FLAGS.dataset_size, FLAGS.obs_dim, FLAGS.action_dim)
    sample = functools.partial(chunks.sample_chunks, batch_size=cfg.batch_size, horizon=FLAGS.horizon,
                               discount=cfg.discount)
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}")
    print(f"config: method={cfg.method} width={FLAGS.hidden}x4 critics={cfg.num_critics} K={cfg.flow_steps} "
          f"B={cfg.batch_size} O={FLAGS.obs_dim} A={FLAGS.action_dim} H={FLAGS.horizon}, "
          f"scan_steps={FLAGS.scan_steps}")
    header = (f"{'S':>3} {'compile s':>9} {'scan upd/s/seed':>15} {'scan upd/s total':>16} "
              f"{'step upd/s/seed':>15} {'step upd/s total':>16} {'XLA temp MB':>11} {'state MB':>8}")
    print(header)
    for num_seeds in [int(s) for s in FLAGS.seeds]:
        states = agent.init_seeds(jnp.arange(num_seeds), cfg, nets, FLAGS.obs_dim, chunk_dim)
        scanned = agent.make_train_fn(cfg, nets, sample, FLAGS.scan_steps)
        start = time.perf_counter()
        compiled = scanned.lower(states, data).compile()
        compile_s = time.perf_counter() - start
        memory = compiled.memory_analysis()
        temp_mb = getattr(memory, "temp_size_in_bytes", 0) / 2**20 if memory is not None else float("nan")
        state_mb = chunks.tree_nbytes(states) / 2**20
        seconds, states = time_calls(compiled, states, data, FLAGS.repeats)
        scan_rate = FLAGS.scan_steps / seconds
        single = agent.make_train_fn(cfg, nets, sample, 1)
        seconds, states = time_calls(single, states, data, FLAGS.repeats * 2)
        step_rate = 1.0 / seconds
        print(f"{num_seeds:>3} {compile_s:>9.1f} {scan_rate:>15.1f} {scan_rate * num_seeds:>16.1f} "
              f"{step_rate:>15.1f} {step_rate * num_seeds:>16.1f} {temp_mb:>11.1f} {state_mb:>8.1f}")
    peak = device_peak_bytes()
    if peak is not None:
        print(f"device peak memory: {peak / 2**30:.2f} GiB")
    print(f"host peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    app.run(main)
