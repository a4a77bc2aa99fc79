"""Flow sampler, SDE rollout, lean adjoint, AM loss and KL, each against an independent computation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trqam_jax import adjoint as adj
from trqam_jax.flow import euler_sample, memoryless_noise_sq, memoryless_rollout

jax.config.update("jax_enable_x64", False)


def gaussian_rectified_flow(x, t):
    """Velocity of the rectified flow from N(0, 1) to N(0, 1): v_0(x, t) = (2t - 1) x / ((1-t)^2 + t^2)."""
    return (2.0 * t - 1.0) * x / ((1.0 - t) ** 2 + t**2)


def nonlinear_field(x, t):
    w = jnp.array([[0.5, -1.0, 0.2], [0.3, 0.4, -0.7], [-0.2, 0.9, 0.1]])
    return jnp.tanh(w @ x + t) - 0.3 * t * x


@pytest.mark.parametrize("num_steps,expected", [(10, 0.618), (20, 0.556), (100, 0.510)])
def test_closed_form_constant_matches_spec(num_steps, expected):
    # Q(a) = a, so a_K = -1; the discrete C of conventions §5 is tabulated there.
    states = jnp.zeros((num_steps, 1))  # the Jacobian of this linear field does not depend on x
    adjoints = adj.lean_adjoint(gaussian_rectified_flow, states, -jnp.ones(1), num_steps)
    assert round(float(adj.kl_constant(adjoints, num_steps)), 3) == expected


def test_closed_form_constant_tends_to_continuous_value():
    values = []
    for k in (10, 100, 1000):
        a = adj.lean_adjoint(gaussian_rectified_flow, jnp.zeros((k, 1)), -jnp.ones(1), k)
        values.append(float(adj.kl_constant(a, k)))
    assert values[0] > values[1] > values[2] > 0.5  # monotone towards c^2 / 2 = 0.5
    assert abs(values[2] - 0.5) < 2e-3
    # C scales as c^2 with the critic slope, and KL* = C / lambda^2 falls with lambda.
    a2 = adj.lean_adjoint(gaussian_rectified_flow, jnp.zeros((10, 1)), -2.0 * jnp.ones(1), 10)
    np.testing.assert_allclose(adj.kl_constant(a2, 10), 4 * 0.6179768, rtol=1e-5)
    kls = [float(adj.closed_form_kl(0.618, lam)) for lam in (0.5, 1.0, 2.0)]
    assert kls[0] > kls[1] > kls[2]


def test_closed_form_kl_is_constant_over_lambda_squared():
    # KL*(lambda) = C / lambda_eff^2, by hand at two multipliers (C / lambda would give 1.236 and 0.309).
    np.testing.assert_allclose(adj.closed_form_kl(0.618, 0.5), 2.472, rtol=1e-6)
    np.testing.assert_allclose(adj.closed_form_kl(0.618, 2.0), 0.1545, rtol=1e-6)
    # With the C of the Gaussian check of conventions §5 at K = 10, and lambda_eff = 3 * 0.5.
    a = adj.lean_adjoint(gaussian_rectified_flow, jnp.zeros((10, 1)), -jnp.ones(1), 10)
    np.testing.assert_allclose(adj.closed_form_kl(adj.kl_constant(a, 10), 1.5), 0.6179768 / 2.25, rtol=1e-5)


def test_lean_adjoint_equals_grad_through_unrolled_euler_of_reference_drift():
    # The lean adjoint is the gradient of a terminal cost through the maps
    # x_{i+1} = x_i + h f(x_i, t_i + h), f(x, t) = 2 v_0(x, t) - x / t, when the states lie on that path.
    k, h = 8, 1.0 / 8
    cost = lambda x: jnp.sum(jnp.sin(x) * jnp.array([1.0, -2.0, 0.5]))

    def step(x, i):
        t = i * h + h
        return x + h * (2.0 * nonlinear_field(x, t) - x / t)

    def unrolled_from(i0, x):
        for i in range(i0, k):
            x = step(x, i)
        return x

    x0 = jnp.array([0.3, -0.2, 0.5])
    states = [x0]
    for i in range(k - 1):
        states.append(step(states[-1], i))
    x_terminal = step(states[-1], k - 1)
    adjoints = adj.lean_adjoint(nonlinear_field, jnp.stack(states), jax.grad(cost)(x_terminal), k)
    for i in (0, 3, k - 1):
        expected = jax.grad(lambda x: cost(unrolled_from(i, x)))(states[i])
        np.testing.assert_allclose(adjoints[i], expected, rtol=1e-5, atol=1e-6)


def test_terminal_adjoint_is_zero_outside_clip():
    q = lambda x: jnp.sum(3.0 * jnp.clip(x, -1.0, 1.0))
    a = adj.terminal_adjoint(q, jnp.array([0.5, 1.5, -2.0]))
    np.testing.assert_allclose(a, [-3.0, 0.0, 0.0])


def test_euler_sample_matches_python_loop():
    k = 7
    x0 = jnp.array([0.1, -0.4, 0.9])
    x = np.array(x0)
    for i in range(k):
        x = x + (1.0 / k) * np.asarray(nonlinear_field(jnp.asarray(x), i / k))
    np.testing.assert_allclose(euler_sample(nonlinear_field, x0, k), np.clip(x, -1, 1), rtol=1e-5)
    # A constant velocity of 5 moves far outside the box: the result is clipped.
    np.testing.assert_allclose(euler_sample(lambda x, t: 5.0 + 0 * x, x0, k), [1.0, 1.0, 1.0])


def test_memoryless_rollout_matches_python_loop():
    k, d = 6, 3
    h = 1.0 / k
    key = jax.random.PRNGKey(0)
    x0, eps = jax.random.normal(key, (d,)), jax.random.normal(jax.random.PRNGKey(1), (k - 1, d))
    ref = lambda x, t: gaussian_rectified_flow(x, t) + 0.1
    states, action = memoryless_rollout(nonlinear_field, ref, x0, eps, k)
    x = np.array(x0, np.float64)
    expected = [x]
    for i in range(k - 1):
        t = i * h
        g = np.sqrt(2 * (1 - t + h) / (t + h))
        v = np.asarray(nonlinear_field(jnp.asarray(x, jnp.float32), t), np.float64)
        x = x + h * (2 * v - x / (t + h)) + np.sqrt(h) * g * np.asarray(eps[i])
        expected.append(x)
    last = x + h * np.asarray(ref(jnp.asarray(x, jnp.float32), (k - 1) * h))
    np.testing.assert_allclose(states, np.stack(expected), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(action, last, rtol=1e-4, atol=1e-5)
    assert memoryless_noise_sq(0.0, 10) == pytest.approx(2 * 1.1 / 0.1)


def _random_diff_and_adjoint(k=5, d=4):
    diff = jax.random.normal(jax.random.PRNGKey(2), (k, d))
    adjoints = jax.random.normal(jax.random.PRNGKey(3), (k, d))
    return diff, adjoints


def test_adjoint_matching_loss_matches_hand_sum():
    # The differences and adjoints vary with the step i and the dimension, so per-step weights show.
    k, d = 5, 4
    diff, adjoints = _random_diff_and_adjoint(k, d)
    for lam_eff, inv_temp in ((0.7, None), (None, 2.5)):
        total = 0.0
        for i in range(k):
            t = i / k
            g = np.sqrt(2 * (1 - t + 1 / k) / (t + 1 / k))
            sigma, a_scale = (g / np.sqrt(lam_eff), 1.0) if inv_temp is None else (g, inv_temp)
            for j in range(d):
                total += (2 * float(diff[i, j]) / sigma + sigma * a_scale * float(adjoints[i, j])) ** 2
        scales = adj.trqam_scales(lam_eff) if inv_temp is None else adj.qam_scales(inv_temp)
        np.testing.assert_allclose(adj.adjoint_matching_loss(diff, adjoints, k, scales), total, rtol=1e-5)


@pytest.mark.parametrize("lam_eff", [0.05, 1.0, 3.0, 40.0])
def test_trqam_loss_is_lambda_times_qam_loss(lam_eff):
    diff, adjoints = _random_diff_and_adjoint()
    trqam = adj.adjoint_matching_loss(diff, adjoints, 5, adj.trqam_scales(lam_eff))
    qam = adj.adjoint_matching_loss(diff, adjoints, 5, adj.qam_scales(1.0 / lam_eff))
    np.testing.assert_allclose(trqam, lam_eff * qam, rtol=1e-5)


def test_path_kl_estimate_zero_and_constant_offset():
    k, d, horizon = 10, 6, 3
    assert float(adj.path_kl_estimate(jnp.zeros((k, d)), k, horizon)) == 0.0
    offset = jnp.linspace(-0.5, 0.5, d)
    expected = sum(2 * (1 / k) / (2 * (1 - i / k + 1 / k) / (i / k + 1 / k)) for i in range(k))
    expected *= float(jnp.sum(offset**2)) / horizon
    diff = jnp.broadcast_to(offset, (k, d))
    np.testing.assert_allclose(adj.path_kl_estimate(diff, k, horizon), expected, rtol=1e-5)


def test_path_kl_estimate_step_dependent_differences_match_hand_sum():
    # d_i varies with the step and the dimension, H > 1: (1/H) sum_i (2 h / g_i^2) sum_j d_ij^2.
    k, d, horizon = 5, 4, 3
    diff, _ = _random_diff_and_adjoint(k, d)
    h, total = 1.0 / k, 0.0
    for i in range(k):
        g_sq = 2 * (1 - i * h + h) / (i * h + h)
        total += 2 * h / g_sq * sum(float(diff[i, j]) ** 2 for j in range(d))
    np.testing.assert_allclose(adj.path_kl_estimate(diff, k, horizon), total / horizon, rtol=1e-5)
    # Weights by hand at K = 5: 2h / g_i^2 = h (t_i + h) / (1 - t_i + h) = 0.2 * [1/6, 2/5, 3/4, 4/3, 5/2]^T.
    one_hot = jnp.eye(k)[:, :1]  # ||d_i||^2 = 1 at step i only, for each i in turn
    weights = [float(adj.path_kl_estimate(jnp.roll(one_hot, i, axis=0), k, 1)) for i in range(k)]
    np.testing.assert_allclose(weights, 0.2 * np.array([1 / 6, 2 / 5, 3 / 4, 4 / 3, 5 / 2]), rtol=1e-5)
