"""Projected dual descent on the trust-region multiplier lam (conventions §6)."""

from typing import NamedTuple

import jax
import jax.numpy as jnp


class DualState(NamedTuple):
    lam: jax.Array  # the multiplier; lambda_eff = lam_scale * lam.
    kl_ema: jax.Array  # EMA of the clipped KL estimate.


class DualInfo(NamedTuple):
    kl_clipped: jax.Array  # min(KL_hat, clip_factor * eps).
    clip_active: jax.Array  # 1.0 where the estimate was clipped.


def dual_init(lam_init: float = 1.0) -> DualState:
    return DualState(lam=jnp.asarray(lam_init, jnp.float32), kl_ema=jnp.zeros((), jnp.float32))


def dual_update(
    state: DualState,
    kl_estimate: jax.Array,
    budget,
    learning_rate: float = 0.01,
    ema_decay: float = 0.9,
    clip_factor: float = 2.0,
    lam_min: float = 0.01,
    lam_max: float = 100.0,
):
    """One projected step: ema <- d ema + (1-d) min(KL, 2 eps); lam <- clip(lam + lr (ema - eps)).

    The step is in linear space. A KL over budget raises lam (a tighter trust region).
    Returns (new_state, DualInfo).
    """
    cap = clip_factor * budget
    kl_clipped = jnp.minimum(kl_estimate, cap)
    kl_ema = ema_decay * state.kl_ema + (1.0 - ema_decay) * kl_clipped
    lam = jnp.clip(state.lam + learning_rate * (kl_ema - budget), lam_min, lam_max)
    info = DualInfo(kl_clipped=kl_clipped, clip_active=(kl_estimate > cap).astype(jnp.float32))
    return DualState(lam=lam, kl_ema=kl_ema), info
