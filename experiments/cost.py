"""What the 50-task x 8-seed protocol costs, from measured throughputs. Pure arithmetic.

    python -m experiments.cost --updates_per_s=2400 --learners_per_program=8 \
        --single_updates_per_s=500 --env_steps_per_s=1000 --cores=16 --devices=8
    python -m experiments.cost --from_gpu_check=LOG_DIR/log.txt --learners_per_program=40 \
        --env_steps_per_s=1000 --cores=16 --devices=8

The accelerator figures are to be filled from the GPU check (experiments/gpu_check.sh, docs/performance.md):
--from_gpu_check reads them from its log, and any flag given explicitly wins.

Two layouts of the same work, side by side:

(a) the reference code's layout: one program per (task, seed) and per (domain, seed) BC run, one
    learner each, one jitted call per update. Online it steps one env and then updates, in turn.
    Evaluation blocks training: one env, episode after episode.
(b) this project's layout: `learners_per_program` learners (the seeds of a task, or the tasks and
    seeds of a domain) vmapped in one program. Online, the program's envs step on
    `online_env_workers` cores, then every learner updates. Evaluation runs beside training on
    `cores` CPU workers, so only the part that outlasts the training until the next evaluation
    (and the last evaluation) adds to the wall time.

Throughput is given in learner-updates per second:
  --updates_per_s         layout (b): learner-updates/s of ONE program running learners_per_program
                          vmapped learners, all of them together (the benchmark's "scan upd/s total"
                          at S = learners_per_program). Each learner gets updates_per_s / learners_per_program.
  --single_updates_per_s  layout (a): updates/s of one program with one learner and one call per
                          update (the benchmark's "step upd/s" at S = 1). Default: updates_per_s /
                          learners_per_program, i.e. no gain from vmapping assumed.
Both are measured at width 512; width-1024 domains take `wide_cost` times as long per update.
Programs never mix domains (observation sizes differ): a fine-tuning program holds at most
tasks_per_domain * seeds learners, a BC program at most `seeds`. A program with fewer learners than
learners_per_program is assumed to run at the same per-learner rate (an upper bound on its time).

Work per (task, seed): offline_steps updates; online_steps env steps and online_steps -
online_start_steps updates; an evaluation of eval_episodes episodes every eval_every steps of each
phase and at its end (30 with the defaults). Per (domain, seed): bc_steps BC updates (bc_cost times a
fine-tuning update) and bc_evals evaluations. An evaluation episode runs episode_fraction of its
domain's length (1.0: the upper bound; success ends an episode early).

Wall time on `devices` devices: max(device-hours / devices, the longest chain of one BC program
followed by one fine-tuning program). Layout (a) holds a device per program, shared by
reference_programs_per_device programs. Not modelled: policy inference while acting, data loading,
compilation, checkpoints, CPU contention between online envs and evaluation workers.
"""

import dataclasses
import json
import math
import sys
from typing import Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

from experiments.configs.domains import DOMAIN_SETTINGS, SUITE_DOMAINS

HOUR = 3600.0


class Domain(NamedTuple):
    eval_steps: int  # evaluation episode length
    width: int  # hidden width: 1024 costs wide_cost times a 512 update


def protocol_domains() -> Dict[str, Domain]:
    """The 10 domains of the 50-task table (docs/conventions.md section 10)."""
    return {d: Domain(DOMAIN_SETTINGS[d].eval_steps, DOMAIN_SETTINGS[d].width) for d in SUITE_DOMAINS}


@dataclasses.dataclass(frozen=True)
class Assumptions:
    updates_per_s: float  # (b): learner-updates/s of one program with learners_per_program learners, total
    env_steps_per_s: float  # env steps/s of one env on one CPU core
    learners_per_program: int = 8  # (b): learners vmapped in one program (at most tasks * seeds of a domain)
    single_updates_per_s: Optional[float] = None  # (a): updates/s of a one-learner program
    cores: int = 16  # (b): CPU workers for evaluation, per program
    online_env_workers: int = 1  # (b): cores stepping a program's online envs (1: sync vector env)
    devices: int = 8  # accelerators available
    reference_programs_per_device: int = 1  # (a): reference programs sharing one device
    seeds: int = 8
    tasks_per_domain: int = 5
    bc_steps: int = 300_000
    offline_steps: int = 1_000_000
    online_steps: int = 500_000
    online_start_steps: int = 5_000
    eval_every: int = 50_000
    eval_episodes: int = 50
    bc_evals: int = 1
    episode_fraction: float = 1.0
    wide_cost: float = 1.0  # time of a width-1024 update / time of a width-512 update
    bc_cost: float = 1.0  # time of a BC update / time of a fine-tuning update

    def __post_init__(self):
        problem = assumption_problem(self)
        if problem:
            raise ValueError(problem)

    def single_rate(self) -> float:
        if self.single_updates_per_s is not None:
            return self.single_updates_per_s
        return self.updates_per_s / self.learners_per_program


# (field, test, what is allowed): rates and counts that divide must be positive, the rest not negative.
_POSITIVE = ("updates_per_s", "env_steps_per_s", "learners_per_program", "single_updates_per_s", "cores",
             "online_env_workers", "devices", "reference_programs_per_device", "seeds", "tasks_per_domain",
             "wide_cost", "bc_cost")


def assumption_problem(a: "Assumptions") -> Optional[str]:
    """None if every assumption is usable, else a one-line message naming the first flag that is not."""
    for field in dataclasses.fields(a):
        value = getattr(a, field.name)
        if value is None:  # single_updates_per_s: derived from updates_per_s
            continue
        if isinstance(value, float) and not math.isfinite(value):
            return f"--{field.name}={value} must be a finite number"
        if field.name in _POSITIVE and not value > 0:
            return f"--{field.name}={value} must be > 0"
        if not value >= 0:
            return f"--{field.name}={value} must be >= 0"
    return None


@dataclasses.dataclass(frozen=True)
class LayoutCost:
    name: str
    programs: int  # fine-tuning programs plus BC programs
    learners_per_program: int
    update_hours: float  # program-hours spent in updates (BC included)
    env_hours: float  # program-hours spent stepping online envs
    eval_hours: float  # program-hours that evaluation adds to the wall time
    device_hours: float
    longest_chain_hours: float  # one BC program then one fine-tuning program, the longest domain
    wall_hours: float


@dataclasses.dataclass(frozen=True)
class ProtocolCost:
    assumptions: Assumptions
    evals_per_run: int
    reference: LayoutCost  # layout (a)
    vmapped: LayoutCost  # layout (b)


def eval_points(phase_steps: int, every: int) -> List[int]:
    """Steps of a phase after which it evaluates: every `every` steps, and at its end."""
    if phase_steps <= 0:
        return []
    points = list(range(every, phase_steps + 1, every)) if every > 0 else []
    if not points or points[-1] != phase_steps:
        points.append(phase_steps)
    return points


def exposed_eval_seconds(eval_seconds: float, phases: Sequence[Tuple[int, float]], every: int,
                         overlap: bool) -> float:
    """Wall time that evaluations add to a run of consecutive phases (steps, seconds per step).

    Without overlap every evaluation blocks. With it, each evaluation runs beside the training up to the
    next evaluation and adds only what outlasts it; the last evaluation adds all of its time.
    """
    times, clock = [], 0.0  # training-clock time of each evaluation
    for steps, seconds_per_step in phases:
        times += [clock + p * seconds_per_step for p in eval_points(steps, every)]
        clock += steps * seconds_per_step
    if not overlap:
        return len(times) * eval_seconds
    windows = [b - a for a, b in zip(times, times[1:])] + [0.0]
    return sum(max(0.0, eval_seconds - w) for w in windows)


def protocol_cost(a: Assumptions, domains: Optional[Mapping[str, Domain]] = None) -> ProtocolCost:
    domains = protocol_domains() if domains is None else domains
    online_updates = max(0, a.online_steps - max(a.online_start_steps, 0))
    evals_per_run = len(eval_points(a.offline_steps, a.eval_every)) + len(eval_points(a.online_steps, a.eval_every))
    learners_per_domain = a.tasks_per_domain * a.seeds

    def layout(name, learners, rate, online_env_seconds, eval_workers, overlap, device_share):
        """learners per program; rate: updates/s of one learner at width 512."""
        totals = dict(programs=0, update=0.0, env=0.0, eval=0.0)
        chain = 0.0
        for domain in domains.values():
            step = (a.wide_cost if domain.width > 512 else 1.0) / rate  # seconds per update of one learner
            episode_steps = a.eval_episodes * domain.eval_steps * a.episode_fraction

            def eval_seconds(n):  # one evaluation of n learners
                return n * episode_steps / (a.env_steps_per_s * eval_workers)

            # BC: one learner per seed, so a program holds at most `seeds` learners.
            bc_learners = min(learners, a.seeds)
            bc_programs = math.ceil(a.seeds / bc_learners)
            bc_update = a.bc_steps * a.bc_cost * step
            bc_eval = a.bc_evals * eval_seconds(bc_learners)
            # Fine-tuning: tasks x seeds learners of the domain.
            ft_learners = min(learners, learners_per_domain)
            ft_programs = math.ceil(learners_per_domain / ft_learners)
            online_step = online_env_seconds(ft_learners) + step * online_updates / max(a.online_steps, 1)
            ft_update = (a.offline_steps + online_updates) * step
            ft_env = a.online_steps * online_env_seconds(ft_learners)
            ft_eval = exposed_eval_seconds(eval_seconds(ft_learners),
                                           [(a.offline_steps, step), (a.online_steps, online_step)],
                                           a.eval_every, overlap)
            totals["programs"] += bc_programs + ft_programs
            totals["update"] += bc_programs * bc_update + ft_programs * ft_update
            totals["env"] += ft_programs * ft_env
            totals["eval"] += bc_programs * bc_eval + ft_programs * ft_eval
            chain = max(chain, bc_update + bc_eval + ft_update + ft_env + ft_eval)
        program_seconds = totals["update"] + totals["env"] + totals["eval"]
        device_hours = program_seconds / device_share / HOUR
        return LayoutCost(name, totals["programs"], learners, totals["update"] / HOUR, totals["env"] / HOUR,
                          totals["eval"] / HOUR, device_hours, chain / HOUR,
                          max(device_hours / a.devices, chain / HOUR))

    reference = layout("one learner per program, blocking evaluation", 1, a.single_rate(),
                       lambda n: 1.0 / a.env_steps_per_s, 1, False, a.reference_programs_per_device)
    learners = min(a.learners_per_program, learners_per_domain)
    vmapped = layout(f"{learners} learners per program, evaluation beside training", learners,
                     a.updates_per_s / a.learners_per_program,
                     lambda n: math.ceil(n / a.online_env_workers) / a.env_steps_per_s, a.cores, True, 1)
    return ProtocolCost(a, evals_per_run, reference, vmapped)


def format_cost(cost: ProtocolCost) -> str:
    a = cost.assumptions
    lines = ["Assumptions (flags):"]
    for field in dataclasses.fields(a):
        lines.append(f"  --{field.name}={getattr(a, field.name)}")
    lines.append(f"  => per (task, seed): {a.offline_steps:,} offline updates, "
                 f"{a.online_steps:,} online env steps, {max(0, a.online_steps - a.online_start_steps):,} online "
                 f"updates, {cost.evals_per_run} evaluations of {a.eval_episodes} episodes")
    lines.append(f"  => (a) uses {cost.assumptions.single_rate():.4g} updates/s per learner, (b) "
                 f"{a.updates_per_s / a.learners_per_program:.4g}")
    rows = [
        ("programs (fine-tuning + BC)", lambda c: f"{c.programs}"),
        ("learners per program", lambda c: f"{c.learners_per_program}"),
        ("update program-hours", lambda c: f"{c.update_hours:,.1f}"),
        ("online env program-hours", lambda c: f"{c.env_hours:,.1f}"),
        ("evaluation program-hours (exposed)", lambda c: f"{c.eval_hours:,.1f}"),
        ("device-hours", lambda c: f"{c.device_hours:,.1f}"),
        ("longest BC + fine-tuning chain, h", lambda c: f"{c.longest_chain_hours:,.1f}"),
        (f"wall time on {a.devices} devices, h", lambda c: f"{c.wall_hours:,.1f}"),
        (f"wall time on {a.devices} devices, days", lambda c: f"{c.wall_hours / 24:,.2f}"),
    ]
    width = max(len(r[0]) for r in rows)
    lines += ["", f"{'':{width}}  {'(a) reference layout':>22}  {'(b) this project':>22}"]
    for label, fmt in rows:
        lines.append(f"{label:{width}}  {fmt(cost.reference):>22}  {fmt(cost.vmapped):>22}")
    lines += ["", f"(a) {cost.reference.name}; (b) {cost.vmapped.name}."]
    return "\n".join(lines)


def figures_from_gpu_check(lines, learners_per_program: int, compute_dtype: str = "float32",
                           method: str = "trqam") -> Tuple[Dict[str, float], Dict[str, str]]:
    """Measured figures from the 'RESULT {json}' and 'REFERENCE {json}' lines of a GPU-check log.

    updates_per_s: `method` at the narrowest width with L = learners_per_program; single_updates_per_s: the
    reference update with a fixed batch (one seed, one call per update); wide_cost: per-learner time at the widest
    over the narrowest width, and bc_cost: a BC update's time over a `method` one, each at the largest L measured
    for both. Returns (figures, where each came from); a figure without rows is left out.
    """
    rows, refs = [], []
    for line in lines:
        tag, _, rest = line.strip().partition(" ")
        if tag in ("RESULT", "REFERENCE") and rest.startswith("{"):
            try:
                (rows if tag == "RESULT" else refs).append(json.loads(rest))
            except json.JSONDecodeError:
                continue
    rate = {(r["method"], r["width"], r["learners"]): r["updates_per_s"] for r in rows
            if r.get("mode") == "learners" and r.get("compute_dtype") == compute_dtype and "updates_per_s" in r}
    widths = sorted({w for m, w, _ in rate if m == method})
    figures, notes = {}, {}
    if not widths:
        return figures, notes
    narrow, wide = widths[0], widths[-1]

    def common(a, b):
        both = [n for (m, w, n) in rate if (m, w) == a and (b[0], b[1], n) in rate]
        return max(both) if both else None

    if (method, narrow, learners_per_program) in rate:
        figures["updates_per_s"] = rate[(method, narrow, learners_per_program)]
        notes["updates_per_s"] = f"{method} width {narrow} {compute_dtype} at L = {learners_per_program}"
    fixed = [r["updates_per_s"] for r in refs if not r.get("host_batch") and "updates_per_s" in r]
    if fixed:
        figures["single_updates_per_s"] = fixed[-1]
        notes["single_updates_per_s"] = "the reference update, fixed batch, one call per update"
    n = common((method, wide), (method, narrow)) if wide != narrow else None
    if n is not None:
        figures["wide_cost"] = rate[(method, narrow, n)] / rate[(method, wide, n)]
        notes["wide_cost"] = f"width {narrow} over width {wide} learner-updates/s at L = {n}"
    n = common(("bc", narrow), (method, narrow))
    if n is not None:
        figures["bc_cost"] = rate[(method, narrow, n)] / rate[("bc", narrow, n)]
        notes["bc_cost"] = f"{method} over bc learner-updates/s at width {narrow}, L = {n}"
    return figures, notes


def main(argv=None):
    import argparse

    defaults = Assumptions(updates_per_s=1.0, env_steps_per_s=1.0)  # only the other fields' defaults are used
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    helps = {
        "updates_per_s": "(b) learner-updates/s of ONE program running learners_per_program vmapped learners, "
                         "all learners together (benchmark 'scan upd/s total' at S = learners_per_program)",
        "env_steps_per_s": "env steps/s of one env on one CPU core (evaluation and online stepping)",
        "learners_per_program": "(b) learners vmapped in one program: 8 = the seeds of a task, 40 = a domain",
        "single_updates_per_s": "(a) updates/s of a one-learner program, one call per update (benchmark "
                                "'step upd/s' at S = 1); default: updates_per_s / learners_per_program",
        "cores": "(b) CPU workers that evaluate beside one program",
        "online_env_workers": "(b) cores that step one program's online envs (1: sync vector env)",
        "devices": "accelerators available to run programs",
        "reference_programs_per_device": "(a) reference programs sharing one device",
        "episode_fraction": "fraction of the domain's episode length an evaluation episode runs (1.0: bound)",
        "wide_cost": "time of a width-1024 update relative to width 512 (measure it)",
        "bc_cost": "time of a BC update relative to a fine-tuning update (measure it)",
    }
    parser.add_argument("--from_gpu_check", default="", metavar="LOG",
                        help="take the measured figures from a GPU-check log (experiments/gpu_check.sh's log.txt): "
                             "updates_per_s, single_updates_per_s, wide_cost and bc_cost; flags given explicitly win")
    parser.add_argument("--gpu_check_dtype", default="float32", help="which compute_dtype's rows --from_gpu_check reads")
    for field in dataclasses.fields(Assumptions):
        default = getattr(defaults, field.name)
        kind = float if default is None or field.name == "updates_per_s" else type(default)
        shown = "required" if field.name in ("updates_per_s", "env_steps_per_s") else f"default {default}"
        parser.add_argument(f"--{field.name}", type=kind, default=None, help=helps.get(field.name, shown))
    args = vars(parser.parse_args(argv))
    log, dtype = args.pop("from_gpu_check"), args.pop("gpu_check_dtype")
    given = {k: v for k, v in args.items() if v is not None}
    values = {f.name: getattr(defaults, f.name) for f in dataclasses.fields(Assumptions)}
    values.pop("updates_per_s"), values.pop("env_steps_per_s")
    if log:
        try:
            with open(log) as f:
                measured, notes = figures_from_gpu_check(f, given.get("learners_per_program", values["learners_per_program"]),
                                                         dtype)
        except OSError as e:
            print(f"experiments.cost: error: --from_gpu_check: {e}", file=sys.stderr)
            raise SystemExit(2)
        for name, value in measured.items():
            print(f"from {log}: --{name}={value:.4g} ({notes[name]})" + (" [overridden by the flag]" if name in given else ""))
        values.update(measured)
    values.update(given)
    missing = [name for name in ("updates_per_s", "env_steps_per_s") if name not in values]
    if missing:
        print(f"experiments.cost: error: --{missing[0]} is required" + (" (the GPU-check log has no row for it)"
                                                                        if log else ""), file=sys.stderr)
        raise SystemExit(2)
    try:
        assumptions = Assumptions(**values)
    except ValueError as e:  # one line, no traceback
        print(f"experiments.cost: error: {e}", file=sys.stderr)
        raise SystemExit(2)
    cost = protocol_cost(assumptions)
    print(format_cost(cost))
    return cost


if __name__ == "__main__":
    main()
