"""Orbax checkpoints of the seed-stacked training state, the online replay data and the config.

Each checkpoint step holds four items: `state` (the full TrainState), `policy` (the actor params
alone, for evaluation without any training code), `meta` (JSON: config, phase, step, shapes) and,
in the online phase, `replay` (the per-seed online buffers). Orbax writes each step to a temporary
directory and renames it when complete, and keeps the newest `keep` steps.

A damaged step (truncated array files, a missing manifest, a leftover temporary directory from a
kill during a save) is never deleted: it is moved to `<directory>_damaged/` and reported in one
line, and the previous step is used. Training then runs through the damaged step again.
"""

import json
import logging as py_logging
import os
import sys
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Union

import jax
import orbax.checkpoint as ocp
from absl import logging
from flax import traverse_util

from experiments.infra.errors import UserError

TMP_MARKER = ".orbax-checkpoint-tmp"


class CheckpointError(UserError, RuntimeError):
    """No usable checkpoint, or one that does not belong to this run."""


def quiet_orbax() -> None:
    """Orbax logs every save and restore at INFO through absl (and jax through Python logging); keep
    only warnings."""
    logging.set_verbosity(logging.WARNING)
    for name in ("orbax", "orbax.checkpoint", "jax", "absl"):
        py_logging.getLogger(name).setLevel(py_logging.WARNING)


def abstract(tree):
    return jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, tree)


def flatten(d: Dict) -> Dict[str, Any]:
    """A JSON config as {'agent.num_critics': 2, ...}; tuples as lists, as JSON reads them back."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in traverse_util.flatten_dict(d, sep=".").items()}


def config_differences(saved: Dict, current: Dict, ignore=()) -> List[str]:
    """The config fields whose values differ, as 'field: saved -> current' (fields in `ignore` skipped)."""
    a, b = flatten(saved), flatten(json.loads(json.dumps(current)))
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k) and k not in ignore]


# Leaves that a checkpoint written by an earlier version may lack. The per-learner hyperparameters are
# written from the config at the start of every phase, so a missing one is filled with zeros on restore.
FILLED_ON_RESTORE = ("hparams/",)


def _key_name(key) -> str:
    for attribute in ("key", "name", "idx"):
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


def _leaves(tree) -> Dict[str, Any]:
    """A tree's leaves by path ('opt_state/1/0/mu/...'), the same for a target and orbax's metadata."""
    pairs = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(_key_name(k) for k in path): leaf for path, leaf in pairs}


def _leaf_shapes(tree) -> Dict[str, tuple]:
    return {k: tuple(getattr(leaf, "shape", ())) for k, leaf in _leaves(tree).items()}


def _fill(restored, like):
    """`like`'s tree with the restored leaves, and zeros (or like's own value) where none was saved."""
    import jax.numpy as jnp

    saved = _leaves(restored)
    paths, treedef = jax.tree_util.tree_flatten_with_path(like)
    leaves = []
    for path, leaf in paths:
        name = "/".join(_key_name(k) for k in path)
        if name in saved:
            leaves.append(saved[name])
        else:
            leaves.append(leaf if isinstance(leaf, jax.Array) else jnp.zeros(leaf.shape, leaf.dtype))
    return jax.tree_util.tree_unflatten(treedef, leaves)


def _ignore_closed_event_loop() -> None:
    """A failed tensorstore read inside an orbax restore leaves callbacks that fire after orbax's event
    loop has closed; Python then prints a 'RuntimeError: Event loop is closed' traceback for each. The
    damage is already reported in one line, so drop exactly these (everything else goes through)."""
    previous = sys.unraisablehook
    if getattr(previous, "_drops_closed_loop", False):
        return

    def hook(unraisable):
        if isinstance(unraisable.exc_value, RuntimeError) and "Event loop is closed" in str(unraisable.exc_value):
            return
        if _abandoned_array_read(unraisable):
            return
        previous(unraisable)

    hook._drops_closed_loop = True
    sys.unraisablehook = hook
    # The same failed reads can also surface, when their asyncio tasks are collected, as "Task exception
    # was never retrieved" records of the asyncio logger, each with a traceback.
    py_logging.getLogger("asyncio").addFilter(_drop_unretrieved_task_errors)


def _abandoned_array_read(unraisable) -> bool:
    """An orbax array read still pending when a sibling read of the same restore failed: when its
    coroutine is collected, the GeneratorExit that closes it is caught by orbax's `except BaseException`
    and re-raised as 'Encountered error while reading array index', which Python prints (65 lines) as
    'Exception ignored in: <coroutine object _read_array_index_and_device_put>'. The restore has
    already failed and been reported; only these records are dropped."""
    return (getattr(unraisable.object, "__qualname__", None) == "_read_array_index_and_device_put"
            and isinstance(getattr(unraisable.exc_value, "__cause__", None), GeneratorExit))


def _drop_unretrieved_task_errors(record: py_logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Task exception was never retrieved")


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Restored(NamedTuple):
    """What `Checkpointer.restore` read from one checkpoint."""

    step: int
    state: Any  # the training state (or the actor params alone, items=("policy",))
    replay: Any  # the online replay, or None
    meta: Dict  # the JSON saved beside them (config, phase, eval_pending, ...)


class Checkpointer:
    def __init__(self, directory: str, keep: int = 3, read_only: bool = False):
        self.directory = os.path.abspath(directory)
        self.keep, self.read_only = keep, read_only
        # step -> reason ('<error type>: <message>') of each step that `restore` found damaged, in the
        # order found (moved aside unless read-only): the one-line reports as data, for callers that
        # report the fallback themselves.
        self.damaged: Dict[int, str] = {}
        if not read_only:
            self._move_aside_leftovers()
        self.manager = self._open()

    def _open(self):
        # Saves block anyway (the caller waits for each), so skip orbax's async thread and event loop:
        # nothing is left running when a run stops on an error or a signal.
        verbosity = logging.get_verbosity()
        if self.read_only:  # orbax warns that a read-only manager saves nothing and keeps everything
            logging.set_verbosity(min(verbosity, logging.ERROR))  # absl: lower is quieter; never louder
        try:
            options = ocp.CheckpointManagerOptions(max_to_keep=self.keep, create=not self.read_only,
                                                   enable_async_checkpointing=False, read_only=self.read_only)
            # Handlers named up front, so that a step's metadata (shapes) can be read before any restore.
            handlers = {name: ocp.StandardCheckpointHandler() for name in ("state", "policy", "replay")}
            return ocp.CheckpointManager(self.directory, options=options,
                                         item_handlers={**handlers, "meta": ocp.JsonCheckpointHandler()})
        finally:
            logging.set_verbosity(verbosity)

    @property
    def damaged_dir(self) -> str:
        return self.directory.rstrip(os.sep) + "_damaged"

    def _move_aside(self, name: str, reason: str, why: str = "is damaged") -> str:
        os.makedirs(self.damaged_dir, exist_ok=True)
        target = os.path.join(self.damaged_dir, f"{name}.{time.strftime('%Y%m%d-%H%M%S')}")
        while os.path.exists(target):
            target += "_"
        os.replace(os.path.join(self.directory, name), target)
        _say(f"Checkpoint {name} in {self.directory} {why} ({reason}); moved it to {target}.")
        return target

    def _move_aside_leftovers(self) -> None:
        """A save killed half-way leaves a temporary directory; orbax would trip over it later."""
        if not os.path.isdir(self.directory):
            return
        for name in sorted(os.listdir(self.directory)):
            if TMP_MARKER in name:
                self._move_aside(name, "a save that never finished", why="is left over")

    def steps(self) -> List[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state, meta: Dict, replay=None) -> None:
        if step in self.steps():  # only after a fallback past this step: keep the old copy aside
            self.manager.close()
            self._move_aside(str(step), "a new save of the same step", why="is superseded")
            self.manager = self._open()
        items = dict(state=ocp.args.StandardSave(state), policy=ocp.args.StandardSave(state.actor),
                     meta=ocp.args.JsonSave({**meta, "has_replay": replay is not None}))
        if replay is not None:
            items["replay"] = ocp.args.StandardSave(replay)
        self.manager.save(step, args=ocp.args.Composite(**items), force=True)
        self.manager.wait_until_finished()

    def read_meta(self, step: int) -> Dict:
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

    def restore(self, state_like: Union[Any, Callable[[Dict], Any]], replay_like=None,
                items=("state", "replay"), step: Optional[int] = None,
                check_meta: Optional[Callable[[Dict], None]] = None):
        """The newest readable checkpoint (`Restored`), or None if there is none.

        A damaged newest checkpoint is reported in one line, moved aside (unless read-only), and the
        previous one is used. When every step is damaged (and moved aside) the result is None: the
        caller starts over. Read-only, it raises CheckpointError instead.
        state_like: the target tree, or a function of the step's meta that returns it.
        items: which trees to read; ("policy",) reads the actor params alone (state_like = actor).
        step: read this step only.
        check_meta: called with the meta before any array is read; what it raises propagates (use it
          to refuse a checkpoint made with other settings, which is not damage).
        """
        steps = self.steps() if step is None else [step]
        fill_missing = FILLED_ON_RESTORE
        failed = []
        _ignore_closed_event_loop()
        for step in reversed(steps):
            try:
                meta = self.read_meta(step)
            except Exception as e:  # orbax raises many types for a damaged step
                self._damaged(step, e)
                failed.append(step)
                continue
            if check_meta is not None:
                check_meta(meta)
            targets = {}
            if "state" in items or "policy" in items:
                targets["state" if "state" in items else "policy"] = (
                    state_like(meta) if callable(state_like) else state_like)
            if "replay" in items and meta.get("has_replay") and replay_like is not None:
                targets["replay"] = replay_like(meta) if callable(replay_like) else replay_like
            try:
                saved = self.manager.item_metadata(step)
                # Shapes are compared before any array is read: a checkpoint of other shapes is not damage.
                filled = {name: self._compare(step, name, saved[name], like, fill_missing)
                          for name, like in targets.items()}
                args = {name: ocp.args.StandardRestore(None if filled[name] else abstract(like))
                        for name, like in targets.items()}
                out = self.manager.restore(step, args=ocp.args.Composite(**args))
            except CheckpointError:
                raise
            except Exception as e:
                self._damaged(step, e)
                failed.append(step)
                continue
            trees = {name: _fill(out[name], like) if filled[name] else out[name] for name, like in targets.items()}
            tree = trees.get("state", trees.get("policy"))
            replay = trees.get("replay")
            if failed:
                _say(f"Using checkpoint step {step} in {self.directory}.")
            return Restored(step, tree, replay, meta)
        if failed and self.read_only:
            raise CheckpointError(f"No readable checkpoint in {self.directory}: steps {sorted(failed)} are damaged.")
        return None

    def _compare(self, step: int, item: str, saved, like, fill_missing) -> bool:
        """Whether the saved tree lacks leaves that may be filled in (an older checkpoint); raises
        CheckpointError, changing nothing, when it holds other leaves or shapes than `like`."""
        saved, wanted = _leaf_shapes(getattr(saved, "tree", saved)), _leaf_shapes(like)
        missing = [k for k in wanted if k not in saved]
        wrong = [f"{k}: {saved[k]} -> {wanted[k]}" for k in wanted if k in saved and saved[k] != wanted[k]]
        wrong += [f"{k}: saved but not expected" for k in saved if k not in wanted]
        wrong += [f"{k}: expected but not saved" for k in missing if not k.startswith(tuple(fill_missing))]
        if wrong:
            raise CheckpointError(
                f"Checkpoint {step} in {self.directory} holds a {item} of other shapes than this run expects "
                f"({'; '.join(wrong[:3])}{'; ...' if len(wrong) > 3 else ''}): it was made with other settings or "
                f"another version of the code. Nothing was changed; resume it with the settings it was made with.")
        return bool(missing)

    def _damaged(self, step: int, error: Exception) -> None:
        reason = f"{type(error).__name__}: {str(error).splitlines()[0][:160] if str(error) else ''}"
        self.damaged[step] = reason
        if self.read_only:
            _say(f"Checkpoint {step} in {self.directory} is damaged ({reason}); trying the previous one.")
            return
        self.manager.close()
        self._move_aside(str(step), reason)
        self.manager = self._open()

    def close(self) -> None:
        self.manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
