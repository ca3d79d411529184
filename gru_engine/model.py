"""SessionGRU: GRU4Rec (session-parallel mini-batches, sampled output, GRU4Rec losses), and the
estimator that every GRU model of the engine is.

A GRU model is one network (:mod:`gru_engine.network`): input subnets, a combine step and the
sampled output layer. ``SessionGRU`` is the network with one ID subnet; ``FeatureSessionGRU``
(:mod:`gru_engine.feature_model`) adds feature subnets by overriding :meth:`_network_spec` and
:meth:`_encode_inputs`. Everything else lives here once: fitting (the one epoch loop over the
trainer of the device, :class:`gru_engine.epochs.EpochRun`), scoring,
``recommend``/``predict_next``, files.

Extensions (:data:`EXTENSIONS`: :mod:`gru_engine.context`, :mod:`gru_engine.user_level`) keep
their logic in their modules; the estimator asks each through the same hooks: ``fit_events`` /
``warm_events`` (what a fit / ``partial_fit`` reads of the event table; None: off),
``start_fit`` / ``start_warm`` (adds its parameters, returns the trainer's keyword arguments),
``FITTED_ATTRS``; scoring: ``context.scorer`` (a context model's scorers), ``user_level.
scorer_class`` / ``trainer_class`` (the user GRU's subclasses of the plain ones).

Backends (``device``): ``'cpu'`` (:mod:`gru_engine.backends.cpu`: the whole epoch in Numba),
``'cuda'`` (:mod:`gru_engine.backends.cuda`: CUDA kernels through CuPy; ``ValueError`` without
CuPy and a GPU), ``'auto'`` (CUDA when CuPy sees a GPU, else CPU; checked once, lazily). Both
trainers follow one interface, ``fill_store() / start_epoch(items, order, offsets) /
rows_left() / run(max_steps) -> (loss_sum, events, finite) / host_params()`` (and
``follows_events`` / ``select_events(rows)`` for per-event data under augmentation:
:class:`gru_engine.epochs.EpochRun`), consume the same negative-sample draws in the same order
and give the same parameters up to float32 rounding (without dropout: the CUDA backend draws
its dropout masks on the device).

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

import logging
import time

import numpy as np

from . import context, user_level
from . import params as hp
from .backends.device import Device
from .base import SessionModel
from .epochs import EpochRun
from .exceptions import NotFittedError
from .network import PARAM_KEYS, S_A, build_layout, epoch_plan, grow_items, subnet_views
from .sampling import seed_numba
from .threads import resolve_threads, thread_limit, training_threads, warn_if_cpus_busy

logger = logging.getLogger("gru_engine")

#: the extension modules of the network, asked through the hooks of the module docstring
EXTENSIONS = (context, user_level)


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

    ``n_threads``: CPU threads (``None``: every CPU the process may use). Cross-entropy
    training with a combined hidden size up to 256 runs the output layer of each step in two
    parts on up to ``n_threads`` threads (BLAS on one; the trained model does not depend on
    ``n_threads``); otherwise the BLAS products of each step run on ``n_threads`` threads
    (:func:`gru_engine.threads.training_threads`). Evaluation splits each step's rows
    into ``n_threads`` blocks, each run (GRU step, scoring GEMM with one BLAS thread, ranking)
    on its own thread. On a machine whose cores are busy with other work, ``n_threads=1`` is
    often faster: idle OpenBLAS workers spin and fight for the cores (2-thread training was
    measured 30-35x slower than 1-thread beside one busy process on 2 cores); ``fit`` warns
    when it starts on more threads than there are idle CPUs.

    ``augment_crop_p``, ``augment_drop_p``: session augmentation after Tan et al. (2016),
    redrawn every epoch: a session replaced by a random contiguous sub-session of >= 2 clicks
    with probability ``augment_crop_p``, each click removed with probability
    ``augment_drop_p`` (>= 2 kept); 0 = off. Why these two and not prefixes: see
    :data:`gru_engine.params.AUGMENT_KEYS`.

    ``context_input`` (``'none'|'concat'|'multiply'``), ``context_output``
    (``'none'|'multiply'``), ``context_time`` (subset of ``('gap', 'hour', 'weekday')``; None:
    all three), ``context_columns`` (per-event categorical column names; None: none): the
    context-aware GRU (Smirnova & Vasile 2017), the current event's context on the input and
    the next event's on the output; needs real timestamps for ``context_time``.
    ``context_transition`` (``'none'|'multiply'``): the paper's context-dependent hidden
    dynamics, layer 0's recurrent matrix ``W_h(c) = diag(1 + W c) W_h`` of the current event's
    context. See :mod:`gru_engine.context`. ``recommend`` then takes the clicks' ``times`` and
    the request's time ``now``, ``predict_next`` per session ``times`` (and ``now``).
    ``user_layers``, ``user_mode``, ``user_input``: the user-level GRU across a user's sessions
    (HRNN, Quadrana et al. RecSys 2017; :data:`gru_engine.params.USER_KEYS`,
    :mod:`gru_engine.user_level`): ``user_layers`` units (0: off, the default), fed to each
    session as its initial state (``'init'``), as an input at every step (``'all'``, default)
    or both; the user GRU reads each finished session as the mean of its clicks' rows in a user
    input table (``'items'``, default) or as the session's last combined state (``'hidden'``).
    ``fit`` then needs a user column (``user_key``, default ``'UserId'``; missing values =
    anonymous sessions, which, like a user's first session, run as plain sessions). Scoring
    with the user state: :func:`gru_engine.evaluation.evaluate_session_aware` or
    ``recommend(..., user_sessions=...)``; without a user, a session scores as in the plain
    model. Both extensions train and score on either device; checkpoints, ``partial_fit`` and
    (context) augmentation, store snapshots and file scoring work as for the plain model.

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
                 show_progress=False, augment_crop_p=0.0, augment_drop_p=0.0,
                 context_input="none", context_output="none",
                 context_time=None, context_columns=None, context_transition="none",
                 user_layers=0,
                 user_mode="all", user_input="items", user_dropout=0.0):
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
        self.augment_crop_p = augment_crop_p
        self.augment_drop_p = augment_drop_p
        self.context_input = context_input
        self.context_output = context_output
        self.context_time = context_time
        self.context_columns = context_columns
        self.context_transition = context_transition
        self.user_layers = user_layers
        self.user_mode = user_mode
        self.user_input = user_input
        self.user_dropout = user_dropout

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
        user_level.check_options(p)
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

    def _output_params(self, p: dict, encoded: list, n_items: int, Hc: int) -> dict:
        """Parameters of the output layer beyond ``Wy``/``By`` (none for SessionGRU; see
        :mod:`gru_engine.output_features`)."""
        return {}

    def _input_mode(self, p) -> str:
        if p["constrained_embedding"]:
            if p["embedding"] > 0:
                logger.warning("embedding=%d is ignored because constrained_embedding=True "
                               "(as in the official GRU4Rec)", p["embedding"])
            return "constrained"
        return "embedding" if p["embedding"] > 0 else "onehot"

    # ---- fitting ----------------------------------------------------------------------------
    def fit(self, data, session_key: str = "SessionId", item_key: str = "ItemId",
            time_key: str = "Time", callback=None, checkpoint=None, resume: bool = False,
            user_key: str = "UserId"):
        """Train on an event table (see :meth:`SessionModel.fit`). Returns self.

        ``user_key``: the user column, read only when ``user_layers > 0`` (``ValueError`` when
        the table has none).

        ``callback(epoch, elapsed_s, loss)`` is called after every epoch (epoch counted from 1);
        inside it the model scores with that epoch's parameters (``evaluate``, ``recommend``),
        and an exception it raises stops the fit (the model is then unfitted).
        ``checkpoint``: a folder; after every epoch the model is written to
        ``<folder>/model.npz`` (a normal model file) and the training state (optimiser state,
        negative-sample store, random generators, epoch count) to ``<folder>/state.npz``.
        ``resume=True`` continues from the folder's last complete epoch (same data and
        hyperparameters required, checked) and gives the parameters of an uninterrupted run.
        A ``KeyboardInterrupt`` during fit leaves the model of the last complete epoch fitted
        and usable (then re-raises); before the first epoch completes, the model is unfitted.

        Raises ``ValueError`` for bad hyperparameters and ``ModelFitError`` when training
        diverges: a NaN or infinite loss, an epoch loss above ``config.DIVERGENCE_LOSS_FACTOR``
        times the best earlier one or (cross-entropy) above ``config.DIVERGENCE_CONSTANT_FACTOR``
        times the loss of constant scores, or a weight beyond ``config.DIVERGENCE_MAX_WEIGHT``. The
        error names the epoch; its ``model`` attribute holds a fitted copy with the last good
        epoch's parameters (None when the first epoch diverged), and this model is unfitted.
        """
        return self._fit_events(data, session_key, item_key, time_key, callback, None,
                                checkpoint, resume, user_key)

    def partial_fit(self, data, n_epochs=None, session_key: str | None = None,
                    item_key: str | None = None, time_key: str | None = None, callback=None,
                    user_key: str = "UserId"):
        """Warm start: continue training the fitted model on new events (e.g. the last day's)
        for ``n_epochs`` epochs (default: the ``n_epochs`` hyperparameter). Returns self.

        Training starts from the current parameters and, when the model holds it
        (``optimizer_state_``: after ``fit``/``partial_fit`` in this process, or a model read
        with :func:`gru_engine.checkpoint.load_checkpoint`), from the optimiser state; a model
        read with :meth:`load` starts with fresh Adagrad accumulators (logged). Item ids new to
        the model are appended to ``item_index_`` (their ``Wy`` rows and input rows drawn as
        ``fit`` draws them, ``By`` zero); old rows are kept. ``item_support_`` (the popularity
        that negative samples are drawn by) becomes old + new counts. Column names default to
        those of ``fit``. ``callback`` as in :meth:`fit`; divergence raises ``ModelFitError``
        and leaves the model as it was before the call.

        A context-aware model reads the new events' context as ``fit`` does (real timestamps
        for ``context_time``, the ``context_columns``); a column value new to the model joins
        ``context_vocab_`` with a zero context row, as ``fit`` starts its tables (old rows and
        their optimiser state are kept). A user-level model (``user_layers > 0``) needs the
        user column ``user_key`` (default ``'UserId'``, as ``fit``; pass the one ``fit`` used)
        and walks each user's sessions of ``data`` from an empty user state (the model keeps
        no per-user rows, so users new to the model need nothing; include a user's earlier
        sessions in ``data`` to train on their history); with ``user_input='items'`` new items
        get rows of the user input table drawn as ``fit`` draws them.
        """
        return self._partial_fit(data, n_epochs, session_key, item_key, time_key, callback,
                                 None, user_key)

    def _fit_events(self, data, session_key, item_key, time_key, callback, item_features,
                    checkpoint=None, resume=False, user_key="UserId"):
        # the extensions' columns first: a missing user column is the first error, as it was
        valid = hp.validate(self.get_params())
        events = {ext: ext.fit_events(valid, data, session_key, user_key) for ext in EXTENSIONS}
        self._validated()  # the other checks, before the events are read
        if resume and checkpoint is None:
            raise ValueError("resume=True needs checkpoint=<folder>")
        return SessionModel.fit(self, data, session_key=session_key, item_key=item_key,
                                time_key=time_key, callback=callback,
                                item_features=item_features, checkpoint=checkpoint,
                                resume=resume, events=events)

    def _fit(self, sessions, callback=None, item_features=None, checkpoint=None, resume=False,
             events=None):
        """Train the new network on ``sessions``; ``events``: per extension, what its
        ``fit_events`` hook read of the event table (None: the extension is off)."""
        self._interrupted_usable = False
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
        params.update(self._output_params(p, encoded, n_items, layout["Hc"]))
        extension_args = {}
        for ext, read in (events or {}).items():
            if read is not None:
                extension_args.update(ext.start_fit(self, p, layout, params, sessions, read,
                                                    order_rng, rng))
        support = sessions.item_support(n_items)
        self.device_ = "cpu" if device is None else "cuda"
        self.item_support_ = support
        self.input_mode_ = mode
        self.subnet_names_ = layout["names"]
        self.params_ = params
        self.loss_history_, self.epoch_times_, self.events_per_s_ = [], [], []
        numba_state = numba_seed.generate_state(2)
        trainer = self._make_trainer(p, params, spec, support, device, int(numba_state[1]),
                                     **extension_args)
        run = EpochRun(self, p, trainer, sessions, order_rng, checkpoint)
        if device is None:
            warn_if_cpus_busy(resolve_threads(p["n_threads"]))
        numba_threads, blas_threads = training_threads(
            p["loss"], params["Wy"].shape[1], resolve_threads(p["n_threads"]))
        with thread_limit(numba_threads, blas=blas_threads):
            seed_numba(int(numba_state[0] & 0x7FFFFFFF))
            t0 = time.perf_counter()
            trainer.fill_store()
            self.sample_store_seconds_ = time.perf_counter() - t0
            logger.info("sample store: %d items in %.2f s", len(trainer.store.samples),
                        self.sample_store_seconds_)
            first = 1
            if resume:
                from .checkpoint import restore_training
                first = restore_training(self, checkpoint, trainer, order_rng, sessions) + 1
            run.epochs(first, p["n_epochs"], callback)

    def _partial_fit(self, data, n_epochs, session_key, item_key, time_key, callback,
                     item_features, user_key="UserId"):
        from .data import ItemIndex, build_sessions, extract_events
        self._check_fitted()
        p = self._validated()
        keys = dict(self.keys_)
        keys.update({k: v for k, v in (("session_key", session_key), ("item_key", item_key),
                                        ("time_key", time_key)) if v is not None})
        n_epochs = p["n_epochs"] if n_epochs is None else n_epochs
        if not (isinstance(n_epochs, (int, np.integer)) and n_epochs >= 1):
            raise ValueError(f"n_epochs must be a positive integer, got {n_epochs!r}")
        _, item_ids, _ = extract_events(data, keys["session_key"], keys["item_key"],
                                        keys["time_key"])
        events = {ext: ext.warm_events(self, p, data, keys["session_key"], user_key)
                  for ext in EXTENSIONS}
        old = self.item_index_
        new_ids = ItemIndex.from_events(item_ids).ids
        new_ids = new_ids[old.lookup(new_ids) < 0]
        index = ItemIndex(np.concatenate([old.ids, new_ids]))
        sessions, _, _ = build_sessions(data, index, **keys)
        spec = self._network_spec(p)
        device = _resolve_device(p["device"])
        seq = np.random.SeedSequence([p["random_state"] or 0, len(self.loss_history_)])
        grow_seed, order_seed, numba_seed = seq.spawn(3)
        bags = self._new_item_bags(new_ids, item_features)
        state = getattr(self, "optimizer_state_", None)
        if state is None:
            logger.info("partial_fit: no optimiser state kept with this model; Adagrad "
                        "accumulators start from zero")
        has_id = self.subnet_names_[0] == "id"
        grow_rng, order_rng = np.random.default_rng(grow_seed), np.random.default_rng(order_seed)
        params, grown = grow_items(self.params_, len(new_ids), bags, has_id, grow_rng,
                                   state=() if state is None else (state["acc"], state["vel"]))
        grown_state = None if state is None else {"acc": grown[0], "vel": grown[1]}
        support = np.concatenate([self.item_support_, np.zeros(len(new_ids), np.int64)])
        support = support + sessions.item_support(len(index))
        kept = ("item_index_", "item_support_", "params_", "loss_history_", "epoch_times_",
                "events_per_s_") + tuple(a for ext in EXTENSIONS for a in ext.FITTED_ATTRS)
        before = {k: getattr(self, k) for k in kept if hasattr(self, k)}
        before["optimizer_state_"] = state
        extension_args = {}
        for ext, read in events.items():
            if read is not None:
                extension_args.update(ext.start_warm(self, p, params, grown_state, len(new_ids),
                                                     sessions, read, order_rng, grow_rng))
        self.item_index_, self.item_support_, self.params_ = index, support, params
        self.loss_history_ = list(self.loss_history_)
        self.epoch_times_ = list(getattr(self, "epoch_times_", []))
        self.events_per_s_ = list(getattr(self, "events_per_s_", []))
        self.device_ = "cpu" if device is None else "cuda"
        numba_state = numba_seed.generate_state(2)
        p = dict(p, n_epochs=n_epochs)
        try:
            trainer = self._make_trainer(p, params, spec, support, device,
                                         int(numba_state[1]), grown_state, **extension_args)
            run = EpochRun(self, p, trainer, sessions, order_rng, None)
            numba_threads, blas_threads = training_threads(
                p["loss"], params["Wy"].shape[1], resolve_threads(p["n_threads"]))
            with thread_limit(numba_threads, blas=blas_threads):
                seed_numba(int(numba_state[0] & 0x7FFFFFFF))
                trainer.fill_store()
                run.epochs(1, n_epochs, callback, offset=len(before["loss_history_"]))
        except BaseException:
            for k, v in before.items():
                setattr(self, k, v)
            raise
        return self

    def _new_item_bags(self, new_ids, item_features) -> list:
        """Feature bags of items new to the model (one per feature subnet; none here)."""
        return []

    def _make_trainer(self, p, params, spec, support, device, seed, optimizer_state=None,
                      context=None, users=None):
        """The device's trainer over the initial ``params`` (see the module docstring);
        ``context``: the context record of a context-aware network (both backends' trainers
        take it); ``users``: the user-level GRU's trainer keyword arguments (its trainer then
        is :func:`gru_engine.user_level.trainer_class`'s). Both come from the extensions'
        ``start_fit``/``start_warm`` hooks."""
        hyper = hp.hyper(p)
        plan = epoch_plan(spec["strategy"], len(self.subnet_names_), p["n_epochs"])
        args = dict(sum_mode=spec["combine"] == "sum", plan=plan, names=self.subnet_names_,
                    optimizer_state=optimizer_state, context=context, **(users or {}))
        logger.info("training on %s", "CPU" if device is None else f"CUDA ({device.name})")
        if device is None:
            from .backends.cpu import Trainer
            from .backends.cpu.compile import announce_compilation
            announce_compilation()
            cls = Trainer if users is None else user_level.trainer_class(device)
            return cls(params, hyper, support, **args)
        from .backends.cuda import Trainer
        cls = Trainer if users is None else user_level.trainer_class(device)
        return cls(device, params, hyper, support, seed=seed, **args)

    def _keep_after_interrupt(self) -> bool:
        return self._interrupted_usable

    # ---- scoring ----------------------------------------------------------------------------
    def _check_fitted(self):
        super()._check_fitted()
        if not hasattr(self, "params_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit() "
                                 "first")

    def scorer(self, params=None):
        """A scorer (evaluation protocol) with its own hidden state over ``params`` (default
        ``params_``): :class:`gru_engine.backends.cuda.Scorer` when the model was trained on
        CUDA (``device_ == 'cuda'``; evaluation then ranks on the device), else
        :class:`gru_engine.backends.cpu_scoring.Scorer`. A loaded model scores on the CPU.
        The item tables are built once per ``params_`` and shared by every scorer
        (:func:`gru_engine.serving.shared_scorer`)."""
        from .serving import shared_scorer
        return shared_scorer(self, params)

    def _build_scorer(self, params=None, device=None):
        """A scorer built from scratch over ``params`` (default ``params_``): CUDA as in
        :meth:`scorer` unless ``device='cpu'``, else CPU."""
        self._check_fitted()
        on_device = (params is None and device != "cpu"
                     and getattr(self, "device_", "cpu") == "cuda")
        dev = _resolve_device("cuda") if on_device else None
        sc = context.scorer(self, params, dev)
        if sc is not None:
            return sc
        act, act_param = hp.parse_final_act(self.final_act)
        sum_mode = bool(self.params_["SI"][0, S_A] >= 0)  # combine weights exist only for 'sum'
        if dev is not None:
            from .backends.cuda import Scorer
            cls = user_level.scorer_class(self, dev) or Scorer
            return cls(dev, self.params_, sum_mode, (act, act_param), cache_on=self)
        from .backends.cpu_scoring import Scorer
        cls = user_level.scorer_class(self, None) or Scorer
        return cls(self.params_ if params is None else params, sum_mode, act, act_param,
                   resolve_threads(self.n_threads))

    def evaluate(self, test, *args, **kwargs) -> dict:
        """Next-item evaluation (see :meth:`SessionModel.evaluate`), under ``n_threads``."""
        # One BLAS thread: the scorer's rank() splits the rows over ``n_threads`` threads.
        with thread_limit(1):
            return super().evaluate(test, *args, **kwargs)

    def _eval_scorer(self, sessions, test):
        if not context.fitted(self):
            return self.scorer()
        from .context_scoring import scorer_for_sessions
        return scorer_for_sessions(self, sessions, test)

    def recommend(self, session_items, k: int = 20, exclude=None, times=None, now=None,
                  columns=None, user_sessions=None):
        """Top-``k`` next items after the clicks ``session_items`` (see
        :meth:`SessionModel.recommend`). A context-aware model also needs ``times`` (the
        clicks' times, Unix seconds, in order) and ``now`` (the request's time: the next
        event's context) for ``context_time``, and ``columns`` (name -> one value per click)
        for ``context_columns``; other models ignore them. ``user_sessions``: a user-level
        model (``user_layers > 0``) only: the user's earlier sessions, oldest first, each a
        sequence of original item ids (unknown ids raise ``KeyError``; sessions of fewer than
        2 clicks are skipped); the session then starts from the user state they give. Without
        it (or when no earlier session has 2 clicks) the session scores as a plain session."""
        if context.fitted(self):
            from .context_scoring import recommend
            return recommend(self, session_items, k, exclude, times, now, columns)
        if user_sessions is None:
            return super().recommend(session_items, k, exclude)
        self._check_fitted()
        from .backends.cpu_user_scoring import user_scorer_of
        sc = user_scorer_of(self, user_sessions)
        if sc is None:  # no earlier session of 2 clicks: a plain session
            return super().recommend(session_items, k, exclude)
        items = self.item_index_.to_index(np.atleast_1d(np.asarray(session_items)))
        return self._recommend(sc, items, k, exclude)

    def predict_next(self, sessions_items, times=None, now=None, columns=None) -> np.ndarray:
        """Scores of every item as the next click of each live session.

        sessions_items: list of sessions, each a sequence of original item ids in click order.
        Returns (n_sessions, n_items) float32; column ``j`` is item ``item_index_.ids[j]``.
        Unknown item ids raise ``KeyError``; an empty session raises ``ValueError``.

        A context-aware model also needs, per session, its clicks' ``times`` (list of
        sequences of Unix seconds, for ``context_time``) and ``columns`` (name -> list of
        per-click value sequences, for ``context_columns``); ``now``: per session the
        request's seconds (the next event's context), default each session's last click time
        (the answer right after that click, as ``SessionStore.step`` gives). Other models
        ignore them.
        """
        self._check_fitted()
        seqs = [self.item_index_.to_index(np.atleast_1d(np.asarray(s))) for s in sessions_items]
        if not context.fitted(self) or not seqs:
            return self._predict_next(self.scorer(), seqs)
        if any(len(s) == 0 for s in seqs):
            raise ValueError("every session needs at least one click")
        from .context_scoring import predict_scorer
        sc, starts = predict_scorer(self, seqs, times, now, columns)
        return self._predict_next(sc, seqs, starts)

    def _predict_next(self, sc, seqs, starts=None) -> np.ndarray:
        """:meth:`predict_next` for sessions of indices understood by the scorer ``sc``;
        ``starts``: a context scorer's first bound event of each session (its rows' context
        is set before every step)."""
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
            if starts is not None:
                sc.set_events(starts[rows] + t)
            scores = sc.score(rows, items, np.full(len(rows), t == 0))
            last = lengths[rows] == t + 1
            out[rows[last]] = scores[last]
        return out

    def similar_items(self, item_ids, k: int = 20):
        """Items most similar to ``item_ids`` by the cosine of their learned output vectors
        (rows of ``Wy``), best first, the item itself excluded: implicit offers ("customers
        also viewed"). Ties go to the lower item index; a zero vector has cosine 0.

        item_ids: one original id (returns 1-D arrays) or a 1-D sequence (2-D arrays).
        Returns ``(ids, scores)``: (n, k') original ids and float32 cosines, k' = min(k,
        n_items - 1). Unknown ids raise ``KeyError`` naming them. On a CUDA model the
        similarities and top-k are computed on the device (``Device.gemm`` and the backend's
        ``topk_device``; the normalised vectors are uploaded once), else with host arrays.
        """
        from .serving import similar_items
        return similar_items(self, item_ids, k)

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
