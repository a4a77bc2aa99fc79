"""Orbax checkpoints of the seed-stacked training state, the online replay data and the config.

Each checkpoint step holds four items: `state` (the full TrainState), `policy` (the actor params
alone, for evaluation without any training code), `meta` (JSON: config, phase, step, shapes) and,
in the online phase, `replay` (the per-seed online buffers). Orbax writes each step to a temporary
directory and renames it when complete, and keeps the newest `keep` steps.
"""

import json
import os
from typing import Any, Dict, List, Optional

import jax
import orbax.checkpoint as ocp
from absl import logging


class CheckpointError(RuntimeError):
    """No usable checkpoint, or one that does not belong to this run."""


def abstract(tree):
    return jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, tree)


def flatten(d: Dict, prefix: str = "") -> Dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def config_differences(saved: Dict, current: Dict) -> List[str]:
    """Names of the config fields whose values differ, as 'field: saved -> current'."""
    a, b = flatten(saved), flatten(json.loads(json.dumps(current)))
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


class Checkpointer:
    def __init__(self, directory: str, keep: int = 3):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def steps(self) -> List[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state, meta: Dict, replay=None) -> None:
        items = dict(state=ocp.args.StandardSave(state), policy=ocp.args.StandardSave(state.actor),
                     meta=ocp.args.JsonSave({**meta, "has_replay": replay is not None}))
        if replay is not None:
            items["replay"] = ocp.args.StandardSave(replay)
        self.manager.save(step, args=ocp.args.Composite(**items), force=True)
        self.manager.wait_until_finished()

    def read_meta(self, step: int) -> Dict:
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

    def restore(self, state_like, replay_like=None, items=("state", "replay"), step: Optional[int] = None):
        """(step, state, replay, meta) of the newest readable checkpoint, or None if there is none.

        An incomplete or corrupted newest checkpoint is reported and the previous one is used.
        items: which trees to read; ("policy",) reads the actor params alone (state_like = actor).
        step: read this step only.
        """
        steps = self.steps() if step is None else [step]
        for step in reversed(steps):
            try:
                meta = self.read_meta(step)
                args = {}
                if "state" in items:
                    args["state"] = ocp.args.StandardRestore(abstract(state_like))
                if "policy" in items:
                    args["policy"] = ocp.args.StandardRestore(abstract(state_like))
                if "replay" in items and meta.get("has_replay") and replay_like is not None:
                    args["replay"] = ocp.args.StandardRestore(abstract(replay_like))
                out = self.manager.restore(step, args=ocp.args.Composite(**args))
                tree = out.state if "state" in items else out.policy
                replay = out.replay if "replay" in args else None
                return step, tree, replay, meta
            except Exception as e:  # orbax raises many types for a damaged step
                logging.warning("Checkpoint %d in %s is incomplete or corrupted (%s: %s); falling back to "
                                "the previous one.", step, self.directory, type(e).__name__, str(e)[:200])
        if steps:
            raise CheckpointError(f"No readable checkpoint in {self.directory} (steps {steps} all failed to "
                                  "load). Delete the directory to start over.")
        return None

    def close(self) -> None:
        self.manager.close()
