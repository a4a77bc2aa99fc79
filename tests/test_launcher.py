"""The launcher end to end on a tiny generated cube-single dataset: smoke run of the real entry
point, the two-device sharded run, policy-only restore, and each bad input. (Resume, preemption
and damaged checkpoints: tests/test_lifecycle.py.)"""

import csv
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from experiments import data
from experiments.configs import quickstart
from experiments.infra import checkpointing
from experiments.policy import load_policy
from experiments.runner import boundaries, context, program, spec

ENV = "cube-single-play-singletask-task1-v0"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {
    "num_seeds": 2, "bc_steps": 100, "offline_steps": 200, "online_steps": 0, "online_start_steps": 25,
    "log_every": 50, "eval_every": 100, "save_every": 100, "eval_episodes": 1, "eval_envs_per_seed": 1, "eval_steps": 25,
    "generate_missing_data": False,
    "agent.width": 16, "agent.depth": 2, "agent.num_critics": 2, "agent.batch_size": 16, "agent.flow_steps": 3,
}


def tiny_config(dataset_dir, output_dir, **overrides):
    config = quickstart.get_config()
    config.update_from_flattened_dict({**TINY, "dataset_dir": dataset_dir, "output_dir": str(output_dir),
                                       **overrides})
    config.lock()
    return config


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def run_dir(output_dir, method="trqam"):
    return os.path.join(str(output_dir), ENV, method)


def test_smoke_real_entry_point_domain_program_offline_then_online(dataset_dir, tmp_path):
    """The README's domain program: two tasks x two seeds in one jitted program, offline then online."""
    flags = [f"--config.{k}={v}" for k, v in {**TINY, "online_steps": 50}.items()]
    cmd = [sys.executable, "-m", "experiments.train", "--config=experiments/configs/quickstart.py", *flags,
           f"--config.dataset_dir={dataset_dir}", f"--output_dir={tmp_path}", "--env_name=cube-single-play",
           "--tasks=1,2"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "4 learners" in out.stdout and "dataset" in out.stdout
    task2 = ENV.replace("task1", "task2")
    for env_name in (ENV, task2):
        run = os.path.join(str(tmp_path), env_name, "trqam")
        evals = read_csv(os.path.join(run, "eval.csv"))
        assert [(r["step"], r["phase"]) for r in evals[::2]] == [("0", "offline"), ("100", "offline"),
                                                                 ("200", "offline"), ("250", "online")]
        train = read_csv(os.path.join(run, "train.csv"))
        assert {r["phase"] for r in train} == {"offline", "online"}
        assert all(np.isfinite(float(r["kl_hat"])) for r in train)
        assert checkpointing.Checkpointer(os.path.join(run, "checkpoints")).steps() == [100, 200, 250]
        assert os.path.isdir(os.path.join(run, "tensorboard"))
    assert os.path.isdir(os.path.join(str(tmp_path), "_pretrained_bc", "cube-single-play"))
    with open(os.path.join(str(tmp_path), "report", "results.md")) as f:
        table = f.read()
    assert "cube-single-play" in table and "task1" in table and "task2" in table
    assert os.path.getsize(os.path.join(str(tmp_path), "report", "curves", f"{ENV}__trqam.png")) > 1000
    # The policy alone restores a run of the program from its newest checkpoint and acts.
    policy = load_policy(run_dir(tmp_path).replace(ENV, task2))
    chunk = policy.act(policy.params, np.zeros((2, 3, 28), np.float32), jax.random.PRNGKey(0))
    assert policy.step == 250 and chunk.shape == (2, 3, 5, 5) and np.all(np.abs(chunk) <= 1)


def test_two_device_sharded_program_equals_single_device(dataset_dir, tmp_path):
    """A program of two tasks x one seed: its two learners (different tasks) sharded over two devices."""
    overrides = {**TINY, "offline_steps": 100, "bc_steps": 50, "num_seeds": 1, "eval_async": False}
    flags = [f"--config.{k}={v}" for k, v in overrides.items()]
    outputs = {}
    for devices in (1, 2):
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
        out_dir = tmp_path / f"devices{devices}"
        cmd = [sys.executable, "-m", "experiments.train", "--config=experiments/configs/quickstart.py", *flags,
               f"--config.dataset_dir={dataset_dir}", f"--output_dir={out_dir}", "--noreport",
               "--env_name=cube-single-play", "--tasks=1,2"]
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
        assert out.returncode == 0, out.stderr[-3000:]
        outputs[devices] = [row for task in (ENV, ENV.replace("task1", "task2"))
                            for row in read_csv(os.path.join(str(out_dir), task, "trqam", "train.csv"))]
    assert len(outputs[1]) == len(outputs[2]) > 0
    for a, b in zip(outputs[1], outputs[2]):
        for key in ("critic_loss", "actor_loss", "kl_hat", "lambda_eff", "bc_loss"):
            np.testing.assert_allclose(float(a[key]), float(b[key]), rtol=1e-4, atol=1e-6)


def test_bad_inputs_give_clear_errors(dataset_dir, tmp_path, monkeypatch):
    with pytest.raises(data.UnknownEnvError, match="cube-double-play"):
        program.run_task(tiny_config(dataset_dir, tmp_path, env_name="cube-sextuple-play-singletask-task1-v0"))
    with pytest.raises(data.DatasetMissingError, match="make_dataset"):
        program.run_task(tiny_config(str(tmp_path / "empty"), tmp_path / "missing"))
    assert not os.path.exists(tmp_path / "missing" / ENV)  # nothing created for a run that cannot start
    with pytest.raises(data.DatasetMissingError, match="internet"):
        program.run_task(tiny_config(str(tmp_path / "empty"), tmp_path / "nav",
                                      env_name="antmaze-large-navigate-singletask-task1-v0"))
    with pytest.raises(spec.ConfigError, match="log_every"):
        program.run_task(tiny_config(dataset_dir, tmp_path, offline_steps=120))

    # A NaN in a loss stops the run, names the step and the metric, and keeps the last good checkpoint.
    real = context.Context.offline_data

    def poisoned(self, step):
        shared = real(self, step)
        return shared._replace(data=shared.data._replace(rewards=shared.data.rewards * np.nan)) if step >= 100 else shared

    monkeypatch.setattr(context.Context, "offline_data", poisoned)
    with pytest.raises(boundaries.TrainingDivergedError, match=r"non-finite \w+_loss .* step 150.*checkpoint \(step 100\)"):
        program.run_task(tiny_config(dataset_dir, tmp_path / "nan"))
    assert checkpointing.Checkpointer(os.path.join(run_dir(tmp_path / "nan"), "checkpoints")).steps() == [100]


def test_suite_and_shards():
    config = tiny_config("unused", "unused", suite="ogbench50")
    tasks = spec.task_list(config)
    assert len(tasks) == 50 and len(set(tasks)) == 50
    slices = [spec.task_list(config, f"{i}/10") for i in range(10)]
    assert sorted(sum(slices, ())) == sorted(tasks)
    assert all(len({t.split("-singletask")[0] for t in s}) == 1 for s in slices)  # one domain per job of 10
    with pytest.raises(spec.ConfigError, match="i/n"):
        spec.task_list(config, "10/10")


def test_configs_resolve_every_task_with_the_spec_table():
    from experiments.configs import learning_check, ogbench

    config = ogbench.get_config()
    config.lock()
    for env_name in spec.task_list(tiny_config("unused", "unused", suite="ogbench50")):
        spec.resolve(config, env_name)
    # Hand-copied rows of conventions §10.
    hm = spec.resolve(config, "humanoidmaze-large-navigate-singletask-task3-v0")
    assert (hm.horizon, hm.offline.discount, hm.offline.rho, hm.eval_steps) == (1, 0.999, 0.0, 2000)
    p44 = spec.resolve(config, "puzzle-4x4-play-singletask-task5-v0")
    assert (p44.offline.hidden_dims, p44.offline.actor_layer_norm, p44.sparse, p44.offline.inv_temp) == (
        (1024,) * 4, True, True, 30.0)
    ct = spec.resolve(config, "cube-triple-play-singletask-task1-v0")
    assert (ct.offline.kl_budget, ct.eval_steps, ct.horizon) == (0.5, 1000, 5)
    # A user override beats the table; the table value is not written into the config.
    config.agent.kl_budget = 0.3
    assert spec.resolve(config, "cube-triple-play-singletask-task1-v0").offline.kl_budget == 0.3
    assert ogbench.get_config().agent.kl_budget is None
    spec.resolve(learning_check.get_config())


def test_every_config_field_has_a_comment():
    import glob
    import re

    for path in glob.glob(os.path.join(ROOT, "experiments", "configs", "*.py")):
        for line in open(path):
            if re.match(r"\s*config(\.\w+)+ = ", line):
                assert "#" in line, f"{os.path.basename(path)}: uncommented field: {line.strip()}"
