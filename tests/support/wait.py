"""The one polling loop of the tests and benchmarks."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(probe: Callable[[], T], timeout: float = 30, interval: float = 0.05, message: str = "the condition") -> T:
    """Call `probe` until it returns something true and return that; AssertionError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() >= deadline:
            raise AssertionError(f"{message} did not happen within {timeout} s (last: {got!r})")
        time.sleep(interval)
