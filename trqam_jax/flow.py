"""Flow sampling (conventions §2, §3 and §12): the Euler ODE sampler and the memoryless SDE rollout.

Conventions: t = 0 is noise, t = 1 is the action; K steps of size h = 1 / K at t_i = i h.
Every function here acts on ONE example (x of shape (D,)); vmap it over a batch. Velocity
functions are `v(x, t) -> (D,)` with the observation already bound, so analytic fields plug in.
"""

from typing import Callable

import jax
import jax.numpy as jnp

VelocityFn = Callable[[jax.Array, jax.Array], jax.Array]


def flow_times(num_steps: int) -> jax.Array:
    """t_i = i h for i = 0..K-1."""
    return jnp.arange(num_steps, dtype=jnp.float32) / num_steps


def memoryless_noise_sq(t, num_steps: int):
    """g(t)^2 = 2 (1 - t + h) / (t + h): the memoryless schedule 2 (1 - t) / t shifted by h (conventions §3)."""
    h = 1.0 / num_steps
    return 2.0 * (1.0 - t + h) / (t + h)


def euler_endpoint(velocity_fn: VelocityFn, noise: jax.Array, num_steps: int) -> jax.Array:
    """K Euler steps x_{i+1} = x_i + h v(x_i, i h) from x_0 = noise, NOT clipped: SQAM's a_hat (conventions §12)."""
    h = 1.0 / num_steps

    def step(x, t):
        return x + h * velocity_fn(x, t), None

    x, _ = jax.lax.scan(step, noise, flow_times(num_steps))
    return x


def euler_sample(velocity_fn: VelocityFn, noise: jax.Array, num_steps: int) -> jax.Array:
    """K Euler steps x_{i+1} = x_i + h v(x_i, i h) from x_0 = noise, then clip to [-1, 1] (conventions §2)."""
    return jnp.clip(euler_endpoint(velocity_fn, noise, num_steps), -1.0, 1.0)


def memoryless_rollout(
    velocity_fn: VelocityFn,
    ref_velocity_fn: VelocityFn,
    noise: jax.Array,
    step_noises: jax.Array,
    num_steps: int,
):
    """Memoryless SDE rollout of conventions §3. No gradients are meant to flow through it.

    Steps i = 0..K-2: x_{i+1} = x_i + h (2 v(x_i, t_i) - x_i / (t_i + h)) + sqrt(h) g_i eps_i.
    Last step: the plain ODE step of the reference, x_K = x_{K-1} + h v_0(x_{K-1}, t_{K-1}).

    Args:
      noise: x_0, shape (D,).
      step_noises: eps_0..eps_{K-2}, shape (K-1, D).
    Returns:
      states: x_0..x_{K-1}, shape (K, D), where the loss is evaluated.
      action: x_K, shape (D,) (not clipped).
    """
    h = 1.0 / num_steps
    times = flow_times(num_steps)

    def sde_step(x, inputs):
        t, eps = inputs
        g = jnp.sqrt(memoryless_noise_sq(t, num_steps))
        drift = 2.0 * velocity_fn(x, t) - x / (t + h)
        return x + h * drift + jnp.sqrt(h) * g * eps, x

    x_last, head = jax.lax.scan(sde_step, noise, (times[:-1], step_noises))
    action = x_last + h * ref_velocity_fn(x_last, times[-1])
    states = jnp.concatenate([head, x_last[None]], axis=0)
    return states, action
