"""A device's local model store: the deployed model, the one before it, and round weights."""

from __future__ import annotations

from dataclasses import dataclass, field

from federated.params import Params


@dataclass
class Held:
    """One model a device holds."""

    digest: str
    params: Params
    version: str | None = None


@dataclass
class LocalModelStore:
    """What a device keeps: `current` (serving), `previous` (for rollback), staged weights."""

    current: Held | None = None
    previous: Held | None = None
    rounds: dict[str, Held] = field(default_factory=dict)  # round id -> training weights
    pending_deploy: dict[str, Held] = field(default_factory=dict)  # digest -> deploy weights

    def lookup(self, digest: str) -> Params | None:
        """Weights with this digest, wherever the device holds them."""
        for held in (
            self.current,
            self.previous,
            *self.rounds.values(),
            *self.pending_deploy.values(),
        ):
            if held is not None and held.digest == digest:
                return held.params
        return None

    def deploy(self, held: Held) -> None:
        """Serve `held`; keep what was serving as the rollback target."""
        if self.current is not None and self.current.digest == held.digest:
            self.current.version = held.version  # same weights, possibly a new label
            return
        self.previous, self.current = self.current, held

    def rollback(self, version: str) -> bool:
        """Return to the previous model if `version` is serving; True when it did."""
        if self.current is None or self.current.version != version:
            return False
        self.current, self.previous = self.previous, None
        return True

    def revoke(self, round_id: str) -> bool:
        """Delete the weights received for a round."""
        return self.rounds.pop(round_id, None) is not None
