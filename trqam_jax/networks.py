"""Networks (conventions §1): the velocity field v(s, x, t) and the critic ensemble Q_j(s, a_chunk).

Both work on a single example (s of shape (O,)) or on any leading batch shape.

`compute_dtype` ("float32", the reference; or "bfloat16") is the dtype of the matrix products' inputs.
With "bfloat16" each Dense casts its input and kernel to bfloat16 in the forward pass and its float32
cotangent to bfloat16 in the backward pass, and accumulates and returns float32: parameters, biases,
activations, LayerNorm and everything downstream stay float32 (docs/conventions.md §1).
"""

import contextlib
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

COMPUTE_DTYPES = ("float32", "bfloat16")


_NATIVE_BF16 = [None]  # None: bf16 x bf16 -> f32 products on accelerators, emulated on a CPU backend


@contextlib.contextmanager
def native_bf16_products(native: bool = True):
    """Trace the bf16 products as bf16 x bf16 -> float32 dots (True) or as their float32 emulation (False),
    whatever the backend: experiments/roofline.py counts an accelerator's program on a CPU host this way."""
    old = _NATIVE_BF16[0]
    _NATIVE_BF16[0] = native
    try:
        yield
    finally:
        _NATIVE_BF16[0] = old


def _dot(a, b, contract):
    """tensordot of two bfloat16 arrays, accumulated and returned in float32.

    XLA:CPU cannot run every bf16 x bf16 -> f32 dot, so on a CPU backend the bf16 values are widened first:
    their products are exact in float32, so the result is the same up to the order of the sums.
    """
    native = _NATIVE_BF16[0] if _NATIVE_BF16[0] is not None else jax.default_backend() != "cpu"
    if not native:
        a, b = a.astype(jnp.float32), b.astype(jnp.float32)
    return jnp.tensordot(a, b, axes=contract, preferred_element_type=jnp.float32)


@jax.custom_vjp
def _bf16_matmul(x, kernel):
    """x @ kernel with bfloat16 inputs and float32 accumulation and output, in both passes."""
    return _dot(x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16), ((x.ndim - 1,), (0,)))


def _bf16_matmul_fwd(x, kernel):
    xb, kb = x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16)
    return _dot(xb, kb, ((xb.ndim - 1,), (0,))), (xb, kb)


def _bf16_matmul_bwd(residuals, g):
    xb, kb = residuals
    gb = g.astype(jnp.bfloat16)
    dx = _dot(gb, kb, ((gb.ndim - 1,), (1,)))
    lead = tuple(range(xb.ndim - 1))
    dk = _dot(xb, gb, (lead, lead))
    return dx, dk


_bf16_matmul.defvjp(_bf16_matmul_fwd, _bf16_matmul_bwd)


def bf16_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    """nn.Dense's dot_general (input's last axis against the kernel's first) through `_bf16_matmul`."""
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
    if tuple(lhs_contract) != (lhs.ndim - 1,) or tuple(rhs_contract) != (0,) or lhs_batch or rhs_batch \
            or rhs.ndim != 2:
        raise NotImplementedError(f"bf16_dot_general takes a Dense product only, got {dimension_numbers}")
    return _bf16_matmul(lhs, rhs)


def dense_dot_general(compute_dtype: str):
    """The dot_general that nn.Dense gets: None (flax's own, the float32 reference) or the bfloat16 one."""
    if compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(f"Unknown compute_dtype {compute_dtype!r}: use one of {COMPUTE_DTYPES}.")
    return None if compute_dtype == "float32" else bf16_dot_general


class MLP(nn.Module):
    """Dense -> GELU [-> LayerNorm] per hidden layer, then a linear output. Xavier-uniform kernels."""

    hidden_dims: Sequence[int]
    output_dim: int
    layer_norm: bool = False
    compute_dtype: str = "float32"

    @nn.compact
    def __call__(self, x):
        kernel_init = nn.initializers.xavier_uniform()
        dot = dense_dot_general(self.compute_dtype)
        dense = (lambda width: nn.Dense(width, kernel_init=kernel_init)) if dot is None else \
            (lambda width: nn.Dense(width, kernel_init=kernel_init, dot_general=dot))
        for width in self.hidden_dims:
            x = nn.gelu(dense(width)(x))
            if self.layer_norm:
                x = nn.LayerNorm()(x)
        return dense(self.output_dim)(x)


class VelocityField(nn.Module):
    """v(s, x, t) = MLP(concat[s, x, t]), with t a raw scalar feature. Output size D = H * A."""

    hidden_dims: Sequence[int]
    chunk_dim: int
    layer_norm: bool = False
    compute_dtype: str = "float32"

    @nn.compact
    def __call__(self, observations, x, t):
        # t may be a scalar shared by the whole batch or one time per example.
        t = jnp.broadcast_to(jnp.asarray(t, x.dtype)[..., None], x.shape[:-1] + (1,))
        inputs = jnp.concatenate([observations, x, t], axis=-1)
        return MLP(self.hidden_dims, self.chunk_dim, self.layer_norm, self.compute_dtype)(inputs)


class CriticEnsemble(nn.Module):
    """num_critics independent MLPs on concat[s, flat chunk]; returns shape (num_critics, *batch)."""

    hidden_dims: Sequence[int]
    num_critics: int = 10
    layer_norm: bool = True
    compute_dtype: str = "float32"

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
        return ensemble(self.hidden_dims, 1, self.layer_norm, self.compute_dtype)(inputs)[..., 0]
