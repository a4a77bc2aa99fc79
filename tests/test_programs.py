"""Domain programs through the pipeline, each checked against separate runs: 2 tasks x 2 budgets x 2
seeds in one jitted program equal four single-task runs; split into programs of one run each (the
memory groups) they are the same again; a SIGTERM mid-program resumes exactly; bad sweeps and task
lists are one line. (The real entry point's smoke run of a domain program: tests/test_launcher.py.
The update itself against separate runs: tests/test_learners.py.)"""

import os
import signal

import jax
import numpy as np
import pytest

from experiments.infra import checkpointing, files
from experiments.infra.preemption import Interrupted, Preemption
from experiments.runner import context, phases, plan, program, run_directory, spec
from tests.test_launcher import ENV, read_csv, tiny_config
from tests.test_lifecycle import SignalAt

TASK2 = ENV.replace("task1", "task2")
# Offline only (exact resume); a budget axis of two eps values.
PROGRAM = {"offline_steps": 150, "save_every": 50, "eval_every": 50, "env_name": "cube-single-play", "tasks": "1,2", "eval_async": False,
           "sweep.kl_budget": "0.5,2", "agent.lam_init": 0.3, "agent.dual_lr": 0.5}
RUNS = [(ENV, 0.5), (ENV, 2.0), (TASK2, 0.5), (TASK2, 2.0)]


def run_path(out, env_name, eps):
    return os.path.join(str(out), env_name, f"trqam_eps{eps:g}")


def train_domain(dataset_dir, out, **overrides):
    config = tiny_config(dataset_dir, out, **{**PROGRAM, **overrides})
    return program.run_program(config, plan.task_names(config))


def restore(run_dir):
    with checkpointing.Checkpointer(os.path.join(run_dir, "checkpoints"), read_only=True) as c:
        step = c.steps()[-1]
        meta = c.read_meta(step)
        return step, c.restore(run_directory._state_target(*_num_seeds_and_spec(meta))[0], step=step).state


def _num_seeds_and_spec(meta):
    config = tiny_config("unused", "unused", **{k: v for k, v in PROGRAM.items() if k not in ("tasks", "sweep.kl_budget",
                                                                                              "env_name")})
    return config.num_seeds, spec.resolve(config, meta["env_name"])


def metrics(run_dir):
    rows = read_csv(os.path.join(run_dir, "train.csv"))
    return np.array([[float(r[k]) for k in ("critic_loss", "actor_loss", "kl_hat", "lambda_eff")] for r in rows])


@pytest.fixture(scope="module")
def whole(dataset_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("program")
    run_dirs = train_domain(dataset_dir, out)
    assert sorted(run_dirs) == sorted(run_path(out, *r) for r in RUNS)
    return out


def test_program_of_tasks_and_budgets_equals_separate_runs(dataset_dir, whole, tmp_path):
    # One of the four runs (the other task, the other budget) as a separate single-task command.
    for env_name, eps in (RUNS[3],):
        program.run_task(tiny_config(dataset_dir, tmp_path, **{**PROGRAM, "tasks": "", "sweep.kl_budget": "",
                                                                 "agent.kl_budget": eps}), env_name)
    # All four as programs of one run each: the memory groups (config.learners_per_program).
    grouped = tmp_path / "grouped"
    train_domain(dataset_dir, grouped, learners_per_program=2)
    for env_name, eps in RUNS:
        reference = metrics(run_path(whole, env_name, eps))
        np.testing.assert_allclose(metrics(run_path(grouped, env_name, eps)), reference, rtol=2e-4, atol=1e-5)
        if (env_name, eps) == RUNS[3]:
            np.testing.assert_allclose(metrics(run_path(tmp_path, env_name, eps)), reference, rtol=2e-4, atol=1e-5)
            step, separate = restore(run_path(tmp_path, env_name, eps))
            step_p, inside = restore(run_path(whole, env_name, eps))
            assert step == step_p == 150
            for a, b in zip(_leaves(separate), _leaves(inside)):
                np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-5)
    # The runs differ (by task and by budget), so the comparisons above can fail.
    final = {r: metrics(run_path(whole, *r))[-1] for r in RUNS}
    assert not np.allclose(final[RUNS[0]], final[RUNS[1]])  # budget
    assert not np.allclose(final[RUNS[0]], final[RUNS[2]])  # task
    lam = {r: restore(run_path(whole, *r))[1].dual.lam for r in RUNS}
    assert not np.allclose(lam[RUNS[0]], lam[RUNS[1]])
    # Each run dir reads as a single-task run: its config names its task and budget, its evals its seeds.
    for env_name, eps in RUNS:
        config = files.read_json(os.path.join(run_path(whole, env_name, eps), "config.json"))
        assert (config["env_name"], config["agent"]["kl_budget"], config["tasks"]) == (env_name, eps, "")
        evals = read_csv(os.path.join(run_path(whole, env_name, eps), "eval.csv"))
        assert [(r["step"], r["seed"]) for r in evals[:2]] == [("0", "0"), ("0", "1")]


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def test_program_resumes_exactly_after_sigterm(dataset_dir, whole, tmp_path, monkeypatch):
    config = tiny_config(dataset_dir, tmp_path, **PROGRAM)
    names = plan.task_names(config)
    with monkeypatch.context() as m:
        SignalAt(m, context.Context, "offline_data", signal.SIGTERM,
                 lambda self, step: step == 50 and len(self.learner_seeds) == 8)
        with pytest.raises(Interrupted):
            preempt = Preemption().install()
            try:
                program.run_program(config, names, preempt=preempt)
            finally:
                preempt.uninstall()
    for r in RUNS:
        assert checkpointing.Checkpointer(os.path.join(run_path(tmp_path, *r), "checkpoints")).steps()[-1] == 100
    program.run_program(config, names, resume=True)
    for r in RUNS:
        for name in ("train.csv", "eval.csv"):
            with open(os.path.join(run_path(tmp_path, *r), name)) as f, \
                    open(os.path.join(run_path(whole, *r), name)) as g:
                assert f.read() == g.read(), (r, name)
    # Resumed again: every run is finished, nothing runs.
    assert sorted(program.run_program(config, names, resume=True)) == sorted(run_path(tmp_path, *r) for r in RUNS)


@pytest.mark.parametrize("overrides, message", [
    ({"tasks": "1,7"}, "task"),
    ({"tasks": "1,1"}, "given twice"),
    ({"sweep.kl_budget": "0.5,x"}, "comma-separated numbers"),
    ({"sweep.kl_budget": "0.5,0.5"}, "repeats a value"),
    ({"sweep.kl_budget": "0.5", "agent.kl_budget": 1.0}, "keep one"),
    ({"sweep.inv_temp": "1,3", "sweep.kl_budget": ""}, "use config.sweep.kl_budget"),
    ({"sweep.inv_temp": "1,3"}, "not both"),
    ({"env_name": ENV}, "pass the domain instead"),
])
def test_bad_programs_are_one_line(dataset_dir, tmp_path, overrides, message):
    from experiments import data

    config = tiny_config(dataset_dir, tmp_path, **{**PROGRAM, **overrides})
    with pytest.raises((spec.ConfigError, data.DataError), match=message):
        plan.plan(config, plan.task_names(config))
    assert not os.listdir(tmp_path)


def test_runs_are_grouped_by_starting_point_and_by_what_fits(monkeypatch, capsys):
    """group_runs against a hand count: an estimate of 100 bytes per run and 250 bytes free fit 2 runs
    (4 -> 2 halvings until 0.9 * 250 holds them); a set size is rounded down to whole runs."""
    fresh = [run_directory.Resumable(run=f"run{i}") for i in range(4)]
    resumed = run_directory.Resumable(run="late", restored=checkpointing.Restored(100, None, None, {"phase": "offline"}))
    config = tiny_config("unused", "unused")
    monkeypatch.setattr(program, "free_memory_bytes", lambda: 250)
    groups = program.group_runs(config, fresh + [resumed], 2, estimate=lambda runs: 100 * runs)
    assert [[r.run for r in g] for g in groups] == [["run0", "run1"], ["run2", "run3"], ["late"]]
    monkeypatch.setattr(program, "free_memory_bytes", lambda: None)  # not known: everything in one
    groups = program.group_runs(config, fresh, 2, estimate=lambda runs: 10**12)
    assert [len(g) for g in groups] == [4]
    config = tiny_config("unused", "unused", learners_per_program=5)  # 2 whole runs of 2 seeds
    groups = program.group_runs(config, fresh, 2)
    assert [len(g) for g in groups] == [2, 2]
    assert "not a multiple" in capsys.readouterr().out


def test_a_suite_slice_runs_one_program_per_domain():
    """--suite=ogbench50 --shard=i/10 is one domain; a slice across two domains is two programs."""
    config = tiny_config("unused", "unused", suite="ogbench50")
    one = spec.task_list(config, "3/10")
    assert plan.by_domain(one) == [tuple(f"humanoidmaze-large-navigate-singletask-task{t}-v0" for t in range(1, 6))]
    two = plan.by_domain(spec.task_list(config, "1/3"))  # tasks 16..32: the end of one domain, two, the start
    assert [len(p) for p in two] == [4, 5, 5, 3] and all(len({n.split("-singletask")[0] for n in p}) == 1
                                                         for p in two)


def test_the_online_phase_runs_with_its_own_budget_in_a_program_and_alone(dataset_dir, tmp_path, monkeypatch):
    """config.online_kl_budget differs from every offline budget of the sweep: the learner table gives
    each phase its own eps, the compiled programs receive exactly those values, and a run of the program
    equals the same run trained alone."""
    online = {"online_steps": 50, "online_kl_budget": 0.125, "num_seeds": 1, "offline_steps": 100}
    config = tiny_config(dataset_dir, tmp_path / "program", **{**PROGRAM, **online})
    runs = plan.plan(config, plan.task_names(config))
    team = plan.Learners(tuple(runs), (config.seed,))
    # The table, by hand: runs are (task1, 0.5), (task1, 2), (task2, 0.5), (task2, 2) with one seed each.
    np.testing.assert_array_equal(team.hparams("offline").kl_budget, [0.5, 2.0, 0.5, 2.0])
    np.testing.assert_array_equal(team.hparams("online").kl_budget, [0.125] * 4)
    seen = []
    real = context.compile_train

    def compile_train(train, states, data_example, label):
        seen.append((label.split()[-1], np.asarray(states.hparams.kl_budget).tolist()))
        return real(train, states, data_example, label)

    monkeypatch.setattr(phases, "compile_train", compile_train)  # where the phases call it
    program.run_program(config, plan.task_names(config))
    assert ("offline", [0.5, 2.0, 0.5, 2.0]) in seen and ("online", [0.125] * 4) in seen
    # The same run alone (task 2, offline eps 2, online eps 0.125) equals its share of the program.
    alone = tiny_config(dataset_dir, tmp_path / "alone", **{**PROGRAM, **online, "tasks": "", "sweep.kl_budget": "",
                                                          "agent.kl_budget": 2.0})
    program.run_task(alone, TASK2)
    assert ("online", [0.125]) in seen
    rows = {}
    for name, out in (("program", tmp_path / "program"), ("alone", tmp_path / "alone")):
        train = read_csv(os.path.join(run_path(out, TASK2, 2.0), "train.csv"))
        rows[name] = np.array([[float(r[k]) for k in ("kl_hat", "lambda_eff", "critic_loss")]
                               for r in train if r["phase"] == "online"])
    assert len(rows["program"]) == 1
    np.testing.assert_allclose(rows["program"], rows["alone"], rtol=2e-4, atol=1e-5)
