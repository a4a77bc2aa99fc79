"""SQAM's scalar adjoint on a bridge grid (conventions §12).

SQAM replaces the memoryless SDE rollout and the lean adjoint (conventions §3-§4) with:
  the endpoint a_hat: K Euler steps of the ODE with v_theta, not clipped (`flow.euler_endpoint`);
  M bridge states x_j = (1 - tau_j) eps_j + tau_j a_hat on tau_j = j / M, j = 1..M (fresh eps_j);
  one critic gradient at the endpoint, g = grad_a mean_k Qbar_k(s, clip(a, -1, 1)) at a = a_hat,
  and the adjoint adj_j = -tau_j g at bridge state j.
The loss and the path KL are those of conventions §5 on the bridge grid (h_b = 1 / M): pass
`bridge_times(M)` and num_steps = M to `adjoint.adjoint_matching_loss` and `adjoint.path_kl_estimate`.

Every function acts on ONE example; vmap it over a batch.
"""

from typing import Callable

import chex
import jax
import jax.numpy as jnp

from trqam_jax.adjoint import terminal_adjoint


def bridge_times(n_bridge: int) -> jax.Array:
    """tau_j = j / M for j = 1..M: the grid ends at the endpoint tau = 1 (not the flow grid's 0..(K-1) h)."""
    return jnp.arange(1, n_bridge + 1, dtype=jnp.float32) / n_bridge


def bridge_states(endpoint: jax.Array, noises: jax.Array) -> jax.Array:
    """x_j = (1 - tau_j) eps_j + tau_j a_hat, j = 1..M: the BC noising kernel around the endpoint.

    Args:
      endpoint: a_hat, shape (D,).
      noises: eps_1..eps_M, shape (M, D), one fresh draw per state.
    Returns:
      x_1..x_M, shape (M, D); x_M = a_hat.
    """
    chex.assert_rank([endpoint, noises], [1, 2])
    chex.assert_equal_shape([endpoint, noises[0]])
    taus = bridge_times(noises.shape[0])[:, None]
    return (1.0 - taus) * noises + taus * endpoint[None]


def scalar_adjoint(q_fn: Callable[[jax.Array], jax.Array], endpoint: jax.Array, n_bridge: int) -> jax.Array:
    """adj_j = -tau_j grad_a q_fn(a) at a = a_hat, shape (M, D): one gradient, scaled along the grid.

    Pass q_fn with the clip inside (mean_k Qbar_k(s, clip(a, -1, 1))), so the gradient is zero outside it.
    """
    chex.assert_rank(endpoint, 1)
    return bridge_times(n_bridge)[:, None] * terminal_adjoint(q_fn, endpoint)[None]
