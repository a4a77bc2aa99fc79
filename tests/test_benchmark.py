"""The floor (experiments/roofline.py), the bf16 switch, the benchmark's entry point and the GPU check.

Counts below are worked out by hand: a product (M, K) @ (K, N) is 2 M K N FLOPs.
"""

import gzip
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import roofline
from trqam_jax import agent
from trqam_jax.types import Batch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_scan_and_while_bodies_are_multiplied_by_their_trip_counts():
    w = jnp.ones((3, 3))

    def scanned(x):  # 5 x (4, 3) @ (3, 3): 5 x 72
        return jax.lax.scan(lambda c, _: (c @ w, None), x, None, length=5)[0]

    assert roofline.count_matmuls(scanned, jnp.ones((4, 3))).flops == 5 * 72

    v = jnp.ones((5, 7))

    def nested(x):  # scan 3 of scan 4 of (2, 5) @ (5, 7) = 140, plus one (2, 5) @ (5, 7) outside
        inner = lambda c, _: (c + (c @ v)[:, :5], None)
        outer = lambda c, _: (jax.lax.scan(inner, c, None, length=4)[0], None)
        return jax.lax.scan(outer, x, None, length=3)[0] @ v

    count = roofline.count_matmuls(nested, jnp.ones((2, 5)))
    assert count.flops == (12 + 1) * 140 and count.dots == 13

    m = jnp.ones((4, 2))

    def looped(x):  # while i < 6 (from 0, step 1) of [(3, 4) @ (4, 2) = 48, and a scan 2 of (3, 4) @ (4, 4) = 96]
        def body(carry):
            i, y = carry
            y = y + jnp.pad(y @ m, ((0, 0), (0, 2)))
            y = jax.lax.scan(lambda c, _: (c @ jnp.eye(4), None), y, None, length=2)[0]
            return i + 1, y

        return jax.lax.while_loop(lambda c: c[0] < 6, body, (0, x))[1]

    assert roofline.count_matmuls(looped, jnp.ones((3, 4))).flops == 6 * (48 + 2 * 96)
    # XLA's own cost analysis counts a loop body once: far fewer FLOPs than the loop runs.
    analysis = jax.jit(looped).lower(jnp.ones((3, 4))).compile().cost_analysis()
    analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
    assert analysis.get("flops", 0) < 6 * (48 + 2 * 96) / 2

    def counted_down(x):  # i = 10; while i > 1: i -= 3 -> 10, 7, 4: 3 trips of (3, 4) @ (4, 2)
        return jax.lax.while_loop(lambda c: c[0] > 1, lambda c: (c[0] - 3, c[1] + (c[1] @ m).sum()), (10, x))[1]

    assert roofline.count_matmuls(counted_down, jnp.ones((3, 4))).flops == 3 * 48

    def branches(p, x):  # the costlier branch: (3, 4) @ (4, 4) = 96 against 0
        return jax.lax.cond(p, lambda y: y @ jnp.eye(4), lambda y: y, x)

    assert roofline.count_matmuls(branches, True, jnp.ones((3, 4))).flops == 96


def test_a_data_dependent_while_loop_is_refused():
    def unknown(x):
        return jax.lax.while_loop(lambda c: c.sum() < 100.0, lambda c: c @ jnp.full((2, 2), 2.0), x)

    with pytest.raises(ValueError, match="trip count"):
        roofline.count_matmuls(unknown, jnp.ones((2, 2)))


def test_a_tiny_mlp_update_by_hand():
    """x (4, 3) -> W1 (3, 5) -> tanh -> W2 (5, 2) -> squared loss; SGD on W1 and W2.

    Forward: 2*4*3*5 = 120 and 2*4*5*2 = 80. Backward: dW2 = h^T g: 80; dh = g W2^T: 80; dW1 = x^T dh: 120;
    no dx (x is data). 480 FLOPs, 5 products. Weight bytes (float32): forward reads W1 (60 B) and W2 (40 B);
    backward writes dW2 (40 B), reads W2 (40 B), writes dW1 (60 B): 240 B.
    """
    params = {"w1": jnp.ones((3, 5)), "w2": jnp.ones((5, 2))}

    def loss(p, x):
        return jnp.sum((jnp.tanh(x @ p["w1"]) @ p["w2"]) ** 2)

    def update(p, x):
        g = jax.grad(loss)(p, x)
        return jax.tree_util.tree_map(lambda a, b: a - 0.1 * b, p, g)

    count = roofline.count_matmuls(update, params, jnp.ones((4, 3)), param_shapes=[(3, 5), (5, 2)])
    assert (count.flops, count.dots, count.weight_bytes) == (480, 5, 240)


def tiny_config(method="trqam", compute_dtype="float32", **kw):
    values = dict(hidden_dims=(8, 8, 8, 8), num_critics=3, flow_steps=3, batch_size=6)
    values.update(kw)
    return agent.AgentConfig(method=method, compute_dtype=compute_dtype, **values)


def test_the_bc_update_floor_by_hand():
    """BC at O = 4, D = H * A = 2 * 3 = 6, width h = 8 x 4, B = 5, critics N = 3.

    Actor kernels: in = O + D + 1 = 11: 11x8, 8x8, 8x8, 8x8, 8x6: 88 + 192 + 48 = 328 weights (+ 8*4 + 6 = 38
    biases: 366 parameters). Forward: 2 * 5 * 328 = 3280 FLOPs. Backward: every dW (3280) and dx of all layers
    but the first (2 * 5 * (192 + 48) = 2400): 8960 FLOPs in all.
    Weight bytes: forward reads 5 kernels (328 * 4), backward writes 5 (328 * 4) and reads 4 (240 * 4): 3584.
    Critic: in = O + D = 10: N x (10*8 + 3*(64) + 8*1 = 280 weights + 4*8 LayerNorm scales + 4*8 offsets + 4*8
    + 1 biases = 377): 1131. Trained: critic + actor_bc + actor = 1131 + 2 * 366 = 1863 parameters, 8 float32
    accesses each (59616 B). EMA: critic_target + actor_ref = 1131 + 366 = 1497, 2 accesses each (11976 B).
    """
    cfg = tiny_config("bc", hidden_dims=(8,) * 4, num_critics=3, batch_size=5)
    nets = agent.make_networks(cfg, 6)
    floor = roofline.update_floor(cfg, nets, obs_dim=4, horizon=2, action_dim=3)
    assert floor.flops == 8960
    assert floor.weight_bytes == 3584
    assert (floor.trained_params, floor.target_params) == (1863, 1497)
    assert floor.optimizer_bytes == 1863 * 8 * 4 and floor.ema_bytes == 1497 * 2 * 4
    assert floor.bytes == 3584 + 59616 + 11976
    # The bound: at 1 FLOP/s and 1 B/s the bytes take longer; the rate is 1 / bytes.
    assert floor.bound(1.0, 1.0) == "memory" and floor.rate(1.0, 1.0) == pytest.approx(1 / floor.bytes)
    assert floor.bound(1.0, 1e9) == "compute"


def test_the_reference_shapes_count_60_gflop_and_bf16_changes_no_flops():
    """The issue's figure: 60.2 GFLOP per TRQAM update at width 512, B = 256, K = 10, 10 critics."""
    floors = {}
    for dtype in ("float32", "bfloat16"):
        cfg = agent.AgentConfig(compute_dtype=dtype)
        floors[dtype] = roofline.update_floor(cfg, agent.make_networks(cfg, 25), 40, 5, 5)
    assert floors["float32"].flops / 1e9 == pytest.approx(60.17, abs=0.01)
    assert floors["bfloat16"].flops == floors["float32"].flops
    # bf16 products read 2-byte weights (the weight gradients are still written in float32); the optimizer and
    # EMA traffic is the same float32.
    assert 0.5 < floors["bfloat16"].weight_bytes / floors["float32"].weight_bytes < 0.6
    assert floors["bfloat16"].optimizer_bytes == floors["float32"].optimizer_bytes


def _random_batch(key, batch_size, obs_dim, horizon, action_dim):
    k = jax.random.split(key, 4)
    return Batch(observations=jax.random.normal(k[0], (batch_size, obs_dim)),
                 actions=jnp.clip(jax.random.normal(k[1], (batch_size, horizon, action_dim)), -1, 1),
                 rewards=-jax.random.uniform(k[2], (batch_size,)), masks=jnp.ones((batch_size,)),
                 next_observations=jax.random.normal(k[3], (batch_size, obs_dim)), valid=jnp.ones((batch_size,)))


def _rel(a, b):
    a, b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    num = math.sqrt(sum(float(jnp.sum((x - y) ** 2)) for x, y in zip(a, b)))
    return num / math.sqrt(sum(float(jnp.sum(y**2)) for y in b))


def test_one_bf16_update_is_close_to_float32_and_finite():
    """Same state and batch; one update with bf16 matmul inputs against float32. Adam's first moment after one
    step is 0.1 x the clipped gradient: it is held within 5% (relative L2 over the whole tree), each loss within
    2%. Nothing is NaN, and parameters, Adam's moments and lam stay float32."""
    import optax

    obs_dim, horizon, action_dim = 5, 2, 3
    cfg32 = tiny_config(hidden_dims=(32,) * 4, batch_size=16, flow_steps=2)
    cfg16 = tiny_config(compute_dtype="bfloat16", hidden_dims=(32,) * 4, batch_size=16, flow_steps=2)
    nets32, nets16 = agent.make_networks(cfg32, 6), agent.make_networks(cfg16, 6)
    state = agent.init_train_state(jax.random.PRNGKey(3), cfg32, nets32, obs_dim, 6)
    # Move actor away from actor_ref so that the AM loss and the KL are not zero.
    state = state.replace(actor=jax.tree_util.tree_map(lambda p: p * 1.1, state.actor))
    batch = _random_batch(jax.random.PRNGKey(4), 16, obs_dim, horizon, action_dim)
    s32, m32 = jax.jit(agent.make_update_fn(cfg32, nets32))(state, batch)
    s16, m16 = jax.jit(agent.make_update_fn(cfg16, nets16))(state, batch)

    def first_moment(s):
        return [x.mu for x in jax.tree_util.tree_leaves(
            s.opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState)) if isinstance(x, optax.ScaleByAdamState)]

    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves((s16, m16)))
    assert 0 < _rel(first_moment(s16), first_moment(s32)) < 0.05
    for name in ("bc_loss", "critic_loss", "actor_loss", "kl_hat"):
        assert float(m16[name]) == pytest.approx(float(m32[name]), rel=0.02), name
    assert float(m32["actor_loss"]) > 0
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves((s16.critic, s16.actor, s16.opt_state))
               if jnp.issubdtype(x.dtype, jnp.floating))
    assert s16.dual.lam.dtype == jnp.float32
    # The switch changes only the products' input dtype: the float32 networks keep flax's own Dense.
    assert nets32.actor.compute_dtype == "float32" and nets16.critic.compute_dtype == "bfloat16"


def test_an_unknown_compute_dtype_is_refused():
    with pytest.raises(ValueError, match="compute_dtype"):
        agent.AgentConfig(compute_dtype="float16")


def test_the_benchmark_refuses_an_unknown_method_in_one_line():
    run = subprocess.run([sys.executable, "-m", "experiments.benchmark", "--method=trqam,nonsense", "--tiny"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode != 0
    assert "Unknown method 'nonsense'" in run.stderr and "Traceback" not in run.stderr


def test_top_ops_of_a_gpu_like_trace_counts_stream_kernels_once(tmp_path):
    """Kernels on the stream thread are counted; the 'XLA Ops' line repeats them and is left out."""
    events = [
        {"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "/host:CPU"}},
        {"ph": "M", "pid": 7, "name": "process_name", "args": {"name": "/device:GPU:0"}},
        {"ph": "M", "pid": 7, "tid": 1, "name": "thread_name", "args": {"name": "Stream #13(Compute)"}},
        {"ph": "M", "pid": 7, "tid": 2, "name": "thread_name", "args": {"name": "XLA Ops"}},
        {"ph": "X", "pid": 1, "tid": 9, "ts": 0, "dur": 500, "name": "PjitFunction(train)"},
        {"ph": "X", "pid": 7, "tid": 1, "ts": 0, "dur": 30, "name": "sm90_xmma_gemm_f32f32"},
        {"ph": "X", "pid": 7, "tid": 1, "ts": 40, "dur": 30, "name": "sm90_xmma_gemm_f32f32"},
        {"ph": "X", "pid": 7, "tid": 1, "ts": 80, "dur": 40, "name": "loop_add_fusion"},
        {"ph": "X", "pid": 7, "tid": 2, "ts": 0, "dur": 70, "name": "dot.1"},
    ]
    path = tmp_path / "host.trace.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump({"traceEvents": events}, f)
    assert roofline.find_trace(str(tmp_path)) == str(path)
    ops, what = roofline.top_ops(roofline.load_trace(str(path)))
    assert [(o.name, o.total_us, o.count) for o in ops] == [("sm90_xmma_gemm_f32f32", 60.0, 2),
                                                             ("loop_add_fusion", 40.0, 1)]
    text = roofline.format_top_ops(ops, what)
    assert "0.10 ms in all, 60.0% in matmul-like kernels" in text and "Stream #13" in text


def test_the_summary_table_divides_by_the_reference():
    lines = [
        'CEILING {"what": "bandwidth", "value": 4300.0, "unit": "GB/s", "how": "measured"}',
        'REFERENCE {"host_batch": false, "updates_per_s": 400.0, "width": 512}',
        'REFERENCE {"host_batch": true, "updates_per_s": 200.0, "width": 512}',
        'RESULT {"mode": "learners", "method": "trqam", "compute_dtype": "float32", "width": 512, "learners": 40, '
        '"updates_per_s": 1000.0, "gflop": 60.2, "tflops": 60.2, "pct_matmul": 12.0, "floor_mb": 740.0, '
        '"floor_rate": 5800.0, "pct_floor": 17.2, "bound": "memory"}',
        'RESULT {"mode": "learners", "method": "trqam", "compute_dtype": "float32", "width": 1024, "learners": 20, '
        '"skipped": "past the time budget"}',
    ]
    table = roofline.summary_table(lines)
    row = next(line for line in table.splitlines() if line.startswith("trqam w512 float32"))
    assert row.split()[-2:] == ["2.50", "5.00"]  # 1000 / 400 and 1000 / 200
    assert "skipped: past the time budget" in table and "ceiling: bandwidth 4300 GB/s" in table


def test_gpu_check_end_to_end_in_tiny_mode(tmp_path):
    """SLOW (about 60 s on 2 idle cores; all of it XLA:CPU compiles): experiments/gpu_check.sh with tiny shapes
    and a stand-in reference script, as the card will run it. It checks the benchmark's real entry point (the
    suite) prints the new columns, the profile is summarised, and the table comes last."""
    ref = tmp_path / "peer"
    ref.mkdir()
    (ref / "reference_speed.py").write_text(
        "import sys\nprint('reference_updates_per_s=' + ('5.0' if '--host_batch' in sys.argv else '10.0'))\n")
    logs = tmp_path / "logs"
    env = dict(os.environ, GPU_CHECK_TINY="1", PYTHON=sys.executable,
               JAX_COMPILATION_CACHE_DIR=str(tmp_path / "cache"))
    run = subprocess.run(["bash", "experiments/gpu_check.sh", str(logs), str(ref)], capture_output=True, text=True,
                         timeout=600, cwd=ROOT, env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert sorted(os.listdir(logs)) <= ["log.txt", "profile.xplane.pb", "summary.txt", "top_ops.txt",
                                        "trace.json.gz"]
    log = (logs / "log.txt").read_text()
    # The benchmark's new columns and lines.
    assert "GFLOP/upd  TFLOP/s   %mm %floor" in log
    assert "ceiling: matmul float32" in log and "ceiling: matmul bfloat16" in log and "ceiling: bandwidth" in log
    assert "floor (trqam, bfloat16, width 16)" in log and "floor (bc, float32, width 16)" in log
    assert "-bound, at most" in log
    # The profile and its summary.
    assert (logs / "trace.json.gz").exists()
    top = (logs / "top_ops.txt").read_text()
    assert "top ops by time" in top and "us/call" in top
    # The table comes last, with the reference ratios of the trqam rows at the reference's width.
    tail = run.stdout.strip().splitlines()
    assert tail[-1].startswith("gpu_check: done in")
    summary = (logs / "summary.txt").read_text()
    assert "reference update (fixed batch" in summary and "10.0 updates/s" in summary
    rows = {line.split()[0] + " " + line.split()[1] + " " + line.split()[2] + " " + line.split()[3]: line.split()
            for line in summary.splitlines() if line.startswith(("trqam", "bc"))}
    assert set(rows) == {"trqam w16 float32 2", "trqam w16 bfloat16 1", "bc w16 float32 1", "bc w16 bfloat16 1",
                         "trqam w24 float32 1"}
    fields = rows["trqam w16 float32 2"]
    assert float(fields[-2]) == pytest.approx(float(fields[4]) / 10.0, rel=0.01)  # x ref = upd/s / 10
