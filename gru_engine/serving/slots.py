"""Per-slot hidden states of the live session store (:class:`Slots`), on the host for a CPU
scorer or on the device for a CUDA one."""
from __future__ import annotations

import numpy as np


class Slots:
    """Hidden states of the store's slots and, per slot, the state before its last click (to
    answer without a click by replaying that click): host arrays for a CPU scorer
    (``scorer.state``), device arrays per layer for a CUDA scorer (``scorer.h``). ``scorer``
    may be replaced by one with the same hidden sizes that takes over the states."""

    def __init__(self, scorer, capacity: int):
        self.scorer = scorer
        self.cuda = not hasattr(scorer, "state")
        self.dev = scorer.dev if self.cuda else None
        scorer.begin(capacity)
        self.prev = [self._zeros_like(a) for a in self.current()]

    def current(self) -> list:
        sc = self.scorer
        return list(sc.h) + list(sc.extra_state) if self.cuda else [sc.state]

    def _zeros_like(self, a):
        return self.dev.zeros(a.shape) if self.cuda else np.zeros_like(a)

    def _index(self, rows):
        rows = np.asarray(rows, np.int64)
        return self.dev.to_device(rows) if self.cuda else rows

    def read(self, rows) -> list:
        r = self._index(rows)
        return [a[r].copy() for a in self.current()]

    def write(self, rows, values: list) -> None:
        r = self._index(rows)
        for a, v in zip(self.current(), values):
            a[r] = v

    def save_prev(self, rows) -> None:
        r = self._index(rows)
        for p, a in zip(self.prev, self.current()):
            p[r] = a[r]

    def restore_prev(self, rows) -> None:
        r = self._index(rows)
        for p, a in zip(self.prev, self.current()):
            a[r] = p[r]

    def host(self, rows) -> tuple:
        """(state, prev) of ``rows`` as host (n, width) float32 (layers side by side)."""
        r = self._index(rows)
        to_host = self.dev.to_host if self.cuda else np.asarray
        cat = lambda arrs: np.concatenate([np.asarray(to_host(a[r]), np.float32)
                                           for a in arrs], axis=1)
        return cat(self.current()), cat(self.prev)

    def load(self, rows, state, prev) -> None:
        r = self._index(rows)
        col = 0
        for a, p in zip(self.current(), self.prev):
            w = a.shape[1]
            conv = self.dev.to_device if self.cuda else np.asarray
            a[r] = conv(np.ascontiguousarray(state[:, col:col + w]))
            p[r] = conv(np.ascontiguousarray(prev[:, col:col + w]))
            col += w
