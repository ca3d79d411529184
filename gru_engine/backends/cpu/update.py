"""Step 8 of a training step (:mod:`.step`): Adagrad + momentum of the trained subnets' dense
ranges and table rows, of the step's ``Wy`` rows and ``By`` entries, and the release of the
sparse-sum slots."""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ...config import TRAIN_EARLY_ROW_ELEMENTS_PER_MAC
from ...network import (L_H, L_IN, S_C0, S_C1, S_D0, S_D1, S_GCAP, S_GOFF, S_L0, S_L1, S_ROFF,
                        S_SOFF, S_TAB, S_TCOLS, S_TOFF, S_TROWS, T_OWN, T_WY)
from .optim import adagrad_flat, adagrad_rows_1d, release_rows
from .profile import P_ADA_DENSE, P_ADA_SPARSE, tick


@njit(cache=True, error_model="numpy")
def release_all(SI, sp):
    """Reset every slot used by the last step."""
    release_rows(sp.slotY, sp.rowsY, sp.counts[0])
    for s in range(SI.shape[0]):
        if sp.nT[s] > 0:
            release_rows(sp.slotT[SI[s, S_SOFF]:SI[s, S_SOFF] + SI[s, S_TROWS]],
                         sp.rowsT[SI[s, S_ROFF]:SI[s, S_ROFF] + SI[s, S_GCAP]], sp.nT[s])


@njit(cache=True, error_model="numpy")
def update_wy_rows(net, active, train, sum_mode, freeze_out, opt, sp, n, early, lr, mom):
    """Adagrad + momentum of the step's ``Wy`` rows ``u < n`` (``sp.rowsY``) whose
    ``sp.early[u]`` is ``early``, in the column blocks being trained (output rows: every active
    subnet's block, or only the trained ones' under ``freeze_out``; rows met only as
    constrained input: the ID block). Rows are independent: any split of them gives the same
    results (:func:`update_wy_row_range`)."""
    update_wy_row_range(net, active, train, sum_mode, freeze_out, opt, sp, 0, n, early, lr,
                        mom)


@njit(cache=True, error_model="numpy")
def update_wy_row_range(net, active, train, sum_mode, freeze_out, opt, sp, lo, hi, early, lr,
                        mom):
    """:func:`update_wy_rows` of the rows ``lo <= u < hi``, column block by column block (the
    rows' tests hoisted out of the row loop: 83 vs 91 us for 1,900 rows x 100, one thread)."""
    SI, Wy = net.SI, net.Wy
    n_out = sp.counts[1]
    acc_y, vel_y, GY, rows, marks = opt.acc_y, opt.vel_y, sp.GY, sp.rowsY, sp.early
    # sum mode: one block of full width (every subnet's output is summed into all of it)
    n_blocks = 1 if sum_mode else SI.shape[0]
    for q in range(2 * n_blocks):  # (block, output rows | input-only rows): one call site
        s, inputs = q // 2, q % 2 == 1
        u0, u1 = (max(lo, n_out), hi) if inputs else (lo, min(hi, n_out))
        if sum_mode:
            trained = not inputs or (active[0] and train[0] and SI[0, S_TAB] == T_WY)
            c0, c1 = 0, Wy.shape[1]
        else:
            trained = active[s] and (train[s] and SI[s, S_TAB] == T_WY if inputs else
                                     not (freeze_out and not train[s]))
            c0, c1 = SI[s, S_C0], SI[s, S_C1]
        if not trained:
            continue
        for u in range(u0, u1):
            if marks[u] == early:
                r = rows[u]
                adagrad_flat(Wy[r, c0:c1], GY[u, c0:c1], acc_y[r, c0:c1], vel_y[r, c0:c1], lr,
                             mom)


@njit(cache=True, error_model="numpy")
def cap_early_rows(net, active, train, B, sp, per_mac):
    """Keep the update beside the backward (:mod:`.overlap`) about as long as the backward:
    of the rows marked ``sp.early``, the first in slot order stay marked up to ``per_mac``
    (``config.TRAIN_EARLY_ROW_ELEMENTS_PER_MAC``) ``Wy`` row elements per multiply-add of the
    trained subnets' backward products (``B 3H (H + 2 n_in)`` per layer); the others are
    unmarked, to be updated after the backward on both threads (:func:`step_update_on_threads`).
    Any split of the rows gives the same results."""
    SI, LI = net.SI, net.LI
    macs = 0
    for s in range(SI.shape[0]):
        if active[s] and train[s]:
            for g in range(SI[s, S_L0], SI[s, S_L1]):
                H = LI[g, L_H]
                macs += B * 3 * H * (H + 2 * LI[g, L_IN])
    width = net.Wy.shape[1]
    rows_left = int(per_mac * macs) // max(width, 1)
    for u in range(sp.counts[1]):
        if sp.early[u]:
            if rows_left > 0:
                rows_left -= 1
            else:
                sp.early[u] = False


@njit(cache=True, error_model="numpy")
def share_of(lo, hi, t, shares):
    """Share ``t`` of ``shares`` contiguous, near-equal shares of ``range(lo, hi)``:
    ``(start, stop)``."""
    n = hi - lo
    return lo + t * n // shares, lo + (t + 1) * n // shares


@njit(cache=True, error_model="numpy")
def update_share(t, shares, net, active, train, sum_mode, freeze_out, gtheta, opt, sp, lr, mom,
                 prof):
    """Share ``t`` of ``shares`` of step 8's updates (every dense range, table-row list, list
    of late ``Wy`` rows and of ``By`` rows split in contiguous shares, :func:`share_of`):
    each parameter is updated by exactly one share, in the same arithmetic, so any number of
    shares gives the same results. ``prof`` is ticked (``P_ADA_DENSE`` after each dense
    range): pass None from several threads."""
    SI, theta, T = net.SI, net.theta, net.T
    S = SI.shape[0]
    nY, n_out = sp.counts[0], sp.counts[1]
    for s in range(S):
        if not (active[s] and train[s]):
            continue
        d0, d1 = share_of(SI[s, S_D0], SI[s, S_D1], t, shares)
        adagrad_flat(theta[d0:d1], gtheta[d0:d1], opt.acc_d[d0:d1], opt.vel_d[d0:d1], lr, mom)
        tick(prof, P_ADA_DENSE)
        if SI[s, S_TAB] == T_OWN and sp.nT[s] > 0:
            tc, toff, goff, roff = SI[s, S_TCOLS], SI[s, S_TOFF], SI[s, S_GOFF], SI[s, S_ROFF]
            u0, u1 = share_of(0, sp.nT[s], t, shares)
            for u in range(u0, u1):
                r = sp.rowsT[roff + u]
                a, b = toff + r * tc, toff + (r + 1) * tc
                adagrad_flat(T[a:b], sp.GT[goff + u * tc:goff + (u + 1) * tc], opt.acc_t[a:b],
                             opt.vel_t[a:b], lr, mom)
    u0, u1 = share_of(0, nY, t, shares)
    update_wy_row_range(net, active, train, sum_mode, freeze_out, opt, sp, u0, u1,
                        np.bool_(False), lr, mom)
    u0, u1 = share_of(0, n_out, t, shares)
    adagrad_rows_1d(net.By, opt.acc_b, opt.vel_b, sp.rowsY[u0:u1], sp.gBy[u0:u1], u1 - u0, lr,
                    mom)


@njit(cache=True, error_model="numpy")
def finish_update(SI, sp, n_out):
    """After the updates of a step: clear the ``sp.early`` marks, release the slots."""
    for u in range(n_out):
        sp.early[u] = False
    release_all(SI, sp)


@njit(cache=True, error_model="numpy")
def step_update(net, active, train, sum_mode, freeze_out, gtheta, opt, sp, lr, mom, prof):
    """Adagrad + momentum (step 8): dense ranges and tables of the trained subnets; the
    ``Wy`` rows (:func:`update_wy_rows`) except those marked ``sp.early`` (updated already,
    beside the backward: :mod:`.overlap`; the marks are cleared); ``By`` on the output rows.
    ``opt``: the trainer's optimiser state record. Releases the slots. One thread
    (:func:`step_update_on_threads`: the same on two)."""
    update_share(np.int64(0), np.int64(1), net, active, train, sum_mode, freeze_out, gtheta,
                 opt, sp, lr, mom, prof)
    finish_update(net.SI, sp, sp.counts[1])
    tick(prof, P_ADA_SPARSE)


@njit(cache=True, error_model="numpy", parallel=True)
def _update_on_threads(net, active, train, sum_mode, freeze_out, gtheta, opt, sp, lr, mom):
    """The two shares of :func:`update_share` on two Numba threads (the loop body is one plain
    call: it keeps Numba's parallel compilation short)."""
    for t in prange(2):
        update_share(np.int64(t), np.int64(2), net, active, train, sum_mode, freeze_out,
                     gtheta, opt, sp, lr, mom, None)


@njit(cache=True, error_model="numpy")
def step_update_on_threads(net, active, train, sum_mode, freeze_out, gtheta, opt, sp, lr, mom,
                           prof):
    """:func:`step_update` with the updates split in two shares on two Numba threads (same
    results; BLAS on one thread, see :mod:`.overlap`). Profile: both shares in ``Adagrad
    dense`` (mostly dense weights: the output rows were updated beside the backward), the
    release in ``Adagrad sparse``."""
    _update_on_threads(net, active, train, sum_mode, freeze_out, gtheta, opt, sp, lr, mom)
    tick(prof, P_ADA_DENSE)
    finish_update(net.SI, sp, sp.counts[1])
    tick(prof, P_ADA_SPARSE)
