"""Dual update, critic and BC losses against slow reference loops and hand values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trqam_jax import losses
from trqam_jax.dual import dual_init, dual_update


def reference_dual(kls, eps, lam=1.0, ema=0.0):
    out = []
    for kl in kls:
        ema = 0.9 * ema + 0.1 * min(kl, 2 * eps)
        lam = min(max(lam + 0.01 * (ema - eps), 0.01), 100.0)
        out.append((lam, ema))
    return out


def run_dual(kls, eps, state=None):
    state = dual_init(1.0) if state is None else state
    step = jax.jit(lambda s, kl: dual_update(s, kl, eps))
    out = []
    for kl in kls:
        state, info = step(state, jnp.float32(kl))
        out.append((float(state.lam), float(state.kl_ema), float(info.kl_clipped), float(info.clip_active)))
    return state, out


def test_dual_update_matches_reference_loop_and_hand_values():
    kls = [3.0, 0.2, 5.0, 1.5, 0.0, 0.9, 2.5]
    _, got = run_dual(kls, eps=1.0)
    for (lam, ema, *_), (ref_lam, ref_ema) in zip(got, reference_dual(kls, 1.0)):
        np.testing.assert_allclose([lam, ema], [ref_lam, ref_ema], rtol=1e-6)
    # First step by hand: KL 3 is clipped to 2 eps = 2, ema = 0.2, lam = 1 + 0.01 (0.2 - 1) = 0.992.
    lam, ema, clipped, active = got[0]
    assert (clipped, active) == (2.0, 1.0)
    np.testing.assert_allclose([ema, lam], [0.2, 0.992], rtol=1e-6)
    assert got[1][3] == 0.0  # 0.2 < 2 eps: not clipped


def test_dual_rises_above_budget_falls_below_and_stays_in_bounds():
    _, above = run_dual([1.8] * 300, eps=1.0)
    assert above[-1][0] > 1.0 and above[-1][0] > above[100][0]  # KL over budget tightens
    _, below = run_dual([0.1] * 300, eps=1.0)
    assert below[-1][0] < below[100][0] < 1.0  # KL under budget loosens
    # Huge estimates are clipped at 2 eps, so lam grows at most 0.01 eps per step, up to the bound.
    state, high = run_dual([1e6] * 20000, eps=1.0)
    assert high[-1][0] == pytest.approx(100.0) and abs(high[-1][1] - 2.0) < 1e-4
    _, low = run_dual([0.0] * 200, eps=1.0)
    assert low[-1][0] == pytest.approx(0.01)
    assert all(0.01 - 1e-7 <= r[0] <= 100.0 + 1e-4 for r in high + low)


def reference_critic(next_q, rewards, masks, q, valid, gamma, horizon, rho):
    n, b = len(q), len(q[0])
    total = 0.0
    targets = []
    for i in range(b):
        heads = [next_q[j][i] for j in range(n)]
        mean = sum(heads) / n
        std = (sum((x - mean) ** 2 for x in heads) / n) ** 0.5
        y = rewards[i] + gamma**horizon * masks[i] * (mean - rho * std)
        targets.append(y)
        for j in range(n):
            total += (q[j][i] - y) ** 2 * valid[i]
    return np.array(targets), total / (n * b)


def test_critic_target_and_loss_match_slow_loop_with_invalid_chunks():
    rng = np.random.default_rng(0)
    n, b, horizon, gamma, rho = 4, 6, 5, 0.995, 0.5
    next_q, q = rng.normal(size=(n, b)), rng.normal(size=(n, b))
    rewards = rng.normal(size=b)
    masks = np.array([1, 0, 1, 1, 0, 1.0])
    valid = np.array([1, 1, 0, 1, 0, 1.0])  # two chunks cross a trajectory end
    ref_y, ref_loss = reference_critic(next_q.tolist(), rewards, masks, q.tolist(), valid, gamma, horizon, rho)
    y = losses.td_target(jnp.asarray(next_q), rewards, masks, gamma, horizon, rho)
    np.testing.assert_allclose(y, ref_y, rtol=1e-5)
    np.testing.assert_allclose(losses.critic_loss(jnp.asarray(q), y, jnp.asarray(valid)), ref_loss, rtol=1e-5)
    # Invalid chunks contribute nothing: changing their Q values leaves the loss unchanged.
    q2 = q.copy()
    q2[:, 2] += 100.0
    np.testing.assert_allclose(losses.critic_loss(jnp.asarray(q2), y, jnp.asarray(valid)), ref_loss, rtol=1e-5)


def test_bc_loss_matches_loop():
    rng = np.random.default_rng(1)
    b, d = 5, 3
    pred, x0, x1 = rng.normal(size=(3, b, d))
    valid = np.array([1, 0, 1, 1, 0.0])
    ref = sum(valid[i] * np.mean((pred[i] - (x1[i] - x0[i])) ** 2) for i in range(b)) / b
    np.testing.assert_allclose(losses.bc_flow_loss(pred, x0, x1, jnp.asarray(valid)), ref, rtol=1e-5)
    t = np.array([0.0, 0.25, 0.5, 1.0, 0.75])
    np.testing.assert_allclose(losses.interpolate(x0, x1, t), (1 - t[:, None]) * x0 + t[:, None] * x1, rtol=1e-6)
