"""Every Redis key fedsaga writes, in one place (as arq's constants module).

On a Redis Cluster a script or MULTI may only touch keys of one hash slot, so keys written
together carry the same hash tag (the part in braces, which alone picks the slot):

| tag | keys |
|---|---|
| `{round_id}` | everything of one round: its hash, log, cohort, iterations, sums, deployment |
| `{devices}` | the device registry and when each device was last heard from |
| `{service}` | a service's retry journals (one per instance) and its dead letters |

Other keys stand alone: a lease, a blob, a model's registry keys, a timer set, a dedupe mark.
A write that spans two tags (a round and the round index, a version and the model index) is
split into single-slot steps, each idempotent, ordered so a crash between them leaves
nothing a replay does not complete (see the store's comments at each).
"""

PREFIX = "fedsaga"


def round_hash(round_id: str) -> str:
    """Hash: status, step, iteration, request, digests, versions, counters."""
    return f"{PREFIX}:round:{{{round_id}}}"


def round_events(round_id: str) -> str:
    """Stream: the round's audit log, one entry per saga event."""
    return f"{PREFIX}:round:{{{round_id}}}:events"


def round_logged(round_id: str) -> str:
    """Set: msg_ids already in the round's audit log (each event is logged once)."""
    return f"{PREFIX}:round:{{{round_id}}}:logged"


def cohort(round_id: str) -> str:
    """Set: devices leased for the round."""
    return f"{PREFIX}:round:{{{round_id}}}:cohort"


def active(round_id: str) -> str:
    """Set: cohort devices that have not failed (they get the next iteration)."""
    return f"{PREFIX}:round:{{{round_id}}}:active"


def failures(round_id: str) -> str:
    """Hash: device -> failure reason, over the whole round."""
    return f"{PREFIX}:round:{{{round_id}}}:failures"


def held(round_id: str) -> str:
    """Hash: device -> digest of the model it holds for this round."""
    return f"{PREFIX}:round:{{{round_id}}}:held"


def iteration(round_id: str, it: int) -> str:
    """Hash: device -> training state for one iteration."""
    return f"{PREFIX}:round:{{{round_id}}}:it:{it}"


def iteration_counts(round_id: str, it: int) -> str:
    """Hash: how many devices of the iteration are still `training`, and how many `done`."""
    return f"{PREFIX}:round:{{{round_id}}}:it:{it}:counts"


def accumulator(round_id: str, it: int) -> str:
    """Hash: device -> its buffered update (weight, then payload) until the iteration closes."""
    return f"{PREFIX}:round:{{{round_id}}}:it:{it}:acc"


def contributors(round_id: str, it: int) -> str:
    """Hash: device -> msg_id of its update taken into the iteration's sum (and buffer)."""
    return f"{PREFIX}:round:{{{round_id}}}:it:{it}:contrib"


def deployment(round_id: str) -> str:
    """Hash: device -> canary state."""
    return f"{PREFIX}:round:{{{round_id}}}:deploy"


def round_claimed(round_id: str) -> str:
    """String: set once by the client that requests the round (ids are never reused)."""
    return f"{PREFIX}:round:{{{round_id}}}:claimed"


def rounds() -> str:
    """Sorted set: every round id by creation time."""
    return f"{PREFIX}:rounds"


def lease(device_id: str) -> str:
    """String with TTL: the round a device is leased to."""
    return f"{PREFIX}:lease:{device_id}"


def devices() -> str:
    """Hash: device id -> its last status (msgpack)."""
    return f"{PREFIX}:{{devices}}"


def devices_seen() -> str:
    """Sorted set: device id -> when its last status arrived (ms)."""
    return f"{PREFIX}:{{devices}}:seen"


def blob(digest: str) -> str:
    """String: model weights by content digest."""
    return f"{PREFIX}:blob:{digest}"


def models() -> str:
    """Set: the name of every model with a registered version."""
    return f"{PREFIX}:models"


def versions(model: str) -> str:
    """Sorted set: a model's registered versions by creation time."""
    return f"{PREFIX}:model:{model}:versions"


def version(model: str, ver: str) -> str:
    """Hash: one version's lineage, metrics, digest and status."""
    return f"{PREFIX}:model:{model}:v:{ver}"


def active_version(model: str) -> str:
    """String: the version currently deployed to the fleet."""
    return f"{PREFIX}:model:{model}:active"


def rollout(model: str) -> str:
    """String with TTL: the round whose canary rollout of the model is under way."""
    return f"{PREFIX}:model:{model}:rollout"


def seen(service: str, msg_id: str) -> str:
    """String with TTL: a message this service has handled (at-least-once dedupe)."""
    return f"{PREFIX}:seen:{service}:{msg_id}"


def instance_holder(identity: str) -> str:
    """String (expiring): `host:pid` of the process running the instance `identity`."""
    return f"{PREFIX}:instance:{identity}"


def inflight(service: str, instance: str) -> str:
    """Hash: messages a service instance is handling (replayed after a crash)."""
    return f"{PREFIX}:inflight:{{{service}}}:{instance}"


def timers(service: str) -> str:
    """Sorted set: `round_id|tag` due at score (ms)."""
    return f"{PREFIX}:timers:{service}"


def inflight_due(service: str, instance: str) -> str:
    """Sorted set: journal entry -> when it may next be tried (ms)."""
    return f"{PREFIX}:inflight:{{{service}}}:{instance}:due"


def dead_letters(service: str) -> str:
    """Stream: messages a service gave up on after its retries, with the reason."""
    return f"{PREFIX}:deadletter:{{{service}}}"


def accuracy(round_id: str) -> str:
    """Hash: iteration -> the validator's holdout metrics of its aggregate (JSON)."""
    return f"{PREFIX}:round:{{{round_id}}}:accuracy"


def traffic(round_id: str) -> str:
    """Hash: `{iteration}:{up|down}:{device}` -> bytes of that weight payload."""
    return f"{PREFIX}:round:{{{round_id}}}:traffic"
