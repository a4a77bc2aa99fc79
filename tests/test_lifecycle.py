"""A run's lifecycle on a cluster, each failure caused for real: damaged checkpoints (truncated array
files, a missing manifest, a leftover temporary directory), real SIGTERM / SIGINT in every phase,
requeues with the same command line, failed first attempts, moved run dirs, extended runs, and an
eps sweep and QAM sharing one BC cache. Every recovery is checked against an uninterrupted run."""

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from experiments import evaluation
from experiments.infra import checkpointing
from experiments.infra.preemption import Interrupted, Preemption
from experiments.runner import bc, boundaries, context, plan, program, run_directory, spec
from tests.test_launcher import ENV, ROOT, TINY, read_csv, tiny_config

# Offline only, so that a resumed run is exact; saves at every log row, to stop inside any phase.
LIFE = {"offline_steps": 300, "save_every": 50}


def run_path(out, method="trqam"):
    return os.path.join(str(out), ENV, method)


def same_logs(a, b):
    for name in ("train.csv", "eval.csv"):
        with open(os.path.join(a, name)) as f, open(os.path.join(b, name)) as g:
            assert f.read() == g.read(), name


def steps_in(directory):
    with checkpointing.Checkpointer(directory) as found:
        return found.steps()


def leftovers(out):
    return glob.glob(os.path.join(str(out), "**", f"*{checkpointing.TMP_MARKER}*"), recursive=True)


@pytest.fixture(scope="module")
def whole(dataset_dir, tmp_path_factory):
    """The uninterrupted reference run (and its BC cache)."""
    out = tmp_path_factory.mktemp("whole")
    program.run_task(tiny_config(dataset_dir, out, **LIFE))
    return out


class SignalAt:
    """Wraps owner.name so that a real signal is sent to this process on the call where when(*args) holds."""

    def __init__(self, monkeypatch, owner, name, signum, when):
        real = getattr(owner, name)
        self.sent = False

        def wrapper(*args, **kwargs):
            if not self.sent and when(*args, **kwargs):
                self.sent = True
                os.kill(os.getpid(), signum)
            return real(*args, **kwargs)

        monkeypatch.setattr(owner, name, wrapper)


def run_with_signals(config, resume=False):
    preempt = Preemption().install()
    try:
        return program.run_task(config, resume=resume, preempt=preempt)
    finally:
        preempt.uninstall()


def test_signal_in_every_phase_then_resume_equals_uninterrupted_run(dataset_dir, whole, tmp_path, monkeypatch,
                                                                    capsys):
    """With blocking evaluation, so that a signal can arrive inside one; the reference run evaluated
    beside training, so the equal eval.csv also shows that both modes give the same numbers."""
    config = tiny_config(dataset_dir, tmp_path, **LIFE, eval_async=False)
    # 1. SIGTERM during BC pretraining: BC stops at its next scan boundary with a checkpoint there.
    with monkeypatch.context() as m:
        SignalAt(m, context.Context, "offline_data", signal.SIGTERM, lambda self, step: True)
        with pytest.raises(Interrupted) as stop:
            run_with_signals(config)
    assert (stop.value.exit_code, stop.value.phase, stop.value.step) == (143, "bc", 50)
    assert "rerun the same command with --resume" in stop.value.message()
    # 2. SIGINT during an evaluation (at step 100): it stops at once; the evaluation is re-run on resume.
    with monkeypatch.context() as m:
        calls = []
        SignalAt(m, evaluation.Evaluator, "run", signal.SIGINT, lambda *a, **k: calls.append(1) or len(calls) == 2)
        with pytest.raises(Interrupted) as stop:
            run_with_signals(config, resume=True)
    assert (stop.value.exit_code, stop.value.phase, stop.value.step) == (130, "offline", 100)
    assert "resuming" in capsys.readouterr().out.lower()  # a resumed BC says so
    # 3. SIGTERM inside the training loop: it stops after the running scan, saving there (step 200).
    with monkeypatch.context() as m:
        SignalAt(m, context.Context, "offline_data", signal.SIGTERM, lambda self, step: step == 150)
        with pytest.raises(Interrupted) as stop:
            run_with_signals(config, resume=True)
    assert (stop.value.phase, stop.value.step) == ("offline", 200)
    # 4. SIGTERM during a checkpoint save: the save completes, then the run stops.
    with monkeypatch.context() as m:
        SignalAt(m, checkpointing.Checkpointer, "save", signal.SIGTERM, lambda self, step, *a, **k: step == 250)
        with pytest.raises(Interrupted) as stop:
            run_with_signals(config, resume=True)
    assert stop.value.step == 250
    assert steps_in(os.path.join(run_path(tmp_path), "checkpoints"))[-1] == 250
    assert not leftovers(tmp_path)
    run_with_signals(config, resume=True)
    same_logs(run_path(whole), run_path(tmp_path))
    # A requeue with the same command line finds the run finished and trains nothing.
    capsys.readouterr()
    run_with_signals(config, resume=True)
    assert "already finished" in capsys.readouterr().out


def test_online_signal_stops_at_a_chunk_boundary_and_resumes(dataset_dir, whole, tmp_path, monkeypatch):
    out = tmp_path / "online"
    shutil.copytree(whole, out)  # the finished offline run, extended with an online phase
    config = tiny_config(dataset_dir, out, **{**LIFE, "online_steps": 50})
    with monkeypatch.context() as m:
        steps = []
        SignalAt(m, evaluation.OnlineEnvs, "step", signal.SIGTERM, lambda *a: steps.append(1) or len(steps) == 12)
        with pytest.raises(Interrupted) as stop:
            run_with_signals(config, resume=True)
    assert (stop.value.phase, stop.value.step) == ("online", 315)  # the chunk of 5 env steps is completed
    with checkpointing.Checkpointer(os.path.join(run_path(out), "checkpoints")) as ckpt:
        found = ckpt.restore(lambda meta: None, items=())
    assert found[3]["has_replay"] and found[0] == 315
    run_with_signals(config, resume=True)
    evals = read_csv(os.path.join(run_path(out), "eval.csv"))
    assert [r["step"] for r in evals[-2:]] == ["350", "350"]
    train = read_csv(os.path.join(run_path(out), "train.csv"))
    assert [r["step"] for r in train if r["phase"] == "online"] == ["350", "350"]
    # Online update timing: one update per env step after online_start_steps (25 of the 50 env steps),
    # run as H = 5 updates after each chunk of 5 env steps.
    like, _ = run_directory._state_target(config.num_seeds, spec.resolve(config))
    with checkpointing.Checkpointer(os.path.join(run_path(out), "checkpoints")) as ckpt:
        step, states, _, _ = ckpt.restore(like, items=("state",))
    assert step == 350 and np.asarray(states.step).tolist() == [300 + 50 - 25] * 2


@pytest.mark.parametrize("damage", ["truncated", "no_manifest", "leftover_tmp"])
def test_damaged_newest_checkpoint_is_moved_aside_and_trained_through(dataset_dir, whole, tmp_path, damage, capsys):
    out = tmp_path / "copy"
    shutil.copytree(whole, out)
    for name in ("train.csv", "eval.csv"):  # what the copy holds is regenerated, so compare with the original
        os.remove(os.path.join(run_path(out), name))
    shutil.copy(os.path.join(run_path(whole), "train.csv"), os.path.join(run_path(out), "train.csv"))
    shutil.copy(os.path.join(run_path(whole), "eval.csv"), os.path.join(run_path(out), "eval.csv"))
    ckpt = os.path.join(run_path(out), "checkpoints")
    newest = os.path.join(ckpt, "300")
    if damage == "truncated":
        for path in glob.glob(os.path.join(newest, "state", "**", "d", "*"), recursive=True):
            with open(path, "r+b") as f:
                f.truncate(7)
    elif damage == "no_manifest":
        for path in glob.glob(os.path.join(newest, "state", "**", "manifest.ocdbt"), recursive=True):
            os.remove(path)
    else:  # a save killed half-way: a temporary copy of a later step next to the complete ones
        shutil.copytree(newest, os.path.join(ckpt, f"350{checkpointing.TMP_MARKER}-1234"))
        shutil.rmtree(newest)
        os.rename(os.path.join(ckpt, "250"), os.path.join(ckpt, "250.keep"))
        os.rename(os.path.join(ckpt, "250.keep"), os.path.join(ckpt, "250"))
    config = tiny_config(dataset_dir, out, **LIFE)
    with pytest.raises(run_directory.RunDirExistsError, match="--resume"):  # without --resume: refused, untouched
        program.run_task(config)
    program.run_task(config, resume=True)
    said = capsys.readouterr().err
    assert "damaged" in said or "left over" in said
    moved = os.listdir(os.path.join(run_path(out), "checkpoints_damaged"))
    assert len(moved) == 1  # renamed, never deleted
    assert steps_in(ckpt)[-1] == 300
    same_logs(run_path(whole), run_path(out))
    # A second requeue is clean: nothing left to trip over, and the run is finished.
    program.run_task(config, resume=True)
    assert "already finished" in capsys.readouterr().out


def test_bc_cache_is_shared_by_an_eps_sweep_and_qam_and_survives_damage(dataset_dir, whole, tmp_path, capsys):
    out = tmp_path / "sweep"
    shutil.copytree(os.path.join(str(whole), bc.BC_DIR), os.path.join(str(out), bc.BC_DIR))
    bc_ckpt = os.path.join(str(out), bc.BC_DIR, "cube-single-play", "checkpoints")
    # A budget and another method reuse the cached BC; each gets its own run dir.
    short = {"offline_steps": 50, "eval_every": 50, "save_every": 50}
    program.run_task(tiny_config(dataset_dir, out, **short, **{"agent.kl_budget": 0.5}))
    assert "reusing" in capsys.readouterr().out
    program.run_task(tiny_config(dataset_dir, out, **short, method="qam"))
    assert "reusing" in capsys.readouterr().out
    assert os.path.isdir(run_path(out, "trqam_eps0.5")) and os.path.isdir(run_path(out, "qam"))
    # A damaged BC cache is moved aside and BC is trained again, to the same result.
    for path in glob.glob(os.path.join(bc_ckpt, "100", "state", "**", "manifest.ocdbt"), recursive=True):
        os.remove(path)
    task2 = ENV.replace("task1", "task2")  # another task of the domain
    program.run_task(tiny_config(dataset_dir, out, **short, env_name=task2))
    assert "damaged" in capsys.readouterr().err
    assert os.listdir(bc_ckpt + "_damaged")
    with open(os.path.join(str(whole), bc.BC_DIR, "cube-single-play", "train.csv")) as f, \
            open(os.path.join(os.path.dirname(bc_ckpt), "train.csv")) as g:
        assert f.read() == g.read()
    # Other BC settings are reported as such, naming the field, and the valid cache is kept.
    with pytest.raises(run_directory.ConfigMismatchError, match=r"other settings: agent.width 16 -> 32") as err:
        program.run_task(tiny_config(dataset_dir, out, **short, env_name=ENV.replace("task1", "task3"),
                                      **{"agent.width": 32}))
    assert "corrupt" not in str(err.value) and "elete" not in str(err.value)


def test_failed_first_attempt_never_blocks_its_rerun(dataset_dir, tmp_path, monkeypatch, capsys):
    # A value out of range is refused before anything is written.
    with pytest.raises(spec.ConfigError, match=r"config.agent.batch_size=0 .* >= 1"):
        program.run_task(tiny_config(dataset_dir, tmp_path, **{"agent.batch_size": 0}))
    assert not os.path.exists(run_path(tmp_path))
    # A NaN before the first checkpoint: the message says so, and the same command then starts afresh.
    real = context.Context.offline_data
    with monkeypatch.context() as m:
        m.setattr(context.Context, "offline_data",
                  lambda self, step: real(self, step)._replace(
                      data=real(self, step).data._replace(rewards=real(self, step).data.rewards * np.nan)))
        with pytest.raises(boundaries.TrainingDivergedError, match="no checkpoint had been saved yet") as err:
            program.run_task(tiny_config(dataset_dir, tmp_path, **LIFE))
    assert "None" not in str(err.value)
    config = tiny_config(dataset_dir, tmp_path, offline_steps=100, save_every=50)
    program.run_task(config)
    assert "starting it afresh" in capsys.readouterr().out
    # Extending a finished run: raising offline_steps continues it to the new end; lowering is refused.
    program.run_task(tiny_config(dataset_dir, tmp_path, offline_steps=150, save_every=50), resume=True)
    assert steps_in(os.path.join(run_path(tmp_path), "checkpoints"))[-1] == 150
    with pytest.raises(run_directory.ConfigMismatchError, match="offline_steps can only be raised"):
        program.run_task(tiny_config(dataset_dir, tmp_path, offline_steps=100, save_every=50), resume=True)
    # A moved run dir (and dataset dir) resumes: paths are not part of a run's identity.
    moved = tmp_path / "moved"
    shutil.copytree(tmp_path / ENV, moved / ENV)
    data_copy = tmp_path / "data_copy"
    shutil.copytree(dataset_dir, data_copy)
    capsys.readouterr()
    program.run_task(tiny_config(str(data_copy), moved, offline_steps=150, save_every=50), resume=True)
    assert "already finished" in capsys.readouterr().out
    # Any other change is refused on resume, naming the field.
    with pytest.raises(run_directory.ConfigMismatchError, match="agent.learning_rate"):
        program.run_task(tiny_config(dataset_dir, moved, offline_steps=150, save_every=50,
                                      **{"agent.learning_rate": 1e-3}), resume=True)


def test_sigterm_to_the_real_entry_point_prints_one_line_and_resume_is_exact(dataset_dir, whole, tmp_path):
    flags = [f"--config.{k}={v}" for k, v in {**TINY, **LIFE}.items()]
    cmd = [sys.executable, "-m", "experiments.train", *flags, f"--config.dataset_dir={dataset_dir}",
           f"--output_dir={tmp_path}", "--noreport"]
    train_csv = os.path.join(run_path(tmp_path), "train.csv")
    proc = subprocess.Popen(cmd, cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not (os.path.exists(train_csv) and
                                                                  len(read_csv(train_csv)) >= 2):
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1][-2000:]  # it died before training
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-2000:]
    assert "Traceback" not in err and "Event loop is closed" not in err
    last = [line for line in err.splitlines() if line.strip()][-1]
    assert last.startswith("Interrupted (SIGTERM) at offline step") and last.endswith("--resume."), last
    assert not leftovers(tmp_path)
    ckpt = os.path.join(run_path(tmp_path), "checkpoints")
    newest = os.path.join(ckpt, str(steps_in(ckpt)[-1]))
    for path in glob.glob(os.path.join(newest, "state", "**", "d", "*"), recursive=True):
        with open(path, "r+b") as f:  # and a damaged newest checkpoint on top
            f.truncate(7)
    out = subprocess.run(cmd + ["--resume"], cwd=str(tmp_path), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Traceback" not in out.stderr and "Event loop is closed" not in out.stderr
    assert len([line for line in out.stderr.splitlines() if "is damaged" in line]) == 1
    same_logs(run_path(whole), run_path(tmp_path))
    # The same command again (a SLURM requeue) finds it finished, exits 0 and trains nothing.
    again = subprocess.run(cmd + ["--resume"], cwd=str(tmp_path), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "already finished" in again.stdout


def test_command_line_mistakes_give_one_line(tmp_path):
    cases = {
        "--config.agent.widht=3": "did you mean 'width'",
        "--config.agent.discount=1.5": "config.agent.discount=1.5 is out of range",
        "--config.agent.tau=0": "config.agent.tau=0",
        "--config.online_steps=-5": "config.online_steps=-5",
        "--config.agent.kl_budget=0": "config.agent.kl_budget=0",
        "--shard=1/10": "needs a suite",
        "--env_name=cube-single-play-singletask-v0": "name the task explicitly",
    }
    for flag, expected in cases.items():
        out = subprocess.run([sys.executable, "-m", "experiments.train", flag, f"--output_dir={tmp_path}/o"],
                             cwd=str(tmp_path), capture_output=True, text=True, timeout=120)
        lines = [line for line in out.stderr.splitlines() if line.strip()]
        assert out.returncode == 1 and len(lines) == 1 and expected in lines[0], (flag, out.stderr[-1500:])
    assert not os.path.exists(tmp_path / "o")
    out = subprocess.run([sys.executable, "-m", "experiments.train", "--suite=ogbench50", "--shard=0/60",
                          f"--output_dir={tmp_path}/o"], cwd=str(tmp_path), capture_output=True, text=True)
    assert out.returncode == 1 and "selects no task" in out.stderr


def test_summary_json_matches_the_logs(whole):
    import json

    with open(os.path.join(run_path(whole), "summary.json")) as f:
        summary = json.load(f)
    last = {}
    for row in read_csv(os.path.join(run_path(whole), "eval.csv")):
        last[row["seed"]] = float(row["success"])
    assert summary["final_step"] == 300 and summary["success_per_seed"] == last
    values = list(last.values())
    mean = sum(values) / len(values)
    assert summary["success_mean"] == pytest.approx(mean)
    hand_std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    assert summary["success_std_ddof1"] == pytest.approx(hand_std)
    train = read_csv(os.path.join(run_path(whole), "train.csv"))
    assert summary["final_kl_hat"]["1"] == pytest.approx(float(train[-1]["kl_hat"]))
    import jax

    assert summary["system"]["jax_version"] == jax.__version__ and summary["system"]["matmul_precision"] == "default"
    assert set(summary["wall_s"]) == {"bc", "offline", "waiting_for_eval"}


def test_reference_bc_checkpoint_is_used_as_the_bc_stage(dataset_dir, whole, tmp_path):
    """The whole run's BC actors, written in the reference code's pickle layout (one file per seed), then
    imported with config.bc_checkpoint: fine-tuning from them repeats the whole run's first rows exactly."""
    import dataclasses

    import jax

    from tests.test_reference_checkpoint import write_reference_pickle
    from trqam_jax import agent

    config = tiny_config(dataset_dir, whole, **LIFE)
    task = spec.resolve(config)
    bc_config = dataclasses.replace(task.bc, num_critics=1)
    like = agent.init_learners(np.arange(2), bc_config, agent.make_networks(bc_config, 25), 28, 25)
    bc_dir = os.path.join(str(whole), bc.BC_DIR, "cube-single-play", "checkpoints")
    with checkpointing.Checkpointer(bc_dir) as ckpt:
        actors = ckpt.restore(like, items=("state",)).state.actor_bc
    for seed in (0, 1):
        mlp = jax.tree_util.tree_map(lambda x: np.asarray(x[seed]), actors)["params"]["MLP_0"]
        write_reference_pickle(tmp_path / f"params_seed{seed}.pkl", {"modules_actor_slow": {"mlp": mlp}})
    pattern = str(tmp_path / "params_seed{seed}.pkl")
    out = tmp_path / "imported"
    short = {"offline_steps": 50, "eval_every": 50, "save_every": 50, "bc_checkpoint": pattern}
    program.run_task(tiny_config(dataset_dir, out, **short))
    assert not os.path.exists(os.path.join(str(out), bc.BC_DIR))  # no BC was trained
    ours, theirs = (read_csv(os.path.join(run_path(d), "train.csv")) for d in (out, whole))
    assert ours == theirs[:2]
    assert read_csv(os.path.join(run_path(out), "eval.csv"))[:2] == read_csv(os.path.join(run_path(whole), "eval.csv"))[:2]
    # Another network shape: one line naming the first mismatched parameter and both shapes.
    from experiments.infra.reference_checkpoint import ReferenceCheckpointError

    with pytest.raises(ReferenceCheckpointError, match=r"Dense_0/bias has shape \(16,\); this run expects \(32,\)"):
        program.run_task(tiny_config(dataset_dir, tmp_path / "wide", **short, **{"agent.width": 32}))


def test_wandb_offline_logs_the_csv_metrics_per_seed_and_mean(dataset_dir, whole, tmp_path, monkeypatch):
    """Real wandb in offline mode (no network); a spy on Run.log keeps what was sent, for comparison
    with the CSVs (an offline run stores its history only in wandb's binary format)."""
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    sent = []
    real_log = wandb.Run.log
    monkeypatch.setattr(wandb.Run, "log", lambda self, row, *a, **k: sent.append(dict(row)) or real_log(self, row, *a, **k))
    out = tmp_path / "wb"
    shutil.copytree(os.path.join(str(whole), bc.BC_DIR), os.path.join(str(out), bc.BC_DIR))
    program.run_task(tiny_config(dataset_dir, out, offline_steps=100, eval_every=50, save_every=50,
                                  **{"wandb.project": "trqam-test"}))
    assert glob.glob(os.path.join(run_path(out), "wandb", "offline-run-*", "run-*.wandb"))
    train = [r for r in sent if "offline/critic_loss" in r]
    assert [r["step"] for r in train] == [50, 100]
    last = [r for r in read_csv(os.path.join(run_path(out), "train.csv")) if r["step"] == "100"]
    for name in ("critic_loss", "kl_hat", "lambda_eff"):
        per_seed = [float(r[name]) for r in last]
        assert train[-1][f"offline/{name}"] == pytest.approx(np.mean(per_seed), rel=1e-6)
        assert train[-1][f"offline/{name}/seed_1"] == pytest.approx(per_seed[1], rel=1e-6)
    evals = [r for r in sent if "offline/eval_success" in r]
    assert [r["step"] for r in evals] == [0, 50, 100]
    rows = [r for r in read_csv(os.path.join(run_path(out), "eval.csv")) if r["step"] == "100"]
    assert evals[-1]["offline/eval_success"] == pytest.approx(np.mean([float(r["success"]) for r in rows]))


def test_slurm_script_passes_sigterm_to_the_launcher_and_requeues(tmp_path):
    """The job script with stand-ins for python and scontrol: SLURM's early SIGTERM (--signal=B:TERM@300)
    reaches the launcher, and an exit of 143 requeues the job, whose command line has --resume."""
    bin_dir, log = tmp_path / "bin", tmp_path / "log"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(
        "#!/bin/bash\necho \"$@\" > \"$LOG.args\"\ntrap 'echo launcher-got-TERM >> \"$LOG\"; exit 143' TERM\n"
        "touch \"$LOG.ready\"\nwhile true; do sleep 0.05; done\n")
    (bin_dir / "scontrol").write_text("#!/bin/bash\necho \"scontrol $*\" >> \"$LOG\"\n")
    for name in ("python", "scontrol"):
        os.chmod(bin_dir / name, 0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", LOG=str(log), SLURM_ARRAY_TASK_ID="3",
               SLURM_JOB_ID="77")
    job = subprocess.Popen(["bash", os.path.join(ROOT, "experiments", "slurm_ogbench50.sh")], env=env, cwd=str(tmp_path))
    deadline = time.time() + 30
    while not os.path.exists(f"{log}.ready") and time.time() < deadline:
        time.sleep(0.05)
    job.send_signal(signal.SIGTERM)
    assert job.wait(timeout=30) == 143
    assert log.read_text().splitlines() == ["launcher-got-TERM", "scontrol requeue 77"]
    args = open(f"{log}.args").read()
    assert "--resume" in args and "--shard=3/10" in args and "--suite=ogbench50" in args


def _events(path):
    """The events of one TensorBoard file (TFRecord framing: length, crc, data, crc)."""
    import struct

    from tensorboardX.proto import event_pb2

    events = []
    with open(path, "rb") as f:
        while header := f.read(12):
            (length,) = struct.unpack("<Q", header[:8])
            event = event_pb2.Event()
            event.ParseFromString(f.read(length))
            f.read(4)
            events.append(event)
    return events


def test_resume_purges_tensorboard_past_the_checkpoint(dataset_dir, whole, tmp_path):
    """A resumed run's event file starts with a purge marker at the checkpoint, so TensorBoard drops the
    first attempt's events past it and no step repeats."""
    out = tmp_path / "tb"
    shutil.copytree(whole, out)
    shutil.rmtree(os.path.join(run_path(out), "checkpoints", "300"))  # the run resumes from step 250
    before = set(glob.glob(os.path.join(run_path(out), "tensorboard", "events.*")))
    program.run_task(tiny_config(dataset_dir, out, **LIFE), resume=True)
    (new,) = set(glob.glob(os.path.join(run_path(out), "tensorboard", "events.*"))) - before
    events = _events(new)
    purge = [e for e in events if e.HasField("session_log")]
    assert purge and purge[0].session_log.status == purge[0].session_log.START and purge[0].step == 251
    steps = sorted({e.step for e in events if e.HasField("summary")})
    assert steps == [300]  # only what the resume wrote


def test_auto_generation_refuses_a_layout_the_task_cannot_use(tmp_path):
    config = tiny_config(str(tmp_path / "empty"), tmp_path / "out", generate_missing_data=True,
                         env_name="cube-quadruple-play-singletask-task1-v0")
    with pytest.raises(Exception, match=r"100M transitions in 1M shards.*make_dataset --dataset=cube-quadruple-play-100m-v0 --dataset_dir="):
        program.run_task(config)
    assert not os.path.exists(tmp_path / "empty") or not os.listdir(tmp_path / "empty")
    assert not os.path.exists(tmp_path / "out" / "cube-quadruple-play-singletask-task1-v0")


def test_nan_message_is_one_line_of_its_own(dataset_dir, tmp_path):
    """A learning rate of 1e30 makes the losses non-finite at once: the error starts on a fresh line (not
    after the progress bar), names the phase and the metric, and never says 'step None'."""
    flags = [f"--config.{k}={v}" for k, v in TINY.items()]
    cmd = [sys.executable, "-m", "experiments.train", *flags, f"--config.dataset_dir={dataset_dir}",
           f"--output_dir={tmp_path}", "--noreport", "--config.agent.learning_rate=1e30"]
    out = subprocess.run(cmd, cwd=str(tmp_path), capture_output=True, text=True, timeout=300)
    assert out.returncode == 1
    assert "\nError: bc: non-finite" in out.stderr and "None" not in out.stderr.split("Error:")[-1]
    assert "Traceback" not in out.stderr


# ------------------------------------------------------------------------------------------------
# Refusals change nothing; signals at every moment of start-up; one job per run dir; TensorBoard after
# kill -9 mid-save.


def snapshot(root):
    """Every file under root with its bytes' digest: what 'nothing changed' means."""
    import hashlib

    found = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, root)] = hashlib.sha1(f.read()).hexdigest()
    return found


@pytest.mark.parametrize("field,value", [("agent.num_critics", 4), ("agent.width", 32), ("agent.depth", 3),
                                         ("num_seeds", 3)])
def test_resume_with_other_shapes_is_refused_and_changes_nothing(dataset_dir, whole, tmp_path, field, value):
    out = tmp_path / "copy"
    shutil.copytree(whole, out)
    before = snapshot(out)
    with pytest.raises(run_directory.ConfigMismatchError, match=rf"{field}: \S+ -> {value}.*nothing was changed"):
        program.run_task(tiny_config(dataset_dir, out, **LIFE, **{field: value}), resume=True)
    assert snapshot(out) == before
    # Without config.json the newest checkpoint's own config is compared, before any array is read.
    os.remove(os.path.join(run_path(out), "config.json"))
    before = snapshot(out)
    with pytest.raises(run_directory.ConfigMismatchError, match=field):
        program.run_task(tiny_config(dataset_dir, out, **LIFE, **{field: value}), resume=True)
    assert snapshot(out) == before


def test_resume_with_other_shapes_through_the_real_entry_point_is_one_line(dataset_dir, whole, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(whole, out)
    before = snapshot(out)
    flags = [f"--config.{k}={v}" for k, v in {**TINY, **LIFE, "agent.num_critics": 4}.items()]
    cmd = [sys.executable, "-m", "experiments.train", *flags, f"--config.dataset_dir={dataset_dir}",
           f"--output_dir={out}", "--noreport", "--resume"]
    done = subprocess.run(cmd, cwd=str(tmp_path), capture_output=True, text=True, timeout=300)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 1 and len(lines) == 1, done.stderr[-2000:]
    assert "agent.num_critics: 2 -> 4" in lines[0] and "Traceback" not in done.stderr
    assert snapshot(out) == before


def test_a_checkpoint_of_other_shapes_is_refused_not_moved_and_an_older_one_is_filled(tmp_path):
    """The checkpointer compares shapes from the saved metadata before reading arrays: other shapes are
    refused (never 'damage'); a state saved before a hyperparameter was added restores with it zeroed."""
    from trqam_jax import agent

    def state(num_critics):
        cfg = agent.AgentConfig(hidden_dims=(8, 8), num_critics=num_critics, flow_steps=3)
        return agent.init_learners([0, 1], cfg, agent.make_networks(cfg, 6), 4, 6)

    saved = state(2)
    directory = str(tmp_path / "checkpoints")
    with checkpointing.Checkpointer(directory) as ckpt:
        ckpt.save(10, saved, {"phase": "offline"})
    before = snapshot(tmp_path)
    with checkpointing.Checkpointer(directory) as ckpt:
        with pytest.raises(checkpointing.CheckpointError, match=r"other shapes.*critic.*\(2, 2, 8\) -> \(2, 3, 8\)"):
            ckpt.restore(jax.eval_shape(lambda: state(3)))
    assert snapshot(tmp_path) == before and not os.path.exists(directory + "_damaged")
    # An older checkpoint: its hyperparameters lack the last field the current TrainState has.
    older = saved.replace(hparams=dict(zip(saved.hparams._fields[:-1], saved.hparams[:-1])))
    with checkpointing.Checkpointer(str(tmp_path / "older")) as ckpt:
        ckpt.save(5, older, {"phase": "offline"})
    with checkpointing.Checkpointer(str(tmp_path / "older")) as ckpt:
        step, restored, _, _ = ckpt.restore(jax.eval_shape(lambda: saved))
    assert step == 5
    new_field = saved.hparams._fields[-1]
    np.testing.assert_array_equal(getattr(restored.hparams, new_field), np.zeros(2, np.float32))
    for path, value in jax.tree_util.tree_leaves_with_path(saved):
        if new_field not in jax.tree_util.keystr(path):
            np.testing.assert_array_equal(
                np.asarray(value), np.asarray(_at(restored, path)), err_msg=jax.tree_util.keystr(path))


def _at(tree, path):
    for key in path:
        tree = getattr(tree, key.name) if hasattr(key, "name") else tree[getattr(key, "key", getattr(key, "idx", None))]
    return tree


class Job:
    """The real entry point in a subprocess, its stdout read as it comes."""

    def __init__(self, out, *extra, overrides=None):
        import threading

        flags = [f"--config.{k}={v}" for k, v in {**TINY, **(overrides or {})}.items()]
        cmd = [sys.executable, "-u", "-m", "experiments.train", *flags, f"--config.dataset_dir={out.dataset_dir}",
               f"--output_dir={out}", "--noreport", *extra]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines, self.err_lines = [], []
        self.readers = [threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True),
                        threading.Thread(target=lambda: self.err_lines.extend(self.proc.stderr), daemon=True)]
        for reader in self.readers:
            reader.start()

    def wait_for(self, text, timeout=300):
        deadline = time.time() + timeout
        while not any(text in line for line in self.lines):
            assert self.proc.poll() is None and time.time() < deadline, (text, "".join(self.err_lines)[-2000:])
            time.sleep(0.01)

    def finish(self, timeout=300):
        self.proc.wait(timeout=timeout)
        for reader in self.readers:
            reader.join()
        err = "".join(self.err_lines)
        said = [line for line in err.splitlines() if line.strip() and "%|" not in line]  # not the progress bars
        return self.proc.returncode, said, err


class Out(type(__import__("pathlib").Path())):
    """An output dir that also names the dataset dir (for Job)."""
    dataset_dir = None


def _out(path, dataset_dir):
    out = Out(path)
    out.dataset_dir = dataset_dir
    return out


@pytest.mark.parametrize("point,after,delay,signum,domain", [
    ("during the imports", None, 1.0, signal.SIGTERM, False),
    ("while env workers start", "Dataset", 0.2, signal.SIGTERM, False),
    ("during the memory-estimate compile", "Dataset", 1.0, signal.SIGTERM, True),
    ("during the memory-estimate compile", "Dataset", 2.5, signal.SIGINT, True),
    ("during BC", "bc: 2 learners compiled", 0.0, signal.SIGTERM, False),
])
def test_a_signal_at_any_moment_of_start_up_exits_143_or_130_in_one_line(dataset_dir, tmp_path, point, after, delay,
                                                                         signum, domain):
    out = _out(tmp_path / "out", dataset_dir)
    extra = ["--env_name=cube-single-play", "--tasks=1,2"] if domain else []
    job = Job(out, *extra)
    if after is not None:
        job.wait_for(after)
    time.sleep(delay)
    job.proc.send_signal(signum)
    code, said, err = job.finish()
    assert code == 128 + signum, (point, err[-3000:])
    assert len(said) == 1 and said[0].startswith(f"Interrupted ({signal.Signals(signum).name})"), (point, err[-3000:])
    assert said[0].endswith("--resume.") and "Traceback" not in err, point
    if point == "during BC":  # resumable: the same command with --resume finishes the run
        assert "at bc step" in said[0]
        again = Job(out, *extra, "--resume")
        code, said, err = again.finish()
        assert code == 0, err[-3000:]
        assert steps_in(os.path.join(run_path(out), "checkpoints"))[-1] == TINY["offline_steps"]


def test_two_jobs_never_train_one_run_dir_and_repeated_signals_stop_at_once(dataset_dir, tmp_path):
    out = _out(tmp_path / "out", dataset_dir)
    long = {**LIFE, "offline_steps": 5000}  # still training when the second job and the signals come
    first = Job(out, overrides=long)
    first.wait_for("offline: 2 learners compiled")
    second = Job(out, "--resume", overrides=long)  # a second job on the same run dir: one line, nothing changed
    code, said, err = second.finish()
    assert code == 1 and len(said) == 1 and "being trained by another job" in said[0], (err[-3000:], second.lines)
    assert first.proc.poll() is None
    # A SIGTERM mid-training; once its line is printed, one every 20 ms until the process is gone (as an
    # impatient scheduler or user would), so the repeats land in the interpreter's teardown (jax's atexit
    # hook): exit 143 at once, one line, no traceback of any kind.
    first.proc.send_signal(signal.SIGTERM)
    deadline = time.time() + 120
    while not any("Interrupted" in line for line in first.err_lines) and first.proc.poll() is None:
        assert time.time() < deadline
        time.sleep(0.001)
    while first.proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
        with contextlib.suppress(ProcessLookupError):
            first.proc.send_signal(signal.SIGTERM)
    code, said, err = first.finish()
    assert code == 143 and len(said) == 1, err[-3000:]
    assert said[0].startswith("Interrupted (SIGTERM)") and said[0].endswith("--resume.")
    assert "Traceback" not in err and "Exception ignored" not in err
    # The lock went with the job.
    with run_directory.run_dir_locks([run_path(out)]):
        pass


KILL_DURING_SAVE = """
import os, signal, sys
from experiments.infra import checkpointing
from experiments.runner import plan, program
from tests.test_launcher import tiny_config
real = checkpointing.Checkpointer.save
def save(self, step, *args, **kwargs):
    if step == 100 and "task2" in self.directory:  # task 1's checkpoint is complete, task 2's is not
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, step, *args, **kwargs)
checkpointing.Checkpointer.save = save
config = tiny_config(sys.argv[1], sys.argv[2], env_name="cube-single-play", tasks="1,2", eval_async=False)
program.run_program(config, plan.task_names(config))
"""


def test_tensorboard_has_every_csv_point_after_kill_9_during_a_save(dataset_dir, tmp_path):
    out = tmp_path / "out"
    killed = subprocess.run([sys.executable, "-c", KILL_DURING_SAVE, dataset_dir, str(out)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    config = tiny_config(dataset_dir, out, env_name="cube-single-play", tasks="1,2", eval_async=False)
    program.run_program(config, plan.task_names(config), resume=True)
    for task in (ENV, ENV.replace("task1", "task2")):
        run = os.path.join(str(out), task, "trqam")
        # What TensorBoard shows: per tag, the last event of each step, once later files' purge markers
        # have dropped the events at or past them.
        shown = {}
        for path in sorted(glob.glob(os.path.join(run, "tensorboard", "events.*")), key=os.path.getmtime):
            events = _events(path)
            purge = [e.step for e in events if e.HasField("session_log")]
            if purge and purge[0] > 0:
                shown = {k: v for k, v in shown.items() if k[1] < purge[0]}
            shown.update({(v.tag, e.step): v.simple_value for e in events if e.HasField("summary")
                          for v in e.summary.value})
        train = read_csv(os.path.join(run, "train.csv"))
        evals = read_csv(os.path.join(run, "eval.csv"))
        want = {("offline/critic_loss", int(r["step"])) for r in train} | \
               {("offline/eval_success", int(r["step"])) for r in evals}
        assert want <= set(shown), (task, sorted(want - set(shown)))


def test_a_second_signal_during_a_save_lets_the_save_finish(dataset_dir, whole, tmp_path, monkeypatch):
    """Both signals land inside the checkpoint save of step 100: the save completes (no leftover, no
    damage), then the run stops at once, and the resume equals the uninterrupted run."""
    config = tiny_config(dataset_dir, tmp_path, **LIFE)
    real = checkpointing.Checkpointer.save

    def save(self, step, *args, **kwargs):
        if step == 100 and "_pretrained_bc" not in self.directory:
            for _ in range(2):  # apart, so that they are two signals and not one
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.2)
        return real(self, step, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(checkpointing.Checkpointer, "save", save)
        with pytest.raises(Interrupted) as stop:
            run_with_signals(config)
    assert stop.value.again and stop.value.exit_code == 143
    assert steps_in(os.path.join(run_path(tmp_path), "checkpoints"))[-1] == 100 and not leftovers(tmp_path)
    run_with_signals(config, resume=True)
    same_logs(run_path(whole), run_path(tmp_path))


@pytest.mark.parametrize("fixture", ["run_before_issue16", "run_before_issue17"])
def test_a_run_dir_written_by_a_previous_version_resumes(dataset_dir, tmp_path, capsys, fixture):
    """tests/fixtures/<fixture> holds a run dir written by an earlier version: run_before_issue16 by commit
    3b831fd (its checkpoints lack a per-learner hyperparameter added since, its config.json newer fields),
    run_before_issue17 by d06607f (before experiments/ was laid out by role, pipeline.py and all). Both: the
    tiny config, 100 offline steps, checkpoints at 50 and 100, on the same generated dataset. Extended to
    150 steps, each resumes from step 100: nothing is moved aside or retrained."""
    out = tmp_path / "old"
    shutil.copytree(os.path.join(ROOT, "tests", "fixtures", fixture), out)
    run = run_path(out)
    before = read_csv(os.path.join(run, "train.csv"))
    config = tiny_config(dataset_dir, out, offline_steps=150, save_every=50, eval_every=50, online_start_steps=5000)
    program.run_task(config, resume=True)
    said = capsys.readouterr()
    assert f"Resuming {run} from step 100" in said.out, said.out
    assert not os.path.exists(os.path.join(run, "checkpoints_damaged")) and "damaged" not in said.err
    after = read_csv(os.path.join(run, "train.csv"))
    assert after[:len(before)] == before and {r["step"] for r in after[len(before):]} == {"150"}
    assert steps_in(os.path.join(run, "checkpoints"))[-1] == 150


def test_the_interrupted_line_says_where_in_the_run_words():
    """Online steps are counted as env steps (the run's step count beside them); a signal before any
    checkpoint, or a second one, never claims 'before training started'."""
    assert "at online env step 95 (step 395);" in Interrupted(signal.SIGTERM, 395, "online", 300).message()
    assert "at offline step 1400;" in Interrupted(signal.SIGTERM, 1400, "offline").message()
    assert "(SIGINT) during start-up;" in Interrupted(signal.SIGINT).message()
    again = Interrupted(signal.SIGTERM, again=True).message()
    assert "a second time" in again and "before training" not in again and again.endswith("--resume.")
