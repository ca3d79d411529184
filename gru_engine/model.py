"""SessionGRU: GRU4Rec (session-parallel mini-batches, sampled output, GRU4Rec losses), and the
estimator that every GRU model of the engine is.

A GRU model is one network (:mod:`gru_engine.network`): input subnets, a combine step and the
sampled output layer. ``SessionGRU`` is the network with one ID subnet; ``FeatureSessionGRU``
(:mod:`gru_engine.feature_model`) adds feature subnets by overriding :meth:`_network_spec` and
:meth:`_encode_inputs`. Everything else lives here once: fitting (the one epoch loop over the
trainer of the device), scoring, ``recommend``/``predict_next``, files.

Backends (``device``): ``'cpu'`` (:mod:`gru_engine.backends.cpu`: the whole epoch in Numba),
``'cuda'`` (:mod:`gru_engine.backends.cuda`: CUDA kernels through CuPy; ``ValueError`` without
CuPy and a GPU), ``'auto'`` (CUDA when CuPy sees a GPU, else CPU; checked once, lazily). Both
trainers follow one interface, ``fill_store() / start_epoch(items, order, offsets) /
rows_left() / run(max_steps) -> (loss_sum, events, finite) / host_params()``, consume the same
negative-sample draws in the same order and give the same parameters up to float32 rounding
(without dropout: the CUDA backend draws its dropout masks on the device).

Fitted attributes:
    device_:          'cpu' | 'cuda', the backend that trained the model (and scores it)
    params_:          the network's parameter dict (float32 arrays, ``network.PARAM_KEYS``);
                      :meth:`SessionGRU.subnet_params` gives views per subnet and layer
    subnet_names_:    names of the subnets, the ID subnet (``'id'``) first when there is one
    input_mode_:      'onehot' | 'embedding' | 'constrained' (the ID subnet's input)
    feature_info_, feature_vocab_: per feature source, its encoder's summary and vocabularies
                      (empty lists for SessionGRU)
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
from .backends.device import Device
from .base import SessionModel
from .batching import session_order
from .exceptions import ModelFitError, NotFittedError
from .network import PARAM_KEYS, S_A, build_layout, epoch_plan, subnet_views
from .sampling import seed_numba

logger = logging.getLogger("gru_engine")


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

    # ---- the network ------------------------------------------------------------------------
    def _validated(self) -> dict:
        """The validated hyperparameters (``ValueError`` naming a bad one)."""
        p = hp.validate(self.get_params())
        if p["device"] == "cuda":
            _resolve_device("cuda")  # ValueError now, before the data is read, without a GPU
        return p

    def _network_spec(self, p: dict) -> dict:
        """``architecture``, ``combine``, ``strategy`` and ``feature_layers`` of the network
        (:func:`gru_engine.network.build_layout`, :func:`~gru_engine.network.epoch_plan`):
        GRU4Rec is the ID subnet alone."""
        return {"architecture": "id", "combine": "concat", "strategy": "simultaneous",
                "feature_layers": p["layers"]}

    def _encode_inputs(self, p: dict, item_features) -> list:
        """The encoded feature sources of this fit (none for SessionGRU); sets
        ``feature_info_`` and ``feature_vocab_``."""
        self.feature_info_, self.feature_vocab_ = [], []
        return []

    def _input_mode(self, p) -> str:
        if p["constrained_embedding"]:
            if p["embedding"] > 0:
                logger.warning("embedding=%d is ignored because constrained_embedding=True "
                               "(as in the official GRU4Rec)", p["embedding"])
            return "constrained"
        return "embedding" if p["embedding"] > 0 else "onehot"

    # ---- fitting ----------------------------------------------------------------------------
    def fit(self, data, session_key: str = "SessionId", item_key: str = "ItemId",
            time_key: str = "Time", callback=None):
        """Train on an event table (see :meth:`SessionModel.fit`). ``callback(epoch, elapsed_s,
        loss)`` is called after every epoch (epoch counted from 1); inside it the model scores
        with that epoch's parameters (``evaluate``, ``recommend``), and an exception it raises
        stops the fit (the model is then unfitted). Returns self.

        Raises ``ValueError`` for bad hyperparameters and ``ModelFitError`` when the loss
        becomes NaN or infinite.
        """
        return self._fit_events(data, session_key, item_key, time_key, callback, None)

    def _fit_events(self, data, session_key, item_key, time_key, callback, item_features):
        self._validated()  # fail before reading the data
        return SessionModel.fit(self, data, session_key=session_key, item_key=item_key,
                                time_key=time_key, callback=callback,
                                item_features=item_features)

    def _fit(self, sessions, callback=None, item_features=None):
        try:
            self._train(sessions, callback, item_features)
        except ModelFitError:
            del self.params_  # a diverged model must not be used: NotFittedError from now on
            raise

    def _make_trainer(self, p, params, spec, support, device, seed):
        """The device's trainer over the initial ``params`` (see the module docstring)."""
        hyper = hp.hyper(p)
        plan = epoch_plan(spec["strategy"], len(self.subnet_names_), p["n_epochs"])
        sum_mode = spec["combine"] == "sum"
        if device is None:
            from .backends.cpu import Trainer
            return Trainer(params, hyper, support, sum_mode=sum_mode, plan=plan,
                           names=self.subnet_names_)
        from .backends.cuda import Trainer
        return Trainer(device, params, hyper, support, sum_mode=sum_mode, plan=plan,
                       names=self.subnet_names_, seed=seed)

    def _train(self, sessions, callback, item_features):
        p = self._validated()
        spec = self._network_spec(p)
        device = _resolve_device(p["device"])
        n_items = len(self.item_index_)
        seq = np.random.SeedSequence(p["random_state"])
        init_seed, order_seed, numba_seed = seq.spawn(3)
        rng = np.random.default_rng(init_seed)
        order_rng = np.random.default_rng(order_seed)
        mode = self._input_mode(p)
        encoded = self._encode_inputs(p, item_features)
        layout = build_layout(n_items, spec["architecture"], spec["combine"], mode, p["layers"],
                              p["embedding"], spec["feature_layers"], encoded, rng)
        params = {k: layout[k] for k in PARAM_KEYS}
        support = sessions.item_support(n_items)
        self.device_ = "cpu" if device is None else "cuda"
        self.item_support_ = support
        self.input_mode_ = mode
        self.subnet_names_ = layout["names"]
        self.params_ = params
        self.loss_history_, self.epoch_times_, self.events_per_s_ = [], [], []
        numba_state = numba_seed.generate_state(2)
        trainer = self._make_trainer(p, params, spec, support, device, int(numba_state[1]))
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
                    self.params_ = trainer.host_params()
                    callback(epoch, elapsed, loss)
        params = trainer.host_params()
        self.params_ = params
        bad = [k for k, v in params.items() if v.dtype.kind == "f" and not np.all(np.isfinite(v))]
        if bad:
            raise ModelFitError(f"training produced non-finite parameters in {bad}")

    # ---- scoring ----------------------------------------------------------------------------
    def _check_fitted(self):
        super()._check_fitted()
        if not hasattr(self, "params_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit() "
                                 "first")

    def scorer(self, params=None):
        """A fresh scorer (evaluation protocol) over ``params`` (default ``params_``):
        :class:`gru_engine.backends.cuda.Scorer` when the model was trained on CUDA
        (``device_ == 'cuda'``; evaluation then ranks on the device), else
        :class:`gru_engine.backends.cpu_scoring.Scorer`. A loaded model scores on the CPU."""
        self._check_fitted()
        act, act_param = hp.parse_final_act(self.final_act)
        sum_mode = bool(self.params_["SI"][0, S_A] >= 0)  # combine weights exist only for 'sum'
        if params is None and getattr(self, "device_", "cpu") == "cuda":
            from .backends.cuda import Scorer
            return Scorer(_resolve_device("cuda"), self.params_, sum_mode, (act, act_param),
                          cache_on=self)
        from .backends.cpu_scoring import Scorer
        return Scorer(self.params_ if params is None else params, sum_mode, act, act_param,
                      _threads(self.n_threads))

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

    def subnet_params(self, name: str = "id") -> dict:
        """Views of one subnet's parameters (:func:`gru_engine.network.subnet_views`): ``Wx``,
        ``bx``, ``Wh``, ``bhn`` per layer, ``table``, ``weight``, ``columns``. SessionGRU's one
        subnet is ``'id'``."""
        self._check_fitted()
        if name not in self.subnet_names_:
            raise KeyError(f"no subnet {name!r}; subnets: {self.subnet_names_}")
        return subnet_views(self.params_, self.subnet_names_.index(name))

    # ---- files ------------------------------------------------------------------------------
    def save(self, path):
        """Write the fitted model to one ``.npz`` file (format 3: JSON header, no pickle,
        atomic; :mod:`gru_engine.io`)."""
        from .io import save_model
        save_model(self, path)

    @classmethod
    def load(cls, path):
        """Read a model written by :meth:`save` (formats 1-3); ``ValueError`` for a foreign
        or newer file."""
        from .io import load_model
        return load_model(path, cls)


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
