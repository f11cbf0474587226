"""Where a rollout stands: its state and record, as status shows and the store keeps.

    progressing -> paused -> progressing          (operator)
    progressing -> baking -> promoted             (promotion, then the bake time)
    progressing | paused | baking -> rolled-back  (a breach, a crash loop)
    progressing | paused | baking -> aborted      (operator, supervisor restart)

A rollout without a bake time goes from progressing straight to promoted.
The record of an agent's latest rollout is kept (store.py), so a supervisor
that dies mid-rollout can say at its next start that the rollout was
aborted, and why.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class RolloutState(Enum):
    PROGRESSING = "progressing"
    PAUSED = "paused"
    BAKING = "baking"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled-back"
    ABORTED = "aborted"

    @property
    def ended(self) -> bool:
        return self in (RolloutState.PROMOTED, RolloutState.ROLLED_BACK, RolloutState.ABORTED)


# Why an automatic or manual rollback happened: caxton_rollbacks_total's
# `reason` label.
ROLLBACK_REASONS = ("manual", "error-rate", "latency", "shadow-mismatch", "crash-loop", "bake-failure",
                    "supervisor-restart")


@dataclass(frozen=True)
class RolloutRecord:
    agent: str
    strategy: str
    state: RolloutState
    stable_version: int
    candidate_version: int
    started_at: float  # Unix seconds
    steps: tuple[float, ...] = ()
    step: int = 0  # 1-based index into steps; 0 before the first
    share: float = 0.0  # the candidate's share of traffic now
    reason: str = ""
    verdict: str = ""
    ended_at: float = 0.0
