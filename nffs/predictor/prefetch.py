"""Prefetch policy: placeholder until the predictors land (hints only)."""
from __future__ import annotations

import logging

import numpy as np
import trio

log = logging.getLogger(__name__)


class Prefetcher:
    def __init__(self, store, layout, kind: str = "hoeffding") -> None:
        self.store = store
        self.layout = layout
        self.kind = kind
        self._send, self._recv = trio.open_memory_channel(1024)

    def hint(self, pages: list[int]) -> None:
        try:
            self._send.send_nowait(pages)
        except trio.WouldBlock:
            pass

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        async for pages in self._recv:
            try:
                await self.store.page_arrays(np.asarray(pages, dtype=np.uint64))
            except OSError as exc:
                log.debug("hinted prefetch failed: %s", exc)

    def stats(self) -> dict:
        return {"predictor": self.kind}
