"""Polling instead of sleeps: the one helper end-to-end tests wait with."""

import time
from collections.abc import Callable
from typing import Any


def wait_until(
    predicate: Callable[[], Any], deadline_s: float, what: str, interval_s: float = 0.5
) -> Any:
    """Poll ``predicate`` every ``interval_s`` until it returns something truthy (returned);
    exceptions count as "not yet". AssertionError naming ``what`` after ``deadline_s``."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            result = predicate()
        except Exception:
            result = None
        if result:
            return result
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {deadline_s:g}s waiting for {what}")
