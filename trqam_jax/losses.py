"""Critic TD loss with chunked targets (conventions §7), SQAM's value gap (conventions §12) and the
flow-matching BC loss (conventions §2)."""

import chex
import jax
import jax.numpy as jnp


def td_target(next_q: jax.Array, rewards, masks, discount: float, horizon: int, rho: float):
    """y = R + gamma^H * mask * (mean_j Qbar_j(s', a') - rho * std_j Qbar_j(s', a')).

    next_q has the ensemble on axis 0, (N, B); the std is the population std (ddof = 0).
    """
    pessimistic = jnp.mean(next_q, axis=0) - rho * jnp.std(next_q, axis=0)
    return rewards + discount**horizon * masks * pessimistic


def critic_loss(q: jax.Array, target: jax.Array, valid: jax.Array) -> jax.Array:
    """Mean over heads and batch of (Q_j(s, a) - y)^2 * valid_last. q: (N, B); target, valid: (B,)."""
    chex.assert_equal_shape([q[0], target, valid])
    return jnp.mean(jnp.square(q - target[None]) * valid[None])


def value_gap(q_policy: jax.Array, q_data: jax.Array) -> jax.Array:
    """SQAM's value gap, mean over batch of [mean_k Q_k(s, a_pi) - mean_k Q_k(s, a_data)] (conventions §12).

    q_policy, q_data: (N, B), the ONLINE critic at the clipped policy endpoint and at the data chunk.
    No valid mask. The critic loss adds c times it: it lowers Q at the policy's endpoint and raises it
    at the data action.
    """
    chex.assert_equal_shape([q_policy, q_data])
    return jnp.mean(jnp.mean(q_policy, axis=0) - jnp.mean(q_data, axis=0))


def bc_flow_loss(velocity_pred: jax.Array, noise: jax.Array, actions: jax.Array, valid: jax.Array):
    """Mean over batch of [mean over dims of (v(s, x_t, t) - (x1 - x0))^2 * valid_last] (conventions §2).

    velocity_pred, noise (x0), actions (x1): (B, D); valid: (B,). Invalid rows count in the mean as 0.
    """
    chex.assert_equal_shape([velocity_pred, noise, actions])
    per_example = jnp.mean(jnp.square(velocity_pred - (actions - noise)), axis=-1)
    return jnp.mean(per_example * valid)


def interpolate(noise, actions, t):
    """x_t = (1 - t) x0 + t x1, with t of shape (B,) or scalar."""
    t = jnp.asarray(t)[..., None]
    return (1.0 - t) * noise + t * actions
