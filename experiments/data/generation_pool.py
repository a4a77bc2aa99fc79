"""The process pool that collects a dataset's episode chunks in parallel for `generation`."""

from __future__ import annotations

import os
import pickle
import signal
import threading
import time
from typing import Iterator, Sequence

from experiments.data.collection import ChunkTask, worker_entry
from experiments.env_workers import children_skip_main, die_with_owner, process_start_time


def _init_worker(owner_pid: int, owner_start: int | None, abort) -> None:
    """`ProcessPoolExecutor` initializer: tie the worker's life to the owner's (kill -9 included, see
    `env_workers.die_with_owner`), and end it when the owner sets `abort` (a shared flag, polled: a
    lock or an `Event` could be left held by a worker killed mid-call, and block the owner)."""
    import warnings

    die_with_owner(owner_pid, owner_start)
    warnings.filterwarnings('ignore')
    # The parent decides when to stop; Ctrl-C in the terminal should not kill workers mid-write.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch() -> None:
        while not abort.value:
            time.sleep(0.05)
        os._exit(1)

    threading.Thread(target=watch, name='abort-watchdog', daemon=True).start()


class _WorkerError(RuntimeError):
    """A worker process died, or raised an exception that cannot be sent to the parent (its text)."""


def _pool_task(task: ChunkTask) -> tuple[ChunkTask, int]:
    """In a worker process: one chunk. The executor sends its exception to the parent, which re-raises
    it; one that cannot make the trip goes as a `_WorkerError` with its text and traceback."""
    try:
        return worker_entry(task)
    except Exception as e:
        import traceback

        try:
            pickle.loads(pickle.dumps(e))
        except Exception:
            raise _WorkerError(f'Worker failed with {e!r}:\n{traceback.format_exc()}') from None
        raise


class WorkerPool:
    """A `ProcessPoolExecutor` whose workers die with this process and never import the launcher's main
    module; `close(abort=True)` stops them at once."""

    def __init__(self, num_workers: int, start_method: str):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        ctx = multiprocessing.get_context(start_method)
        self._abort = ctx.RawValue('b', 0)
        owner = (os.getpid(), process_start_time(os.getpid()))
        self._executor = ProcessPoolExecutor(
            num_workers, mp_context=ctx, initializer=_init_worker, initargs=(*owner, self._abort))

    def run(self, tasks: Sequence[ChunkTask]) -> Iterator[tuple[ChunkTask, int]]:
        """Yield results in completion order; raise the first worker error."""
        from concurrent.futures import as_completed
        from concurrent.futures.process import BrokenProcessPool

        # The executor starts its workers in `submit`. Started from the launcher (its auto-generation),
        # they would import its main module, and jax with it: they import this module (jax-free) instead,
        # which is all that the pickled tasks need.
        with children_skip_main():
            futures = [self._executor.submit(_pool_task, task) for task in tasks]
        for future in as_completed(futures):
            try:
                result = future.result()
            except BrokenProcessPool as e:
                raise _WorkerError(f'A worker process died ({e})') from e
            yield result

    def close(self, abort: bool) -> None:
        if abort:
            self._abort.value = 1  # the workers end at once; the executor sees them die and joins them
        self._executor.shutdown(wait=True, cancel_futures=abort)
