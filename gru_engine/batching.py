"""Session-parallel mini-batches (GRU4Rec paper, Fig. 2), compiled with Numba.

``batch_size`` rows each walk one session; at every step a row's input is its current event and
its target the next event. A row whose session has no next event takes the next unvisited session
(hidden state reset to zero); when no session is left, finished rows drop out and the surviving
rows are compacted in order (the batch shrinks). The epoch stops when no row is left, or when
fewer than ``min_rows`` rows are left (2 with ``n_sample=0``, as the official code).

State of a schedule (all preallocated with ``batch_size`` entries):
    cur:   int64, index into ``items`` of each row's current (input) event
    end:   int64, one past the last event of the row's session
    reset: bool, True for rows whose session starts at this step (hidden state must be zero)
    src:   int64, for each row the row it occupied in the previous step (rows only move up)

:func:`augment_sessions` makes an epoch's augmented sessions (random crops and click removal,
``augment_crop_p`` / ``augment_drop_p``) in the same CSR layout, before they reach the schedule.
"""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, error_model="numpy")
def _next_session(order, offsets, next_sess):
    """First unvisited session (position in ``order``) with >= 2 events, or -1."""
    while next_sess < len(order):
        s = order[next_sess]
        if offsets[s + 1] - offsets[s] >= 2:
            return next_sess
        next_sess += 1
    return -1


@njit(cache=True, error_model="numpy")
def schedule_start(order, offsets, batch_size, cur, end, reset, src):
    """Fill the first step's rows; returns ``(n_rows, next_sess)``.

    order: (n_sessions,) int64 visiting order of sessions; offsets: (n_sessions+1,) int64 CSR.
    """
    n_rows = 0
    next_sess = 0
    while n_rows < batch_size:
        k = _next_session(order, offsets, next_sess)
        if k < 0:
            next_sess = len(order)
            break
        s = order[k]
        cur[n_rows] = offsets[s]
        end[n_rows] = offsets[s + 1]
        reset[n_rows] = True
        src[n_rows] = n_rows
        n_rows += 1
        next_sess = k + 1
    return n_rows, next_sess


@njit(cache=True, error_model="numpy")
def schedule_advance(order, offsets, n_rows, next_sess, min_rows, cur, end, reset, src):
    """Move every row one event forward; returns the new ``(n_rows, next_sess)``.

    Finished rows take the next unvisited sessions in row order; rows left without a session
    are removed and the rest compacted (``src`` says where each row came from). ``n_rows`` is 0
    when the epoch is over.
    """
    w = 0
    for r in range(n_rows):
        c = cur[r] + 1
        e = end[r]
        rs = False
        if c + 1 >= e:
            k = _next_session(order, offsets, next_sess)
            if k < 0:
                next_sess = len(order)
                continue
            s = order[k]
            next_sess = k + 1
            c = offsets[s]
            e = offsets[s + 1]
            rs = True
        cur[w] = c
        end[w] = e
        reset[w] = rs
        src[w] = r
        w += 1
    if w < min_rows:
        w = 0
    return w, next_sess


@njit(cache=True, error_model="numpy")
def full_schedule(items, order, offsets, batch_size, min_rows):
    """The whole epoch's schedule as flat arrays (the CUDA backend copies it to the device once
    per epoch; also used by tests and benchmarks).

    Returns ``(step_rows, inputs, targets, resets, srcs)``: ``step_rows`` (n_steps,) int64 rows
    per step; the other four concatenate the steps' rows: int32 input items, int32 target
    items, bool reset flags, int32 ``src`` (the row each row occupied in the previous step, so
    its hidden state is row ``src`` of the previous step's output; ``r`` itself in the first
    step).
    """
    cur = np.empty(batch_size, np.int64)
    end = np.empty(batch_size, np.int64)
    reset = np.empty(batch_size, np.bool_)
    src = np.empty(batch_size, np.int64)
    n_rows, next_sess = schedule_start(order, offsets, batch_size, cur, end, reset, src)
    if n_rows < min_rows:
        n_rows = 0
    total = len(items)
    step_rows = np.empty(total + 1, np.int64)
    inputs = np.empty(total, np.int32)
    targets = np.empty(total, np.int32)
    resets = np.empty(total, np.bool_)
    srcs = np.empty(total, np.int32)
    n_steps = 0
    pos = 0
    while n_rows > 0:
        step_rows[n_steps] = n_rows
        for r in range(n_rows):
            inputs[pos] = items[cur[r]]
            targets[pos] = items[cur[r] + 1]
            resets[pos] = reset[r]
            srcs[pos] = src[r]
            pos += 1
        n_steps += 1
        n_rows, next_sess = schedule_advance(order, offsets, n_rows, next_sess, min_rows,
                                             cur, end, reset, src)
    return (step_rows[:n_steps].copy(), inputs[:pos].copy(), targets[:pos].copy(),
            resets[:pos].copy(), srcs[:pos].copy())


def session_order(sessions, shuffle: bool = False, rng=None) -> np.ndarray:
    """(n_sessions,) int64 visiting order: by start time (official), or a random permutation."""
    if shuffle:
        return rng.permutation(sessions.n_sessions).astype(np.int64)
    return sessions.order_by_start_time()


@njit(cache=True, error_model="numpy")
def _augment(items, offsets, crop_p, crop_coin, crop_pick, drop_p, drop_u, out_items,
             out_offsets):
    """Write each session's augmented version into ``out_items``/``out_offsets`` (same CSR
    layout, same session numbers); returns the number of events written.

    crop_coin: (n_sessions,) float64 uniform [0, 1): a session of >= 3 clicks is cropped when
    ``crop_coin < crop_p``; crop_pick: (n_sessions,) int64 uniform in [0, L(L-1)/2): which of
    the session's L(L-1)/2 contiguous sub-sessions of >= 2 clicks (numbered by start, then
    end); drop_u: (n_events,) float64 uniform [0, 1): click ``i`` is dropped when
    ``drop_u[i] < drop_p``, unless fewer than 2 clicks of the (cropped) session would remain,
    in which case the session keeps all of them. Sessions of < 2 clicks are copied.
    """
    w = 0
    out_offsets[0] = 0
    for s in range(len(offsets) - 1):
        a = offsets[s]
        b = offsets[s + 1]
        n = b - a
        if crop_p > 0 and n >= 3 and crop_coin[s] < crop_p:
            k = crop_pick[s]
            start = 0
            while k >= n - 1 - start:  # sub-sessions starting at `start`: ends start+2 .. n
                k -= n - 1 - start
                start += 1
            b = a + start + 2 + k
            a = a + start
        kept = 0
        if drop_p > 0:
            for i in range(a, b):
                if drop_u[i] >= drop_p:
                    kept += 1
        if kept >= 2:
            for i in range(a, b):
                if drop_u[i] >= drop_p:
                    out_items[w] = items[i]
                    w += 1
        else:
            for i in range(a, b):
                out_items[w] = items[i]
                w += 1
        out_offsets[s + 1] = w
    return w


def augment_sessions(items, offsets, crop_p: float, drop_p: float, rng):
    """One epoch's augmented training sessions (Tan et al. 2016, adapted to session-parallel
    one-step training; see ``augment_crop_p`` / ``augment_drop_p`` in :mod:`gru_engine.params`).

    items: (n_events,) int32; offsets: (n_sessions+1,) int64 CSR; rng: a NumPy Generator (the
    fit's epoch-order generator: a new draw every epoch, reproducible under ``random_state``).
    Each session is first, with probability ``crop_p``, replaced by one of its contiguous
    sub-sessions of >= 2 clicks, uniformly; then each of its clicks is removed with probability
    ``drop_p``, unless fewer than 2 would remain (the session is then kept whole). O(n_events).
    Returns ``(items, offsets)`` in the same layout with the same session numbers (so the
    visiting order still applies); both probabilities 0 returns the inputs themselves.
    """
    if crop_p == 0 and drop_p == 0:
        return items, offsets
    n_sessions = len(offsets) - 1
    lengths = np.diff(offsets)
    crop_coin = np.zeros(0)
    crop_pick = np.zeros(0, np.int64)
    drop_u = np.zeros(0)
    if crop_p > 0:
        crop_coin = rng.random(n_sessions)
        n_sub = np.maximum(lengths * (lengths - 1) // 2, 1)
        crop_pick = rng.integers(0, n_sub).astype(np.int64)
    if drop_p > 0:
        drop_u = rng.random(len(items))
    out_items = np.empty(len(items), items.dtype)
    out_offsets = np.empty(n_sessions + 1, np.int64)
    n = _augment(items, np.asarray(offsets, np.int64), float(crop_p), crop_coin, crop_pick,
                 float(drop_p), drop_u, out_items, out_offsets)
    return out_items[:n], out_offsets
