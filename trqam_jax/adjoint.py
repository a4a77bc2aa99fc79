"""Lean adjoint, adjoint-matching loss and the path-space KL (conventions §4 and §5).

All functions act on ONE example; vmap them over a batch and average.

QAM and TRQAM share one loss, `adjoint_matching_loss`, with two scales:
  TRQAM(lam):  noise_scale = 1 / sqrt(max(lambda_eff, 1e-8)), adjoint_scale = 1;
  QAM(beta):   noise_scale = 1,                              adjoint_scale = beta (inverse temperature).
Because the lean adjoint is linear in its terminal value, scaling every a_i by beta is the same as
scaling a_K by beta. Hence L_TRQAM(lam) = lambda_eff * L_QAM(beta = 1 / lambda_eff).
"""

from typing import Callable, NamedTuple, Optional

import chex
import jax
import jax.numpy as jnp

from trqam_jax.flow import VelocityFn, flow_times, memoryless_noise_sq

LAMBDA_FLOOR = 1e-8  # sigma_i = g_i / sqrt(max(lambda_eff, 1e-8)), conventions §5.


def terminal_adjoint(q_fn: Callable[[jax.Array], jax.Array], action: jax.Array) -> jax.Array:
    """a_K = -grad_x Q(x) at x = x_K. Pass q_fn with any clip inside, so the gradient goes through it."""
    return -jax.grad(q_fn)(action)


def lean_adjoint(
    ref_velocity_fn: VelocityFn, states: jax.Array, adjoint_terminal: jax.Array, num_steps: int
) -> jax.Array:
    """Backward lean adjoint of conventions §4, a_i = a_{i+1} + h J_i^T a_{i+1}, i = K-1..0.

    J_i is the Jacobian of f(x) = 2 v_0(x, t_i + h) - x / (t_i + h) at x = x_i (note t_i + h with
    x_i, and the SDE drift also at the last step: both deliberate). Each J_i^T a is one VJP.

    Args:
      states: x_0..x_{K-1}, shape (K, D).
      adjoint_terminal: a_K, shape (D,).
    Returns:
      a_0..a_{K-1}, shape (K, D).
    """
    chex.assert_rank(states, 2)
    chex.assert_equal_shape([states[0], adjoint_terminal])
    h = 1.0 / num_steps
    times = flow_times(num_steps) + h

    def step(adjoint_next, inputs):
        t, x = inputs
        drift = lambda y: 2.0 * ref_velocity_fn(y, t) - y / t
        _, drift_vjp = jax.vjp(drift, x)
        adjoint = adjoint_next + h * drift_vjp(adjoint_next)[0]
        return adjoint, adjoint

    _, adjoints = jax.lax.scan(step, adjoint_terminal, (times, states), reverse=True)
    return adjoints


class AdjointMatchingScales(NamedTuple):
    """sigma_i = g_i * noise_scale, and the adjoint multiplied by adjoint_scale."""

    noise_scale: jax.Array
    adjoint_scale: jax.Array


def trqam_scales(lambda_eff) -> AdjointMatchingScales:
    """TRQAM: sigma_i = g_i / sqrt(max(lambda_eff, 1e-8)), no temperature on the adjoint (conventions §5)."""
    lambda_eff = jnp.asarray(lambda_eff, jnp.float32)
    return AdjointMatchingScales(jax.lax.rsqrt(jnp.maximum(lambda_eff, LAMBDA_FLOOR)), jnp.ones_like(lambda_eff))


def qam_scales(inv_temp) -> AdjointMatchingScales:
    """QAM: sigma_i = g_i and a_K scaled by the inverse temperature (conventions §4 and 5)."""
    inv_temp = jnp.asarray(inv_temp, jnp.float32)
    return AdjointMatchingScales(jnp.ones_like(inv_temp), inv_temp)


def adjoint_matching_loss(
    velocity_diff: jax.Array, adjoints: jax.Array, num_steps: int, scales: AdjointMatchingScales,
    times: Optional[jax.Array] = None,
) -> jax.Array:
    """sum_i sum_d (2 d_i / sigma_i + sigma_i a_i)^2, with d_i = v_theta - v_0 at (x_i, t_i) (conventions §5).

    A sum over steps and dims, not a mean, and no valid mask. Shapes: (K, D) each.
    times: the grid where g_i is read, with h = 1 / num_steps; None is the flow grid t_i = i h. SQAM
    passes its bridge grid tau_j = j / M with num_steps = M (conventions §12).
    """
    chex.assert_equal_shape([velocity_diff, adjoints])
    times = flow_times(num_steps) if times is None else times
    chex.assert_shape(times, velocity_diff.shape[:1])
    g = jnp.sqrt(memoryless_noise_sq(times, num_steps))
    sigma = (g * scales.noise_scale)[:, None]
    residual = 2.0 * velocity_diff / sigma + sigma * scales.adjoint_scale * adjoints
    return jnp.sum(residual**2)


def path_kl_estimate(velocity_diff: jax.Array, num_steps: int, horizon: int,
                     times: Optional[jax.Array] = None) -> jax.Array:
    """Discrete Girsanov KL(P_theta || P_0): (1/H) sum_i (2 h / g_i^2) ||d_i||^2, per env step (conventions §5).

    times: as in `adjoint_matching_loss` (None: the flow grid; SQAM: its bridge grid, conventions §12).
    """
    h = 1.0 / num_steps
    times = flow_times(num_steps) if times is None else times
    chex.assert_shape(times, velocity_diff.shape[:1])
    g_sq = memoryless_noise_sq(times, num_steps)
    return jnp.sum(2.0 * h / g_sq * jnp.sum(velocity_diff**2, axis=-1)) / horizon


def kl_constant(adjoints: jax.Array, num_steps: int, times: Optional[jax.Array] = None) -> jax.Array:
    """C = (1/2) sum_i h g_i^2 ||a_i||^2 with the temperature-free adjoint (conventions §5).

    At the optimum of the loss the path KL is KL*(lambda) = C / lambda_eff^2 (average C over a batch)
    when the lean adjoint is a deterministic function of (t, x), as in the linear-Gaussian check.
    In general the optimal control is the conditional mean E[a | x], so by Jensen C / lambda_eff^2
    is an upper bound on the path KL at the optimum; docs/figures/trust_region_demo.md measures
    the gap on a multimodal base. times: as in `adjoint_matching_loss` (SQAM: its bridge grid).
    """
    h = 1.0 / num_steps
    times = flow_times(num_steps) if times is None else times
    chex.assert_shape(times, adjoints.shape[:1])
    g_sq = memoryless_noise_sq(times, num_steps)
    return 0.5 * jnp.sum(h * g_sq * jnp.sum(adjoints**2, axis=-1))


def closed_form_kl(kl_const, lambda_eff):
    """KL*(lambda) = C / lambda_eff^2: decreasing in lambda (conventions §5)."""
    return kl_const / jnp.square(lambda_eff)
