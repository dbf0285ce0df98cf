"""A training job stopped by its cluster: SIGTERM / SIGINT become a request to checkpoint and stop.

Shared by the finetune trainer and semantic training (both resume from their last checkpoint), so it
sits below the stages.
"""

from __future__ import annotations

import logging
import signal

log = logging.getLogger(__name__)

PREEMPTED_EXIT = 143  # 128 + SIGTERM: the job did not finish, a rerun resumes


class PreemptionFlag:
    """Turns SIGTERM / SIGINT (cluster preemption, Ctrl-C) into a request to checkpoint and stop
    after the current iteration, instead of losing everything since the last checkpoint."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested = False
        self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}

    def _handle(self, signum, frame):
        log.warning("received signal %d; will checkpoint after this iteration and stop", signum)
        self.requested = True

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
