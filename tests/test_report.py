"""experiments/report/ on synthetic run directories, against scores derived by hand below."""

import csv
import functools
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from experiments import report
from experiments.report import exp_data, plots, published, runs, stats, tables

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CD = "cube-double-play"
AL = "antmaze-large-navigate"


def env(domain, task):
    return f"{domain}-singletask-task{task}-v0"


# Small bootstraps keep the tests fast; the estimates themselves do not depend on the replications.
FAST = {"bootstrap_reps": 60, "poi_reps": 20}
make_report = functools.partial(report.make_report, **FAST)
FAST_FLAGS = ["--bootstrap_reps=60", "--poi_reps=20"]


def write_run(runs_dir, env_name, method, final_offline, final_online=None, train=True,
              offline_step=1000, online_step=2000, config=None, task_spec=None):
    """eval.csv with, per seed, the final offline eval, two earlier offline evals (other values)
    and, when final_online is given, an online eval at 1500 (another value) and the final one. The
    final offline row comes first in the file and the online rows last: scores must come from steps
    and phases, not from file order."""
    run_dir = os.path.join(runs_dir, env_name, method)
    os.makedirs(run_dir)
    with open(os.path.join(run_dir, "config.json"), "w") as f:
        json.dump(config or {"method": method}, f)
    if task_spec is not None:
        with open(os.path.join(run_dir, "task.json"), "w") as f:
            json.dump(task_spec, f)
    lines = ["step,phase,seed,success,episode_return"]
    for seed, value in final_offline.items():
        lines.append(f"{offline_step},offline,{seed},{value},-5.0")
    for seed in final_offline:
        lines += [f"0,offline,{seed},0.0,-100.0", f"{offline_step // 2},offline,{seed},0.95,-10.0"]
    for seed in final_offline if final_online is not None else ():
        lines += [f"1500,online,{seed},0.05,-90.0",
                  f"{online_step},online,{seed},{final_online[seed]},-1.0"]
    with open(os.path.join(run_dir, "eval.csv"), "w") as f:
        f.write("\n".join(lines) + "\n")
    if train:
        rows = ["step,phase,seed,critic_loss,lambda_eff,kl_hat"]
        for seed in final_offline:
            for step in range(0, offline_step + 1, 250):
                rows.append(f"{step},offline,{seed},1.0,{0.1 * (seed + 1)},{0.01 * step / 1000}")
            if final_online is not None:
                rows.append(f"1500,online,{seed},0.5,,0.02")  # an empty field reads as NaN
        with open(os.path.join(run_dir, "train.csv"), "w") as f:
            f.write("\n".join(rows) + "\n")
    return run_dir


@pytest.fixture
def runs_dir(tmp_path):
    """trqam: cube-double-play tasks 1-3 (offline + online), antmaze-large tasks 1-5 (offline
    only), seeds 0 and 1. qam: cube-double-play task1 (seeds 0, 1, 2) and task2 (seeds 0, 1),
    offline only."""
    d = str(tmp_path / "runs")
    trqam_cd = {1: ({0: 0.5, 1: 0.7}, {0: 0.9, 1: 1.0}),
                2: ({0: 0.4, 1: 0.2}, {0: 0.6, 1: 0.8}),
                3: ({0: 0.6, 1: 0.6}, {0: 0.3, 1: 0.3})}
    for task, (offline, online) in trqam_cd.items():
        write_run(d, env(CD, task), "trqam", offline, online)
    trqam_al = {1: (1.0, 0.8), 2: (0.9, 0.9), 3: (0.8, 0.6), 4: (0.7, 0.7), 5: (0.6, 0.5)}
    for task, (s0, s1) in trqam_al.items():
        write_run(d, env(AL, task), "trqam", {0: s0, 1: s1}, train=(task != 5))
    write_run(d, env(CD, 1), "qam", {0: 0.2, 1: 0.4, 2: 0.9})
    write_run(d, env(CD, 2), "qam", {0: 0.4, 1: 0.6})
    return d


def read_results(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {(r["level"], r["name"], r["method"], r["phase"]): r for r in rows}


def check(results, key, mean, std, num_seeds, num_tasks):
    r = results[key]
    assert float(r["mean"]) == pytest.approx(mean, abs=1e-6), key
    assert float(r["std_ddof1"]) == pytest.approx(std, abs=1e-6), key
    assert (int(r["num_seeds"]), int(r["num_tasks"])) == (num_seeds, num_tasks), key


def test_results_csv_by_hand(runs_dir, tmp_path):
    out = str(tmp_path / "out")
    make_report(runs_dir, out, plots=False)
    res = read_results(os.path.join(out, "results.csv"))

    # trqam offline, tasks (seed 0, seed 1 -> mean, sample std with ddof=1), in percent. Two seeds
    # a, b: std = |a - b| / sqrt(2), so a gap of 20 points gives 14.142136.
    check(res, ("task", env(CD, 1), "trqam", "offline"), 60.0, 14.142136, 2, 1)  # .5 .7
    check(res, ("task", env(CD, 2), "trqam", "offline"), 30.0, 14.142136, 2, 1)  # .4 .2
    check(res, ("task", env(CD, 3), "trqam", "offline"), 60.0, 0.0, 2, 1)   # .6 .6
    check(res, ("task", env(AL, 1), "trqam", "offline"), 90.0, 14.142136, 2, 1)  # 1. .8
    check(res, ("task", env(AL, 5), "trqam", "offline"), 55.0, 7.071068, 2, 1)   # .6 .5
    # Domains, per seed first: cube-double seed 0 = (.5+.4+.6)/3 = .5, seed 1 = (.7+.2+.6)/3 = .5
    # -> 50.0 +- 0.0 (averaging the task stds would give 9.4). antmaze-large seed 0 =
    # (1+.9+.8+.7+.6)/5 = .8, seed 1 = (.8+.9+.6+.7+.5)/5 = .7 -> 75.0 +- 7.071068.
    check(res, ("domain", CD, "trqam", "offline"), 50.0, 0.0, 2, 3)
    check(res, ("domain", AL, "trqam", "offline"), 75.0, 7.071068, 2, 5)
    # Overall, per seed: seed 0 = (.5+.8)/2 = .65, seed 1 = (.5+.7)/2 = .6 -> 62.5 +- 3.535534.
    check(res, ("overall", "overall", "trqam", "offline"), 62.5, 3.535534, 2, 8)

    # trqam online (only cube-double has online rows): tasks .9/1 .6/.8 .3/.3; domain seed 0 =
    # 1.8/3 = .6, seed 1 = 2.1/3 = .7 -> 65.0 +- 7.071068; overall = that one domain.
    check(res, ("task", env(CD, 1), "trqam", "online"), 95.0, 7.071068, 2, 1)
    check(res, ("task", env(CD, 2), "trqam", "online"), 70.0, 14.142136, 2, 1)
    check(res, ("domain", CD, "trqam", "online"), 65.0, 7.071068, 2, 3)
    check(res, ("overall", "overall", "trqam", "online"), 65.0, 7.071068, 2, 3)
    assert ("domain", AL, "trqam", "online") not in res

    # qam: task1 over its 3 seeds (.2 .4 .9): mean .5, var (.09+.01+.16)/2 = .13 -> std 36.055513;
    # domain over the seeds common to task1 and task2 (0, 1): seed 0 = (.2+.4)/2 = .3,
    # seed 1 = (.4+.6)/2 = .5 -> 40.0 +- 14.142136.
    check(res, ("task", env(CD, 1), "qam", "offline"), 50.0, 36.055513, 3, 1)
    check(res, ("task", env(CD, 2), "qam", "offline"), 50.0, 14.142136, 2, 1)
    check(res, ("domain", CD, "qam", "offline"), 40.0, 14.142136, 2, 2)
    check(res, ("overall", "overall", "qam", "offline"), 40.0, 14.142136, 2, 2)
    assert res[("domain", CD, "qam", "offline")]["seeds"] == "0 1"
    assert "seed(s) 2" in res[("domain", CD, "qam", "offline")]["notes"]
    assert not any(k[2] == "qam" and k[3] == "online" for k in res)
    assert res[("task", env(CD, 1), "trqam", "offline")]["final_steps"] == "1000"


def test_markdown(runs_dir, tmp_path):
    md = make_report(runs_dir, str(tmp_path / "out"), plots=False)
    assert md == (tmp_path / "out" / "results.md").read_text()
    lines = md.splitlines()
    header = next(l for l in lines if l.startswith("| task |"))
    # Each run method's own paper figure right after its columns.
    assert header == "| task | trqam offline | trqam online | TRQAM (paper) | qam offline | QAM (paper) |"
    assert "sample std, ddof=1" in md
    row = lambda label: next(l for l in lines if l.startswith(f"| {label} |"))
    # Tasks grouped under domains (antmaze-large first: the protocol table order of docs/conventions.md §10), domain means, then overall.
    assert lines.index(f"| **{AL}** | | | | | |") < lines.index(f"| **{CD}** | | | | | |") < lines.index(
        "| **domain mean** | | | | | |") < lines.index(row("**overall**"))
    cd_rows = [l for l in lines if l.startswith(f"| {CD} |")]
    assert len(cd_rows) == 2  # the table's domain row and the IQM table's
    # The paper's per-domain mean ± std (TRQAM cube-double 81 ± 3, QAM 71 ± 2) and overall.
    assert cd_rows[0] == (f"| {CD} | 50.0 ± 0.0 (3/5 tasks) | 65.0 ± 7.1 (3/5 tasks) | 81 ± 3 | "
                          "40.0 ± 14.1 (2/5 tasks) [1] | 71 ± 2 |")
    assert row(AL) == f"| {AL} | 75.0 ± 7.1 | – | 89 ± 4 | – | 62 ± 9 |"
    assert row("**overall**") == ("| **overall** | 62.5 ± 3.5 (2/10 domains) | "
                                  "65.0 ± 7.1 (1/10 domains) | 68 | 40.0 ± 14.1 (1/10 domains) | 35 |")
    task_rows = [l for l in lines if l.startswith("| task1 |")]
    assert task_rows[0] == "| task1 | 90.0 ± 14.1 | – | – | – | – |"
    assert task_rows[1] == "| task1 | 60.0 ± 14.1 | 95.0 ± 7.1 | – | 50.0 ± 36.1 | – |"
    assert "not computed from these runs" in md and "the TRQAM paper's table (8 seeds" in md
    # The QAM paper's release stays only as a labelled footnote.
    assert "QAM 44 and FQL 36 overall; it is not comparable" in md and "(published)" not in md
    assert "seed(s) common to its tasks (0, 1): task2 lacks seed(s) 2" in md


def test_step_mismatch_notes(tmp_path):
    d = str(tmp_path / "runs")
    write_run(d, env(CD, 1), "trqam", {0: 0.5, 1: 0.5})
    write_run(d, env(CD, 2), "trqam", {0: 0.5, 1: 0.5}, offline_step=800, train=False)
    md = make_report(d, str(tmp_path / "out"), plots=False)
    assert f"earlier in {env(CD, 2)} (800)" in md


def test_seeds_not_common(tmp_path):
    d = str(tmp_path / "runs")
    write_run(d, env(CD, 1), "trqam", {0: 0.2, 1: 0.4}, train=False)
    write_run(d, env(AL, 1), "trqam", {0: 0.6, 1: 0.8, 2: 0.0}, train=False)
    write_run(d, env(AL, 2), "trqam", {0: 1.0, 1: 0.8, 2: 0.1}, train=False)
    write_run(d, env(CD, 1), "bc", {0: 0.5}, train=False)
    write_run(d, env(CD, 2), "bc", {1: 0.5}, train=False)
    rows = {(r.level, r.name, r.method): r for r in stats.aggregate(runs.load_runs(d), "offline")}
    # antmaze-large over seeds 0-2: .8 .8 .05 -> mean .55, std sqrt((.0625*2+.25)/2) = .4330127.
    r = rows[("domain", AL, "trqam")]
    assert (r.mean, r.num_seeds, r.notes) == (pytest.approx(55.0), 3, ())
    assert r.std == pytest.approx(43.30127)
    # Overall over seeds 0, 1 (cube-double lacks 2): (.2+.8)/2 = .5, (.4+.8)/2 = .6 -> 55.0 +- 7.07.
    r = rows[("overall", "overall", "trqam")]
    assert (r.mean, r.std, r.num_seeds) == (pytest.approx(55.0), pytest.approx(7.0710678), 2)
    assert r.notes == (f"over the 2 seed(s) common to its domains (0, 1): {CD} lacks seed(s) 2",)
    # bc: no seed common to task1 and task2 -> a NaN domain row, and no overall row.
    r = rows[("domain", CD, "bc")]
    assert r.num_seeds == 0 and np.isnan(r.mean) and "no seed common to its tasks" in r.notes[0]
    assert ("overall", "overall", "bc") not in rows
    md = tables.to_markdown(list(rows.values()))
    assert f"| {CD} | 30.0 ± 14.1 (1/5 tasks) | 81 ± 3 | – (2/5 tasks) [1] |" in md
    assert "| bc (ours) |" not in md  # no score to put in the paper's layout


def test_plots(runs_dir, tmp_path):
    # qam on tasks 1-2 (no online rows), trqam on task 3 (with online rows): each method lacks a
    # task in the domain figure.
    loaded = [r for r in runs.load_runs(runs_dir)
                if r.domain == CD and (r.method == "qam" or r.task == 3)]
    assert [plots.online_boundary(r) for r in loaded] == [None, None, 1000]
    paths = plots.write_plots(loaded, str(tmp_path / "curves"))
    expected = {f"{env(CD, 3)}__trqam.png", f"{env(CD, 1)}__qam.png", f"{env(CD, 2)}__qam.png",
                f"{CD}.png"}
    assert {os.path.basename(p) for p in paths} == expected
    for p in paths:
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
        assert os.path.getsize(p) > 5000


def test_curve_helpers():
    phases = ["offline", "online", "offline", "online", "offline", "offline"]
    table = {"step": np.array([0, 100, 100, 200, 0, 100]),
             "phase": np.array(phases, dtype=object),
             "seed": np.array([0, 0, 0, 0, 1, 1]),
             "x": np.array([1.0, 3.0, 2.0, 5.0, 3.0, float("nan")])}
    curves = runs.seed_curves(table, "x")
    # seed 0: at step 100 the online row wins over the offline one; seed 1: the NaN is dropped.
    assert {s: (list(a), list(b)) for s, (a, b) in curves.items()} == {
        0: ([0, 100, 200], [1.0, 3.0, 5.0]), 1: ([0], [3.0])}
    steps, mean, std = plots.band(curves)
    assert list(steps) == [0] and mean[0] == 2.0 and std[0] == pytest.approx(np.sqrt(2))  # 1, 3: ddof=1
    assert runs.seed_curves(table, "absent") == {}


def test_parse_env_name():
    assert runs.parse_env_name("cube-double-play-singletask-task2-v0") == ("cube-double-play", 2)
    assert runs.parse_env_name("puzzle-3x3-play-singletask-task5-v0") == ("puzzle-3x3-play", 5)
    with pytest.raises(ValueError):
        runs.parse_env_name("cube-double-play-v0")


def test_no_runs(tmp_path):
    (tmp_path / "runs" / "report" / "curves").mkdir(parents=True)  # not a run directory
    with pytest.raises(report.ReportError, match="no run directories"):
        runs.load_runs(str(tmp_path / "runs"))
    with pytest.raises(report.ReportError, match="not a directory"):
        runs.load_runs(str(tmp_path / "absent"))


@pytest.mark.parametrize("eval_csv, message", [
    ("", "empty file"),
    ("step,phase,seed,episode_return\n0,offline,0,1.0\n", "lacks column.*success"),
    ("step,phase,seed,success\n0,offline,0,0.5\n10,offline,0,abc\n",
     "line 3: success 'abc' is not a number"),
    ("step,phase,seed,success\n0,offline,0,1.5\n", "line 2: success '1.5' is not in"),
    ("step,phase,seed,success\n0,offline,0.5,0.5\n", "line 2: seed '0.5' is not an integer"),
    ("step,phase,seed,success\n0,ofline,0,0.5\n", "line 2: phase 'ofline' is not one of"),
    ("step,phase,seed,success\n0,offline,0\n", "line 2: expected 4 fields, got 3"),
])
def test_malformed_eval(tmp_path, eval_csv, message):
    run_dir = tmp_path / "runs" / env(CD, 1) / "trqam"
    run_dir.mkdir(parents=True)
    (run_dir / "eval.csv").write_text(eval_csv)
    with pytest.raises(report.ReportError, match=message) as info:
        runs.load_runs(str(tmp_path / "runs"))
    assert str(run_dir / "eval.csv") in str(info.value)
    assert "\n" not in str(info.value)


def test_malformed_train_and_names(tmp_path):
    d = str(tmp_path / "runs")
    run_dir = write_run(d, env(CD, 1), "trqam", {0: 0.5})
    with open(os.path.join(run_dir, "train.csv"), "a") as f:
        f.write("9,offline,0,1.0,oops,0.1\n")
    with pytest.raises(report.ReportError,
                       match="train.csv line 7: lambda_eff 'oops' is not a number"):
        runs.load_runs(d)
    d2 = str(tmp_path / "runs2")
    write_run(d2, "cube-double-play-v0", "trqam", {0: 0.5})
    with pytest.raises(report.ReportError, match="not an OGBench single-task id"):
        runs.load_runs(d2)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "experiments.report", *args, *FAST_FLAGS], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_cli(tmp_path):
    d = str(tmp_path / "runs")
    write_run(d, env(CD, 1), "trqam", {0: 0.5, 1: 0.7}, {0: 0.9, 1: 1.0})
    proc = _cli(f"--runs_dir={d}")
    assert proc.returncode == 0, proc.stderr
    assert "| task1 | 60.0 ± 14.1 | 95.0 ± 7.1 |" in proc.stdout
    out = os.path.join(d, "report")
    assert sorted(os.listdir(out)) == ["curves", "exp_data", "improvement.csv", "results.csv", "results.md"]
    # It says where it wrote its files.
    assert (f"Wrote results.md, results.csv, improvement.csv, exp_data/ours-exp-data.pkl, curves/ (4 PNGs) "
            f"to {out}" in proc.stdout.splitlines())
    assert set(os.listdir(os.path.join(out, "curves"))) == {
        f"{CD}.png", f"{env(CD, 1)}__trqam.png", "performance_profile_offline.png", "performance_profile_online.png"}
    # A second run ignores the report folder inside runs_dir.
    assert _cli(f"--runs_dir={d}", "--noplots").returncode == 0

    empty = tmp_path / "empty"
    empty.mkdir()
    proc = _cli(f"--runs_dir={empty}")
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"report: error: {empty}: no run directories")


# ------------------------------------------------------------------------------ unfinished runs

def test_unfinished_runs_are_marked(tmp_path):
    d = str(tmp_path / "runs")
    steps = {"offline_steps": 2000, "online_steps": 1000, "bc_steps": 500}
    # task1: offline stopped at 1000 of 2000 (no online yet); task2: finished offline, online at
    # 1500 - 1000... its online evals at steps 1500, 2000 with offline_steps 1000, online 1000 -> 1000/1000.
    write_run(d, env(CD, 1), "trqam", {0: 0.5, 1: 0.7}, config={"method": "trqam", **steps})
    write_run(d, env(CD, 2), "trqam", {0: 0.4, 1: 0.2}, {0: 0.6, 1: 0.8},
              config={"method": "trqam", "offline_steps": 1000, "online_steps": 1000, "bc_steps": 500})
    # task3: finished offline at 1000, online stopped at env step 500 of 1000 (step 1500).
    write_run(d, env(CD, 3), "trqam", {0: 0.6, 1: 0.6}, {0: 0.3, 1: 0.3}, online_step=1500,
              config={"method": "trqam", "offline_steps": 1000, "online_steps": 1000, "bc_steps": 500})
    out = str(tmp_path / "out")
    md = make_report(d, out, plots=False)
    res = read_results(os.path.join(out, "results.csv"))
    assert res[("task", env(CD, 1), "trqam", "offline")]["status"] == "unfinished: offline 1000/2000"
    assert res[("task", env(CD, 2), "trqam", "offline")]["status"] == "final"
    assert res[("task", env(CD, 2), "trqam", "online")]["status"] == "final"
    assert res[("task", env(CD, 3), "trqam", "online")]["status"] == "unfinished: online 500/1000 env steps"
    assert res[("domain", CD, "trqam", "offline")]["status"] == (
        f"includes unfinished: {env(CD, 1)} (offline 1000/2000)")
    assert res[("overall", "overall", "trqam", "online")]["status"].startswith("includes unfinished")
    lines = md.splitlines()
    task1 = next(l for l in lines if l.startswith("| task1 |"))
    assert task1.startswith("| task1 | 60.0 ± 14.1 (unfinished: offline 1000/2000) |")
    task3 = next(l for l in lines if l.startswith("| task3 |"))
    assert "30.0 ± 0.0 (unfinished: online 500/1000 env steps)" in task3
    domain = next(l for l in lines if l.startswith(f"| {CD} |"))
    assert "(incl. unfinished) [" in domain
    assert f"includes unfinished run(s): {env(CD, 1)} (offline 1000/2000)" in md


def test_bc_runs_count_progress_in_bc_steps(tmp_path):
    d = str(tmp_path / "runs")
    write_run(d, env(CD, 1), "bc", {0: 0.5, 1: 0.5}, offline_step=300,
              config={"method": "bc", "offline_steps": 2000, "online_steps": 0, "bc_steps": 300})
    write_run(d, env(CD, 2), "bc", {0: 0.5, 1: 0.5}, offline_step=100,
              config={"method": "bc", "offline_steps": 2000, "online_steps": 0, "bc_steps": 300})
    rows = {r.name: r for r in stats.aggregate(runs.load_runs(d), "offline") if r.level == "task"}
    assert rows[env(CD, 1)].progress == "" and rows[env(CD, 2)].progress == "offline 100/300"


# --------------------------------------------------------------------- where the runs and files are

def test_runs_dir_one_level_too_high_or_too_low(tmp_path, capsys):
    top = tmp_path / "top"
    d = str(top / "runs")
    write_run(d, env(CD, 1), "trqam", {0: 0.5, 1: 0.7})
    messages = []
    md = make_report(str(top), plots=False, log=messages.append)
    assert "| task1 | 60.0 ± 14.1 |" in md
    assert os.path.isfile(os.path.join(d, "report", "results.md"))  # next to the runs it found
    assert messages[0] == f"No runs directly in {top}; using the runs in {d}."
    assert messages[-1] == f"Wrote results.md, results.csv, improvement.csv, exp_data/ours-exp-data.pkl to {d}/report"
    # Two candidate directories: say where they are.
    write_run(str(top / "more"), env(CD, 1), "qam", {0: 0.5})
    with pytest.raises(report.ReportError) as e:
        runs.load_runs(str(top))
    assert f"{top / 'more'}, {d}; pass one of them as --runs_dir" in str(e.value)
    # A run directory or a task directory: name the directory to pass.
    with pytest.raises(report.ReportError, match=f"--runs_dir={d}$"):
        runs.load_runs(os.path.join(d, env(CD, 1), "trqam"))
    with pytest.raises(report.ReportError, match=f"--runs_dir={d}$"):
        runs.load_runs(os.path.join(d, env(CD, 1)))
    # Through the CLI: one line, and where the runs are.
    proc = _cli(f"--runs_dir={os.path.join(d, env(CD, 1))}")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"report: error: {os.path.join(d, env(CD, 1))} is a task directory; pass the directory that holds "
        f"the runs: --runs_dir={d}")


# ------------------------------------------------------------------------------ published figures

def test_published_reference_rows_in_csv(runs_dir, tmp_path):
    out = str(tmp_path / "out")
    make_report(runs_dir, out, plots=False)
    res = read_results(os.path.join(out, "results.csv"))
    paper = {k: r for k, r in res.items() if k[0] == "published"}
    assert {(k[1], k[2]): (float(r["mean"]), float(r["std_ddof1"])) for k, r in paper.items()} == {
        (AL, "TRQAM (paper)"): (89.0, 4.0), (AL, "QAM (paper)"): (62.0, 9.0),
        (CD, "TRQAM (paper)"): (81.0, 3.0), (CD, "QAM (paper)"): (71.0, 2.0),
        ("overall", "TRQAM (paper)"): (68.0, pytest.approx(np.nan, nan_ok=True)),
        ("overall", "QAM (paper)"): (35.0, pytest.approx(np.nan, nan_ok=True))}
    assert all(r["status"] == "published" and "not computed from these runs" in r["notes"]
               and r["num_seeds"] == "8" for r in paper.values())


def test_single_seed_has_no_std(tmp_path):
    d = str(tmp_path / "runs")
    write_run(d, env(CD, 1), "trqam", {0: 0.5}, train=False)
    md = make_report(d, str(tmp_path / "out"), plots=False)
    assert "| task1 | 50.0 (1 seed, no std) |" in md


# ---------------------------------------------------------------------------------- exp_data export

def test_exp_data_export_layout_by_hand(runs_dir, tmp_path):
    out = str(tmp_path / "out")
    make_report(runs_dir, out, plots=False)
    with open(os.path.join(out, "exp_data", "ours-exp-data.pkl"), "rb") as f:
        exp = pickle.load(f)
    with open(os.path.join(out, "exp_data", "ours-exp-data.json")) as f:
        meta = json.load(f)["entries"]
    # write_run's evals per seed: 0 (BC, left out), 500 (.95), 1000 (final offline), and with
    # online rows 1500 (.05) and 2000 (final online). Rows are evaluations, columns seeds.
    np.testing.assert_allclose(exp[(env(CD, 1), "TRQAM")], [[.95, .95], [.5, .7], [.05, .05], [.9, 1.0]])
    assert meta[f"{env(CD, 1)}|TRQAM"]["steps"] == [500, 1000, 1500, 2000]
    assert meta[f"{env(CD, 1)}|TRQAM"]["phases"] == ["offline", "offline", "online", "online"]
    assert meta[f"{env(CD, 1)}|TRQAM"]["seeds"] == [0, 1]
    np.testing.assert_allclose(exp[(env(CD, 1), "QAM")], [[.95, .95, .95], [.2, .4, .9]])
    # Domain: per seed, the mean over tasks 1-3 at each row: at 1000, seed 0 (.5+.4+.6)/3 = .5,
    # seed 1 (.7+.2+.6)/3 = .5; at 2000, seed 0 (.9+.6+.3)/3 = .6, seed 1 (1+.8+.3)/3 = .7.
    np.testing.assert_allclose(exp[(CD, "TRQAM")], [[.95, .95], [.5, .5], [.05, .05], [.6, .7]])
    # 'all': the steps common to both domains (500, 1000); at 1000 seed 0 (.5+.8)/2 = .65,
    # seed 1 (.5+.7)/2 = .6, the overall offline scores of results.csv.
    np.testing.assert_allclose(exp[("all", "TRQAM")], [[.95, .95], [.65, .6]])
    assert meta["all|TRQAM"]["steps"] == [500, 1000] and meta["all|TRQAM"]["members"] == [AL, CD]
    # qam: seeds common to its tasks (0, 1): at 1000, seed 0 (.2+.4)/2, seed 1 (.4+.6)/2.
    np.testing.assert_allclose(exp[(CD, "QAM")], [[.95, .95], [.3, .5]])
    assert set(k[1] for k in exp) == {"TRQAM", "QAM"}


# ------------------------------------------------------------------------------------------- plots

def _labels(fig):
    return {ax.get_title(): [l for l in ax.get_legend_handles_labels()[1]] for ax in fig.axes if ax.get_visible()}


def test_run_plot_panels_budget_bc_start_and_boundary(tmp_path):
    d = str(tmp_path / "runs")
    spec = {"offline": {"kl_budget": 0.5}, "online": {"kl_budget": 0.25}, "eval_steps": 500}
    path = write_run(d, env(CD, 1), "trqam", {0: 0.5, 1: 0.7}, {0: 0.9, 1: 1.0}, task_spec=spec,
                     config={"method": "trqam", "offline_steps": 1000, "online_steps": 1000, "bc_steps": 10})
    with open(os.path.join(path, "train.csv")) as f:
        rows = f.read().splitlines()
    rows = [rows[0] + ",q_mean,bc_loss"] + [r + ",-3.0,0.2" for r in rows[1:]]
    with open(os.path.join(path, "train.csv"), "w") as f:
        f.write("\n".join(rows) + "\n")
    run = runs.load_run(path)
    assert plots.kl_budgets(run) == {"offline": 0.5, "online": 0.25}
    fig = plots.plot_run(run, str(tmp_path / "run.png"))
    labels = _labels(fig)
    titles = [t for t in labels if t]
    assert titles == ["success (2 seeds)", "lambda_eff (2 seeds)", "kl_hat (2 seeds)", "critic_loss (2 seeds)",
                      "q_mean (2 seeds)", "bc_loss (2 seeds)"]
    # The success curve starts at the BC policy's step-0 evaluation; the online part is labelled.
    assert "BC policy (step 0)" in labels["success (2 seeds)"]
    assert all("offline → online (step 1000)" in labels[t] for t in titles)
    assert {"offline budget eps = 0.5", "online budget eps = 0.25"} <= set(labels["kl_hat (2 seeds)"])
    success_ax = next(ax for ax in fig.axes if ax.get_title() == "success (2 seeds)")
    mean_line = next(l for l in success_ax.get_lines() if l.get_linewidth() == 1.8)
    assert mean_line.get_xdata()[0] == 0 and mean_line.get_ydata()[0] == 0.0  # BC scored 0 at step 0
    assert "env steps (online)" in success_ax.get_xlabel()
    # QAM has no budget line (its lambda is fixed).
    qam = runs.load_run(write_run(d, env(CD, 1), "qam", {0: 0.5}, task_spec=spec))
    assert plots.kl_budgets(qam) == {}
    assert not [l for l in _labels(plots.plot_run(qam, str(tmp_path / "q.png")))["kl_hat (1 seeds)"]
                if "budget" in l]


def test_domain_mean_panel_only_with_several_tasks(runs_dir, tmp_path):
    loaded = runs.load_runs(runs_dir)
    one = [r for r in loaded if r.domain == CD and r.task == 3]
    titles = [t for t in _labels(plots.plot_domain(one, str(tmp_path / "one.png"))) if t]
    assert titles == ["task3"]
    several = [r for r in loaded if r.domain == CD]
    titles = [t for t in _labels(plots.plot_domain(several, str(tmp_path / "all.png"))) if t]
    assert titles == ["task1", "task2", "task3", "domain mean"]


def test_bc_policy_rows_start_the_curve_but_are_not_scored(tmp_path):
    """The runner logs the BC policy's evaluation before fine-tuning as the offline row at step 0: it
    starts the curve, and the score is the last offline row. No phase 'bc' is ever written: it is refused."""
    d = str(tmp_path / "runs")
    path = write_run(d, env(CD, 1), "trqam", {0: 0.5, 1: 0.7}, train=False)
    with open(os.path.join(path, "eval.csv")) as f:
        text = f.read().replace("0,offline,0,0.0,-100.0", "0,offline,0,0.3,-100.0").replace(
            "0,offline,1,0.0,-100.0", "0,offline,1,0.1,-100.0")
    with open(os.path.join(path, "eval.csv"), "w") as f:
        f.write(text)
    run = runs.load_run(path)
    rows = {r.level: r for r in stats.aggregate([run], "offline")}
    assert rows["task"].mean == pytest.approx(60.0)
    curves = runs.seed_curves(run.eval, "success")
    assert curves[0][0][0] == 0 and curves[0][1][0] == pytest.approx(0.3)
    with open(os.path.join(path, "eval.csv"), "w") as f:
        f.write(text.replace("0,offline,1,0.1,-100.0", "0,bc,1,0.1,-100.0"))
    with pytest.raises(report.ReportError, match=r"eval.csv line \d+: phase 'bc' is not one of offline, online$"):
        runs.load_run(path)


# ------------------------------------------------------------------------- the TRQAM paper's table

def test_paper_table_overall_is_the_mean_of_the_rounded_domain_means():
    assert published.PAPER_METHODS == ("FQL", "CGQL-L", "DSRL", "IFQL", "QAM", "QAM-E", "TRQAM", "SQAM")
    assert published.PAPER_OVERALL == {"FQL": 28, "CGQL-L": 23, "DSRL": 46, "IFQL": 35, "QAM": 35, "QAM-E": 45,
                                       "TRQAM": 68, "SQAM": 75}
    for method, row in published.PAPER_TABLE.items():
        assert list(row) == list(runs.DOMAINS)
        # Rounded half up: IFQL's domains average 34.5, reported 35.
        assert np.floor(np.mean([mean for mean, _ in row.values()]) + 0.5) == published.PAPER_OVERALL[method], method
    assert published.PAPER_TABLE["TRQAM"]["cube-triple-play"] == (50, 5)
    assert published.PAPER_TABLE["SQAM"]["antmaze-giant-navigate"] == (62, 4)
    assert [published.paper_method(m) for m in ("trqam", "sqam", "sqam_eps0.5", "qam_beta3", "bc", "fql")] == [
        "TRQAM", "SQAM", "SQAM", "QAM", None, "FQL"]


def test_sqam_runs_sit_beside_the_sqam_row(tmp_path):
    d = str(tmp_path / "runs")
    for method, value in [("trqam", 0.5), ("sqam", 0.6), ("sqam_eps0.5", 0.7)]:
        write_run(d, env(CD, 1), method, {0: value, 1: value}, train=False)
    md = make_report(d, str(tmp_path / "out"), plots=False)
    header = next(l for l in md.splitlines() if l.startswith("| task |"))
    assert header == ("| task | trqam offline | TRQAM (paper) | sqam offline | sqam_eps0.5 offline | SQAM (paper) |")
    assert f"| {CD} | 50.0 ± 0.0 (1/5 tasks) | 81 ± 3 | 60.0 ± 0.0 (1/5 tasks) | 70.0 ± 0.0 (1/5 tasks) | 58 ± 3 |" in md


def test_paper_layout_table_bold_best_markdown_and_latex(runs_dir, tmp_path):
    md = make_report(runs_dir, str(tmp_path / "out"), plots=False)
    lines = md.splitlines()
    start = lines.index("| method | antmaze-large | antmaze-giant | humanoidmaze-medium | humanoidmaze-large | scene "
                        "| puzzle-3x3 | puzzle-4x4 | cube-double | cube-triple | cube-quadruple | all |")
    table = {l.split(" | ")[0][2:]: l.split(" | ")[1:] for l in lines[start + 2:start + 12]}
    assert list(table) == [*published.PAPER_METHODS, "trqam (ours)", "qam (ours)"]
    # Best per column in bold: scene is DSRL's 80; puzzle-3x3's 100 is shared by DSRL, TRQAM and SQAM.
    assert table["DSRL"][4] == "**80 ± 0**" and table["TRQAM"][4] == "79 ± 1"
    assert [m for m, cells in table.items() if cells[5].startswith("**")] == ["DSRL", "TRQAM", "SQAM"]
    assert table["SQAM"][10] == "**75** |" and table["TRQAM"][10] == "68 |"
    # Ours, offline: antmaze-large 75 ± 7 over 5 tasks; cube-double 50 ± 0 over 3 tasks (dagger); no
    # 'all' without the 10 domains.
    assert table["trqam (ours)"][0] == "75 ± 7" and table["trqam (ours)"][7] == "50 ± 0†"
    assert table["trqam (ours)"][10] == "– |" and table["qam (ours)"][7] == "40 ± 14†"
    # The same table in LaTeX ends the file.
    assert md.rstrip().endswith("\\end{tabular}\n```")
    assert "DSRL & 53 $\\pm$ 2 & 1 $\\pm$ 1 & 53 $\\pm$ 10 & 1 $\\pm$ 1 & \\textbf{80 $\\pm$ 0} &" in md
    assert "trqam (ours) & 75 $\\pm$ 7 & -- &" in md and "50 $\\pm$ 0$^\\dagger$" in md


# ----------------------------------------------------------------------------- rliable statistics

def test_iqm_by_hand_with_a_reproducible_ci(tmp_path):
    """cube-double: 4 tasks x 2 seeds. The IQM of 8 scores is the mean of the middle 4."""
    d = str(tmp_path / "runs")
    scores = {1: (0.0, 0.1), 2: (0.2, 0.3), 3: (0.5, 0.6), 4: (0.9, 1.0)}
    for task, (s0, s1) in scores.items():
        write_run(d, env(CD, task), "trqam", {0: s0, 1: s1}, train=False)
    # sorted: 0 .1 | .2 .3 .5 .6 | .9 1 -> (.2+.3+.5+.6)/4 = .4 (the mean is .45)
    out = str(tmp_path / "out")
    md = make_report(d, out, plots=False)
    res = read_results(os.path.join(out, "results.csv"))
    row = res[("domain", CD, "trqam", "offline")]
    assert float(row["mean"]) == pytest.approx(45.0)
    assert float(row["iqm"]) == pytest.approx(40.0)
    low, high = float(row["iqm_ci_low"]), float(row["iqm_ci_high"])
    assert low <= 40.0 <= high and low < high
    assert res[("task", env(CD, 1), "trqam", "offline")]["iqm"] == ""  # aggregates only
    assert f"| {CD} | 40.0 [{low:.1f}, {high:.1f}] (4×2) |" in md
    # The same seed gives the same interval; the rliable call itself, by hand.
    rows = stats.aggregate(runs.load_runs(d), "offline")
    first = stats.iqm_intervals(rows, reps=60, seed=0)
    assert first == stats.iqm_intervals(rows, reps=60, seed=0)
    iv = first[("domain", CD, "trqam", "offline")]
    assert (iv.estimate, iv.num_tasks, iv.num_seeds) == (pytest.approx(40.0), 4, 2)
    assert (iv.low, iv.high) == (pytest.approx(low), pytest.approx(high))
    other = stats.iqm_intervals(rows, reps=60, seed=1)[("domain", CD, "trqam", "offline")]
    assert other.estimate == iv.estimate and other.low <= 40.0 <= other.high
    # An overall over one domain is that domain.
    assert first[("overall", "overall", "trqam", "offline")] == iv


def test_probability_of_improvement_by_hand(tmp_path):
    """task1: a = .6 .8, b = .5 .7: of the 4 pairs, a wins 3 -> 3/4. task2: equal scores -> 1/2.
    P(a > b) = (3/4 + 1/2) / 2 = 0.625. task3 only a ran it: not compared."""
    d = str(tmp_path / "runs")
    write_run(d, env(CD, 1), "a", {0: 0.6, 1: 0.8}, train=False)
    write_run(d, env(CD, 1), "b", {0: 0.5, 1: 0.7}, train=False)
    write_run(d, env(CD, 2), "a", {0: 0.2, 1: 0.2}, train=False)
    write_run(d, env(CD, 2), "b", {0: 0.2, 1: 0.2}, train=False)
    write_run(d, env(CD, 3), "a", {0: 0.0, 1: 0.0}, train=False)
    out = str(tmp_path / "out")
    md = make_report(d, out, plots=False)
    with open(os.path.join(out, "improvement.csv"), newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert (row["x"], row["y"], row["phase"], row["num_tasks"]) == ("a", "b", "offline", "2")
    assert float(row["probability_x_beats_y"]) == pytest.approx(0.625)
    assert float(row["ci_low"]) <= 0.625 <= float(row["ci_high"])
    assert "| a | b | offline | 0.62 |" in md or "| a | b | offline | 0.63 |" in md
    rows = stats.aggregate(runs.load_runs(d), "offline")
    assert stats.improvement(rows, reps=20, seed=3) == stats.improvement(rows, reps=20, seed=3)


def test_without_rliable_one_line_and_nostats_works(runs_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "rliable", None)  # as if not installed
    with pytest.raises(report.ReportError) as info:
        make_report(runs_dir, str(tmp_path / "out"), plots=False)
    assert str(info.value) == ("the statistics need rliable, which could not be imported (ModuleNotFoundError: import of "
                               "rliable halted; None in sys.modules); install it with: pip install rliable==1.2.0 "
                               "'pandas<3' (or pass --nostats)")
    md = make_report(runs_dir, str(tmp_path / "out"), plots=False, stats=False)
    assert "Interquartile mean" not in md and "| method | antmaze-large |" in md
    assert not os.path.exists(tmp_path / "out" / "improvement.csv")


def test_performance_profile_by_hand(runs_dir, tmp_path):
    rows = stats.aggregate(runs.load_runs(runs_dir), "offline")
    taus, profiles = stats.performance_profiles(rows, "offline", reps=30, taus=[0.45, 0.55, 0.95])
    # trqam overall offline, seeds 0 / 1: antmaze-large 1 .9 .8 .7 .6 / .8 .9 .6 .7 .5 and cube-double
    # .5 .4 .6 / .7 .2 .6: 16 runs; above .45 all but .4 and .2 (14), above .55 9 of antmaze-large's
    # and .6 .7 .6 (12), above .95 only the 1 (1).
    profile, ci, num_tasks, num_seeds = profiles["trqam"]
    assert (num_tasks, num_seeds) == (8, 2)
    np.testing.assert_allclose(profile, [14 / 16, 12 / 16, 1 / 16])
    assert np.all(ci[0] <= profile + 1e-12) and np.all(profile <= ci[1] + 1e-12)
    assert list(profiles) == ["trqam", "qam"]
    fig = plots.plot_profiles(rows, "offline", str(tmp_path / "p.png"), reps=30)
    assert fig is not None and os.path.getsize(tmp_path / "p.png") > 5000


# --------------------------------------------------------------------------- released results file

def released_file(path, rows, methods=("TRQAM", "QAM"), tasks=(1, 2, 3, 4, 5), seeds=8, extra=None):
    """A released results pickle built from a function of the step: seed k of method m on task t at
    step s scores s / 1.5M * 0.45 + 0.01 k + 0.04 t + (0.1 for QAM), so each row tells its step.
    rows 30: steps 50K..1.5M; rows 31: steps 0..1.5M. Written independently of the reader."""
    first = 50_000 if rows == 30 else 0
    steps = first + 50_000 * np.arange(rows)
    assert steps[-1] == 1_500_000
    data = {}
    for m in methods:
        per_task = []
        for t in tasks:
            values = (steps[:, None] / 1.5e6 * 0.45 + 0.01 * np.arange(seeds)[None, :] + 0.04 * t
                      + (0.1 if m == "QAM" else 0.0))
            data[(env(CD, t), m)] = values
            per_task.append(values)
        data[(CD, m)] = np.mean(per_task, axis=0)
        data[("all", m)] = np.mean(per_task, axis=0) / 2  # as if the other domains scored 0
    data.update(extra or {})
    with open(path, "wb") as f:
        pickle.dump(data, f)
    return str(path)


def expected(step, t, method="TRQAM"):
    """(mean, std) in percent of the seeds at `step` on task t (std of 0.01 k, k = 0..7, ddof=1)."""
    base = step / 1.5e6 * 0.45 + 0.035 + 0.04 * t + (0.1 if method == "QAM" else 0.0)
    return 100 * base, 100 * 0.01 * np.std(np.arange(8), ddof=1)


@pytest.mark.parametrize("rows, row_1m", [(30, 19), (31, 20)])
def test_released_results_in_both_layouts(runs_dir, tmp_path, rows, row_1m):
    ref = released_file(tmp_path / "trqam-exp-data.pkl", rows)
    released = exp_data.load_released(ref)
    assert (released.rows, released.seeds, released.methods) == (rows, 8, ["QAM", "TRQAM"])
    assert released.row_of(1_000_000) == row_1m and released.row_of(1_500_000) == rows - 1
    first = "from step 0" if rows == 31 else "from 50K"
    assert released.describe() == (f"layout ({rows}, 8): evaluations every 50K {first} to 1.5M, 1M at row "
                                   f"{row_1m}, 1.5M at row {rows - 1}")
    out = str(tmp_path / "out")
    messages = []
    md = make_report(runs_dir, out, plots=False, reference=ref, log=messages.append)
    assert messages[0] == f"Released results {ref}: {released.describe()}; methods QAM, TRQAM."
    header = next(l for l in md.splitlines() if l.startswith("| task |"))
    assert header.endswith("| QAM (paper) | QAM 1M (released) | QAM 1.5M (released) | TRQAM 1M (released) "
                           "| TRQAM 1.5M (released) |")
    # Task rows: 1M and 1.5M, per hand: task2 TRQAM at 1M .3 + .035 + .08 = .415, at 1.5M .565.
    m1, s1 = expected(1_000_000, 2)
    m2, s2 = expected(1_500_000, 2)
    q1, _ = expected(1_000_000, 2, "QAM")
    assert (m1, m2, q1) == (pytest.approx(41.5), pytest.approx(56.5), pytest.approx(51.5))
    task2 = [l for l in md.splitlines() if l.startswith("| task2 |")][-1]  # cube-double's
    assert task2.endswith(f"| {q1:.1f} ± {s1:.1f} | {expected(1_500_000, 2, 'QAM')[0]:.1f} ± {s2:.1f} "
                          f"| {m1:.1f} ± {s1:.1f} | {m2:.1f} ± {s2:.1f} |")
    assert "| 51.5 ± 2.4 | 66.5 ± 2.4 | 41.5 ± 2.4 | 56.5 ± 2.4 |" in task2
    # antmaze-large tasks are not in the file.
    assert [l for l in md.splitlines() if l.startswith("| task2 |")][0].endswith("| – | – | – | – |")
    # Domain: the file's own entry (mean of tasks 1-5: .04 * 3 = .12 on top): TRQAM 1M .3 + .035 + .12.
    res = read_results(os.path.join(out, "results.csv"))
    r = res[("released", CD, "TRQAM 1M (released)", "offline")]
    assert float(r["mean"]) == pytest.approx(45.5) and float(r["std_ddof1"]) == pytest.approx(2.4494897)
    assert r["status"] == "released" and r["num_seeds"] == "8"
    assert float(res[("released", env(CD, 2), "TRQAM 1.5M (released)", "online")]["mean"]) == pytest.approx(56.5)
    # overall: the file's "all" entry, (.3 + .035 + .12 + .1) / 2.
    assert float(res[("released", "overall", "QAM 1M (released)", "offline")]["mean"]) == pytest.approx(27.75)
    assert f"authors' released results file {ref} ({released.describe()})" in md
    # Curves: the released TRQAM and QAM curves on the task panels, at the file's steps.
    loaded = [r for r in runs.load_runs(runs_dir) if r.domain == CD]
    fig = plots.plot_domain(loaded, str(tmp_path / "cd.png"), released)
    ax = next(a for a in fig.axes if a.get_title() == "task2")
    lines = {l.get_label(): l for l in ax.get_lines()}
    np.testing.assert_array_equal(lines["TRQAM (released)"].get_xdata(), released.steps)
    np.testing.assert_allclose(lines["TRQAM (released)"].get_ydata()[row_1m], m1)
    assert "QAM (released)" in lines
    mean_ax = next(a for a in fig.axes if a.get_title() == "domain mean")
    assert "TRQAM (released)" in {l.get_label() for l in mean_ax.get_lines()}
    run = next(r for r in loaded if r.method == "qam" and r.task == 1)
    fig = plots.plot_run(run, str(tmp_path / "run.png"), released)
    labels = {l.get_label() for l in fig.axes[0].get_lines()}
    assert {"QAM (released)", "TRQAM (released)"} <= labels


def test_released_results_in_percent_and_without_domain_entries(tmp_path):
    path = tmp_path / "pct.pkl"
    data = {(env(CD, t), "SQAM"): np.full((31, 2), 10.0 * t) for t in range(1, 6)}
    with open(path, "wb") as f:
        pickle.dump(data, f)
    released = exp_data.load_released(str(path))
    assert released.percent and released.describe().endswith("; values in percent")
    # No domain entry: the per-seed mean of its 5 tasks (10..50 % -> 30 %).
    assert released.score(CD, "SQAM", "offline", runs.domain_tasks(CD)) == (pytest.approx(30.0), 0.0)
    assert released.score(CD, "SQAM", "offline") is None
    # A seed the file lacks (NaN) is left out of that row's mean and std.
    data[(env(CD, 1), "SQAM")][20] = [10.0, np.nan]
    data[(env(CD, 2), "SQAM")][20] = np.nan
    with open(path, "wb") as f:
        pickle.dump(data, f)
    released = exp_data.load_released(str(path))
    assert released.score(env(CD, 1), "SQAM", "offline") == (pytest.approx(10.0), pytest.approx(np.nan, nan_ok=True))
    assert released.score(env(CD, 2), "SQAM", "offline") is None
    assert released.score(env(CD, 2), "SQAM", "online") == (pytest.approx(20.0), 0.0)


@pytest.mark.parametrize("payload, message", [
    ({(env(CD, 1), "TRQAM"): np.zeros((29, 8))}, r"entry \('cube-double-play-singletask-task1-v0', 'TRQAM'\) "
                                                 r"has shape \(29, 8\); expected a pickled dict"),
    ({(env(CD, 1), "TRQAM"): np.zeros((30, 8)), (CD, "TRQAM"): np.zeros((31, 8))}, "entries of different shapes"),
    ({(env(CD, 1), "TRQAM"): np.zeros(30)}, r"has shape \(30,\)"),
    ({"cube-double-play": np.zeros((30, 8))}, "key 'cube-double-play' is not a \\(name, method\\) pair"),
    ([np.zeros((30, 8))], "holds a list; expected a pickled dict"),
    ({}, r"holds a dict \(empty\)"),
    ({(CD, "TRQAM"): np.full((30, 8), 150.0)}, r"success values range over \[150, 150\]"),
])
def test_a_released_file_of_another_shape_gets_one_line(tmp_path, payload, message):
    path = tmp_path / "bad.pkl"
    path.write_bytes(pickle.dumps(payload))
    with pytest.raises(exp_data.ReleasedResultsError, match=message) as info:
        exp_data.load_released(str(path))
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_a_malicious_released_file_runs_nothing(runs_dir, tmp_path):
    from numpy.testing._private import utils as np_testing_utils

    class Exec:
        def __reduce__(self):
            return np_testing_utils.runstring, (f"open({str(marker)!r}, 'w').close()", {})

    marker = tmp_path / "marker"
    path = tmp_path / "trqam-exp-data.pkl"
    path.write_bytes(pickle.dumps({(CD, "TRQAM"): Exec()}))
    with pytest.raises(exp_data.ReleasedResultsError, match="numpy.testing._private.utils.runstring"):
        exp_data.load_released(str(path))
    assert not marker.exists()
    proc = _cli(f"--runs_dir={runs_dir}", f"--reference={path}", "--noplots")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"report: error: --reference: {path} is not a released results file: it needs "
        "numpy.testing._private.utils.runstring, which is not an array, a dtype, a scalar or a plain container, "
        "and was not loaded")
    assert not marker.exists()
    missing = tmp_path / "absent.pkl"
    proc = _cli(f"--runs_dir={runs_dir}", f"--reference={missing}", "--noplots")
    assert proc.stderr.strip().splitlines()[-1] == (
        f"report: error: --reference: {missing}: cannot read: No such file or directory")


def test_cli_with_a_released_file(runs_dir, tmp_path):
    ref = released_file(tmp_path / "trqam-exp-data.pkl", 31)
    proc = _cli(f"--runs_dir={runs_dir}", f"--reference={ref}", f"--out_dir={tmp_path / 'out'}", "--noplots")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"Released results {ref}: layout (31, 8): evaluations every 50K from step 0" in proc.stdout
    assert "| 51.5 ± 2.4 | 66.5 ± 2.4 | 41.5 ± 2.4 | 56.5 ± 2.4 |" in proc.stdout
    assert "| trqam | qam | offline |" in proc.stdout  # probability of improvement
