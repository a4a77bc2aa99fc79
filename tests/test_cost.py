"""experiments/cost.py against costs worked out by hand below."""

import pytest

from experiments import cost

HOUR = 3600.0


def test_exposed_evaluation_time():
    # Evaluations at 10 s and 20 s of training (every 100 steps of 0.1 s); each takes 30 s.
    # Blocking: 2 x 30 = 60 s. Beside training: the first outlasts its 10 s window by 20 s, the last
    # adds all its 30 s: 50 s.
    assert cost.exposed_eval_seconds(30.0, [(200, 0.1)], 100, overlap=False) == pytest.approx(60.0)
    assert cost.exposed_eval_seconds(30.0, [(200, 0.1)], 100, overlap=True) == pytest.approx(50.0)
    # A phase that is not a multiple of eval_every evaluates at its end too.
    assert cost.eval_points(250, 100) == [100, 200, 250]
    assert cost.eval_points(0, 100) == []


def test_a_small_protocol_by_hand():
    """Two domains, 1 task x 2 seeds each; the numbers below are worked out line by line.

    Protocol: BC 100 updates (a BC update costs 0.5 of a fine-tuning update), offline 200 updates,
    online 100 env steps with updates from step 20 (80 updates), an evaluation every 100 steps and at
    each phase end: offline at 100 and 200, online at 100, so 3 per run; 1 after BC. 2 episodes each.
    Domain A: 100-step episodes, width 512. Domain B: 200-step episodes, width 1024 (3x slower).
    Env: 10 steps/s per core.

    (a) 1 update/s per learner; one core per program; evaluation blocks.
      A: update 1 s. One evaluation = 2 x 100 / 10 = 20 s.
         BC program (x2): 100 x 0.5 x 1 = 50 s updates + 20 s eval.
         Fine-tuning program (x2): (200 + 80) x 1 = 280 s updates, 100 x 0.1 = 10 s env, 3 x 20 = 60 s eval.
         Chain: 50 + 20 + 280 + 10 + 60 = 420 s.
      B: update 3 s. One evaluation = 2 x 200 / 10 = 40 s.
         BC (x2): 150 s + 40 s. Fine-tuning (x2): 840 s updates, 10 s env, 120 s eval. Chain: 1160 s.
      Totals: 8 programs; updates 2 x (50 + 280 + 150 + 840) = 2640 s; env 40 s;
              eval 2 x (20 + 60 + 40 + 120) = 480 s; device time 3160 s; wall on 2 devices
              max(3160 / 2, 1160) = 1580 s.

    (b) 2 learners per program at 4 updates/s in total (2 per learner); 4 evaluation workers; the
        program's 2 online envs step on 1 core: 2 / 10 = 0.2 s per env step.
      A: update 0.5 s. One evaluation of 2 learners = 2 x 2 x 100 / (10 x 4) = 10 s.
         BC (x1, 2 learners): 100 x 0.5 x 0.5 = 25 s + 10 s eval.
         Fine-tuning (x1): 280 x 0.5 = 140 s updates, 100 x 0.2 = 20 s env.
         Online step: 0.2 + 0.5 x 80 / 100 = 0.6 s. Evaluations at training times 50, 100 and
         100 + 100 x 0.6 = 160 s: windows 50, 60, 0, so only the last one's 10 s shows.
         Chain: 25 + 10 + 140 + 20 + 10 = 205 s.
      B: update 1.5 s. One evaluation = 2 x 2 x 200 / 40 = 20 s.
         BC: 75 s + 20 s. Fine-tuning: 420 s updates, 20 s env; online step 0.2 + 1.5 x 0.8 = 1.4 s;
         evaluations at 150, 300, 440 s: windows 150, 140, 0, so 20 s shows. Chain: 555 s.
      Totals: 4 programs; updates 25 + 140 + 75 + 420 = 660 s; env 40 s; eval 10 + 10 + 20 + 20 = 60 s;
              device time 760 s; wall on 2 devices max(760 / 2, 555) = 555 s.
    """
    domains = {"A": cost.Domain(eval_steps=100, width=512), "B": cost.Domain(eval_steps=200, width=1024)}
    a = cost.Assumptions(
        updates_per_s=4.0, env_steps_per_s=10.0, learners_per_program=2, single_updates_per_s=1.0, cores=4,
        online_env_workers=1, devices=2, seeds=2, tasks_per_domain=1, bc_steps=100, offline_steps=200,
        online_steps=100, online_start_steps=20, eval_every=100, eval_episodes=2, bc_evals=1,
        episode_fraction=1.0, wide_cost=3.0, bc_cost=0.5)
    result = cost.protocol_cost(a, domains)
    assert result.evals_per_run == 3

    ref = result.reference
    assert ref.programs == 8 and ref.learners_per_program == 1
    assert ref.update_hours * HOUR == pytest.approx(2640)
    assert ref.env_hours * HOUR == pytest.approx(40)
    assert ref.eval_hours * HOUR == pytest.approx(480)
    assert ref.device_hours * HOUR == pytest.approx(3160)
    assert ref.longest_chain_hours * HOUR == pytest.approx(1160)
    assert ref.wall_hours * HOUR == pytest.approx(1580)

    vm = result.vmapped
    assert vm.programs == 4 and vm.learners_per_program == 2
    assert vm.update_hours * HOUR == pytest.approx(660)
    assert vm.env_hours * HOUR == pytest.approx(40)
    assert vm.eval_hours * HOUR == pytest.approx(60)
    assert vm.device_hours * HOUR == pytest.approx(760)
    assert vm.longest_chain_hours * HOUR == pytest.approx(555)
    assert vm.wall_hours * HOUR == pytest.approx(555)

    # Two reference programs per device halve (a)'s device time: 1580 s, wall max(790, 1160) = 1160 s.
    shared = cost.protocol_cost(cost.Assumptions(**{**a.__dict__, "reference_programs_per_device": 2}), domains)
    assert shared.reference.device_hours * HOUR == pytest.approx(1580)
    assert shared.reference.wall_hours * HOUR == pytest.approx(1160)


def test_the_paper_protocol_reference_layout_by_hand(capsys):
    """The 10-domain table at defaults, 500 updates/s and 1000 env steps/s, layout (a).

    Episode lengths summed over the 10 domains: manipulation 750 + 500 + 500 + 500 + 1000 + 1000 =
    4250, navigation 1000 + 1000 + 2000 + 2000 = 6000; 10250 in all.
      updates: 400 runs x (1,000,000 + 495,000) / 500 + 80 BC runs x 300,000 / 500 = 1,196,000 + 48,000 s
      env:     400 x 500,000 / 1000 = 200,000 s
      eval:    (8 seeds x 5 tasks x 30 + 8 BC) x 50 episodes x 10250 / 1000 = 1208 x 512.5 = 619,100 s
    """
    result = cost.main(["--updates_per_s=2400", "--learners_per_program=8", "--single_updates_per_s=500",
                        "--env_steps_per_s=1000", "--cores=16", "--devices=8"])
    ref = result.reference
    assert result.evals_per_run == 30
    assert ref.programs == 480
    assert ref.update_hours * HOUR == pytest.approx(1_244_000)
    assert ref.env_hours * HOUR == pytest.approx(200_000)
    assert ref.eval_hours * HOUR == pytest.approx(619_100)
    assert ref.device_hours * HOUR == pytest.approx(1_244_000 + 200_000 + 619_100)
    # (b): 8 learners per program at 2400 / 8 = 300 updates/s each; 50 fine-tuning and 10 BC programs.
    assert result.vmapped.programs == 60
    assert result.vmapped.update_hours * HOUR == pytest.approx(1_495_000 / 300 * 50 + 300_000 / 300 * 10)
    out = capsys.readouterr().out
    assert "--updates_per_s=2400.0" in out and "device-hours" in out and "(a) reference layout" in out


@pytest.mark.parametrize("flag, message", [
    ("--updates_per_s=0", "--updates_per_s=0.0 must be > 0"),
    ("--updates_per_s=-2", "--updates_per_s=-2.0 must be > 0"),
    ("--env_steps_per_s=nan", "--env_steps_per_s=nan must be a finite number"),
    ("--single_updates_per_s=0", "--single_updates_per_s=0.0 must be > 0"),
    ("--learners_per_program=0", "--learners_per_program=0 must be > 0"),
    ("--cores=0", "--cores=0 must be > 0"),
    ("--devices=-1", "--devices=-1 must be > 0"),
    ("--bc_steps=-5", "--bc_steps=-5 must be >= 0"),
    ("--episode_fraction=inf", "--episode_fraction=inf must be a finite number"),
    ("--wide_cost=nan", "--wide_cost=nan must be a finite number"),
])
def test_the_command_rejects_a_bad_figure_in_one_line(flag, message):
    """The real command: exit 2, one line on stderr that names the flag, no traceback, nothing on stdout."""
    import subprocess
    import sys

    base = ["--updates_per_s=10", "--env_steps_per_s=100"]
    run = subprocess.run([sys.executable, "-m", "experiments.cost", *base, flag], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [f"experiments.cost: error: {message}"]
    assert "Traceback" not in run.stderr and run.stdout == ""


def test_assumptions_reject_bad_values_in_the_library_too():
    with pytest.raises(ValueError, match="updates_per_s"):
        cost.Assumptions(updates_per_s=0.0, env_steps_per_s=1.0)
    with pytest.raises(ValueError, match="online_steps"):
        cost.Assumptions(updates_per_s=1.0, env_steps_per_s=1.0, online_steps=-1)


GPU_LOG = """\
REFERENCE {"host_batch": false, "updates_per_s": 300.0, "width": 512}
REFERENCE {"host_batch": true, "updates_per_s": 150.0, "width": 512}
RESULT {"mode": "learners", "method": "trqam", "compute_dtype": "float32", "width": 512, "learners": 8, "updates_per_s": 800.0}
RESULT {"mode": "learners", "method": "trqam", "compute_dtype": "float32", "width": 512, "learners": 40, "updates_per_s": 1000.0}
RESULT {"mode": "learners", "method": "trqam", "compute_dtype": "bfloat16", "width": 512, "learners": 40, "updates_per_s": 1500.0}
RESULT {"mode": "learners", "method": "trqam", "compute_dtype": "float32", "width": 1024, "learners": 8, "updates_per_s": 200.0}
RESULT {"mode": "learners", "method": "trqam", "compute_dtype": "float32", "width": 1024, "learners": 20, "skipped": "past the time budget"}
RESULT {"mode": "learners", "method": "bc", "compute_dtype": "float32", "width": 512, "learners": 8, "updates_per_s": 3200.0}
"""


def test_figures_from_a_gpu_check_log(tmp_path, capsys):
    """wide_cost = 800 / 200 = 4 (at L = 8, the largest L of both widths); bc_cost = 800 / 3200 = 0.25."""
    figures, notes = cost.figures_from_gpu_check(GPU_LOG.splitlines(), learners_per_program=40)
    assert figures == {"updates_per_s": 1000.0, "single_updates_per_s": 300.0, "wide_cost": 4.0, "bc_cost": 0.25}
    assert "L = 8" in notes["wide_cost"]
    assert cost.figures_from_gpu_check(GPU_LOG.splitlines(), 40, "bfloat16")[0] == {
        "updates_per_s": 1500.0, "single_updates_per_s": 300.0}
    log = tmp_path / "log.txt"
    log.write_text(GPU_LOG)
    result = cost.main([f"--from_gpu_check={log}", "--learners_per_program=40", "--env_steps_per_s=1000",
                        "--bc_cost=0.5"])
    a = result.assumptions
    assert (a.updates_per_s, a.single_updates_per_s, a.wide_cost, a.bc_cost) == (1000.0, 300.0, 4.0, 0.5)
    assert "[overridden by the flag]" in capsys.readouterr().out
