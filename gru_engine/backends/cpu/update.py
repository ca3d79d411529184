"""Step 8 of a training step (:mod:`.step`): Adagrad + momentum of the trained subnets' dense
ranges and table rows, of the step's ``Wy`` rows and ``By`` entries, and the release of the
sparse-sum slots."""
from __future__ import annotations

import numpy as np
from numba import njit

from ...network import (S_C0, S_C1, S_D0, S_D1, S_GCAP, S_GOFF, S_ROFF, S_SOFF, S_TAB, S_TCOLS,
                        S_TOFF, S_TROWS, T_OWN, T_WY)
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
    results. Column block by column block, the rows' tests hoisted out of the row loop (83
    vs 91 us for 1,900 rows x 100 on one thread)."""
    SI, Wy = net.SI, net.Wy
    n_out = sp.counts[1]
    acc_y, vel_y, GY, rows, marks = opt.acc_y, opt.vel_y, sp.GY, sp.rowsY, sp.early
    # sum mode: one block of full width (every subnet's output is summed into all of it)
    n_blocks = 1 if sum_mode else SI.shape[0]
    for q in range(2 * n_blocks):  # (block, output rows | input-only rows): one call site
        s, inputs = q // 2, q % 2 == 1
        u0, u1 = (n_out, n) if inputs else (0, min(n, n_out))
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
def step_update(net, active, train, sum_mode, freeze_out, gtheta, opt, sp, lr, mom, prof):
    """Adagrad + momentum (step 8): dense ranges and tables of the trained subnets; the
    ``Wy`` rows (:func:`update_wy_rows`) except those marked ``sp.early`` (updated already,
    beside the backward: :mod:`.overlap`; the marks are cleared); ``By`` on the output rows.
    ``opt``: the trainer's optimiser state record. Releases the slots."""
    SI, theta, T = net.SI, net.theta, net.T
    S = SI.shape[0]
    nY, n_out = sp.counts[0], sp.counts[1]
    for s in range(S):
        if not (active[s] and train[s]):
            continue
        d0, d1 = SI[s, S_D0], SI[s, S_D1]
        adagrad_flat(theta[d0:d1], gtheta[d0:d1], opt.acc_d[d0:d1], opt.vel_d[d0:d1], lr, mom)
        tick(prof, P_ADA_DENSE)
        if SI[s, S_TAB] == T_OWN and sp.nT[s] > 0:
            tc, toff, goff, roff = SI[s, S_TCOLS], SI[s, S_TOFF], SI[s, S_GOFF], SI[s, S_ROFF]
            for u in range(sp.nT[s]):
                r = sp.rowsT[roff + u]
                a, b = toff + r * tc, toff + (r + 1) * tc
                adagrad_flat(T[a:b], sp.GT[goff + u * tc:goff + (u + 1) * tc], opt.acc_t[a:b],
                             opt.vel_t[a:b], lr, mom)
    update_wy_rows(net, active, train, sum_mode, freeze_out, opt, sp, nY, np.bool_(False), lr,
                   mom)
    for u in range(n_out):
        sp.early[u] = False
    adagrad_rows_1d(net.By, opt.acc_b, opt.vel_b, sp.rowsY, sp.gBy, n_out, lr, mom)
    release_all(SI, sp)
    tick(prof, P_ADA_SPARSE)
