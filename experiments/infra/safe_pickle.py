"""Loading pickles that hold only arrays and plain containers, without running code.

Every pickle this project reads from elsewhere goes through `load`: the reference code's checkpoints
(experiments/infra/reference_checkpoint.py) and the authors' released results files (experiments/report.py).

A pickle names each class or function it needs as a (module, name) pair, and the unpickler calls
what it gets with arguments from the file. Allowing whole packages is not safe: numpy alone holds
`exec` in another name (numpy.testing's `runstring`), loaders that unpickle without restriction
(`numpy.load(..., allow_pickle=True)`), and jax's array rebuilder calls whatever function the file
gives it. So `load` resolves only the exact pairs in `ALLOWED`, which is what these object kinds
pickle to:

  numpy array      numpy.ndarray, numpy.dtype, numpy._core.multiarray._reconstruct (protocols 2-4),
                   numpy._core.numeric._frombuffer (protocol 5)
  numpy scalar     numpy._core.multiarray.scalar, numpy.dtype
  numpy 1.x files  the same under numpy.core.* (numpy 2 renamed numpy.core to numpy._core)
  jax array        jax._src.array._reconstruct_array, around a numpy array
  flax FrozenDict  flax.core.frozen_dict.FrozenDict
  bfloat16 etc.    ml_dtypes' scalar types (a dtype argument)
  containers       builtins set, frozenset, complex, bytearray, collections.OrderedDict; bytes at
                   protocol 2 need _codecs.encode

The callables among them are replaced by checked stand-ins: a jax array is rebuilt as the numpy
array it wraps (its function must be numpy's `_reconstruct`, nothing else); a FrozenDict becomes a
dict; `_codecs.encode` only turns a str into latin-1 bytes. Anything else, including dotted names,
is refused with `UnsafePickleError` before it is resolved, so nothing from the file runs. The BUILD
step (set an object's state) is allowed only on numpy arrays and dtypes, the two objects whose
pickles use it, so a file cannot set attributes on the allowed classes and functions themselves.
"""

from __future__ import annotations

import collections
import pickle
from typing import Any, BinaryIO

import numpy as np

__all__ = ["UnsafePickleError", "ALLOWED", "load", "loads", "SafeUnpickler"]


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle needs a class or function outside the allowlist; the message is one line."""


_core = getattr(np, "_core", None) or np.core  # numpy 2.x, else 1.x
_reconstruct = _core.multiarray._reconstruct
_frombuffer = _core.numeric._frombuffer
_scalar = _core.multiarray.scalar


def _jax_array(fun, args, arr_state, aval_state):
    """jax._src.array._reconstruct_array, without jax: the numpy array it wraps."""
    if fun is not _reconstruct:
        raise UnsafePickleError("a jax array whose rebuild function is not numpy's _reconstruct")
    value = _reconstruct(*args)
    value.__setstate__(arr_state)
    return value


def _frozen_dict(*args):
    """flax.core.frozen_dict.FrozenDict(mapping) -> a plain dict."""
    if len(args) > 1 or (args and not isinstance(args[0], dict)):
        raise UnsafePickleError("a flax FrozenDict built from something other than a dict")
    return dict(*args)


def _latin1(text, encoding="latin1"):
    """_codecs.encode as protocol 2 uses it for bytes: (str, 'latin1') only."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError("_codecs.encode used for something other than latin-1 bytes")
    return text.encode("latin1")


def _ml_dtypes() -> dict:
    try:
        import ml_dtypes
    except ImportError:  # pragma: no cover - a dependency of jax
        return {}
    names = ("bfloat16", "float4_e2m1fn", "float6_e2m3fn", "float6_e3m2fn", "float8_e3m4", "float8_e4m3",
             "float8_e4m3b11fnuz", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz",
             "float8_e8m0fnu", "int2", "int4", "uint2", "uint4")
    return {("ml_dtypes", n): getattr(ml_dtypes, n) for n in names if hasattr(ml_dtypes, n)}


def _allowed() -> dict:
    out = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for core in ("numpy._core", "numpy.core"):  # numpy 2.x, numpy 1.x
        out[(f"{core}.multiarray", "_reconstruct")] = _reconstruct
        out[(f"{core}.multiarray", "scalar")] = _scalar
        out[(f"{core}.numeric", "_frombuffer")] = _frombuffer
    out[("jax._src.array", "_reconstruct_array")] = _jax_array
    out[("flax.core.frozen_dict", "FrozenDict")] = _frozen_dict
    out.update(_ml_dtypes())
    for module in ("builtins", "__builtin__"):  # protocol 0-2 files name the module __builtin__
        for name, obj in (("set", set), ("frozenset", frozenset), ("complex", complex),
                          ("bytearray", bytearray)):
            out[(module, name)] = obj
    out[("collections", "OrderedDict")] = collections.OrderedDict
    out[("_codecs", "encode")] = _latin1
    return out


# (module, name) -> the object a pickle gets for it. Nothing else resolves.
ALLOWED: dict = _allowed()


class SafeUnpickler(pickle._Unpickler):
    """The pure-Python unpickler (its opcode table can be changed), with find_class limited to
    ALLOWED and BUILD to numpy arrays and dtypes."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def load_build(self):
        if not isinstance(self.stack[-2], (np.ndarray, np.dtype)):
            raise UnsafePickleError(f"it sets the state of a {type(self.stack[-2]).__name__}, which was not "
                                    "loaded (only numpy arrays and dtypes have a state to set)")
        pickle._Unpickler.load_build(self)

    dispatch[pickle.BUILD[0]] = load_build

    def find_class(self, module, name):
        try:
            return ALLOWED[(module, name)]
        except (KeyError, TypeError):
            raise UnsafePickleError(f"it needs {module}.{name}, which is not an array, a dtype, a scalar or a "
                                    "plain container, and was not loaded") from None

    def persistent_load(self, pid):
        raise UnsafePickleError("it uses a persistent id, which was not loaded")


def load(file: BinaryIO) -> Any:
    """pickle.load for arrays and plain containers only (jax arrays come back as numpy arrays and
    FrozenDicts as dicts). Raises UnsafePickleError for anything else; other errors as pickle.load."""
    return SafeUnpickler(file).load()


def loads(data: bytes) -> Any:
    import io

    return load(io.BytesIO(data))
