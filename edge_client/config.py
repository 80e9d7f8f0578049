"""How a simulated device behaves: its resources and how often it fails."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class FailureRates(BaseModel):
    """Per-training-command probabilities of each failure a device reports.

    Each field is named for a `FailureReason` (the chaos reasons, in the order they are drawn).
    """

    model_config = ConfigDict(frozen=True)

    battery_died: float = Field(default=0.0, ge=0.0, le=1.0)
    network_timeout: float = Field(default=0.0, ge=0.0, le=1.0)
    device_suspended: float = Field(default=0.0, ge=0.0, le=1.0)


class DeviceProfile(BaseModel):
    """A device's resources at start; battery drains while training unless charging."""

    model_config = ConfigDict(frozen=True)

    battery: float = Field(default=1.0, ge=0.0, le=1.0)
    charging: bool = False
    network: str = "wifi"
    memory_mb: int = 1024
    failures: FailureRates = FailureRates()
    drain_per_iteration: float = 0.002
    slowdown_s: float = Field(default=0.0, ge=0.0)  # extra seconds per training (slow device)
    pause_below: float = 0.15
    # When a round asks for chaos, the share of devices that act it out.
    chaos_share: float = 0.8
    honor_chaos: bool = True  # simulator only; a real device ignores the round's chaos
