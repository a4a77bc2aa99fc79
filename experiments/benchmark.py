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

Every table also gives the floor (experiments/roofline.py, docs/performance.md): the matmul FLOPs per
learner-update counted from the jaxpr with loops multiplied out (GFLOP/upd), the TFLOP/s achieved, its
share of the matmul ceiling (%mm), and the share of the floor's rate (%floor). The floor line before each
table gives the fewest bytes per learner-update and which term bounds it. The ceilings are measured in the
same run (a large matrix product in the row's precision, a large elementwise copy for bandwidth) unless
--peak_tflops / --peak_bf16_tflops / --peak_bandwidth_gbs give them.

  python -m experiments.benchmark --learners=1,8 --method=trqam,sqam       # FLOPs and rate per method
  python -m experiments.benchmark --learners=1,8 --compute_dtype=float32,bfloat16
  python -m experiments.benchmark --suite=gpu --profile_dir=/tmp/prof     # what experiments/gpu_check.sh runs
  python -m experiments.benchmark --suite=gpu --tiny                      # the same at tiny shapes (CPU)
"""

import dataclasses
import functools
import json
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from experiments import roofline
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
flags.DEFINE_list("method", ["trqam"], "Update(s) to time, one table each: any method AgentConfig accepts "
                  f"({', '.join(agent.METHODS)}).")
flags.DEFINE_list("compute_dtype", ["float32"], "AgentConfig.compute_dtype(s) to time: float32 (the reference) "
                  "and/or bfloat16 (matmul inputs in bf16).")
flags.DEFINE_enum("matmul_precision", "default", ["default", "high", "highest", "bfloat16", "tensorfloat32", "float32"],
                  "jax_default_matmul_precision ('default': jax's own).")
flags.DEFINE_float("peak_tflops", 0.0, "Matmul ceiling of float32 rows in TFLOP/s (0: measure it in this run).")
flags.DEFINE_float("peak_bf16_tflops", 0.0, "Matmul ceiling of bfloat16 rows in TFLOP/s (0: measure it).")
flags.DEFINE_float("peak_bandwidth_gbs", 0.0, "Memory bandwidth ceiling in GB/s (0: measure it).")
flags.DEFINE_integer("ceiling_matmul_size", 0, "n of the n x n x n product that measures the matmul ceiling "
                     "(0: 8192 on an accelerator, 1024 on a CPU, 256 with --tiny on a CPU).")
flags.DEFINE_integer("ceiling_copy_mb", 0, "MB of the array that measures bandwidth (0: 1024 on an accelerator, 64 on "
                     "a CPU, 8 with --tiny on a CPU).")
flags.DEFINE_string("profile_dir", "", "If set, a jax.profiler trace of --profile_calls calls of the scanned program "
                    "(scan_steps updates each) at the last L of the (first) learners table is written here.")
flags.DEFINE_integer("profile_calls", 1, "Calls of the scanned program under the profiler.")
flags.DEFINE_enum("suite", "", ["", "gpu"], "gpu: the GPU check's rows in one process (ceilings; L = 1, 8, 40 at width "
                  "512 and 1, 8, 20 at width 1024, BC-only at width 512, each in float32 and bfloat16). Sizes come "
                  "from the flags unless --tiny.")
flags.DEFINE_bool("tiny", False, "Tiny shapes and few learners (a CPU check of the suite; figures mean nothing).")
flags.DEFINE_float("time_budget_s", 0.0, "Suite: rows that would start after this many seconds are skipped with a "
                   "line (0: no limit).")
flags.DEFINE_bool("bf16_error", False, "Only print the error of one update's gradient and losses with "
                  "compute_dtype=bfloat16 against float32 at these shapes (same parameters, batch and keys), then exit.")
flags.DEFINE_bool("records", False, "Also print one 'RESULT {json}' line per row and 'CEILING {json}' per ceiling "
                  "(the suite always does; experiments/roofline.py table reads them).")
FLAGS = flags.FLAGS

TINY = dict(hidden=16, num_critics=2, flow_steps=2, batch_size=8, obs_dim=6, action_dim=2, horizon=2,
            dataset_size=500, tasks=2, scan_steps=2, repeats=1)


@dataclasses.dataclass(frozen=True)
class Shapes:
    hidden: int
    num_critics: int
    flow_steps: int
    batch_size: int
    obs_dim: int
    action_dim: int
    horizon: int
    dataset_size: int
    tasks: int
    scan_steps: int
    repeats: int

    @property
    def chunk_dim(self):
        return self.horizon * self.action_dim


def shapes_from_flags() -> Shapes:
    values = {f.name: getattr(FLAGS, f.name) for f in dataclasses.fields(Shapes)}
    return Shapes(**(TINY if FLAGS.tiny else values))


def budget_field(method):
    """The hyperparameter the budget axis sweeps: the QAM inverse temperature, or eps of a trust-region method."""
    if method == "qam":
        return "inv_temp"
    return "kl_budget" if method in getattr(agent, "TRUST_REGION_METHODS", ("trqam",)) else None


def make_config(method, compute_dtype, shapes: Shapes, hidden=None) -> agent.AgentConfig:
    return agent.AgentConfig(method=method, hidden_dims=(hidden or shapes.hidden,) * 4,
                             num_critics=shapes.num_critics, flow_steps=shapes.flow_steps,
                             batch_size=shapes.batch_size, compute_dtype=compute_dtype)


def record(tag, **values):
    if FLAGS.records or FLAGS.suite:
        print(f"{tag} {json.dumps(values)}", flush=True)


class Ceilings:
    """Matmul FLOP/s per compute dtype and bandwidth in bytes/s: from the flags, else measured once here."""

    def __init__(self):
        accelerator = jax.default_backend() != "cpu"
        self.matmul_size = FLAGS.ceiling_matmul_size or (8192 if accelerator else 256 if FLAGS.tiny else 1024)
        self.copy_mb = FLAGS.ceiling_copy_mb or (1024 if accelerator else 8 if FLAGS.tiny else 64)
        self.given = {"float32": FLAGS.peak_tflops * 1e12, "bfloat16": FLAGS.peak_bf16_tflops * 1e12}
        self._matmul, self._bandwidth = {}, None

    def matmul(self, dtype) -> float:
        if dtype not in self._matmul:
            if self.given.get(dtype):
                self._matmul[dtype], how = self.given[dtype], "given"
            else:
                self._matmul[dtype] = roofline.matmul_ceiling(dtype, self.matmul_size)
                how = f"measured: {self.matmul_size}^3 product, random inputs, median of 10"
            precision = jax.config.jax_default_matmul_precision or "default"
            what = f"matmul {dtype}" + (f" (precision {precision})" if dtype == "float32" else " (f32 accumulate)")
            print(f"ceiling: {what} {self._matmul[dtype] / 1e12:.4g} TFLOP/s ({how})", flush=True)
            record("CEILING", what=what, value=self._matmul[dtype] / 1e12, unit="TFLOP/s", how=how)
        return self._matmul[dtype]

    def bandwidth(self) -> float:
        if self._bandwidth is None:
            if FLAGS.peak_bandwidth_gbs:
                self._bandwidth, how = FLAGS.peak_bandwidth_gbs * 1e9, "given"
            else:
                self._bandwidth = roofline.bandwidth_ceiling(self.copy_mb)
                how = f"measured: y = 2x over {self.copy_mb} MB, bytes read + written, median of 10"
            print(f"ceiling: bandwidth {self._bandwidth / 1e9:.4g} GB/s ({how})", flush=True)
            record("CEILING", what="bandwidth", value=self._bandwidth / 1e9, unit="GB/s", how=how)
        return self._bandwidth


@dataclasses.dataclass(frozen=True)
class Roof:
    """The floor of one configuration against the ceilings of its dtype."""

    floor: roofline.UpdateFloor
    peak_flops: float
    peak_bytes: float

    def columns(self, updates_per_s):
        """(GFLOP per learner-update, achieved TFLOP/s, % of the matmul ceiling, % of the floor's rate)."""
        tflops = updates_per_s * self.floor.flops / 1e12
        return (self.floor.flops / 1e9, tflops, 100 * tflops * 1e12 / self.peak_flops,
                100 * updates_per_s / self.floor.rate(self.peak_flops, self.peak_bytes))

    def fields(self, updates_per_s):
        gflop, tflops, pct_mm, pct_floor = self.columns(updates_per_s)
        return dict(gflop=gflop, tflops=tflops, pct_matmul=pct_mm, pct_floor=pct_floor,
                    floor_mb=self.floor.bytes / 1e6, floor_rate=self.floor.rate(self.peak_flops, self.peak_bytes),
                    bound=self.floor.bound(self.peak_flops, self.peak_bytes))


def roof_of(cfg, nets, shapes: Shapes, ceilings: Ceilings) -> Roof:
    floor = roofline.update_floor(cfg, nets, shapes.obs_dim, shapes.horizon, shapes.action_dim)
    roof = Roof(floor, ceilings.matmul(cfg.compute_dtype), ceilings.bandwidth())
    compute_s, memory_s = floor.times(roof.peak_flops, roof.peak_bytes)
    print(f"floor ({cfg.method}, {cfg.compute_dtype}, width {cfg.hidden_dims[0]}): "
          f"{floor.flops / 1e9:.4g} GFLOP of matmuls and {floor.bytes / 1e6:.4g} MB per learner-update "
          f"(weights {floor.weight_bytes / 1e6:.4g}, optimizer {floor.optimizer_bytes / 1e6:.4g}, EMA "
          f"{floor.ema_bytes / 1e6:.4g}): {floor.intensity:.0f} FLOP/byte; {compute_s * 1e6:.1f} us of matmul "
          f"and {memory_s * 1e6:.1f} us of traffic at the ceilings: {floor.bound(roof.peak_flops, roof.peak_bytes)}"
          f"-bound, at most {floor.rate(roof.peak_flops, roof.peak_bytes):,.0f} learner-updates/s", flush=True)
    return roof


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

    Returns (compile_s, XLA temp MB, state MB, seconds per call, states, the compiled program).
    """
    start = time.perf_counter()
    compiled = scanned.lower(states, data).compile()
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    temp_mb = getattr(memory, "temp_size_in_bytes", 0) / 2**20 if memory is not None else float("nan")
    state_mb = chunks.tree_nbytes(states) / 2**20
    seconds, states = time_calls(compiled, states, data, repeats)
    return compile_s, temp_mb, state_mb, seconds, states, compiled


def device_peak_bytes():
    stats = jax.local_devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def learner_axes(num_learners, num_tasks, budgets):
    """(tasks, budgets, seeds) of L learners: task i % T, the budget cycling every T, then a new seed."""
    i = np.arange(num_learners)
    cycle = i // num_tasks
    tasks = (i % num_tasks).astype(np.int32)
    return tasks, np.asarray(budgets, np.float32)[cycle % len(budgets)], cycle // len(budgets)


def bench_seeds(cfg, nets, shapes: Shapes, roof: Roof):
    sample = functools.partial(chunks.sample_chunks, batch_size=cfg.batch_size, horizon=shapes.horizon,
                               discount=cfg.discount)
    data = synthetic_data(shapes.dataset_size, shapes.obs_dim, shapes.action_dim)
    header = (f"{'S':>3} {'compile s':>9} {'scan upd/s/seed':>15} {'scan upd/s total':>16} "
              f"{'step upd/s/seed':>15} {'step upd/s total':>16} {'GFLOP/upd':>9} {'TFLOP/s':>8} {'%mm':>5} "
              f"{'%floor':>6} {'XLA temp MB':>11} {'state MB':>8}")
    print(header)
    for num_seeds in [int(s) for s in FLAGS.seeds]:
        states = agent.init_learners(jnp.arange(num_seeds), cfg, nets, shapes.obs_dim, shapes.chunk_dim)
        scanned = agent.make_train_fn(cfg, nets, sample, shapes.scan_steps)
        compile_s, temp_mb, state_mb, seconds, states, _ = time_scanned(scanned, states, data, shapes.repeats)
        scan_rate = shapes.scan_steps / seconds
        single = agent.make_train_fn(cfg, nets, sample, 1)
        seconds, states = time_calls(single, states, data, shapes.repeats * 2)
        step_rate = 1.0 / seconds
        gflop, tflops, pct_mm, pct_floor = roof.columns(scan_rate * num_seeds)
        print(f"{num_seeds:>3} {compile_s:>9.1f} {scan_rate:>15.1f} {scan_rate * num_seeds:>16.1f} "
              f"{step_rate:>15.1f} {step_rate * num_seeds:>16.1f} {gflop:>9.3g} {tflops:>8.3g} {pct_mm:>5.1f} "
              f"{pct_floor:>6.1f} {temp_mb:>11.1f} {state_mb:>8.1f}", flush=True)
        record("RESULT", mode="seeds", method=cfg.method, compute_dtype=cfg.compute_dtype, width=cfg.hidden_dims[0],
               learners=num_seeds, updates_per_s=scan_rate * num_seeds, step_updates_per_s=step_rate * num_seeds,
               compile_s=compile_s, temp_mb=temp_mb, state_mb=state_mb, **roof.fields(scan_rate * num_seeds))


def profile_calls(compiled, states, data, profile_dir, calls):
    """A jax.profiler trace of `calls` calls of a compiled program (perfetto and TensorBoard formats)."""
    try:
        trace = jax.profiler.trace(profile_dir, create_perfetto_trace=True)
    except TypeError:  # a jax without the perfetto option: the TensorBoard trace alone
        trace = jax.profiler.trace(profile_dir)
    with trace:
        for _ in range(calls):
            states, metrics = compiled(states, data)
        jax.block_until_ready((states, metrics))
    return states


def bench_learners(cfg, nets, shapes: Shapes, roof: Roof, learner_counts, profile_dir="", deadline=None):
    """The learners table of one configuration. deadline: a perf_counter time after which no row starts."""
    domain = synthetic_data(shapes.dataset_size, shapes.obs_dim, shapes.action_dim, num_tasks=shapes.tasks)
    dataset_mb = chunks.tree_nbytes(domain) / 2**20
    budgets = [float(b) for b in FLAGS.budgets]
    field = budget_field(cfg.method)
    print(f"learners: task i % {shapes.tasks}, " + (f"{field} cycling over {budgets} every {shapes.tasks} learners, "
                                                   if field else "") + "then the next seed")
    # One jit for every L: the domain data is shared (vmap axis None), the task index is per learner.
    sampler = chunks.task_sampler(chunks.sample_chunks, batch_size=cfg.batch_size, horizon=shapes.horizon,
                                  discount=cfg.discount)
    scanned = agent.make_train_fn(cfg, nets, sampler, shapes.scan_steps, data_in_axes=chunks.TASK_OFFLINE_IN_AXES)
    print(f"{'L':>3} {'compile s':>9} {'upd/s total':>11} {'upd/s/learner':>13} {'GFLOP/upd':>9} {'TFLOP/s':>8} "
          f"{'%mm':>5} {'%floor':>6} {'state MB':>8} {'XLA temp MB':>11} {'dataset MB':>10}", flush=True)
    for index, num_learners in enumerate(learner_counts):
        ident = dict(mode="learners", method=cfg.method, compute_dtype=cfg.compute_dtype, width=cfg.hidden_dims[0],
                     learners=num_learners)
        if deadline is not None and time.perf_counter() > deadline:
            print(f"{num_learners:>3} skipped: past the time budget", flush=True)
            record("RESULT", skipped="past the time budget", **ident)
            continue
        tasks, values, seeds = learner_axes(num_learners, shapes.tasks, budgets)
        hparams = agent.hyperparams(cfg, **{field: values}) if field else None
        states = agent.init_learners(seeds, cfg, nets, shapes.obs_dim, shapes.chunk_dim, hparams=hparams)
        data = chunks.TaskData(domain, jnp.asarray(tasks))
        compile_s, temp_mb, state_mb, seconds, states, compiled = time_scanned(scanned, states, data, shapes.repeats)
        rate = shapes.scan_steps / seconds  # updates/s of each learner
        gflop, tflops, pct_mm, pct_floor = roof.columns(rate * num_learners)
        print(f"{num_learners:>3} {compile_s:>9.1f} {rate * num_learners:>11.1f} {rate:>13.1f} {gflop:>9.3g} "
              f"{tflops:>8.3g} {pct_mm:>5.1f} {pct_floor:>6.1f} {state_mb:>8.1f} {temp_mb:>11.1f} "
              f"{dataset_mb:>10.1f}", flush=True)
        record("RESULT", updates_per_s=rate * num_learners, compile_s=compile_s, state_mb=state_mb, temp_mb=temp_mb,
               **ident, **roof.fields(rate * num_learners))
        if profile_dir and index == len(learner_counts) - 1:
            try:
                profile_calls(compiled, states, data, profile_dir, FLAGS.profile_calls)
            except Exception as e:  # a profiler that fails must not lose the rows still to come
                print(f"profile: failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", flush=True)
            else:
                print(f"profile: {FLAGS.profile_calls} call(s) of {shapes.scan_steps} updates at L = {num_learners} "
                      f"written under {profile_dir}", flush=True)


def suite_rows(methods, tiny):
    """(method, width, compute_dtype, learner counts, profile?) of the GPU check, most wanted first."""
    wide, narrow = (24, 16) if tiny else (1024, 512)
    first, second = ((2,), (1,)) if tiny else ((1, 8, 40), (1, 8, 40))
    wide_counts = (1,) if tiny else (1, 8, 20)
    rows = [(m, narrow, "float32", first, i == 0) for i, m in enumerate(methods)]
    rows += [(m, narrow, "bfloat16", second, False) for m in methods]
    rows += [("bc", narrow, dtype, second, False) for dtype in ("float32", "bfloat16")]
    # Tiny (a CPU check of the plumbing): the wide rows in float32 only, to keep it short.
    rows += [(m, wide, dtype, wide_counts, False) for m in methods
             for dtype in (("float32",) if tiny else ("float32", "bfloat16"))]
    return rows


def run_suite(shapes: Shapes, ceilings: Ceilings, methods):
    start = time.perf_counter()
    deadline = start + FLAGS.time_budget_s if FLAGS.time_budget_s > 0 else None
    ceilings.matmul("float32"), ceilings.matmul("bfloat16"), ceilings.bandwidth()
    for method, width, dtype, counts, profile in suite_rows(methods, FLAGS.tiny):
        print(f"\n== {method}, width {width}, {dtype}, L = {', '.join(map(str, counts))} "
              f"({time.perf_counter() - start:.0f} s into the suite)", flush=True)
        if deadline is not None and time.perf_counter() > deadline:
            print("skipped: past the time budget", flush=True)
            for n in counts:
                record("RESULT", mode="learners", method=method, compute_dtype=dtype, width=width, learners=n,
                       skipped="past the time budget")
            continue
        cfg = make_config(method, dtype, shapes, hidden=width)
        nets = agent.make_networks(cfg, shapes.chunk_dim)
        bench_learners(cfg, nets, shapes, roof_of(cfg, nets, shapes, ceilings), counts,
                       FLAGS.profile_dir if profile else "", deadline)


def bf16_error(shapes: Shapes, method="trqam"):
    """Relative L2 errors of one update's gradient (whole tree) and losses, bfloat16 against float32.

    The actor is moved off actor_ref (x 1.1) so that the adjoint-matching loss and its gradient are not zero.
    """
    from trqam_jax.types import Batch

    cfgs = {d: make_config(method, d, shapes) for d in ("float32", "bfloat16")}
    nets = {d: agent.make_networks(c, shapes.chunk_dim) for d, c in cfgs.items()}
    state = agent.init_train_state(jax.random.PRNGKey(0), cfgs["float32"], nets["float32"], shapes.obs_dim,
                                   shapes.chunk_dim)
    state = state.replace(actor=jax.tree_util.tree_map(lambda p: p * 1.1, state.actor))
    rng = np.random.default_rng(1)
    b = shapes.batch_size
    batch = Batch(observations=jnp.asarray(rng.normal(size=(b, shapes.obs_dim)), jnp.float32),
                  actions=jnp.asarray(np.clip(rng.normal(size=(b, shapes.horizon, shapes.action_dim)), -1, 1),
                                      jnp.float32),
                  rewards=-jnp.asarray(rng.random(b), jnp.float32), masks=jnp.ones((b,)),
                  next_observations=jnp.asarray(rng.normal(size=(b, shapes.obs_dim)), jnp.float32),
                  valid=jnp.ones((b,)))
    _, keys = agent.split_update_key(state.key)
    params = agent.Trainable(state.critic, state.actor_bc, state.actor)
    out = {}
    for d in cfgs:
        out[d] = jax.jit(jax.grad(agent.make_total_loss(cfgs[d], nets[d]), has_aux=True))(params, state, batch, keys)

    def rel(a, b):
        a, b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
        num = sum(float(jnp.sum((x - y) ** 2)) for x, y in zip(a, b))
        return (num / sum(float(jnp.sum(y**2)) for y in b)) ** 0.5

    (g32, m32), (g16, m16) = out["float32"], out["bfloat16"]
    finite = all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves((g16, m16)))
    print(f"bf16 against float32, one {method} update at width {shapes.hidden}, B = {b}, K = {shapes.flow_steps}, "
          f"{shapes.num_critics} critics ({jax.default_backend()}): all finite: {finite}")
    for name, part in (("critic", 0), ("actor_bc", 1), ("actor", 2)):
        print(f"  gradient of {name}: relative L2 error {rel(g16[part], g32[part]):.2e}")
    print(f"  whole gradient: relative L2 error {rel(g16, g32):.2e}")
    for name in sorted(m32):
        ref = float(m32[name])
        err = abs(float(m16[name]) - ref) / max(abs(ref), 1e-12)
        print(f"  {name}: float32 {ref:.6g}, bfloat16 {float(m16[name]):.6g}, relative error {err:.2e}")


def main(_):
    shapes = shapes_from_flags()
    learner_counts = [int(n) for n in FLAGS.learners] if FLAGS.learners else None
    if learner_counts is not None and (shapes.tasks < 1 or min(learner_counts) < 1 or not FLAGS.budgets):
        raise app.UsageError("--learners needs learner counts >= 1, --tasks >= 1 and at least one --budgets value.")
    if not FLAGS.method or not FLAGS.compute_dtype:
        raise app.UsageError("--method and --compute_dtype need at least one value each.")
    for method in FLAGS.method:
        for dtype in FLAGS.compute_dtype:
            try:
                make_config(method, dtype, shapes)
            except ValueError as e:
                raise app.UsageError(str(e))
    jax.config.update("jax_default_matmul_precision",
                      None if FLAGS.matmul_precision == "default" else FLAGS.matmul_precision)
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}, "
          f"matmul precision {jax.config.jax_default_matmul_precision or 'default'}")
    print(f"config: width={shapes.hidden}x4 critics={shapes.num_critics} K={shapes.flow_steps} B={shapes.batch_size} "
          f"O={shapes.obs_dim} A={shapes.action_dim} H={shapes.horizon}, scan_steps={shapes.scan_steps}"
          + (" (tiny)" if FLAGS.tiny else ""), flush=True)
    if FLAGS.bf16_error:
        for method in FLAGS.method:
            bf16_error(shapes, method)
        return
    ceilings = Ceilings()
    if FLAGS.suite:
        run_suite(shapes, ceilings, FLAGS.method)
    else:
        profile_dir = FLAGS.profile_dir
        for method in FLAGS.method:
            for dtype in FLAGS.compute_dtype:
                cfg = make_config(method, dtype, shapes)
                nets = agent.make_networks(cfg, shapes.chunk_dim)
                print(f"\n== method={cfg.method} compute_dtype={cfg.compute_dtype}", flush=True)
                roof = roof_of(cfg, nets, shapes, ceilings)
                if learner_counts:
                    bench_learners(cfg, nets, shapes, roof, learner_counts, profile_dir)
                    profile_dir = ""  # the first table only
                else:
                    bench_seeds(cfg, nets, shapes, roof)
    peak = device_peak_bytes()
    if peak is not None:
        print(f"device peak memory: {peak / 2**30:.2f} GiB")
    print(f"host peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    app.run(main)
