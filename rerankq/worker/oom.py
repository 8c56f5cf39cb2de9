"""Out-of-memory handling for the batcher: an adaptive token budget and the error for pairs that
cannot fit on this device at all."""

from __future__ import annotations

import json
import logging

log = logging.getLogger("rerankq.oom")


class PairTooLarge(Exception):
    """A pair did not fit in device memory even alone, or the device kept running out of memory."""


class AdaptiveBudget:
    """The padded-token budget the batcher packs to.

    Halves on every out-of-memory error (down to ``floor``) and grows back by ``recovery`` per
    successful forward pass, so one long document slows the worker only for a while.
    """

    def __init__(self, configured: int, floor: int = 256, recovery: float = 1.1) -> None:
        self.configured = configured
        self.floor = min(floor, configured)
        self.recovery = recovery
        self.current = configured
        self.oom_splits = 0
        self.consecutive_ooms = 0

    def shrink(self, batch_pairs: int, batch_tokens: int) -> None:
        self.current = max(self.floor, self.current // 2)
        self.oom_splits += 1
        self.consecutive_ooms += 1
        line = {
            "event": "oom",
            "batch_pairs": batch_pairs,
            "batch_tokens": batch_tokens,
            "token_budget": self.current,
            "oom_splits_total": self.oom_splits,
            "consecutive_ooms": self.consecutive_ooms,
        }
        log.warning(json.dumps(line))

    def recover(self) -> bool:
        """After a successful batch: grow back towards the configured budget. True if it grew."""
        self.consecutive_ooms = 0
        if self.current >= self.configured:
            return False
        self.current = min(self.configured, max(self.current + 1, int(self.current * self.recovery)))
        return True
