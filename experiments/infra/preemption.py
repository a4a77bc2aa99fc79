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
    """Raised to stop a run on a signal. exit_code is 128 + the signal number (130 SIGINT, 143 SIGTERM).

    step: the newest checkpoint of the phase (None: none this attempt); offset: the phase's first step in
    the run's step count (online: offline_steps), so the message counts env steps; again: a second signal."""

    def __init__(self, signum: int, step: Optional[int] = None, phase: str = "", offset: int = 0,
                 again: bool = False):
        super().__init__(signal.Signals(signum).name)
        self.signum, self.step, self.phase, self.offset, self.again = signum, step, phase, offset, again

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def message(self) -> str:
        name = signal.Signals(self.signum).name
        if self.again:
            return (f"Interrupted ({name}) a second time, so at once (the newest complete checkpoint is kept); "
                    f"rerun the same command with --resume.")
        if self.step is None:
            where = "during start-up" if not self.phase else f"in {self.phase} before its first checkpoint"
        elif self.phase == "online":
            where = f"at online env step {self.step - self.offset} (step {self.step})"
        else:
            where = f"at {self.phase or 'training'} step {self.step}"
        return f"Interrupted ({name}) {where}; rerun the same command with --resume."


class Preemption:
    def __init__(self):
        self.signum: Optional[int] = None
        self._defer = 0
        self._critical = 0
        self._held: Optional[bool] = None  # a signal that must stop the program once the write is done (again?)
        self._previous = {}

    def install(self, hold: bool = False) -> "Preemption":
        """hold: defer signals from now on, until the caller's safe points (`check`) stop the program."""
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        self._defer += int(hold)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum, frame):
        first = self.signum is None
        self.signum = signum
        if self._critical:  # a checkpoint or log write is never cut: stop when it is done
            if not first or not self._defer:
                self._held = bool(self._held) or not first
            return
        if not first:
            raise Interrupted(signum, again=True)
        if not self._defer:
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
    def critical(self):
        """A write that no signal may cut (a checkpoint save or restore, a log row): a signal that would
        stop the program at once, even a second one, stops it when the write is done."""
        self._critical += 1
        try:
            yield
        finally:
            self._critical -= 1
        if not self._critical and self._held is not None:
            again, self._held = self._held, None
            raise Interrupted(self.signum, again=again)

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
