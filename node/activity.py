"""What the receiving process is doing, shared with the worker process without locks.

The receiver (node/dimse/storage_scp.py) stamps every stored object and
counts open associations; the workers (node/pipeline/worker.py) hold back
while objects are arriving (up to defer_while_receiving seconds), because
even at idle CPU priority their reads and fsyncs share the disk with the
receiver's.
"""

from __future__ import annotations

import time
from multiprocessing.context import BaseContext


class Activity:
    QUIET_AFTER_STORE = 0.3  # s without a store: the sender has paused
    IDLE_ASSOCIATION = 2.0  # s without a store on an open association: it idles

    def __init__(self, ctx: BaseContext) -> None:
        self.last_store = ctx.Value("d", 0.0, lock=False)
        self.open_associations = ctx.Value("i", 0, lock=False)

    def stored(self) -> None:
        self.last_store.value = time.monotonic()

    def busy(self) -> bool:
        since = time.monotonic() - self.last_store.value
        return since < self.QUIET_AFTER_STORE or (self.open_associations.value > 0 and since < self.IDLE_ASSOCIATION)
