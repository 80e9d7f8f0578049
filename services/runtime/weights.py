"""Sending weights to devices: one quantized delta per distinct base, fanned out per device.

Devices that hold the same model get the same payload, so the cost of encoding is paid once
per base version, not once per device (the same reason regional bridges fan out once).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Mapping
from typing import Literal

import numpy as np

from federated.params import Params, spec_of
from federated.payload import make_payload
from schemas import topics
from schemas.device import ModelPayload
from services.runtime.context import Context


def rng_for(*parts: object) -> np.random.Generator:
    """A generator seeded from names, so a redelivered step rebuilds the same payload."""
    seed = hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8]
    return np.random.default_rng(int.from_bytes(seed, "little"))


async def send_weights(
    ctx: Context,
    *,
    round_id: str,
    target: Params,
    bases: Mapping[str, str | None],
    purpose: Literal["train", "deploy"],
    iteration: int = 0,
    version: str | None = None,
) -> dict[str, tuple[str, int]]:
    """Send `target` to each device as a delta against the base it holds.

    `bases` maps device id to the digest of the model it holds (None: it holds none, or we no
    longer have that model, so it gets the full model). Returns device -> (digest of what it
    rebuilds, payload bytes).
    """
    groups: dict[str | None, list[str]] = defaultdict(list)
    for device_id, held in bases.items():
        groups[held].append(device_id)
    sent: dict[str, tuple[str, int]] = {}
    for base_digest, members in groups.items():
        base = await ctx.store.get_params(base_digest) if base_digest else None
        if base is not None and spec_of(base) != spec_of(target):
            base = None  # a different architecture: send the full model
        blob, rebuilt = make_payload(
            target, base, rng=rng_for(round_id, purpose, iteration, base_digest)
        )
        rebuilt_digest = await ctx.store.put_params(rebuilt)
        message = ModelPayload(
            purpose=purpose,
            round_id=round_id,
            iteration=iteration,
            version=version,
            base_digest=base_digest if base is not None else None,
            digest=rebuilt_digest,
            blob=blob,
        )
        for device_id in members:
            await ctx.publish(topics.device(topics.DEVICE_MODEL, device_id), message)
            sent[device_id] = (rebuilt_digest, len(blob))
    return sent


async def device_bases(ctx: Context, device_ids: list[str]) -> dict[str, str | None]:
    """What each device holds per its last status (None when unknown or not stored here).

    One read of the statuses, and one check per distinct model held: a handful of round
    trips however many devices.
    """
    held = {
        d: status.model_digest if status else None
        for d, status in (await ctx.store.statuses(device_ids)).items()
    }
    stored = {dg: await ctx.store.has_params(dg) for dg in set(held.values()) if dg}
    return {d: dg if dg and stored[dg] else None for d, dg in held.items()}
