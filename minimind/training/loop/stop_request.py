"""A graceful stop on SIGTERM or SIGINT: finish the step, save, exit 0.

Schedulers send SIGTERM before preemption, and DeepSpeed's launcher passes SIGINT/SIGTERM on
to every rank (then waits 30 s before killing them). The handler only records the request;
the training loop shares it among ranks with the step's first collective, so every rank
stops after the same step.
"""

import signal


class StopRequest:
    """Records SIGTERM/SIGINT once installed; ``requested`` says whether one arrived."""

    def __init__(self):
        self.requested = False

    def install(self) -> "StopRequest":
        """Handle SIGTERM and SIGINT in this process from now on."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._record)
        return self

    def _record(self, signum, frame) -> None:
        self.requested = True
