"""The hidden side of a training step beside the output rows' update, on two Numba threads.

After the output layer (:func:`.step.step_forward_output`) the backward of the subnets
(:func:`.step.step_backward`: GRU gates, ``dWh``, ``dWx``, ``dx``, input rows) and the
Adagrad of the output rows of ``Wy`` (most of the step's rows) touch different arrays, except
the output rows that are also constrained-input rows of the step: the backward adds their
input gradient, so their update waits. :func:`mark_early_rows` marks the others, and
:func:`backward_beside_output_rows` runs the backward on one thread and their update on the
other; :func:`.update.step_update` then updates the rest. Every row is updated once with its
complete gradient, in the same arithmetic as on one thread: the same results. For training
with BLAS on one thread (:func:`gru_engine.threads.training_threads`); the trainer takes this
path when Numba has two threads or more.
"""
from __future__ import annotations

import functools

import numpy as np
from numba import cfunc, njit, prange, typeof, types

from ...network import S_IPOFF, S_TAB, T_WY
from .step import step_backward
from .update import update_wy_rows


@njit(cache=True, error_model="numpy")
def mark_early_rows(net, active, train, in_items, B, sp):
    """``sp.early[u]`` True for the step's output rows (``u < sp.counts[1]``) whose update
    need not wait for the backward: all but the bag rows of the input items of the trained
    constrained-ID subnets (the backward adds their input gradient to the same row). Call
    before the backward (the slots then hold the output rows only)."""
    SI, indptr, indices = net.SI, net.indptr, net.indices
    for u in range(sp.counts[1]):
        sp.early[u] = True
    for s in range(SI.shape[0]):
        if not (active[s] and train[s] and SI[s, S_TAB] == T_WY):
            continue
        ip0 = SI[s, S_IPOFF]
        for i in range(B):
            it = in_items[i]
            for j in range(indptr[ip0 + it], indptr[ip0 + it + 1]):
                u = sp.slotY[indices[j]]
                if u >= 0:
                    sp.early[u] = False


def _task(t, net, active, train, sum_mode, freeze_out, in_items, B, wk, sp, opt, hy, cx, prof):
    """Task ``t`` of :func:`backward_beside_output_rows`: 0 the backward, 1 the early rows'
    update. Compiled as a C callback (:func:`backward_task`), called through its address."""
    if t == 0:
        step_backward(net, active, train, sum_mode, in_items, B, wk, sp, hy, cx, prof)
    else:
        update_wy_rows(net, active, train, sum_mode, freeze_out, opt, sp, sp.counts[1],
                       np.bool_(True), hy.learning_rate, hy.momentum)


@functools.lru_cache(maxsize=None)
def _compiled_task(signature):
    return cfunc(signature, cache=True, error_model="numpy")(_task)


def backward_task(net, active, train, in_items, wk, sp, opt, hy, cx, prof):
    """The tasks of :func:`backward_beside_output_rows` compiled (or loaded from the cache)
    for the types of these arguments (those :func:`.trainer.train_steps` passes on), once per
    process: a C callback, passed to the kernels by address. Called through its address, the
    backward's code is not compiled again into each layer of the parallel loop (its kernel,
    its wrapper, the caller), and a fit on one thread never compiles it."""
    sig = types.void(types.int64, typeof(net), typeof(active), typeof(train), types.boolean,
                     types.boolean, typeof(in_items), types.int64, typeof(wk), typeof(sp),
                     typeof(opt), typeof(hy), typeof(cx), typeof(prof))
    return _compiled_task(sig)


@njit(cache=True, error_model="numpy", parallel=True)
def backward_beside_output_rows(task, net, active, train, sum_mode, freeze_out, in_items, B,
                                wk, sp, opt, hy, cx, prof):
    """:func:`.step.step_backward` on one thread beside the update of the rows marked by
    :func:`mark_early_rows` (:func:`.update.update_wy_rows`) on another: ``task``, the
    :func:`backward_task` of the other arguments. ``prof``: the backward's phases are timed
    (the other task is not); the caller's next tick gets the wait for the other task."""
    for t in prange(2):
        task(np.int64(t), net, active, train, sum_mode, freeze_out, in_items, B, wk, sp, opt,
             hy, cx, prof)
