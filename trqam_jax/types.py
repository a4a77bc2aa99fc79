"""Containers shared by the library and the experiments."""

from typing import NamedTuple

import jax


class Batch(NamedTuple):
    """A batch of action chunks (conventions §9). Leading axis B everywhere.

    observations:      (B, O)     the state s at the chunk's start.
    actions:           (B, H, A)  the action chunk, clipped to [-1 + 1e-5, 1 - 1e-5].
    rewards:           (B,)       R = sum_k gamma^k r_{i+k} over the chunk's valid steps.
    masks:             (B,)       min of the bootstrap masks over the valid steps (0 = task done).
    next_observations: (B, O)     s', the observation after the chunk's last valid step.
    valid:             (B,)       valid_last: 1 only if the whole chunk lies in one trajectory.
    """

    observations: jax.Array
    actions: jax.Array
    rewards: jax.Array
    masks: jax.Array
    next_observations: jax.Array
    valid: jax.Array
