"""Reading the launcher's run directories: every csv field checked, one-line errors naming the file.

Input: one run directory per (task, method), `<runs_dir>/<env_name>/<method>/`, holding
  eval.csv   step,phase,seed,success[,episode_return]  one row per seed per evaluation
  train.csv  step,phase,seed,<metrics...>              optional; lambda_eff, kl_hat, critic_loss,
                                                      q_mean and bc_loss are plotted
  config.json                                         optional; offline_steps, online_steps and
                                                      bc_steps tell a finished run from an unfinished one
  task.json                                           optional; offline/online kl_budget (the KL panel's eps)
where env_name is an OGBench single-task id `<domain>-singletask-task<N>-v0` and phase is
`offline` or `online` (steps count gradient steps; online steps continue from the offline ones, one
update per env step; the BC policy's evaluation before fine-tuning is the offline row at step 0).
Directories without an eval.csv (e.g. the report folder itself), and those whose name starts with '_'
or '.' (the launcher's shared `_pretrained_bc/`), are skipped. A --runs_dir one level too high is
searched one level down; a run or task directory gets an error naming the directory to pass.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
from typing import Optional, Sequence

import numpy as np

from experiments.configs.domains import EXTRA_DOMAINS, TASKS
from experiments.configs.domains import SUITE_DOMAINS as DOMAINS  # conventions §10's order
from experiments.data.names import ENV_ID_RE
from experiments.infra.errors import UserError

PHASES = ("offline", "online")
TASKS_PER_DOMAIN = len(TASKS)
METHOD_ORDER = ("trqam", "sqam", "qam", "bc")
EVAL_COLUMNS = ("step", "phase", "seed", "success")
TRAIN_COLUMNS = ("step", "phase", "seed")


class ReportError(UserError):
    """A problem with the input, described in one line naming the file."""


@dataclasses.dataclass
class RunLogs:
    """What the report reads of one run directory (a task and method, all its seeds): its logs and files."""
    path: str
    env_name: str
    domain: str
    task: int
    method: str
    eval: dict  # column -> np.ndarray (phase: str array, step/seed: int, others: float)
    train: Optional[dict] = None  # same, or None without a train.csv
    config: Optional[dict] = None  # config.json: offline_steps, online_steps, bc_steps (progress)
    task_spec: Optional[dict] = None  # task.json: kl_budget of offline / online (the KL panel's eps)

    def expected_final_steps(self) -> dict:
        """phase -> the step its last evaluation is logged at when the run is finished (from
        config.json; empty without it). Online steps continue from the offline ones."""
        c = self.config or {}
        try:
            if self.method == "bc" or c.get("method") == "bc":
                return {"offline": int(c["bc_steps"])}
            offline, online = int(c["offline_steps"]), int(c.get("online_steps") or 0)
        except (KeyError, TypeError, ValueError):
            return {}
        return {"offline": offline, **({"online": offline + online} if online > 0 else {})}

    def progress(self, phase: str, reached: int) -> str:
        """'' when `phase` reached its final step (or it is unknown); else e.g. 'offline 1000/2000'
        or 'online 300/500 env steps'."""
        expected = self.expected_final_steps().get(phase)
        if expected is None or reached >= expected:
            return ""
        if phase == "online":
            offline = self.expected_final_steps()["offline"]
            return f"online {reached - offline}/{expected - offline} env steps"
        return f"{phase} {reached}/{expected}"


# The id format is the data package's; not data.parse_env_name itself: that one rejects domains outside
# its table, which the report keeps (sorted last, marked as outside the paper's 10).
def parse_env_name(env_name: str) -> tuple[str, int]:
    """'cube-double-play-singletask-task2-v0' -> ('cube-double-play', 2)."""
    match = ENV_ID_RE.match(env_name)
    if not match or match.group("task") is None:
        raise ValueError(f"{env_name!r} is not an OGBench single-task id "
                         "'<domain>-singletask-task<N>-v<k>'")
    return match.group("domain"), int(match.group("task"))


def domain_tasks(domain: str) -> list[str]:
    """The env ids of the domain's tasks, task1 first."""
    return [f"{domain}-singletask-task{i}-v0" for i in range(1, TASKS_PER_DOMAIN + 1)]


def domain_key(domain: str):
    known = DOMAINS + EXTRA_DOMAINS
    return (known.index(domain), "") if domain in known else (len(known), domain)


def method_key(method: str):
    """METHOD_ORDER by the name before any sweep suffix (sqam_eps0.5 next to sqam), then by name."""
    base = method.split("_")[0]
    return (METHOD_ORDER.index(base) if base in METHOD_ORDER else len(METHOD_ORDER), method)


# ----------------------------------------------------------------------------------------- csv files

def _parse_int(text: str) -> int:
    value = float(text)  # accepts '1000000', '1e6', '1000000.0'
    if not math.isfinite(value) or value != int(value):
        raise ValueError
    return int(value)


def _parse_float(text: str) -> float:
    return float(text) if text else float("nan")


def _to_array(texts: list, parse, dtype, fail):
    """Column of stripped strings -> array; on a bad entry, fail(index, text)."""
    try:  # fast path: numpy parses the whole column
        values = np.array([t if t else "nan" for t in texts], dtype=np.float64)
        if dtype == np.float64:
            return values
        if np.all(np.isfinite(values)) and np.all(values == np.round(values)):
            return values.astype(dtype)
    except ValueError:
        pass
    for i, text in enumerate(texts):  # slow path: find the first bad entry
        try:
            parse(text)
        except ValueError:
            fail(i, text)
    raise AssertionError("unreachable")  # pragma: no cover


def read_table(path: str, required: Sequence[str], kind: str) -> dict:
    """Reads a launcher csv into column arrays (phase: object array of str; step, seed: int64; every
    other column: float64, an empty field reading as NaN), checking every field.

    kind 'eval': success must be a number in [0, 1]. Raises ReportError naming the file and line."""
    try:
        with open(path, newline="") as f:
            lines = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ReportError(f"{path}: cannot read: {e}") from None
    lines = [(i + 1, fields) for i, fields in enumerate(lines) if any(x.strip() for x in fields)]
    if not lines:
        raise ReportError(f"{path}: empty file (no header)")
    header = [h.strip() for h in lines[0][1]]
    missing = [c for c in required if c not in header]
    if missing:
        raise ReportError(f"{path}: header lacks column(s) {', '.join(missing)} "
                          f"(header: {','.join(header)})")
    if len(set(header)) != len(header) or "" in header:
        raise ReportError(
            f"{path}: header has duplicated or empty column names: {','.join(header)}")
    body = lines[1:]
    for line_no, fields in body:
        if len(fields) != len(header):
            raise ReportError(
                f"{path} line {line_no}: expected {len(header)} fields, got {len(fields)}")
    out = {}
    for j, name in enumerate(header):
        texts = [fields[j].strip() for _, fields in body]

        def fail(i, text, name=name, what="a number"):
            raise ReportError(f"{path} line {body[i][0]}: {name} {text!r} is not {what}")

        if name == "phase":
            for i, text in enumerate(texts):
                if text not in PHASES:
                    fail(i, text, what=f"one of {', '.join(PHASES)}")
            out[name] = np.array(texts, dtype=object)
        elif name in ("step", "seed"):
            out[name] = _to_array(texts, _parse_int, np.int64,
                                  lambda i, text, name=name: fail(i, text, name, "an integer"))
        else:
            out[name] = _to_array(texts, _parse_float, np.float64, fail)
    if kind == "eval":
        bad = np.flatnonzero(~((out["success"] >= 0) & (out["success"] <= 1)))
        if bad.size:
            line_no, fields = body[int(bad[0])]
            text = fields[header.index("success")].strip()
            raise ReportError(f"{path} line {line_no}: success {text!r} is not in [0, 1]")
    return out


def seed_curves(table: Optional[dict], column: str) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """seed -> (steps, values) sorted by step, offline before online on a shared step (the later row
    kept), NaNs dropped. Empty when the table or the column is absent."""
    if table is None or column not in table:
        return {}
    rank = np.array([PHASES.index(p) for p in table["phase"]], dtype=np.int64)
    curves = {}
    for seed in np.unique(table["seed"]):
        idx = np.flatnonzero(table["seed"] == seed)
        idx = idx[np.lexsort((idx, rank[idx], table["step"][idx]))]
        by_step = {}
        for i in idx:
            by_step[int(table["step"][i])] = float(table[column][i])
        steps = np.array(list(by_step), dtype=np.int64)
        values = np.array(list(by_step.values()), dtype=np.float64)
        keep = np.isfinite(values)
        if keep.any():
            curves[int(seed)] = (steps[keep], values[keep])
    return curves


# ----------------------------------------------------------------------------------- run directories

def _optional_json(path: str):
    """The parsed file, or None when it does not exist."""
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise ReportError(f"{path}: not valid JSON: {e}") from None


def load_run(path: str) -> RunLogs:
    """Loads `<...>/<env_name>/<method>/`: eval.csv required, train.csv and config.json optional."""
    path = os.path.normpath(path)
    method = os.path.basename(path)
    env_name = os.path.basename(os.path.dirname(path))
    try:
        domain, task = parse_env_name(env_name)
    except ValueError as e:
        raise ReportError(f"{path}: run directory's parent {e}") from None
    config = _optional_json(os.path.join(path, "config.json"))
    task_spec = _optional_json(os.path.join(path, "task.json"))
    evals = read_table(os.path.join(path, "eval.csv"), EVAL_COLUMNS, "eval")
    train_path = os.path.join(path, "train.csv")
    train = read_table(train_path, TRAIN_COLUMNS, "train") if os.path.exists(train_path) else None
    return RunLogs(path=path, env_name=env_name, domain=domain, task=task, method=method, eval=evals,
               train=train, config=config, task_spec=task_spec)


def _run_paths(runs_dir: str) -> list[str]:
    """`<runs_dir>/<env_name>/<method>/` directories holding an eval.csv."""
    paths = []
    for env_name in sorted(os.listdir(runs_dir)):
        env_dir = os.path.join(runs_dir, env_name)
        if env_name.startswith((".", "_")) or not os.path.isdir(env_dir):  # _pretrained_bc: not a run
            continue
        for method in sorted(os.listdir(env_dir)):
            run_dir = os.path.join(env_dir, method)
            if not method.startswith(".") and os.path.isfile(os.path.join(run_dir, "eval.csv")):
                paths.append(run_dir)
    return paths


def find_runs_dir(runs_dir: str) -> str:
    """runs_dir itself when it holds run directories; else the one directory below it that does
    (a --runs_dir one level too high). Raises ReportError saying where the runs are otherwise."""
    if not os.path.isdir(runs_dir):
        raise ReportError(f"{runs_dir}: not a directory")
    if _run_paths(runs_dir):
        return runs_dir
    below = [os.path.join(runs_dir, name) for name in sorted(os.listdir(runs_dir))
             if not name.startswith(".") and os.path.isdir(os.path.join(runs_dir, name))
             and _run_paths(os.path.join(runs_dir, name))]
    if len(below) == 1:
        return below[0]
    if below:
        raise ReportError(f"{runs_dir}: no run directories here, but {len(below)} directories below hold "
                          f"runs: {', '.join(below)}; pass one of them as --runs_dir")
    path = os.path.normpath(runs_dir)
    if os.path.isfile(os.path.join(path, "eval.csv")):  # a run directory: two levels too low
        raise ReportError(f"{runs_dir} is a run directory; pass the directory that holds the runs: "
                          f"--runs_dir={os.path.dirname(os.path.dirname(path))}")
    if ENV_ID_RE.match(os.path.basename(path)) and _run_paths(os.path.dirname(path)):
        raise ReportError(f"{runs_dir} is a task directory; pass the directory that holds the runs: "
                          f"--runs_dir={os.path.dirname(path)}")
    raise ReportError(f"{runs_dir}: no run directories (expected "
                      "<runs_dir>/<domain>-singletask-task<N>-v0/<method>/eval.csv)")


def load_runs(runs_dir: str) -> list[RunLogs]:
    """All run directories `<runs_dir>/<env_name>/<method>/` that hold an eval.csv, sorted (from
    the directory `find_runs_dir` picks)."""
    runs = [load_run(p) for p in _run_paths(find_runs_dir(runs_dir))]
    return sorted(runs, key=lambda r: (domain_key(r.domain), r.task, method_key(r.method)))
