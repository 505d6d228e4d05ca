"""Stop a long run at a step boundary on SIGINT / SIGTERM (both trainers use this)."""

from __future__ import annotations

import signal
import threading


class StopFlag:
    """Set by SIGINT / SIGTERM while installed; the loop polls ``requested`` each step.

    ``with StopFlag() as stop: ...`` installs the handlers (main thread only; elsewhere the
    flag can still be set by hand) and restores the previous ones on exit.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self._previous: dict = {}

    def set(self, signum=None, frame=None) -> None:  # noqa: ARG002 - a signal handler
        self.requested = True

    def install(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self.set) for s in self.SIGNALS}
        return self

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def __enter__(self) -> StopFlag:
        return self.install()

    def __exit__(self, *exc) -> None:
        self.restore()
