"""Networks (conventions §1): the velocity field v(s, x, t) and the critic ensemble Q_j(s, a_chunk).

Both work on a single example (s of shape (O,)) or on any leading batch shape.
"""

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp


class MLP(nn.Module):
    """Dense -> GELU [-> LayerNorm] per hidden layer, then a linear output. Xavier-uniform kernels."""

    hidden_dims: Sequence[int]
    output_dim: int
    layer_norm: bool = False

    @nn.compact
    def __call__(self, x):
        kernel_init = nn.initializers.xavier_uniform()
        for width in self.hidden_dims:
            x = nn.gelu(nn.Dense(width, kernel_init=kernel_init)(x))
            if self.layer_norm:
                x = nn.LayerNorm()(x)
        return nn.Dense(self.output_dim, kernel_init=kernel_init)(x)


class VelocityField(nn.Module):
    """v(s, x, t) = MLP(concat[s, x, t]), with t a raw scalar feature. Output size D = H * A."""

    hidden_dims: Sequence[int]
    chunk_dim: int
    layer_norm: bool = False

    @nn.compact
    def __call__(self, observations, x, t):
        # t may be a scalar shared by the whole batch or one time per example.
        t = jnp.broadcast_to(jnp.asarray(t, x.dtype)[..., None], x.shape[:-1] + (1,))
        inputs = jnp.concatenate([observations, x, t], axis=-1)
        return MLP(self.hidden_dims, self.chunk_dim, self.layer_norm)(inputs)


class CriticEnsemble(nn.Module):
    """num_critics independent MLPs on concat[s, flat chunk]; returns shape (num_critics, *batch)."""

    hidden_dims: Sequence[int]
    num_critics: int = 10
    layer_norm: bool = True

    @nn.compact
    def __call__(self, observations, actions):
        ensemble = nn.vmap(
            MLP,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=None,
            out_axes=0,
            axis_size=self.num_critics,
        )
        inputs = jnp.concatenate([observations, actions], axis=-1)
        return ensemble(self.hidden_dims, 1, self.layer_norm)(inputs)[..., 0]
