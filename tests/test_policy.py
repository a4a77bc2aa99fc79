"""`python -m experiments.policy` on a tiny real run directory: bounded rounds, the run's own
episode length, one-line errors, and the fallback from a damaged newest checkpoint."""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from experiments.runner import program
from tests.test_launcher import ENV, ROOT, run_dir, tiny_config

EVAL_STEPS = 25  # TINY's eval_steps; the ogbench default for cube-single is 200.


@pytest.fixture(scope="module")
def tiny_run(dataset_dir, tmp_path_factory):
    """2 seeds, checkpoints at steps 100 and 200, eval_steps 25 (in task.json)."""
    out = tmp_path_factory.mktemp("runs")
    program.run_task(tiny_config(dataset_dir, out))
    path = run_dir(out)
    with open(os.path.join(path, "task.json")) as f:
        assert json.load(f)["eval_steps"] == EVAL_STEPS
    return path


def policy_cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "experiments.policy", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def assert_one_line_error(proc, *needles):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith("policy: error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_evaluates_in_rounds_with_the_runs_episode_length(tiny_run):
    proc = policy_cli(f"--run_dir={tiny_run}", "--episodes=2", "--envs_per_seed=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    # 2 seeds x 2 episodes, one env per seed at a time: 2 rounds of 2 envs.
    assert f"{ENV} step 200: 2 seeds x 2 episodes of {EVAL_STEPS} steps (the run's eval_steps), in 2 round(s) " \
           "of 1 env(s) per seed (2 envs at once" in proc.stdout
    # The tiny policy does not succeed: every episode runs to the run's length, 25 steps, so the
    # env steps are 2 rounds x 2 envs x 25 = 100 (the ogbench default of 200 steps would give 800).
    assert "(100 env steps, longest episode 25 steps)" in proc.stdout
    assert re.search(r"success per seed \[[0-9., ]+\], mean [0-9.]+", proc.stdout)
    # No orbax or absl INFO spam.
    assert not [l for l in proc.stderr.splitlines() if re.match(r"^I\d{4} ", l) or "INFO" in l], proc.stderr


def test_default_round_size_comes_from_the_run_config(tiny_run):
    # The rounds themselves: tests/test_evaluation.py (episodes_per_round).
    proc = policy_cli(f"--run_dir={tiny_run}", "--episodes=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "in 1 round(s) of 1 env(s) per seed" in proc.stdout  # eval_envs_per_seed = 1 in the run


def test_wrong_run_dir(tiny_run, tmp_path):
    assert_one_line_error(policy_cli(f"--run_dir={tmp_path / 'absent'}"), str(tmp_path / "absent"),
                          "not a directory")
    output_dir = os.path.dirname(os.path.dirname(tiny_run))  # two levels too high
    line = assert_one_line_error(policy_cli(f"--run_dir={output_dir}"), "not a run directory", tiny_run)
    assert "pass one of them" in line
    assert not os.path.exists(os.path.join(output_dir, "checkpoints"))  # nothing created there


def test_no_checkpoint(tiny_run, tmp_path):
    empty = tmp_path / ENV / "trqam"
    empty.mkdir(parents=True)
    shutil.copy(os.path.join(tiny_run, "task.json"), empty)
    assert_one_line_error(policy_cli(f"--run_dir={empty}"), "No checkpoint", str(empty / "checkpoints"))
    (empty / "checkpoints").mkdir()
    assert_one_line_error(policy_cli(f"--run_dir={empty}"), "No checkpoint", "not saved one yet")


def _damage(checkpoint_step_dir):
    """Truncate every file of one checkpoint step to zero bytes (a disk that filled up)."""
    for root, _, files in os.walk(checkpoint_step_dir):
        for name in files:
            open(os.path.join(root, name), "w").close()


def test_damaged_checkpoint_falls_back_then_fails_in_one_line(tiny_run, tmp_path):
    copy = str(tmp_path / ENV / "trqam")
    shutil.copytree(tiny_run, copy)
    _damage(os.path.join(copy, "checkpoints", "200"))
    proc = policy_cli(f"--run_dir={copy}", "--episodes=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    fallback = [l for l in proc.stdout.splitlines() if "damaged" in l]
    assert len(fallback) == 1 and "step 200" in fallback[0] and "using the previous one, step 100" in fallback[0]
    assert f"{ENV} step 100: 2 seeds x 1 episodes" in proc.stdout
    assert "Traceback" not in proc.stderr and "WARNING" not in proc.stderr
    assert not [l for l in proc.stderr.splitlines() if re.match(r"^[EWI]\d{4} ", l)], proc.stderr  # no orbax logs
    # With every checkpoint damaged: one line, naming the steps; nothing is deleted.
    _damage(os.path.join(copy, "checkpoints", "100"))
    assert_one_line_error(policy_cli(f"--run_dir={copy}", "--episodes=1"), "No readable checkpoint",
                          "steps 100, 200")
    assert sorted(os.listdir(os.path.join(copy, "checkpoints"))) == ["100", "200"]
    assert os.listdir(os.path.join(tiny_run, "checkpoints")) != []  # the original run is untouched


def _damage_policy_data(run_dir, step=200):
    """Truncate the largest array file of a checkpoint's policy item: its reads fail while the other
    arrays' reads of the same restore are still pending."""
    data = os.path.join(run_dir, "checkpoints", str(step), "policy", "ocdbt.process_0", "d")
    biggest = max(os.listdir(data), key=lambda name: os.path.getsize(os.path.join(data, name)))
    open(os.path.join(data, biggest), "w").close()


def test_damaged_policy_item_prints_no_traceback(tiny_run, tmp_path, monkeypatch):
    # orbax leaves the pending reads of a failed restore as coroutines that Python reports, when they
    # are collected, as a 65-line 'Exception ignored in: <coroutine _read_array_index_and_device_put>'
    # (about 1 run in 3 before the filter in experiments/infra/checkpointing.py).
    import gc

    from experiments import policy

    copy = str(tmp_path / ENV / "trqam")
    shutil.copytree(tiny_run, copy)
    _damage_policy_data(copy)
    # In this process: nothing reaches the hook below the project's filter (without the filter, 2 of 3
    # restores left the record here).
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(f"{u.object!r}: {u.exc_value!r}"[:300]))
    for _ in range(3):
        loaded = policy.load_policy(copy)
        assert loaded.step == 100
        # The reason is the checkpointer's own (its `damaged`), not the CheckpointError that ends its restore.
        assert [step for step, _ in loaded.skipped] == [200]
        assert not loaded.skipped[0][1].startswith("CheckpointError"), loaded.skipped
        gc.collect()
    assert seen == []
    # The real command, 3 runs at once (each restore gives the record about 1 time in 3 without the filter).
    runs = [subprocess.Popen([sys.executable, "-m", "experiments.policy", f"--run_dir={copy}", "--episodes=1",
                              "--episode_steps=5"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(3)]
    for proc in runs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        assert "Exception ignored" not in err and "Traceback" not in err, err[-3000:]
        assert "Checkpoint step 200" in out and "is damaged" in out and "using the previous one, step 100" in out


def test_default_envs_per_seed_fits_half_the_free_memory():
    from experiments import env_workers, policy

    assert (env_workers.ENV_IN_PROCESS_MB, env_workers.IN_PROCESS_FIRST_MB) == (160, 170)
    # 4000 MB free: (4000 / 2 - 170) // 160 = 11 envs in this process.
    assert env_workers.in_process_envs_that_fit(4000.0) == 11
    assert policy.default_envs_per_seed(5, 2, 4000.0) == 5  # 2 x 5 = 10 <= 11
    assert policy.default_envs_per_seed(None, 2, 4000.0) == 5  # no eval_envs_per_seed in the run: 5
    assert policy.default_envs_per_seed(10, 2, 4000.0) == 5  # 2 x 10 > 11: 11 // 2
    assert policy.default_envs_per_seed(5, 8, 4000.0) == 1  # 11 // 8
    assert policy.default_envs_per_seed(5, 8, 100.0) == 1  # never fewer than one
    assert policy.default_envs_per_seed(5, 8, None) == 5  # free memory unknown: the run's value
    assert env_workers.in_process_envs_mb(10) == 170 + 1600
