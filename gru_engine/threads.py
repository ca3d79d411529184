"""CPU threads: how many to use, limiting BLAS and Numba to them, and a warning when the CPUs
are busy. One place for what training (``model``), evaluation and the session store
(``serving``) do with threads."""
from __future__ import annotations

import contextlib
import logging
import os
import threading

logger = logging.getLogger("gru_engine")


def resolve_threads(n_threads) -> int:
    """``n_threads`` resolved: None means every CPU this process may run on."""
    if n_threads is not None:
        return int(n_threads)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def start_numba_threads() -> int:
    """Start Numba's thread pool (the threading layer) if no kernel started it yet; returns
    its thread count. A kernel loaded from Numba's disk cache that calls a parallel kernel
    (the training step calls the output layer's parts) jumps into the pool's scheduler, which
    only compiling a parallel kernel or a thread-count call sets up: in a fresh process that
    loads everything from the cache it is a null pointer (a segfault). Call it before running
    cached training kernels; started lazily, not at import, so that a process that forks
    before training still works with fork-unsafe layers (GNU OpenMP)."""
    import numba
    return numba.get_num_threads()


def other_runnable_tasks() -> int:
    """Tasks other than the caller that are runnable right now (Linux ``/proc/loadavg``; 0
    where it cannot be read)."""
    try:
        with open("/proc/loadavg") as fh:
            running = int(fh.read().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return 0
    return max(running - 1, 0)


def warn_if_cpus_busy(n_threads: int) -> None:
    """Warn when multi-threaded CPU training starts with fewer idle CPUs than threads.

    Each training step runs a few short BLAS products on ``n_threads`` threads; when another
    process keeps a core busy, every product waits for a descheduled thread: on 2 cores,
    2-thread training was measured 30-35x slower than 1-thread beside one busy process
    (bench/RESULTS.md, issue 15). Busy = the tasks runnable at the start of the fit (an
    instant, not an average, so that this process's own earlier work does not count).
    """
    if n_threads <= 1:
        return
    busy, cpus = other_runnable_tasks(), resolve_threads(None)
    if busy >= cpus - n_threads + 1:
        logger.warning("the CPUs are busy (%d other runnable tasks on %d CPUs): training on %d "
                       "threads may run many times slower than on one; consider n_threads=1",
                       busy, cpus, n_threads)


def training_threads(loss: str, combined_hidden: int, n_threads: int) -> tuple:
    """``(Numba threads, BLAS threads)`` of CPU training on ``n_threads`` threads: cross-entropy
    with a combined hidden size up to ``config.TRAIN_PARTS_MAX_HIDDEN`` runs its output layer's
    parts (``backends/cpu/output_parts.py``) on the threads and BLAS on one (every product of
    its step is short); otherwise BLAS gets the threads and the parts run one after the other.
    Both on several threads at once is never chosen: two parts calling a 2-thread OpenBLAS
    made rsc15-100k training 50x slower (bench/RESULTS.md, issue 15)."""
    from .config import TRAIN_PARTS_MAX_HIDDEN
    if loss == "cross-entropy" and combined_hidden <= TRAIN_PARTS_MAX_HIDDEN:
        return n_threads, 1
    return 1, n_threads


@contextlib.contextmanager
def thread_limit(n_threads, blas=None):
    """Limit Numba threads to ``n_threads`` and BLAS threads to ``blas`` (default
    ``n_threads``) inside the block; restore afterwards. ``n_threads`` None: no limits."""
    if n_threads is None:
        yield
        return
    blas = n_threads if blas is None else blas
    import numba
    old_numba = numba.get_num_threads()
    limiter = None
    try:
        try:
            from threadpoolctl import threadpool_limits
            limiter = threadpool_limits(limits=int(blas), user_api="blas")
        except ImportError:
            logger.warning("threadpoolctl is not installed: n_threads does not limit BLAS threads")
        numba.set_num_threads(min(int(n_threads), numba.config.NUMBA_NUM_THREADS))
        yield
    finally:
        numba.set_num_threads(old_numba)
        if limiter is not None:
            limiter.restore_original_limits()


_BLAS = {"controller": None, "n_modules": -1}
_BLAS_LOCK = threading.Lock()


@contextlib.contextmanager
def blas_one_thread():
    """BLAS limited to one thread inside the block (a no-op without threadpoolctl), for the
    session store's calls, which split their rows over their own threads or step one session:
    OpenBLAS threads even the GEMV of one session's GRU step at hidden 480 (1 x 480 x 1440),
    and on a busy machine its waiting threads made a one-session ``advance`` take 56-66 ms
    instead of 0.1 ms. The limit is process-wide, and threadpoolctl lets one thread at a time
    set OpenBLAS's: blocks overlapping on several threads can leave BLAS at one thread after
    them (a store's calls never overlap: it holds its lock). The threadpoolctl controller (it
    lists the BLAS libraries loaded when it is made) is made again only when modules were
    imported since: ~5 us a block otherwise."""
    import sys
    with _BLAS_LOCK:
        if _BLAS["n_modules"] != len(sys.modules):
            try:
                from threadpoolctl import ThreadpoolController
                controller = ThreadpoolController()
            except ImportError:
                controller = False
            _BLAS.update(controller=controller, n_modules=len(sys.modules))
        controller = _BLAS["controller"]
    if controller is False:
        yield
        return
    with controller.limit(limits=1, user_api="blas"):
        yield
