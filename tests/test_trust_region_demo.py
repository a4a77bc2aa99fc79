"""Smoke test of experiments/trust_region_demo.py in its --quick configuration (about 30 s on CPU).

It runs the demo's real `run` (what `main` calls) into a temporary directory, checks that every figure
and the table exist and that the table's numbers are finite, and checks the trust region's behaviour
through the table: the larger budget ends with the larger path KL, near its budget, with a smaller
lambda_eff, and a policy that improves the true reward over pi_0.
"""

import math
import os
import re

import pytest

from experiments import trust_region_demo as demo

NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?|nan|inf", re.IGNORECASE)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out_dir = str(tmp_path_factory.mktemp("trust_region_demo"))
    result = demo.run(demo.QUICK, out_dir, log=lambda *_: None)
    with open(os.path.join(out_dir, demo.TABLE)) as f:
        table = f.read()
    return out_dir, table, result


def table_rows(table: str, section: str):
    """The data rows of the Markdown table under the heading that starts with `section`."""
    lines = table.split(f"## {section}", 1)[1].split("\n## ", 1)[0].splitlines()
    rows = [line for line in lines if line.startswith("|")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[2:]]  # skip header, rule


def mean_of(cell: str) -> float:
    return float(cell.split("±")[0])


def test_outputs_exist_and_numbers_are_finite(quick_run):
    out_dir, table, _ = quick_run
    for name in demo.FIGURES:
        path = os.path.join(out_dir, name)
        assert os.path.getsize(path) > 10_000, name
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n", name
    sections = ("1.", "2.", "3.")
    expected_rows = (2 * len(demo.QUICK.budgets), len(demo.QUICK.fixed_lambdas),
                     2 * (len(demo.QUICK.budgets) + len(demo.QUICK.inv_temps)))
    for section, num_rows in zip(sections, expected_rows):
        rows = table_rows(table, section)
        assert len(rows) == num_rows, (section, rows)
        for row in rows:
            numbers = [float(x) for cell in row for x in NUMBER.findall(cell)]
            assert numbers, row
            assert all(math.isfinite(x) for x in numbers), row


def test_larger_budget_moves_further(quick_run):
    _, table, result = quick_run
    rows = {(r[0], float(r[1])): r for r in table_rows(table, "1.")}
    small, large = min(demo.QUICK.budgets), max(demo.QUICK.budgets)
    kl_small, kl_large = mean_of(rows[("true", small)][2]), mean_of(rows[("true", large)][2])
    lam_small, lam_large = mean_of(rows[("true", small)][4]), mean_of(rows[("true", large)][4])
    reward_large = mean_of(rows[("true", large)][7])
    assert kl_large > 3 * kl_small, (kl_small, kl_large)
    assert abs(kl_large - large) < 0.35 * large, kl_large  # the dual settles the path KL at the budget
    assert lam_large < lam_small, (lam_small, lam_large)  # a looser budget needs a smaller multiplier
    assert reward_large > result["base_reward"].mean() + 0.3  # and the true reward improved over pi_0
