"""SessionGRU: GRU4Rec (session-parallel mini-batches, sampled output, GRU4Rec losses).

The estimator holds hyperparameters (official GRU4Rec names, see :mod:`gru_engine.params`),
initialises parameters, runs the epochs through a backend and exposes a scorer for evaluation
and ``recommend``. Backends (``device``): ``'cpu'`` (``backends/cpu.py``: the whole epoch in
Numba), ``'cuda'`` (``backends/cuda.py``: CUDA kernels through CuPy; ``ValueError`` without
CuPy and a GPU), ``'auto'`` (CUDA when CuPy sees a GPU, else CPU; checked once, lazily). Both
backends are driven by the same epoch loop (:meth:`SessionGRU._train`) through the trainer
interface ``fill_store() / start_epoch(items, order, offsets) / rows_left() / run(max_steps)
-> (loss_sum, events, finite) / host_params()``, consume the same negative-sample draws in the
same order and give the same parameters up to float32 rounding (without dropout: the CUDA
backend draws its dropout masks on the device).

Fitted attributes:
    device_:          'cpu' | 'cuda', the backend that trained the model (and scores it)
    params_:          dict of parameter arrays (float32): ``Wx``, ``bx``, ``Wh``, ``bhn`` (lists,
                      one array per layer), ``Wy`` (n_items, H_last), ``By`` (n_items,), and ``E``
                      (n_items, embedding) only with a separate input embedding
    input_mode_:      'onehot' | 'embedding' | 'constrained'
    item_support_:    (n_items,) int64 training events per item
    loss_history_:    list of per-epoch losses (mean over steps weighted by active rows)
    epoch_times_:     list of per-epoch training seconds
    events_per_s_:    list of per-epoch training events per second
    sample_store_seconds_: seconds spent building the first negative-sample store
"""
from __future__ import annotations

import contextlib
import logging
import os
import time

import numpy as np

from . import params as hp
from .backends import cpu
from .backends.cpu_scoring import GRUScorer
from .backends.device import Device
from .base import SessionModel
from .batching import session_order
from .exceptions import ModelFitError
from .sampling import seed_numba

logger = logging.getLogger("gru_engine")

_MODES = {"onehot": cpu.ONEHOT, "embedding": cpu.EMBEDDING, "constrained": cpu.CONSTRAINED}


def _threads(n_threads) -> int:
    """``n_threads`` resolved: None means every CPU this process may run on."""
    if n_threads is not None:
        return int(n_threads)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def _thread_limit(n_threads):
    """Limit BLAS (and Numba) threads to ``n_threads`` inside the block; restore afterwards."""
    if n_threads is None:
        yield
        return
    import numba
    old_numba = numba.get_num_threads()
    limiter = None
    try:
        try:
            from threadpoolctl import threadpool_limits
            limiter = threadpool_limits(limits=int(n_threads), user_api="blas")
        except ImportError:
            logger.warning("threadpoolctl is not installed: n_threads does not limit BLAS threads")
        numba.set_num_threads(min(int(n_threads), numba.config.NUMBA_NUM_THREADS))
        yield
    finally:
        numba.set_num_threads(old_numba)
        if limiter is not None:
            limiter.restore_original_limits()


def _resolve_device(name: str) -> Device | None:
    """The compute device for ``device=name``: None for the CPU backend, else a CUDA
    :class:`~gru_engine.backends.device.Device`. ``'auto'`` picks CUDA when CuPy sees a GPU
    (checked once per process); ``'cuda'`` without them raises ``ValueError``. The CPU path
    never imports CuPy. (Tests replace this function to run the CUDA backend in the emulator.)
    """
    if name == "cpu":
        return None
    from .backends.device import CupyDevice, cuda_available
    if cuda_available():
        return CupyDevice()
    if name == "auto":
        return None
    raise ValueError("device='cuda' needs CuPy and an NVIDIA GPU, but CuPy is not installed or "
                     "sees no CUDA device (pip install cupy-cuda12x, or use device='cpu' or "
                     "'auto')")


def init_block(rng, rows: int, cols: int, n_blocks: int = 1, dtype=np.float32) -> np.ndarray:
    """(rows, cols * n_blocks) weights, each (rows, cols) block uniform in ``[-s, s]``,
    ``s = sqrt(6 / (rows + cols))`` (drawn in one call, row-major)."""
    s = np.sqrt(6.0 / (rows + cols))
    return rng.uniform(-s, s, size=(rows, cols * n_blocks)).astype(dtype)


def init_params(n_items: int, layers, mode: str, embedding: int, rng, dtype=np.float32) -> dict:
    """Initial parameters: every per-gate weight block uniform in ``[-s, s]``,
    ``s = sqrt(6 / (fan_in + fan_out))``; biases zero (reference page)."""
    def block(rows, cols, n_blocks=1):
        return init_block(rng, rows, cols, n_blocks, dtype)

    H_last = layers[-1]
    p = {"Wx": [], "bx": [], "Wh": [], "bhn": []}
    for l, H in enumerate(layers):
        if l > 0:
            n_in = layers[l - 1]
        elif mode == "onehot":
            n_in = n_items
        elif mode == "embedding":
            n_in = embedding
        else:
            n_in = H_last
        p["Wx"].append(block(n_in, H, 3))
        p["bx"].append(np.zeros(3 * H, dtype))
        p["Wh"].append(block(H, H, 3))
        p["bhn"].append(np.zeros(H, dtype))
    if mode == "embedding":
        p["E"] = block(n_items, embedding)
    p["Wy"] = block(n_items, H_last)
    p["By"] = np.zeros(n_items, dtype)
    return p


class SessionGRU(SessionModel):
    """GRU4Rec for next-click prediction in sessions (Hidasi et al. 2016; Hidasi & Karatzoglou
    2018). Hyperparameters keep the official names; see :mod:`gru_engine.params` for checks and
    ``parse_param_string`` for the official ``key=value`` syntax.

    ``n_threads``: CPU threads (``None``: every CPU the process may use). Training runs the
    BLAS products of each step on ``n_threads`` threads; evaluation splits each step's rows
    into ``n_threads`` blocks, each run (GRU step, scoring GEMM with one BLAS thread, ranking)
    on its own thread. On a machine whose cores are busy with other work, ``n_threads=1`` is
    often faster: idle OpenBLAS workers spin and fight for the cores.

    ``device``: ``'cpu'`` (default), ``'cuda'`` (needs CuPy and an NVIDIA GPU; ``ValueError``
    in ``fit`` otherwise) or ``'auto'`` (CUDA when available, else CPU). The backend used is
    ``device_``; a CUDA model also scores and evaluates on the GPU, while ``params_`` always
    holds host arrays (``save``/``load`` and a loaded model work on the CPU).

    Example::

        model = SessionGRU(layers=[100], loss="cross-entropy", n_epochs=3).fit(train_df)
        model.evaluate(test_df)["recall@20"]
    """

    def __init__(self, layers=(100,), loss="cross-entropy", final_act="linear", batch_size=32,
                 n_epochs=10, n_sample=2048, sample_alpha=0.5, sample_store_size=10_000_000,
                 logq=1.0, bpreg=0.0, elu_param=0.0, embedding=0, constrained_embedding=True,
                 dropout_p_embed=0.0, dropout_p_hidden=0.0, learning_rate=0.1, momentum=0.0,
                 random_state=None, n_threads=None, device="cpu", shuffle_sessions=False,
                 show_progress=False):
        self.layers = layers
        self.loss = loss
        self.final_act = final_act
        self.batch_size = batch_size
        self.n_epochs = n_epochs
        self.n_sample = n_sample
        self.sample_alpha = sample_alpha
        self.sample_store_size = sample_store_size
        self.logq = logq
        self.bpreg = bpreg
        self.elu_param = elu_param
        self.embedding = embedding
        self.constrained_embedding = constrained_embedding
        self.dropout_p_embed = dropout_p_embed
        self.dropout_p_hidden = dropout_p_hidden
        self.learning_rate = learning_rate
        self.momentum = momentum
        self.random_state = random_state
        self.n_threads = n_threads
        self.device = device
        self.shuffle_sessions = shuffle_sessions
        self.show_progress = show_progress

    @classmethod
    def from_param_string(cls, text: str, **overrides) -> "SessionGRU":
        """Model from an official parameter string, e.g. ``"loss=bpr-max,layers=224"``."""
        kwargs = hp.parse_param_string(text)
        kwargs.update(overrides)
        return cls(**kwargs)

    # ---- fitting ----------------------------------------------------------------------------
    def fit(self, data, session_key: str = "SessionId", item_key: str = "ItemId",
            time_key: str = "Time", callback=None):
        """Train on an event table (see :meth:`SessionModel.fit`). ``callback(epoch, elapsed_s,
        loss)`` is called after every epoch (epoch counted from 1). Returns self.

        Raises ``ValueError`` for bad hyperparameters and ``ModelFitError`` when the loss
        becomes NaN or infinite.
        """
        self._validated()  # fail before reading the data
        return super().fit(data, session_key=session_key, item_key=item_key,
                           time_key=time_key, callback=callback)

    def _validated(self) -> dict:
        p = hp.validate(self.get_params())
        if p["device"] == "cuda":
            _resolve_device("cuda")  # ValueError now, before the data is read, without a GPU
        return p

    def _input_mode(self, p) -> str:
        if p["constrained_embedding"]:
            if p["embedding"] > 0:
                logger.warning("embedding=%d is ignored because constrained_embedding=True "
                               "(as in the official GRU4Rec)", p["embedding"])
            return "constrained"
        return "embedding" if p["embedding"] > 0 else "onehot"

    def _fit(self, sessions, callback=None):
        try:
            self._train(sessions, callback)
        except ModelFitError:
            del self.params_  # a diverged model must not be used: NotFittedError from now on
            raise

    def _train_device(self, p) -> Device | None:
        """The device of this fit (see :func:`_resolve_device`); subclasses restrict it."""
        return _resolve_device(p["device"])

    def _init_params(self, p, n_items: int, mode: str, rng) -> dict:
        """Initial parameters of this fit (:func:`init_params`); subclasses change the layout."""
        return init_params(n_items, p["layers"], mode, p["embedding"], rng)

    def _make_trainer(self, p, params, mode, support, device, seed):
        """The backend's trainer (see the module docstring) over the initial ``params``."""
        act, act_param = hp.parse_final_act(p["final_act"])
        if device is None:
            return cpu.CPUTrainer(params, _MODES[mode], len(support), support, p["batch_size"],
                                  p["n_sample"], p["sample_alpha"], p["sample_store_size"],
                                  loss=hp.LOSS_CODES[p["loss"]], act=act, act_param=act_param,
                                  logq=p["logq"], bpreg=p["bpreg"], elu=p["elu_param"],
                                  lr=p["learning_rate"], mom=p["momentum"],
                                  p_embed=p["dropout_p_embed"], p_hidden=p["dropout_p_hidden"])
        from .backends.cuda import EpochTrainer
        return EpochTrainer(device, params, batch_size=p["batch_size"], n_sample=p["n_sample"],
                            sample_alpha=p["sample_alpha"],
                            sample_store_size=p["sample_store_size"], item_support=support,
                            loss=p["loss"], constrained_embedding=mode == "constrained",
                            final_act=(act, act_param), bpreg=p["bpreg"],
                            elu_param=p["elu_param"], logq=p["logq"],
                            learning_rate=p["learning_rate"], momentum=p["momentum"],
                            dropout_p_embed=p["dropout_p_embed"],
                            dropout_p_hidden=p["dropout_p_hidden"], seed=seed)

    def _train(self, sessions, callback):
        p = self._validated()
        device = self._train_device(p)
        n_items = len(self.item_index_)
        seq = np.random.SeedSequence(p["random_state"])
        init_seed, order_seed, numba_seed = seq.spawn(3)
        rng = np.random.default_rng(init_seed)
        order_rng = np.random.default_rng(order_seed)
        mode = self._input_mode(p)
        params = self._init_params(p, n_items, mode, rng)
        support = sessions.item_support(n_items)
        self.device_ = "cpu" if device is None else "cuda"
        self.item_support_ = support
        self.input_mode_ = mode
        self.params_ = params
        self.loss_history_, self.epoch_times_, self.events_per_s_ = [], [], []
        numba_state = numba_seed.generate_state(2)
        trainer = self._make_trainer(p, params, mode, support, device, int(numba_state[1]))
        logger.info("training on %s", "CPU" if device is None else f"CUDA ({device.name})")
        with _thread_limit(_threads(p["n_threads"])):
            seed_numba(int(numba_state[0] & 0x7FFFFFFF))
            t0 = time.perf_counter()
            trainer.fill_store()
            self.sample_store_seconds_ = time.perf_counter() - t0
            logger.info("sample store: %d items in %.2f s", len(trainer.store.samples),
                        self.sample_store_seconds_)
            progress = _progress_bar(p["show_progress"])
            for epoch in range(1, p["n_epochs"] + 1):
                order = session_order(sessions, p["shuffle_sessions"], order_rng)
                t0 = time.perf_counter()
                trainer.start_epoch(sessions.items, order, sessions.offsets)
                bar = progress(epoch, sessions.n_events - sessions.n_sessions)
                loss_sum, events, finite = 0.0, 0, True
                while trainer.rows_left() and finite:
                    ls, ev, finite = trainer.run(500 if bar is not None else -1)
                    loss_sum += ls
                    events += ev
                    if bar is not None:
                        bar.update(ev)
                elapsed = time.perf_counter() - t0
                if bar is not None:
                    bar.close()
                if not finite:
                    raise ModelFitError(f"training diverged: the loss became NaN or infinite "
                                        f"in epoch {epoch}; lower learning_rate or check the data")
                loss = loss_sum / max(events, 1)
                self.loss_history_.append(loss)
                self.epoch_times_.append(elapsed)
                self.events_per_s_.append(events / elapsed if elapsed > 0 else float("inf"))
                logger.info("epoch %d: loss %.6f, %d events, %.0f events/s (%.2f s)", epoch,
                            loss, events, self.events_per_s_[-1], elapsed)
                if callback is not None:
                    callback(epoch, elapsed, loss)
        params = trainer.host_params()
        self.params_ = params
        bad = [k for k, v in _flat_params(params) if not np.all(np.isfinite(v))]
        if bad:
            raise ModelFitError(f"training produced non-finite parameters in {bad}")

    # ---- scoring ----------------------------------------------------------------------------
    def scorer(self):
        """A fresh scorer (evaluation protocol): :class:`gru_engine.backends.cuda.CudaScorer`
        when the model was trained on CUDA (``device_ == 'cuda'``; evaluation then ranks on the
        device), else :class:`gru_engine.backends.cpu_scoring.GRUScorer`. A loaded model scores
        on the CPU."""
        self._check_fitted()
        act, act_param = hp.parse_final_act(self.final_act)
        if getattr(self, "device_", "cpu") == "cuda":
            from .backends.cuda import CudaScorer
            return CudaScorer(_resolve_device("cuda"), self.params_,
                              constrained_embedding=self.input_mode_ == "constrained",
                              final_act=(act, act_param), cache_on=self)
        return GRUScorer(self.params_, _MODES[self.input_mode_], act, act_param,
                             _threads(self.n_threads))

    def _check_fitted(self):
        super()._check_fitted()
        if not hasattr(self, "params_"):
            from .exceptions import NotFittedError
            raise NotFittedError("this SessionGRU is not fitted yet; call fit() first")

    def evaluate(self, test, *args, **kwargs) -> dict:
        """Next-item evaluation (see :meth:`SessionModel.evaluate`), under ``n_threads``."""
        # One BLAS thread: the scorer's rank() splits the rows over ``n_threads`` threads.
        with _thread_limit(1):
            return super().evaluate(test, *args, **kwargs)

    def predict_next(self, sessions_items) -> np.ndarray:
        """Scores of every item as the next click of each live session.

        sessions_items: list of sessions, each a sequence of original item ids in click order.
        Returns (n_sessions, n_items) float32; column ``j`` is item ``item_index_.ids[j]``.
        Unknown item ids raise ``KeyError``; an empty session raises ``ValueError``.
        """
        self._check_fitted()
        seqs = [self.item_index_.to_index(np.atleast_1d(np.asarray(s))) for s in sessions_items]
        return self._predict_next(self.scorer(), seqs)

    def _predict_next(self, sc, seqs) -> np.ndarray:
        """:meth:`predict_next` for sessions of indices understood by the scorer ``sc``."""
        if not seqs:
            return np.zeros((0, self.n_items_), np.float32)
        if any(len(s) == 0 for s in seqs):
            raise ValueError("every session needs at least one click")
        sc.begin(len(seqs))
        out = np.empty((len(seqs), self.n_items_), np.float32)
        lengths = np.array([len(s) for s in seqs])
        for t in range(lengths.max()):
            rows = np.flatnonzero(lengths > t).astype(np.int64)
            items = np.array([seqs[r][t] for r in rows], dtype=np.int32)
            scores = sc.score(rows, items, np.full(len(rows), t == 0))
            last = lengths[rows] == t + 1
            out[rows[last]] = scores[last]
        return out

    # ---- files ------------------------------------------------------------------------------
    def save(self, path):
        """Write the fitted model to one ``.npz`` file (no pickle; atomic)."""
        from .io import save_model
        save_model(self, path)

    @classmethod
    def load(cls, path) -> "SessionGRU":
        """Read a model written by :meth:`save`."""
        from .io import load_model
        return load_model(path, cls)


def _flat_params(params: dict):
    for k, v in params.items():
        if isinstance(v, list):
            for l, a in enumerate(v):
                yield f"{k}[{l}]", a
        else:
            yield k, v


def _progress_bar(show: bool):
    """``make(epoch, total) -> bar or None``: tqdm bars when asked for and installed."""
    if not show:
        return lambda epoch, total: None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        logger.info("show_progress=True but tqdm is not installed; logging epochs only")
        return lambda epoch, total: None
    return lambda epoch, total: tqdm(total=total, desc=f"epoch {epoch}", unit="ev")
