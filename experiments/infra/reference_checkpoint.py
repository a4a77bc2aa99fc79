"""Import parameters from checkpoints saved by the reference TRQAM or QAM code.

The reference code saves `params_<step>.pkl`: a pickle of `{'agent': flax.serialization.to_state_dict(agent)}`.
The agent's networks live in one flax `ModuleDict`, so the parameters sit at
`state['agent']['network']['params']['modules_<name>']`. The TRQAM and QAM agents hold six modules:

  reference module              this project           role
  modules_actor_slow            actor_bc               velocity trained by the BC flow loss throughout
  modules_target_actor_slow     actor_ref              EMA of actor_slow: the reference pi_0
  modules_actor_fast            actor                  the fine-tuned velocity v_theta (acts)
  modules_target_actor_fast     -                      unused by the update (a copy of the initial actor)
  modules_critic                critic                 the Q ensemble
  modules_target_critic         critic_target          EMA of the critic

A BC pretraining run of the reference (`--bc_only=True`, saved as `params_300000.pkl`) trains only
actor_slow and skips the EMA updates, so its BC policy is `which="actor_bc"`; its other modules are
still at their random initialisation. The reference's own loader also accepts FQL-style checkpoints, whose BC flow is
`modules_actor_bc_flow`; `which="actor_bc"` falls back to it.

Inside a module the reference nests one MLP (`mlp` in the velocity field, `value_net` in the critic)
whose layers are named like this project's: Dense_0..Dense_L (the last is the linear output) and,
with layer norm, LayerNorm_0..LayerNorm_{L-1}. The velocity input is concat[s, x, t] with t a raw
scalar feature, as here. The critic ensemble is an `nn.vmap` of the MLP, so every critic leaf has a
leading ensemble axis, as here. Only the name of the MLP differs, so the import is a rename plus
shape checks.

Not supported: QAM's non-default `residual=True` variant, whose acting velocity is the SUM of
actor_slow and actor_fast (actor_fast alone is then not a policy), and Fourier time features.

Pickles can run code when loaded. This loader reads them with experiments/infra/safe_pickle.py, which
resolves only the exact (module, name) pairs that numpy arrays, dtypes, scalars, jax arrays, flax
FrozenDicts and plain containers pickle to; a pickle that needs anything else (a function, the
reference code's classes) is refused with a one-line error and nothing from it runs. It needs no
reference code installed.

    params = import_actor("exp/.../params_300000.pkl", nets.actor.init(key, obs, x, 0.0), which="actor_bc")
"""

import glob
import os
import re
from typing import Any, Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from experiments.infra import safe_pickle
from experiments.infra.errors import UserError

__all__ = [
    "ReferenceCheckpointError",
    "MODULES",
    "load_reference_state",
    "load_reference_params",
    "import_actor",
    "import_critic",
    "import_dual",
    "describe",
]


class ReferenceCheckpointError(UserError, ValueError):
    """A reference checkpoint that cannot be imported; the message is one line."""


# This project's name for a parameter set -> the reference module names to try, in order.
MODULES: Dict[str, Tuple[str, ...]] = {
    "actor_bc": ("modules_actor_slow", "modules_actor_bc_flow"),
    "actor_ref": ("modules_target_actor_slow",),
    "actor": ("modules_actor_fast",),
    "critic": ("modules_critic",),
    "critic_target": ("modules_target_critic",),
}
_ACTOR_NAMES = ("actor_bc", "actor_ref", "actor")
_CRITIC_NAMES = ("critic", "critic_target")

def _resolve_path(path) -> str:
    """A params_<step>.pkl file, or a run directory (its newest params_<step>.pkl)."""
    path = os.path.expanduser(os.fspath(path))
    if os.path.isdir(path):
        candidates = glob.glob(os.path.join(path, "params_*.pkl"))
        steps = {}
        for candidate in candidates:
            match = re.fullmatch(r"params_(\d+)\.pkl", os.path.basename(candidate))
            if match:
                steps[int(match.group(1))] = candidate
        if not steps:
            raise ReferenceCheckpointError(f"no params_<step>.pkl reference checkpoint in directory {path}")
        return steps[max(steps)]
    if not os.path.exists(path):
        raise ReferenceCheckpointError(f"reference checkpoint {path} does not exist")
    return path


def _to_numpy(tree):
    """Plain nested dicts of numpy arrays (jax arrays and FrozenDicts converted)."""
    if isinstance(tree, Mapping):
        return {str(k): _to_numpy(v) for k, v in tree.items()}
    if isinstance(tree, (np.ndarray, np.generic, jax.Array)):
        return np.asarray(tree)
    return tree


def load_reference_state(path) -> Dict[str, Any]:
    """The agent's state dict, `pickle['agent']`, with numpy leaves.

    It holds 'network' ({'step', 'params', 'opt_state'}), 'rng', and for TRQAM 'lam' and 'kl_ema'.
    `path` is a params_<step>.pkl file or a run directory (then its newest params_<step>.pkl).
    """
    path = _resolve_path(path)
    try:
        with open(path, "rb") as f:
            payload = safe_pickle.load(f)
    except safe_pickle.UnsafePickleError as e:
        raise ReferenceCheckpointError(f"{path} is not a reference checkpoint: {e}") from None
    except Exception as e:  # any unpickling failure: truncated file, not a pickle, ...
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ReferenceCheckpointError(f"{path} is not a reference checkpoint: cannot unpickle it ({reason})") from None
    if not isinstance(payload, Mapping) or not isinstance(payload.get("agent"), Mapping):
        raise ReferenceCheckpointError(
            f"{path} is not a reference checkpoint: expected a pickled dict with an 'agent' state dict")
    state = _to_numpy(payload["agent"])
    network = state.get("network")
    if not isinstance(network, Mapping) or not isinstance(network.get("params"), Mapping):
        raise ReferenceCheckpointError(
            f"{path} is not a reference checkpoint: its agent state has no network/params")
    return state


def load_reference_params(path) -> Dict[str, Any]:
    """The raw reference parameters: {'modules_critic': ..., 'modules_actor_slow': ..., ...}, numpy leaves."""
    return load_reference_state(path)["network"]["params"]


def describe(path) -> Dict[str, Dict[str, Tuple[int, ...]]]:
    """{module: {'layer/param': shape}}: what a reference checkpoint holds, for messages and inspection."""
    out = {}
    for module, tree in load_reference_params(path).items():
        out[module] = {name: leaf.shape for name, leaf in _flatten(tree).items()}
    return out


def _natural_key(name):
    """Dense_2 before Dense_10: layer order, for the 'first mismatched parameter'."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(name))]


def _flatten(tree, prefix="") -> Dict[str, Any]:
    """{'Dense_0/kernel': leaf}, each level in layer order (_natural_key) and any Mapping descended:
    not flax.traverse_util.flatten_dict, which keeps insertion order and descends only (Frozen)dicts."""
    flat = {}
    for key in sorted(tree, key=_natural_key):
        value = tree[key]
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name))
        else:
            flat[name] = value
    return flat


def _only_child(tree: Mapping, where: str) -> Tuple[str, Mapping]:
    if not isinstance(tree, Mapping) or len(tree) != 1 or not isinstance(next(iter(tree.values())), Mapping):
        keys = sorted(tree) if isinstance(tree, Mapping) else type(tree).__name__
        raise ReferenceCheckpointError(f"{where} should hold exactly one MLP submodule, found {keys}")
    name = next(iter(tree))
    return name, tree[name]


def _select_module(params: Mapping, which: str, path) -> Tuple[str, Mapping]:
    if which not in MODULES:
        raise ReferenceCheckpointError(f"unknown parameter set {which!r}: use one of {sorted(MODULES)}")
    for module in MODULES[which]:
        if module in params:
            return module, params[module]
    raise ReferenceCheckpointError(
        f"{path} has no {' or '.join(MODULES[which])} module for {which}; it holds {sorted(params)}")


def _import(path, like, which: str):
    """Reference module `which`, renamed and shape-checked into the layout of `like`."""
    if not isinstance(like, Mapping) or "params" not in like:
        raise ReferenceCheckpointError("the params to match should be a flax variables dict {'params': ...}")
    params = load_reference_params(path)
    module, tree = _select_module(params, which, path)
    ref_mlp_name, ref_layers = _only_child(tree, module)
    own_mlp_name, own_layers = _only_child(like["params"], "this run's params")

    ref_flat = _flatten(ref_layers)
    own_flat = _flatten(own_layers)
    prefix = f"{module}/{ref_mlp_name}"
    for name, own_leaf in own_flat.items():  # in layer order: the first mismatch is reported
        if name not in ref_flat:
            raise ReferenceCheckpointError(
                f"{prefix}/{name} is missing from the checkpoint, which this run needs with shape "
                f"{tuple(np.shape(own_leaf))} (check the depth and layer norm settings)")
        ref_shape, own_shape = tuple(np.shape(ref_flat[name])), tuple(np.shape(own_leaf))
        if ref_shape != own_shape:
            raise ReferenceCheckpointError(
                f"{prefix}/{name} has shape {ref_shape}; this run expects {own_shape}")
    extra = sorted(set(ref_flat) - set(own_flat), key=_natural_key)
    if extra:
        raise ReferenceCheckpointError(
            f"{prefix}/{extra[0]} is in the checkpoint but not in this run (check the depth and layer "
            "norm settings)")

    def rebuild(own_tree, name_prefix=""):
        out = {}
        for key, value in own_tree.items():
            name = f"{name_prefix}/{key}" if name_prefix else str(key)
            if isinstance(value, Mapping):
                out[key] = rebuild(value, name)
            else:
                out[key] = jnp.asarray(ref_flat[name], dtype=jnp.result_type(value))
        return out

    return {"params": {own_mlp_name: rebuild(own_layers)}}


def import_actor(path, actor_like, which: str = "actor_bc"):
    """A velocity-field parameter set from a reference checkpoint, in the layout of `actor_like`.

    Args:
      path: a reference params_<step>.pkl, or a run directory (its newest params_<step>.pkl).
      actor_like: this run's actor params, e.g. `nets.actor.init(key, obs, x, 0.0)`; only its tree
        structure, shapes and dtypes are used.
      which: "actor_bc" (reference actor_slow: the BC policy of a BC pretraining run), "actor_ref"
        (target_actor_slow) or "actor" (actor_fast: the fine-tuned policy).
    Raises:
      ReferenceCheckpointError: missing file, not a reference pickle, missing module, or a shape
        mismatch (the first mismatched parameter and both shapes).
    """
    if which not in _ACTOR_NAMES:
        raise ReferenceCheckpointError(f"import_actor takes which in {_ACTOR_NAMES}, got {which!r}")
    return _import(path, actor_like, which)


def import_critic(path, critic_like, which: str = "critic"):
    """The critic ensemble ("critic") or its EMA ("critic_target"), in the layout of `critic_like`.

    Every leaf has the leading ensemble axis in both codes, so the ensemble size is checked with the
    shapes.
    """
    if which not in _CRITIC_NAMES:
        raise ReferenceCheckpointError(f"import_critic takes which in {_CRITIC_NAMES}, got {which!r}")
    return _import(path, critic_like, which)


def import_dual(path) -> Optional[Dict[str, float]]:
    """TRQAM's dual state {'lam', 'kl_ema'} from a reference checkpoint, or None (QAM and BC runs)."""
    state = load_reference_state(path)
    if "lam" not in state:
        return None
    return {"lam": float(np.asarray(state["lam"])), "kl_ema": float(np.asarray(state.get("kl_ema", 0.0)))}
