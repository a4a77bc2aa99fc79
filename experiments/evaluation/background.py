"""Evaluation beside training: `BackgroundEvaluator` runs evaluations on a background thread.

It keeps one `Evaluator` (async by default, sized to the free CPU cores and memory by
`experiments.evaluation.vector.default_num_workers`) and runs submitted evaluations on one worker
thread of a `concurrent.futures.ThreadPoolExecutor`, in submission order, while the caller keeps
training.
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import threading
import time
from typing import Any, Callable, Optional

import numpy as np
from gymnasium.vector import AsyncVectorEnv

from experiments.evaluation.episodes import EvalResult, EvaluationCancelled, Evaluator, episodes_per_round
from experiments.evaluation.vector import DEFAULT_ASYNC_CONTEXT, default_num_workers


def background_episodes_per_round(num_seeds: int, num_episodes: int, num_workers: int) -> int:
    """The largest divisor E_r of `num_episodes` with num_seeds * E_r <= num_workers (at least 1)."""
    return episodes_per_round(num_episodes, int(num_workers) // int(num_seeds))


class BackgroundEvaluator:
    """Evaluations of S seeds x E episodes on a background thread, beside training.

    One `Evaluator` is built here (in the calling thread, blocking for the env builds) and reused by
    every evaluation. With vectorization='async' (the default) its S * E_r envs run in S * E_r worker
    processes, E_r = `background_episodes_per_round(S, E, num_workers)`, `num_workers` defaulting to
    every CPU core but one, within half of the free memory (`default_num_workers`); the E episodes run in E / E_r rounds, so memory stays bounded.

    `submit(step, params, seed, key)` copies `params` to host memory (`jax.device_get`) and returns at
    once. A `ThreadPoolExecutor` with one worker thread runs the evaluations in submission order, each
    exactly as `Evaluator.run(functools.partial(act_fn, params), seed=seed, horizon=horizon, key=key)`,
    so the results equal those of a blocking sync `Evaluator` with the same E_r, seeds and keys.
    `poll()` returns the finished `(step, EvalResult)` pairs in submission order (an earlier step is
    always returned before a later one), `wait()` blocks until all submitted work is done and returns
    the rest, `pending()` lists the steps submitted but not yet returned, and `waited_s` is the total
    time the caller spent blocked in `wait()`. An exception raised by an evaluation is re-raised by the
    next `poll()` / `wait()` (and `submit()`), and again at every later call; the evaluations queued
    after it do not run, and finished results not yet returned are dropped. `close()`
    cancels the evaluations not started, stops the running one at its next env step, and closes the
    envs; it does not wait for any evaluation to finish. Call the methods from one thread (the
    training loop's).

        evaluator = BackgroundEvaluator(env_name, S, E, act_fn=policy, horizon=H)
        for step in ...:
            train...
            if step % eval_every == 0:
                evaluator.submit(step, actor_params, seed=step, key=eval_key)
            for done_step, result in evaluator.poll():
                log(done_step, result)
        for done_step, result in evaluator.wait():
            log(done_step, result)
        evaluator.close()
    """

    def __init__(
        self,
        env_name: str,
        num_seeds: int,
        num_episodes: int,
        *,
        act_fn: Callable[[Any, np.ndarray, Any], Any],
        horizon: int,
        max_episode_steps: Optional[int] = None,
        episodes_per_round: Optional[int] = None,
        vectorization: str = 'async',
        num_workers: Optional[int] = None,
        context: Optional[str] = DEFAULT_ASYNC_CONTEXT,
        close_timeout_s: float = 30.0,
    ):
        self.num_workers = default_num_workers() if num_workers is None else max(1, int(num_workers))
        if episodes_per_round is None:
            episodes_per_round = background_episodes_per_round(num_seeds, num_episodes, self.num_workers)
        self.act_fn = act_fn
        self.horizon = int(horizon)
        self.close_timeout_s = float(close_timeout_s)
        self.evaluator = Evaluator(
            env_name,
            num_seeds,
            num_episodes,
            max_episode_steps=max_episode_steps,
            episodes_per_round=episodes_per_round,
            vectorization=vectorization,
            context=context,
        )
        self.waited_s = 0.0
        # One worker thread: the evaluations run one at a time, in submission order.
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix='background-evaluation')
        # (step, future) submitted and not yet returned, in submission order.
        self._futures: collections.deque[tuple[int, concurrent.futures.Future]] = collections.deque()
        self._error: Optional[BaseException] = None
        self._closed = False
        self._cancel = threading.Event()
        self.evaluator._cancel = self._cancel

    @property
    def episodes_per_round(self) -> int:
        return self.evaluator.episodes_per_round

    def submit(self, step: int, params: Any, seed: int, key: Any = None) -> None:
        """Queue an evaluation of `params` (copied to host now); returns at once."""
        import jax

        self._raise_error()
        if self._closed:
            raise RuntimeError('BackgroundEvaluator.submit after close().')
        future = self._executor.submit(self._run, jax.device_get(params), int(seed), key)
        self._futures.append((int(step), future))

    def poll(self) -> list[tuple[int, EvalResult]]:
        """The evaluations finished since the last poll/wait, in submission order; never blocks."""
        self._raise_error()
        return self._take()

    def wait(self) -> list[tuple[int, EvalResult]]:
        """Block until every submitted evaluation is done; return the ones not yet returned."""
        start = time.perf_counter()
        try:
            # After a failure the later evaluations end at once (`_run`), so this returns.
            concurrent.futures.wait(self._uncancelled())
        finally:
            self.waited_s += time.perf_counter() - start
        self._raise_error()
        return self._take()

    def pending(self) -> list[int]:
        """The steps submitted and not yet returned by poll/wait (queued, running or finished)."""
        return [step for step, _ in self._futures]

    def close(self) -> None:
        """Cancel queued evaluations, stop the running one, close the envs. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._cancel.set()
        self._executor.shutdown(wait=False, cancel_futures=True)
        _, running = concurrent.futures.wait(self._uncancelled(), timeout=self.close_timeout_s)
        if running:
            # The running evaluation is stuck in the policy (or in an env step): kill the workers; the
            # evaluation ends with an error nobody reads.
            envs = self.evaluator.envs
            if isinstance(envs, AsyncVectorEnv):
                for process in envs.processes:
                    if process.is_alive():
                        process.kill()
        else:
            self._executor.shutdown(wait=True)  # nothing is left to run: the thread ends at once
            self.evaluator.close()

    def __enter__(self) -> 'BackgroundEvaluator':
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # Internals.

    def _take(self) -> list[tuple[int, EvalResult]]:
        """Pop the finished results at the head of the queue (a later one waits for the earlier ones)."""
        out = []
        while self._futures:
            step, future = self._futures[0]
            if not future.done() or future.cancelled() or future.exception() is not None:
                break
            out.append((step, future.result()))
            self._futures.popleft()
        return out

    def _uncancelled(self) -> list[concurrent.futures.Future]:
        # A future cancelled before it started never counts as done in `concurrent.futures.wait`.
        return [future for _, future in self._futures if not future.cancelled()]

    def _raise_error(self) -> None:
        error = self._error
        if error is not None:
            raise error

    def _run(self, params: Any, seed: int, key: Any) -> EvalResult:
        """In the worker thread: one evaluation, unless an earlier one failed or `close` was called."""
        if self._error is not None or self._cancel.is_set():
            raise EvaluationCancelled('evaluation cancelled')
        try:
            return self.evaluator.run(
                functools.partial(self.act_fn, params), seed=seed, horizon=self.horizon, key=key)
        except EvaluationCancelled:
            raise
        except BaseException as e:  # re-raised in the caller by poll/wait/submit
            if not self._closed:
                self._error = e
