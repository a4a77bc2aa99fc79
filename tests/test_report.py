"""experiments/report.py on synthetic run directories, against scores derived by hand below."""

import csv
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments import report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CD = "cube-double-play"
AL = "antmaze-large-navigate"


def env(domain, task):
    return f"{domain}-singletask-task{task}-v0"


def write_run(runs_dir, env_name, method, final_offline, final_online=None, train=True,
              offline_step=1000, online_step=2000):
    """eval.csv with, per seed, the final offline eval, two earlier offline evals (other values)
    and, when final_online is given, an online eval at 1500 (another value) and the final one. The
    final offline row comes first in the file and the online rows last: scores must come from steps
    and phases, not from file order."""
    run_dir = os.path.join(runs_dir, env_name, method)
    os.makedirs(run_dir)
    with open(os.path.join(run_dir, "config.json"), "w") as f:
        f.write('{"method": "%s"}' % method)
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
    assert float(r["std"]) == pytest.approx(std, abs=1e-6), key
    assert (int(r["num_seeds"]), int(r["num_tasks"])) == (num_seeds, num_tasks), key


def test_results_csv_by_hand(runs_dir, tmp_path):
    out = str(tmp_path / "out")
    report.make_report(runs_dir, out, plots=False)
    res = read_results(os.path.join(out, "results.csv"))

    # trqam offline, tasks (seed 0, seed 1 -> mean, population std), in percent.
    check(res, ("task", env(CD, 1), "trqam", "offline"), 60.0, 10.0, 2, 1)  # .5 .7
    check(res, ("task", env(CD, 2), "trqam", "offline"), 30.0, 10.0, 2, 1)  # .4 .2
    check(res, ("task", env(CD, 3), "trqam", "offline"), 60.0, 0.0, 2, 1)   # .6 .6
    check(res, ("task", env(AL, 1), "trqam", "offline"), 90.0, 10.0, 2, 1)  # 1. .8
    check(res, ("task", env(AL, 5), "trqam", "offline"), 55.0, 5.0, 2, 1)   # .6 .5
    # Domains, per seed first: cube-double seed 0 = (.5+.4+.6)/3 = .5, seed 1 = (.7+.2+.6)/3 = .5
    # -> 50.0 +- 0.0 (averaging the task stds would give 6.7). antmaze-large seed 0 =
    # (1+.9+.8+.7+.6)/5 = .8, seed 1 = (.8+.9+.6+.7+.5)/5 = .7 -> 75.0 +- 5.0.
    check(res, ("domain", CD, "trqam", "offline"), 50.0, 0.0, 2, 3)
    check(res, ("domain", AL, "trqam", "offline"), 75.0, 5.0, 2, 5)
    # Overall, per seed: seed 0 = (.5+.8)/2 = .65, seed 1 = (.5+.7)/2 = .6 -> 62.5 +- 2.5.
    check(res, ("overall", "overall", "trqam", "offline"), 62.5, 2.5, 2, 8)

    # trqam online (only cube-double has online rows): tasks .9/1 .6/.8 .3/.3; domain seed 0 =
    # 1.8/3 = .6, seed 1 = 2.1/3 = .7 -> 65.0 +- 5.0; overall = that one domain.
    check(res, ("task", env(CD, 1), "trqam", "online"), 95.0, 5.0, 2, 1)
    check(res, ("task", env(CD, 2), "trqam", "online"), 70.0, 10.0, 2, 1)
    check(res, ("domain", CD, "trqam", "online"), 65.0, 5.0, 2, 3)
    check(res, ("overall", "overall", "trqam", "online"), 65.0, 5.0, 2, 3)
    assert ("domain", AL, "trqam", "online") not in res

    # qam: task1 over its 3 seeds (.2 .4 .9): mean .5, var (.09+.01+.16)/3 -> std 29.4392;
    # domain over the seeds common to task1 and task2 (0, 1): seed 0 = (.2+.4)/2 = .3,
    # seed 1 = (.4+.6)/2 = .5 -> 40.0 +- 10.0.
    check(res, ("task", env(CD, 1), "qam", "offline"), 50.0, 29.439203, 3, 1)
    check(res, ("task", env(CD, 2), "qam", "offline"), 50.0, 10.0, 2, 1)
    check(res, ("domain", CD, "qam", "offline"), 40.0, 10.0, 2, 2)
    check(res, ("overall", "overall", "qam", "offline"), 40.0, 10.0, 2, 2)
    assert res[("domain", CD, "qam", "offline")]["seeds"] == "0 1"
    assert "seed(s) 2" in res[("domain", CD, "qam", "offline")]["notes"]
    assert not any(k[2] == "qam" and k[3] == "online" for k in res)
    assert res[("task", env(CD, 1), "trqam", "offline")]["final_steps"] == "1000"


def test_markdown(runs_dir, tmp_path):
    md = report.make_report(runs_dir, str(tmp_path / "out"), plots=False)
    assert md == (tmp_path / "out" / "results.md").read_text()
    lines = md.splitlines()
    header = next(l for l in lines if l.startswith("| task |"))
    assert header == "| task | trqam offline | trqam online | qam offline |"
    assert "ddof=0" in md
    row = lambda label: next(l for l in lines if l.startswith(f"| {label} |"))
    # Tasks grouped under domains (antmaze-large first: SPEC order), domain means, then overall.
    assert lines.index(f"| **{AL}** | | | |") < lines.index(f"| **{CD}** | | | |") < lines.index(
        "| **domain mean** | | | |") < lines.index(row("**overall**"))
    cd_rows = [l for l in lines if l.startswith(f"| {CD} |")]
    assert len(cd_rows) == 1
    assert cd_rows[0].startswith(f"| {CD} | 50.0 ± 0.0 (3/5 tasks) | 65.0 ± 5.0 (3/5 tasks) | "
                                 "40.0 ± 10.0 (2/5 tasks) [")
    assert row(AL) == f"| {AL} | 75.0 ± 5.0 | – | – |"
    assert row("**overall**") == ("| **overall** | 62.5 ± 2.5 (2/10 domains) | "
                                  "65.0 ± 5.0 (1/10 domains) | 40.0 ± 10.0 (1/10 domains) |")
    task_rows = [l for l in lines if l.startswith("| task1 |")]
    assert task_rows[0] == "| task1 | 90.0 ± 10.0 | – | – |"
    assert task_rows[1] == "| task1 | 60.0 ± 10.0 | 95.0 ± 5.0 | 50.0 ± 29.4 |"
    assert "seed(s) common to its tasks (0, 1): task2 lacks seed(s) 2" in md


def test_step_mismatch_notes(tmp_path):
    d = str(tmp_path / "runs")
    write_run(d, env(CD, 1), "trqam", {0: 0.5, 1: 0.5})
    write_run(d, env(CD, 2), "trqam", {0: 0.5, 1: 0.5}, offline_step=800, train=False)
    md = report.make_report(d, str(tmp_path / "out"), plots=False)
    assert f"earlier in {env(CD, 2)} (800)" in md


def test_seeds_not_common(tmp_path):
    d = str(tmp_path / "runs")
    write_run(d, env(CD, 1), "trqam", {0: 0.2, 1: 0.4}, train=False)
    write_run(d, env(AL, 1), "trqam", {0: 0.6, 1: 0.8, 2: 0.0}, train=False)
    write_run(d, env(AL, 2), "trqam", {0: 1.0, 1: 0.8, 2: 0.1}, train=False)
    write_run(d, env(CD, 1), "bc", {0: 0.5}, train=False)
    write_run(d, env(CD, 2), "bc", {1: 0.5}, train=False)
    rows = {(r.level, r.name, r.method): r for r in report.aggregate(report.load_runs(d), "offline")}
    # antmaze-large over seeds 0-2: .8 .8 .05 -> mean .55, std sqrt((.0625*2+.25)/3) = .35355.
    r = rows[("domain", AL, "trqam")]
    assert (r.mean, r.num_seeds, r.notes) == (pytest.approx(55.0), 3, ())
    assert r.std == pytest.approx(35.355339)
    # Overall over seeds 0, 1 (cube-double lacks 2): (.2+.8)/2 = .5, (.4+.8)/2 = .6 -> 55.0 +- 5.0.
    r = rows[("overall", "overall", "trqam")]
    assert (r.mean, r.std, r.num_seeds) == (pytest.approx(55.0), pytest.approx(5.0), 2)
    assert r.notes == (f"over the 2 seed(s) common to its domains (0, 1): {CD} lacks seed(s) 2",)
    # bc: no seed common to task1 and task2 -> a NaN domain row, and no overall row.
    r = rows[("domain", CD, "bc")]
    assert r.num_seeds == 0 and np.isnan(r.mean) and "no seed common to its tasks" in r.notes[0]
    assert ("overall", "overall", "bc") not in rows
    md = report.to_markdown(list(rows.values()))
    assert f"| {CD} | 30.0 ± 10.0 (1/5 tasks) | – (2/5 tasks) [1] |" in md


def test_plots(runs_dir, tmp_path):
    # qam on tasks 1-2 (no online rows), trqam on task 3 (with online rows): each method lacks a
    # task in the domain figure.
    runs = [r for r in report.load_runs(runs_dir)
            if r.domain == CD and (r.method == "qam" or r.task == 3)]
    assert [report.online_boundary(r) for r in runs] == [None, None, 1000]
    paths = report.write_plots(runs, str(tmp_path / "curves"))
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
    curves = report.seed_curves(table, "x")
    # seed 0: at step 100 the online row wins over the offline one; seed 1: the NaN is dropped.
    assert {s: (list(a), list(b)) for s, (a, b) in curves.items()} == {
        0: ([0, 100, 200], [1.0, 3.0, 5.0]), 1: ([0], [3.0])}
    steps, mean, std = report.band(curves)
    assert list(steps) == [0] and mean[0] == 2.0 and std[0] == 1.0
    assert report.seed_curves(table, "absent") == {}


def test_parse_env_name():
    assert report.parse_env_name("cube-double-play-singletask-task2-v0") == ("cube-double-play", 2)
    assert report.parse_env_name("puzzle-3x3-play-singletask-task5-v0") == ("puzzle-3x3-play", 5)
    with pytest.raises(ValueError):
        report.parse_env_name("cube-double-play-v0")


def test_no_runs(tmp_path):
    (tmp_path / "runs" / "report" / "curves").mkdir(parents=True)  # not a run directory
    with pytest.raises(report.ReportError, match="no run directories"):
        report.load_runs(str(tmp_path / "runs"))
    with pytest.raises(report.ReportError, match="not a directory"):
        report.load_runs(str(tmp_path / "absent"))


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
        report.load_runs(str(tmp_path / "runs"))
    assert str(run_dir / "eval.csv") in str(info.value)
    assert "\n" not in str(info.value)


def test_malformed_train_and_names(tmp_path):
    d = str(tmp_path / "runs")
    run_dir = write_run(d, env(CD, 1), "trqam", {0: 0.5})
    with open(os.path.join(run_dir, "train.csv"), "a") as f:
        f.write("9,offline,0,1.0,oops,0.1\n")
    with pytest.raises(report.ReportError,
                       match="train.csv line 7: lambda_eff 'oops' is not a number"):
        report.load_runs(d)
    d2 = str(tmp_path / "runs2")
    write_run(d2, "cube-double-play-v0", "trqam", {0: 0.5})
    with pytest.raises(report.ReportError, match="not an OGBench single-task id"):
        report.load_runs(d2)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "experiments.report", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_cli(tmp_path):
    d = str(tmp_path / "runs")
    write_run(d, env(CD, 1), "trqam", {0: 0.5, 1: 0.7}, {0: 0.9, 1: 1.0})
    proc = _cli(f"--runs_dir={d}")
    assert proc.returncode == 0, proc.stderr
    assert "| task1 | 60.0 ± 10.0 | 95.0 ± 5.0 |" in proc.stdout
    out = os.path.join(d, "report")
    assert sorted(os.listdir(out)) == ["curves", "results.csv", "results.md"]
    assert set(os.listdir(os.path.join(out, "curves"))) == {f"{CD}.png", f"{env(CD, 1)}__trqam.png"}
    # A second run ignores the report folder inside runs_dir.
    assert _cli(f"--runs_dir={d}", "--noplots").returncode == 0

    empty = tmp_path / "empty"
    empty.mkdir()
    proc = _cli(f"--runs_dir={empty}")
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"report: error: {empty}: no run directories")
