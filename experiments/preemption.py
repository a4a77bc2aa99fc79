"""SIGTERM / SIGINT handling for unattended runs (a cluster preempts with SIGTERM, then SIGKILL).

Outside `deferred()` a signal stops the program at once with `Interrupted`. Inside it (a training
loop between checkpoints, a save, a log write) the signal is only recorded; the loop calls `check`
at a safe point, saves a checkpoint there and stops. A second signal always stops at once.
"""

import contextlib
import signal
from typing import Optional

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(Exception):
    """Raised to stop a run on a signal. exit_code is 128 + the signal number (130 SIGINT, 143 SIGTERM)."""

    def __init__(self, signum: int, step: Optional[int] = None, phase: str = ""):
        super().__init__(signal.Signals(signum).name)
        self.signum, self.step, self.phase = signum, step, phase

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def message(self) -> str:
        where = "before training started" if self.step is None else f"at {self.phase} step {self.step}".replace("  ", " ")
        return f"Interrupted ({signal.Signals(self.signum).name}) {where}; rerun the same command with --resume."


class Preemption:
    def __init__(self):
        self.signum: Optional[int] = None
        self._defer = 0
        self._previous = {}

    def install(self) -> "Preemption":
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum, frame):
        first = self.signum is None
        self.signum = signum
        if not first or not self._defer:
            raise Interrupted(signum)

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @contextlib.contextmanager
    def deferred(self):
        """Signals inside only set a flag; call check() at a safe point."""
        self._defer += 1
        try:
            yield
        finally:
            self._defer -= 1

    @contextlib.contextmanager
    def immediate(self):
        """Inside a deferred region, let a signal stop at once again (e.g. a long evaluation)."""
        saved, self._defer = self._defer, 0
        try:
            if self.requested:
                raise Interrupted(self.signum)
            yield
        finally:
            self._defer = saved

    def check(self, step: Optional[int] = None, phase: str = "") -> None:
        if self.requested:
            raise Interrupted(self.signum, step, phase)


NEVER = Preemption()  # a handler-less instance for library callers and tests: nothing is ever requested
