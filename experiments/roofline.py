"""The floor of the update: matmul FLOPs and the fewest bytes per learner-update, the two ceilings, and
readers for the GPU check's outputs (docs/performance.md).

    python -m experiments.roofline top_ops LOG_DIR_OR_TRACE [--top=15]   # top ops of a jax.profiler trace
    python -m experiments.roofline table LOG                             # the GPU check's summary table

FLOPs are counted from the jaxpr: every dot_general, with the bodies of scan and while loops multiplied by
their trip counts (XLA's cost analysis counts a loop body once) and the costlier branch of a cond.

The fewest bytes an update must move (`UpdateFloor`):
  - weights: each dot_general reads its parameter-shaped operand once, or writes its parameter-shaped
    output once (a weight gradient), at the dtype the product sees (bfloat16 under the bf16 switch);
    activations are assumed to stay on chip;
  - optimizer: per trained parameter, the gradient is read once for the global-norm clip, then one fused
    pass reads gradient, m, v and the parameter and writes m, v and the parameter: 8 float32 accesses;
  - EMA (critic_target, actor_ref): the online parameter is already read by the optimizer pass, so each
    target element is read and written once: 2 float32 accesses.
At batch B a float32 weight read once per pass over the batch gives 2B FLOP per 4 bytes (128 FLOP/byte at
B = 256); passes that see B * K rows at once (the vmapped flow steps) give K times more.
"""

import dataclasses
import gzip
import json
import math
import os
import re
import statistics
import sys
import time
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jax.extend.core import ClosedJaxpr, Jaxpr, Literal

from trqam_jax.networks import native_bf16_products

# --------------------------------------------------------------------------------------------
# Matmul FLOPs and weight bytes from the jaxpr.
# --------------------------------------------------------------------------------------------


def dot_general_flops(eqn) -> int:
    """2 * batch * M * N * K of one dot_general equation."""
    lhs, rhs = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = eqn.params["dimension_numbers"]
    batch = math.prod(lhs[d] for d in lhs_batch)
    contract = math.prod(lhs[d] for d in lhs_contract)
    lhs_free = math.prod(s for d, s in enumerate(lhs) if d not in lhs_contract and d not in lhs_batch)
    rhs_free = math.prod(s for d, s in enumerate(rhs) if d not in rhs_contract and d not in rhs_batch)
    return 2 * batch * contract * lhs_free * rhs_free


_COMPARE = {"lt": lambda a, b: a < b, "le": lambda a, b: a <= b, "gt": lambda a, b: a > b,
            "ge": lambda a, b: a >= b, "ne": lambda a, b: a != b}


def while_trip_count(eqn, max_trips: int = 10**8) -> int:
    """The trip count of a while loop of the form `i = c0; while i OP bound: ...; i = i + step` (or - step).

    c0, bound and step must be literals of the jaxpr (or loop constants / loop-invariant carries that
    are literals outside the loop). Raises ValueError for any other loop.
    """
    cond, body = eqn.params["cond_jaxpr"].jaxpr, eqn.params["body_jaxpr"].jaxpr
    cond_n, body_n = eqn.params["cond_nconsts"], eqn.params["body_nconsts"]
    init = eqn.invars[cond_n + body_n:]
    fail = ValueError(f"cannot read the trip count of a while loop from its jaxpr:\n{cond}")
    if len(cond.eqns) != 1 or cond.eqns[0].primitive.name not in _COMPARE:
        raise fail
    compare = cond.eqns[0]

    def carry_index(var):
        for i, v in enumerate(cond.invars):
            if v is var:
                return i
        return None

    def step_of(k):  # the literal step if the body does carry[k] += step (or -= step)
        out = body.outvars[k]
        for e in body.eqns:
            if e.primitive.name in ("add", "sub") and any(o is out for o in e.outvars):
                a, b = e.invars
                carry_in = body.invars[body_n + k]
                if a is carry_in and isinstance(b, Literal):
                    return b.val if e.primitive.name == "add" else -b.val
                if b is carry_in and isinstance(a, Literal) and e.primitive.name == "add":
                    return a.val
        return None

    def literal_value(var):
        if isinstance(var, Literal):
            return var.val
        i = carry_index(var)
        if i is None:
            return None
        if i < cond_n:  # a loop constant
            outer = eqn.invars[i]
            return outer.val if isinstance(outer, Literal) else None
        k = i - cond_n
        if body.outvars[k] is body.invars[body_n + k] and isinstance(init[k], Literal):
            return init[k].val  # a carry the body passes through unchanged
        return None

    a, b = compare.invars
    for counter, other, flip in ((a, b, False), (b, a, True)):
        i = carry_index(counter)
        if i is None or i < cond_n:
            continue
        k = i - cond_n
        step, start, bound = step_of(k), init[k], literal_value(other)
        if step is None or not isinstance(start, Literal) or bound is None:
            continue
        value, trips, op = start.val, 0, _COMPARE[compare.primitive.name]
        while (op(bound, value) if flip else op(value, bound)):
            value, trips = value + step, trips + 1
            if trips > max_trips:
                raise fail
        return trips
    raise fail


def _sub_jaxprs(params) -> Iterable:
    for value in params.values():
        for v in (value if isinstance(value, (tuple, list)) else (value,)):
            if isinstance(v, (ClosedJaxpr, Jaxpr)):
                yield v


def _jaxpr(j):
    return j.jaxpr if isinstance(j, ClosedJaxpr) else j


def iter_dots(jaxpr, multiplier: int = 1) -> List[Tuple[object, int]]:
    """(dot_general equation, times it runs) for every dot in a jaxpr and its sub-jaxprs."""
    out = []
    for eqn in _jaxpr(jaxpr).eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            out.append((eqn, multiplier))
        elif name in ("conv_general_dilated", "ragged_dot", "ragged_dot_general"):
            raise NotImplementedError(f"the FLOP counter does not count {name}")
        elif name == "scan":
            out += iter_dots(eqn.params["jaxpr"], multiplier * eqn.params["length"])
        elif name == "while":
            trips = while_trip_count(eqn)
            out += iter_dots(eqn.params["body_jaxpr"], multiplier * trips)
            out += iter_dots(eqn.params["cond_jaxpr"], multiplier * (trips + 1))
        elif name == "cond":  # the costlier branch
            branches = [iter_dots(b, multiplier) for b in eqn.params["branches"]]
            out += max(branches, key=lambda dots: sum(dot_general_flops(e) * m for e, m in dots))
        else:  # pjit, custom_jvp_call, custom_vjp_call, remat, ...: their jaxprs run once
            for sub in _sub_jaxprs(eqn.params):
                out += iter_dots(sub, multiplier)
    return out


def live_jaxpr(fn, *args):
    """The jaxpr of fn(*args) without dead equations, as XLA compiles it.

    A custom_vjp backward pass (the bf16 switch's matmul) computes both cotangents, and the one nobody
    uses is dead code that XLA removes; counting it would overstate the work.
    """
    closed = jax.make_jaxpr(fn)(*args)
    try:
        from jax._src.interpreters import partial_eval as pe

        jaxpr, _ = pe.dce_jaxpr(closed.jaxpr, [True] * len(closed.jaxpr.outvars))
        return jaxpr
    except (ImportError, AttributeError):  # a jax without this private helper: count everything
        return closed


@dataclasses.dataclass(frozen=True)
class MatmulCount:
    flops: int  # matmul FLOPs, loops multiplied out
    weight_bytes: int  # bytes of the parameter-shaped operands and outputs of those products
    dots: int  # dot_general executions


def count_matmuls(fn, *args, param_shapes: Sequence[Tuple[int, ...]] = ()) -> MatmulCount:
    """Counts the matmuls of fn(*args) from its jaxpr (args may be arrays or jax.ShapeDtypeStruct).

    param_shapes: shapes of the weight matrices; an operand or output of such a shape, up to the order of its
    axes (autodiff may produce a weight gradient transposed), counts its bytes once per execution of its product.
    """
    shapes = {tuple(sorted(s)) for s in param_shapes}
    flops = weight_bytes = dots = 0
    for eqn, times in iter_dots(live_jaxpr(fn, *args)):
        flops += times * dot_general_flops(eqn)
        dots += times
        for var in (*eqn.invars[:2], *eqn.outvars):
            aval = var.aval
            if tuple(sorted(aval.shape)) in shapes:
                weight_bytes += times * math.prod(aval.shape) * np.dtype(aval.dtype).itemsize
    return MatmulCount(flops, weight_bytes, dots)


# --------------------------------------------------------------------------------------------
# The floor of one learner-update.
# --------------------------------------------------------------------------------------------

OPTIMIZER_ACCESSES = 8  # per trained float32 parameter: clip reads g; Adam reads g, m, v, p, writes m, v, p
EMA_ACCESSES = 2  # per target element: read and write (the online parameter is read by the optimizer)


@dataclasses.dataclass(frozen=True)
class UpdateFloor:
    flops: float  # matmul FLOPs per learner-update
    weight_bytes: float
    optimizer_bytes: float
    ema_bytes: float
    trained_params: int
    target_params: int

    @property
    def bytes(self) -> float:
        return self.weight_bytes + self.optimizer_bytes + self.ema_bytes

    @property
    def intensity(self) -> float:
        return self.flops / self.bytes

    def times(self, peak_flops: float, peak_bytes_per_s: float) -> Tuple[float, float]:
        """(seconds of matmul work at the matmul ceiling, seconds of traffic at the bandwidth ceiling)."""
        return self.flops / peak_flops, self.bytes / peak_bytes_per_s

    def bound(self, peak_flops: float, peak_bytes_per_s: float) -> str:
        compute, memory = self.times(peak_flops, peak_bytes_per_s)
        return "compute" if compute >= memory else "memory"

    def rate(self, peak_flops: float, peak_bytes_per_s: float) -> float:
        """Learner-updates/s at the floor: the larger of the two times."""
        return 1.0 / max(self.times(peak_flops, peak_bytes_per_s))


def _tree_size(tree) -> int:
    return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(tree))


def update_floor(config, networks, obs_dim: int, horizon: int, action_dim: int) -> UpdateFloor:
    """The floor of one update of `trqam_jax.agent.make_update_fn(config, networks)` at batch config.batch_size."""
    from trqam_jax import agent
    from trqam_jax.types import Batch

    chunk_dim = horizon * action_dim
    state = jax.eval_shape(lambda k: agent.init_train_state(k, config, networks, obs_dim, chunk_dim),
                           jax.random.PRNGKey(0))
    b = config.batch_size
    f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
    batch = Batch(observations=f32(b, obs_dim), actions=f32(b, horizon, action_dim), rewards=f32(b),
                  masks=f32(b), next_observations=f32(b, obs_dim), valid=f32(b))
    kernels = [x.shape for x in jax.tree_util.tree_leaves((state.critic, state.actor)) if len(x.shape) >= 2]
    with native_bf16_products():  # the program an accelerator runs, also when traced on a CPU host
        count = count_matmuls(agent.make_update_fn(config, networks), state, batch, param_shapes=kernels)
    trained = _tree_size(state.critic) + _tree_size(state.actor_bc) + _tree_size(state.actor)
    targets = _tree_size(state.critic_target) + _tree_size(state.actor_ref)
    return UpdateFloor(float(count.flops), float(count.weight_bytes), float(OPTIMIZER_ACCESSES * 4 * trained),
                       float(EMA_ACCESSES * 4 * targets), trained, targets)


# --------------------------------------------------------------------------------------------
# Ceilings measured on the device.
# --------------------------------------------------------------------------------------------


def _median_seconds(fn, args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # compile and warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_ceiling(dtype: str, size: int, repeats: int = 10) -> float:
    """FLOP/s of a size^3 product of random matrices in `dtype` (float32 under the current default matmul
    precision; bfloat16 accumulating in float32, as the bf16 switch does)."""
    ka, kb = jax.random.split(jax.random.PRNGKey(1))
    a = jax.random.normal(ka, (size, size), jnp.float32).astype(dtype)
    b = jax.random.normal(kb, (size, size), jnp.float32).astype(dtype)
    f = jax.jit(lambda x, y: jnp.matmul(x, y, preferred_element_type=jnp.float32))
    return 2.0 * size**3 / _median_seconds(f, (a, b), repeats)


def bandwidth_ceiling(megabytes: int, repeats: int = 10) -> float:
    """Bytes/s of y = 2 x over a float32 array of `megabytes` (bytes read plus bytes written)."""
    n = megabytes * 2**20 // 4
    x = jax.random.normal(jax.random.PRNGKey(2), (n,), jnp.float32)
    f = jax.jit(lambda v: v * 2.0)
    return 2.0 * 4 * n / _median_seconds(f, (x,), repeats)


# --------------------------------------------------------------------------------------------
# Readers: a jax.profiler trace, and the GPU check's log.
# --------------------------------------------------------------------------------------------

MATMUL_KERNEL = re.compile(r"gemm|cublas|cutlass|xmma|wgmma|matmul|dot", re.IGNORECASE)
CONTAINER_OP = re.compile(r"(while|conditional|call)(\.|$)")


def find_trace(path: str) -> str:
    """A trace file: path itself, or the newest *.trace.json.gz (else perfetto_trace.json.gz) under it."""
    if os.path.isfile(path):
        return path
    found = []
    for root, _, files in os.walk(path):
        for name in files:
            if name.endswith(".trace.json.gz") or name == "perfetto_trace.json.gz":
                full = os.path.join(root, name)
                found.append((name.endswith(".trace.json.gz"), os.path.getmtime(full), full))
    if not found:
        raise FileNotFoundError(f"no *.trace.json.gz or perfetto_trace.json.gz under {path}")
    return max(found)[2]


def load_trace(path: str) -> dict:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        trace = json.load(f)
    return trace if isinstance(trace, dict) else {"traceEvents": trace}


@dataclasses.dataclass(frozen=True)
class OpTime:
    name: str
    total_us: float
    count: int


def top_ops(trace: dict) -> Tuple[List[OpTime], str]:
    """Op time summed by name, largest first, and a line saying which events were counted.

    On a GPU trace: the kernel events on the device processes' stream threads (else their 'XLA Ops'
    line, else all their threads). On a CPU trace: the events that carry an `hlo_op` (XLA's thunks).
    """
    events = trace.get("traceEvents", [])
    processes, threads = {}, {}
    for e in events:
        if e.get("ph") == "M" and e.get("name") == "process_name":
            processes[e["pid"]] = e.get("args", {}).get("name", "")
        elif e.get("ph") == "M" and e.get("name") == "thread_name":
            threads[(e["pid"], e.get("tid"))] = e.get("args", {}).get("name", "")
    spans = [e for e in events if e.get("ph") == "X" and e.get("dur", 0) > 0
             and not str(e.get("name", "")).startswith("end: ")]
    devices = {pid for pid, name in processes.items() if name.startswith("/device:")}
    if devices:
        device_threads = {k: v for k, v in threads.items() if k[0] in devices}
        for pick in (lambda n: "stream" in n.lower(), lambda n: n == "XLA Ops", lambda n: True):
            chosen = {k for k, v in device_threads.items() if pick(v)}
            chosen_spans = [e for e in spans if (e["pid"], e.get("tid")) in chosen]
            if chosen_spans:
                break
        names = sorted({device_threads[k] for k in chosen})
        spans = chosen_spans
        what = f"device events on {len(chosen)} thread(s): {', '.join(names[:6])}"
    else:  # XLA:CPU thunks; loops and calls contain other thunks, so they are left out
        spans = [e for e in spans if "hlo_op" in e.get("args", {}) and not CONTAINER_OP.match(e["name"])]
        what = "host events that carry an hlo_op, less while/conditional/call (CPU trace)"
    totals: Dict[str, List[float]] = {}
    for e in spans:
        t = totals.setdefault(e["name"], [0.0, 0])
        t[0] += float(e["dur"])
        t[1] += 1
    ops = sorted((OpTime(n, t, c) for n, (t, c) in totals.items()), key=lambda o: -o.total_us)
    return ops, f"{what}; {len(spans)} events"


def format_top_ops(ops: List[OpTime], what: str, top: int = 15) -> str:
    total = sum(o.total_us for o in ops) or 1.0
    matmul = sum(o.total_us for o in ops if MATMUL_KERNEL.search(o.name))
    lines = [f"top ops by time ({what}): {total / 1e3:.2f} ms in all, "
             f"{100 * matmul / total:.1f}% in matmul-like kernels",
             f"{'ms':>9} {'%':>6} {'count':>7} {'us/call':>9}  op"]
    for o in ops[:top]:
        name = o.name if len(o.name) <= 90 else o.name[:87] + "..."
        lines.append(f"{o.total_us / 1e3:>9.2f} {100 * o.total_us / total:>6.1f} {o.count:>7} "
                     f"{o.total_us / o.count:>9.1f}  {name}")
    return "\n".join(lines)


def parse_records(lines: Iterable[str]) -> Dict[str, List[dict]]:
    """The 'RESULT {json}', 'CEILING {json}' and 'REFERENCE {json}' lines of a GPU-check log."""
    records = {"RESULT": [], "CEILING": [], "REFERENCE": []}
    for line in lines:
        tag, _, rest = line.strip().partition(" ")
        if tag in records and rest.startswith("{"):
            try:
                records[tag].append(json.loads(rest))
            except json.JSONDecodeError:
                pass
    return records


def _fmt(value, spec):
    return format(value, spec) if isinstance(value, (int, float)) and math.isfinite(value) else "-"


def summary_table(lines: Iterable[str]) -> str:
    """The GPU check's short table: ceilings, every benchmark row, the reference and our ratio to it."""
    records = parse_records(lines)
    out = []
    for c in records["CEILING"]:
        out.append(f"ceiling: {c['what']} {c['value']:.4g} {c['unit']}")
    refs = {bool(r.get("host_batch")): r for r in records["REFERENCE"]}
    ref = refs.get(False, {}).get("updates_per_s")
    ref_host = refs.get(True, {}).get("updates_per_s")
    ref_width = next((r["width"] for r in refs.values() if "width" in r), 512)
    for host, r in sorted(refs.items()):
        if r.get("updates_per_s") is None:
            out.append(f"reference ({'host' if host else 'fixed'} batch): {r.get('note', 'no result')}")
        else:
            out.append(f"reference update ({'host' if host else 'fixed'} batch, one seed, one call per update, "
                       f"width {r.get('width', '?')}): {r['updates_per_s']:.1f} updates/s")
    out.append(f"{'row':<24} {'L':>3} {'upd/s':>8} {'/learner':>8} {'GFLOP':>7} {'TFLOP/s':>8} "
               f"{'%mm':>5} {'MB':>7} {'floor/s':>8} {'%floor':>6} {'bound':>7} {'x ref':>6} {'x ref+h':>7}")
    for r in records["RESULT"]:
        label = f"{r['method']} w{r['width']} {r['compute_dtype']}"
        if r.get("skipped"):
            out.append(f"{label:<24} {r['learners']:>3}  skipped: {r['skipped']}")
            continue
        comparable = r["method"] == "trqam" and r["width"] == ref_width
        ratio = r["updates_per_s"] / ref if comparable and ref else float("nan")
        ratio_host = r["updates_per_s"] / ref_host if comparable and ref_host else float("nan")
        out.append(f"{label:<24} {r['learners']:>3} {_fmt(r['updates_per_s'], '8.1f')} "
                   f"{_fmt(r['updates_per_s'] / r['learners'], '8.1f')} {_fmt(r['gflop'], '7.3g')} "
                   f"{_fmt(r['tflops'], '8.3g')} {_fmt(r['pct_matmul'], '5.1f')} {_fmt(r['floor_mb'], '7.1f')} "
                   f"{_fmt(r['floor_rate'], '8.0f')} {_fmt(r['pct_floor'], '6.1f')} {r['bound']:>7} "
                   f"{_fmt(ratio, '6.2f')} {_fmt(ratio_host, '7.2f')}")
    out.append("upd/s: learner-updates/s of the program; GFLOP and MB: matmul FLOPs and the bytes floor per "
               "learner-update; %mm: TFLOP/s over the matmul ceiling of the row's dtype; floor/s: the rate at "
               "the floor; x ref(+h): upd/s over the reference update's rate (fixed / host batch).")
    return "\n".join(out)


def main(argv: Optional[Sequence[str]] = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_top = sub.add_parser("top_ops", help="top ops by time of a jax.profiler trace")
    p_top.add_argument("path", help="a *.trace.json.gz / perfetto_trace.json.gz, or a folder holding one")
    p_top.add_argument("--top", type=int, default=15)
    p_table = sub.add_parser("table", help="the summary table of a GPU-check log")
    p_table.add_argument("log")
    args = parser.parse_args(argv)
    try:
        if args.command == "top_ops":
            path = find_trace(args.path)
            ops, what = top_ops(load_trace(path))
            print(f"trace: {path}")
            print(format_top_ops(ops, what, args.top))
        else:
            with open(args.log) as f:
                print(summary_table(f))
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
