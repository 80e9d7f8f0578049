"""The runtime's error policy, as pure functions: what happens to a message a handler failed.

- `Rejected` (and undecodable input) is final: reported on `fl/errors/{service}`, marked
  handled, dropped. Bad input never becomes better by trying again.
- Anything else is retryable: Redis or the broker unavailable, an optimistic transaction that
  kept losing (`SagaConflict`), or a fault in our own code that may not recur. The message
  stays in the journal and is tried again after `backoff_ms(attempts)`; once `max_attempts`
  tries failed it becomes a dead letter, kept with its last error for an operator, and
  reported on `fl/errors/{service}`. A fault alone never fails a round.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import aiomqtt
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

# The connection to a server is gone: stop consuming, reconnect, replay the journal.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    aiomqtt.MqttError,
    RedisConnectionError,
    RedisTimeoutError,
)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how soon a failed message is tried again."""

    max_attempts: int = 8
    base_ms: int = 200
    cap_ms: int = 10_000

    def backoff_ms(self, attempts: int) -> int:
        """Wait before the next try after `attempts` failed ones: doubling, capped."""
        if attempts < 1:
            return 0
        doubling: int = 2 ** min(attempts - 1, 30)  # typeshed: int ** int may be a float
        return min(self.cap_ms, self.base_ms * doubling)

    def after_failure(self, attempts: int) -> Literal["retry", "dead_letter"]:
        """What to do with a message whose `attempts`-th try just failed."""
        return "dead_letter" if attempts >= self.max_attempts else "retry"


def describe(exc: BaseException) -> str:
    """One line naming an error, for the journal, the dead letters and the error topic."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
