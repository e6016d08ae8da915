"""When a failed call is sent again, and after how long: shared by both clients."""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass

import httpx

# The request never left this machine: sending it again cannot do anything twice.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout)
# The connection broke after the request went out: the service may have acted on it, so only a
# call that does the same when repeated is sent again. Timeouts are not among these: a slow
# answer comes no faster when asked again, and the timeout is the caller's own limit.
BROKEN_AFTER_SENDING = (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError)


@dataclass(frozen=True)
class RetryPolicy:
    """Up to ``retries`` more attempts after the first, ``backoff`` seconds doubling each time
    (with jitter, so clients refused together do not return together), never longer than
    ``max_delay``. A 503 is retried for every call: the service sends it for work it did not do
    (nothing is written when the database is unreachable) and says when to come back in
    ``Retry-After``, which is followed."""

    retries: int = 5
    backoff: float = 0.25
    max_delay: float = 30.0

    def after_error(
        self, exc: httpx.TransportError, idempotent: bool, attempt: int
    ) -> float | None:
        """Seconds to wait before attempt ``attempt + 1`` after a transport error; None: give up."""
        resend = isinstance(exc, NOT_SENT) or (idempotent and isinstance(exc, BROKEN_AFTER_SENDING))
        return self._delay(attempt) if resend and attempt < self.retries else None

    def after_response(self, response: httpx.Response, attempt: int) -> float | None:
        """Seconds to wait before sending again after ``response``; None: it is the answer."""
        if response.status_code != 503 or attempt >= self.retries:
            return None
        asked = retry_after(response.headers.get("retry-after"))
        return min(asked, self.max_delay) if asked is not None else self._delay(attempt)

    def _delay(self, attempt: int) -> float:
        return min(self.backoff * 2**attempt * random.uniform(0.5, 1.0), self.max_delay)


def retry_after(value: str | None) -> float | None:
    """A Retry-After header in seconds: delay-seconds or an HTTP date (RFC 9110 10.2.3)."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None  # unreadable: the caller's own backoff applies
    return max(0.0, when.timestamp() - time.time())
