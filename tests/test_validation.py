"""Bad input ends in one line that names the problem and the fix, exit 1, no traceback, and nothing
written: the run-dir name collision of two sweep values, wandb asked for but not importable, a value out of
range or not finite, an output dir that cannot be written, a missing bc_checkpoint. Each is caused for real
through the launcher (`python -m experiments.train`) or the validation it runs (`plan.plan`), before
any dataset is read or anything is compiled."""

import errno
import os
import subprocess
import sys

import pytest

from experiments.configs import quickstart
from experiments.runner import plan, spec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def snapshot(path):
    """Every file and directory under `path` with its size and mtime: equal before and after means untouched."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            stat = os.lstat(full)
            found[os.path.relpath(full, path)] = (stat.st_size, stat.st_mtime_ns)
    return found


def launch(tmp_path, output_dir, *flags, env=None, prefix=()):
    """The real entry point on the quickstart config. Its dataset dir does not exist: validation must fire first."""
    cmd = [*prefix, sys.executable, "-m", "experiments.train", "--config=experiments/configs/quickstart.py",
           f"--output_dir={output_dir}", f"--config.dataset_dir={tmp_path / 'no_data'}", "--noreport", *flags]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)


def assert_one_line(result, *words):
    text = (result.stdout + result.stderr).strip()
    lines = text.splitlines()
    assert result.returncode == 1 and len(lines) == 1, text[-3000:]
    assert lines[0].startswith("Error: ") and "Traceback" not in text, text
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


@pytest.fixture
def runs(tmp_path):
    """An output dir that already holds something, so that 'unchanged' is a real check."""
    path = tmp_path / "runs"
    path.mkdir()
    (path / "keep.txt").write_text("an earlier result\n")
    return path


def test_sweep_values_that_share_a_run_dir_are_refused(tmp_path, runs):
    before = snapshot(runs)
    result = launch(tmp_path, runs, "--config.sweep.kl_budget=0.1234561,0.1234562")
    assert_one_line(result, "kl_budget=0.1234561", "kl_budget=0.1234562", "trqam_eps0.123456",
                    "6 significant digits")
    assert snapshot(runs) == before


def test_wandb_that_cannot_be_imported_is_refused(tmp_path, runs):
    stub = tmp_path / "no_wandb"
    stub.mkdir()
    (stub / "wandb.py").write_text("raise ImportError('No module named wandb')\n")  # as if not installed
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(stub), os.environ.get("PYTHONPATH")])))
    before = snapshot(runs)
    assert_one_line(launch(tmp_path, runs, "--config.wandb.project=demo", env=env),
                    "config.wandb.project='demo'", "pip install wandb")
    assert snapshot(runs) == before


def test_a_missing_bc_checkpoint_is_refused(tmp_path, runs):
    before = snapshot(runs)
    path = tmp_path / "reference" / "params_{seed}.pkl"
    assert_one_line(launch(tmp_path, runs, f"--config.bc_checkpoint={path}"),
                    str(tmp_path / "reference" / "params_0.pkl"), "does not exist", "config.bc_checkpoint")
    assert snapshot(runs) == before


def _can_mount_read_only(path):
    try:
        probe = subprocess.run(["unshare", "-m", "mount", "-t", "tmpfs", "-o", "ro", "tmpfs", str(path)],
                               capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def test_a_read_only_output_dir_is_refused(tmp_path):
    """EROFS: a read-only file system mounted in a private mount namespace (root ignores permission bits, not
    a read-only mount). The launcher runs in that namespace."""
    mount = tmp_path / "read_only"
    mount.mkdir()
    if not _can_mount_read_only(mount):
        pytest.skip("cannot mount a read-only tmpfs in a private mount namespace here")
    prefix = ["unshare", "-m", "sh", "-c", 'mount -t tmpfs -o ro tmpfs "$0" && exec "$@"', str(mount)]
    result = launch(tmp_path, mount / "runs", prefix=prefix)
    assert_one_line(result, str(mount), "read-only file system", "writable --output_dir")
    assert os.listdir(mount) == []


def test_an_output_dir_without_write_permission_is_refused(tmp_path, runs):
    """EACCES: a mode 555 output dir. As root, the launcher runs without CAP_DAC_OVERRIDE, so that the
    permission bits hold for it as for any user."""
    prefix = []
    if os.geteuid() == 0:
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
        try:
            usable = subprocess.run([*prefix, "true"], capture_output=True, timeout=10).returncode == 0
        except OSError:
            usable = False
        if not usable:
            pytest.skip("setpriv cannot drop CAP_DAC_OVERRIDE here")
    before = snapshot(runs)
    runs.chmod(0o555)
    try:
        result = launch(tmp_path, runs, prefix=prefix)
    finally:
        runs.chmod(0o755)
    assert_one_line(result, str(runs), "not writable", "writable --output_dir")
    assert snapshot(runs) == before


# ------------------------------------------------------------------------------------------------------------
# The validation function itself, for every value (`plan.plan`, which run_program and the launcher call).


def config_with(output_dir, **overrides):
    config = quickstart.get_config()
    config.update_from_flattened_dict({"output_dir": str(output_dir), "dataset_dir": "unused", **overrides})
    config.lock()
    return config


def planned(config):
    return plan.plan(config, plan.task_names(config))


@pytest.mark.parametrize("overrides, words", [
    ({"agent.lam_init": 0.0}, ["config.agent.lam_init=0.0", "> 0"]),
    ({"agent.lam_init": -1.0}, ["config.agent.lam_init=-1.0", "> 0"]),
    ({"agent.kl_clip_factor": 0.0}, ["config.agent.kl_clip_factor=0.0", "> 0"]),
    ({"agent.kl_budget": float("inf")}, ["config.agent.kl_budget=inf", "finite"]),
    ({"agent.kl_budget": float("nan")}, ["config.agent.kl_budget=nan", "finite"]),
    ({"agent.learning_rate": float("inf")}, ["config.agent.learning_rate=inf", "finite"]),
    ({"agent.lam_max": float("inf")}, ["config.agent.lam_max=inf", "finite"]),
    ({"agent.lam_max": -1.0, "agent.lam_min": -2.0}, ["config.agent.lam_m", "> 0"]),
    ({"method": "qam", "agent.inv_temp": float("inf")}, ["config.agent.inv_temp=inf", "finite"]),
    ({"online_kl_budget": float("-inf")}, ["config.online_kl_budget=-inf", "finite"]),
    ({"agent.tau": float("inf")}, ["config.agent.tau=inf", "finite number in (0, 1]"]),
    ({"sweep.kl_budget": "0.5,inf"}, ["config.sweep.kl_budget='0.5,inf'", "finite"]),
    ({"sweep.kl_budget": "nan"}, ["config.sweep.kl_budget='nan'", "finite"]),
    ({"method": "qam", "sweep.inv_temp": "3.0000001,3.0000002"}, ["inv_temp=3.0000001", "inv_temp=3.0000002",
                                                                  "qam_beta3"]),
    ({"method": "sqam", "sweep.kl_budget": "0.5", "sweep.gap_reg_coef": "0.1000001,0.1000002"},
     ["gap_reg_coef=0.1000001", "gap_reg_coef=0.1000002", "sqam_eps0.5_gap0.1"]),
    ({"bc_checkpoint": "/nonexistent/params_{step}.pkl"}, ["config.bc_checkpoint", "{seed}"]),
])
def test_values_are_refused_by_validation(tmp_path, overrides, words):
    with pytest.raises(spec.ConfigError) as info:
        planned(config_with(tmp_path, **overrides))
    assert all(word in str(info.value) for word in words), str(info.value)
    assert os.listdir(tmp_path) == []


def test_an_output_dir_under_a_file_is_refused(tmp_path):
    """ENOTDIR: the output dir's parent is a file (the same check as a read-only or unwritable dir)."""
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory\n")
    before = snapshot(tmp_path)
    with pytest.raises(spec.ConfigError, match=f"{blocker} is not a directory. Choose another --output_dir"):
        planned(config_with(blocker / "runs"))
    assert snapshot(tmp_path) == before


def test_validation_accepts_close_but_distinct_values_and_a_present_bc_checkpoint(tmp_path, monkeypatch):
    runs = planned(config_with(tmp_path, **{"sweep.kl_budget": "0.1234561,0.1234571"}))
    assert [os.path.basename(r.run_dir) for r in runs] == ["trqam_eps0.123456", "trqam_eps0.123457"]
    reference = tmp_path / "params_{seed}.pkl"
    for seed in range(3):
        (tmp_path / f"params_{seed}.pkl").write_bytes(b"")
    planned(config_with(tmp_path, bc_checkpoint=str(reference)))
    # wandb asked for and importable: accepted; not importable (None in sys.modules): refused.
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(spec.ConfigError, match="pip install wandb"):
        planned(config_with(tmp_path, **{"wandb.project": "demo"}))


def test_a_missing_bc_checkpoint_does_not_block_resuming_runs_that_have_checkpoints(tmp_path):
    """A run dir with a checkpoint reads no BC (it is resumed, or refused without --resume)."""
    config = config_with(tmp_path, bc_checkpoint=str(tmp_path / "gone.pkl"))
    (run_dir,) = [r.run_dir for r in plan.plan(config_with(tmp_path), plan.task_names(config))]
    os.makedirs(os.path.join(run_dir, "checkpoints", "100"))
    planned(config)
    with pytest.raises(spec.ConfigError, match="does not exist"):
        planned(config_with(tmp_path, bc_checkpoint=str(tmp_path / "gone.pkl"), **{"sweep.kl_budget": "0.5"}))


def test_a_failed_write_under_the_output_dir_is_one_line(tmp_path):
    """After validation (a disk that filled up mid-run): the launcher's line for the OSError."""
    from experiments.train import write_error

    out = tmp_path / "runs"
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out / "task" / "trqam" / "train.csv"))
    line = write_error(full, str(out))
    assert line.startswith("Error: cannot write") and "No space left on device" in line and "--output_dir" in line
    assert write_error(OSError(errno.ENOSPC, "full", "/elsewhere/file"), str(out)) is None  # not ours: a traceback
    assert write_error(FileNotFoundError(errno.ENOENT, "missing", str(out / "x")), str(out)) is None
