"""FeatureSessionGRU: parallel GRU subnets over item ids and item features (p-RNN).

Hidasi, Quadrana, Karatzoglou, Tikk, "Parallel Recurrent Neural Network Architectures for
Feature-rich Session-based Recommendations" (RecSys 2016). Every input source gets its own GRU
subnet (one or more layers): the ID subnet reads the item as GRU4Rec does (one-hot, separate
embedding, or constrained: its own block of ``Wy``), a feature subnet reads the current item's
feature vector (:mod:`gru_engine.features`). The subnets' last hidden states are combined
(``concat``, or ``sum``: a learned weight per subnet) and fed to the shared sampled output layer
``Wy`` (n_items, H_comb), ``By`` as in GRU4Rec; losses, negative sampling, session-parallel
batching and Adagrad+momentum are GRU4Rec's. Every subnet's hidden state is reset at session
boundaries. This module is the estimator (hyperparameters, checks, parameter layout and
initialisation, the epoch loop, files); training and inference run in the CPU backend
:mod:`gru_engine.backends.feature_cpu` or, with ``device='cuda'``, in
:mod:`gru_engine.backends.feature_cuda` (the same step on the CUDA kernels). The CPU backend
reuses the kernels of ``gru.py``, ``losses.py``, ``optim.py``, ``batching.py``, ``sampling.py``
and ``backends/cpu.py``.

Training strategies (``strategy``):
- ``simultaneous``: all subnets every step;
- ``alternating``: one subnet per epoch in turn (ID first); the others run forward frozen; the
  output layer trains every epoch;
- ``residual``: subnet ``k`` trains on the residual of the frozen subnets ``0..k-1`` (its own
  output block added to their scores; later subnets are off); the ``n_epochs`` epochs are split
  into one block of consecutive epochs per subnet (the remainder goes to the last); only the
  trained subnet's output block of ``Wy`` is updated (``By`` always); needs ``combine='concat'``;
- ``interleaved``: as alternating, but the trained subnet changes every mini-batch.

``architecture='id'`` is plain GRU4Rec: it trains exactly as :class:`~gru_engine.model.SessionGRU`
(item features are ignored). Dropout: ``dropout_p_embed`` on every subnet's input vector,
``dropout_p_hidden`` on every layer's output.

Parameters live in flat arrays (one compiled specialisation whatever the number of subnets):
``params_['theta']`` all dense GRU weights and combine weights, ``params_['T']`` all embedding
tables, ``Wy``, ``By``; the layout tables ``params_['SI']`` (per subnet) and ``params_['LI']``
(per layer; columns documented in the backend) say where each piece is;
:meth:`FeatureSessionGRU.subnet_params` gives views.
"""
from __future__ import annotations

import json
import logging
import os

import numpy as np

from . import params as hp
from .backends.cpu_scoring import FeatureScorer
from .backends.feature_cpu import FeatureTrainer
from .data import ItemIndex
from .features import encode_item_features, encode_new_items, validate_item_features
from .io import load_model, read_header, restore_model, write_npz
from .model import SessionGRU, _threads
from .network import (ARCHITECTURES, COMBINES, L_BHN, L_BX, L_H, L_IN, L_WH, L_WX, PARAM_KEYS,
                      S_A, S_C0, S_C1, S_L0, S_L1, S_TAB, S_TCOLS, S_TOFF, S_TROWS, STRATEGIES,
                      T_OWN, build_layout, epoch_plan, with_new_items)

logger = logging.getLogger("gru_engine")

FORMAT = "gru_engine.FeatureSessionGRU"
#: 2 adds the feature encoders' vocabularies (version 1 files load without them)
FORMAT_VERSION = 2


class FeatureSessionGRU(SessionGRU):
    """GRU4Rec with parallel feature subnets (p-RNN, Hidasi et al. RecSys 2016).

    Hyperparameters: those of :class:`~gru_engine.model.SessionGRU` plus

    - ``architecture``: ``'parallel'`` (ID subnet + one subnet per feature source, default),
      ``'feature'`` (feature subnets only; the output layer stays item-indexed), ``'id'``
      (plain GRU4Rec, exactly SessionGRU's training; features ignored);
    - ``combine``: ``'concat'`` (default) or ``'sum'`` (learned scalar weight per subnet; all
      subnets' last layers must have the same size);
    - ``strategy``: ``'simultaneous'`` (default), ``'alternating'``, ``'residual'``,
      ``'interleaved'`` (module docstring);
    - ``feature_layers``: hidden sizes of every feature subnet (int or list; None = ``layers``).

    Example::

        feats = {"category": CategoricalFeatures(cat_ids, cat_codes, dim=16)}
        model = FeatureSessionGRU(layers=[100], architecture="parallel")
        model.fit(train, item_features=feats)
        model.evaluate(test)["recall@20"]

    Items that did not occur in the training events (new items): the output layer is
    item-indexed, so they are never recommended or scored; as *clicks* of a live session they
    are understood when their features are given: ``recommend(..., item_features=...)`` and
    ``predict_next(..., item_features=...)`` encode them with the model's feature encoders
    (codes or tokens never seen in training get the unknown row) and the ID subnet reads them as
    a zero input vector. Without features a new item raises ``KeyError``; ``evaluate`` drops the
    events of new items, as for every model.

    Fitted attributes (besides SessionGRU's): ``params_`` (``theta``, ``T``, ``Wy``, ``By`` and the
    layout arrays), ``subnet_names_`` (ID first), ``feature_info_`` (one dict per source),
    ``feature_vocab_`` (per source, the encoder's vocabularies: a list of code arrays).
    """

    def __init__(self, layers=(100,), loss="cross-entropy", final_act="linear", batch_size=32,
                 n_epochs=10, n_sample=2048, sample_alpha=0.5, sample_store_size=10_000_000,
                 logq=1.0, bpreg=0.0, elu_param=0.0, embedding=0, constrained_embedding=True,
                 dropout_p_embed=0.0, dropout_p_hidden=0.0, learning_rate=0.1, momentum=0.0,
                 random_state=None, n_threads=None, device="cpu", shuffle_sessions=False,
                 show_progress=False, architecture="parallel", combine="concat",
                 strategy="simultaneous", feature_layers=None):
        super().__init__(layers=layers, loss=loss, final_act=final_act, batch_size=batch_size,
                         n_epochs=n_epochs, n_sample=n_sample, sample_alpha=sample_alpha,
                         sample_store_size=sample_store_size, logq=logq, bpreg=bpreg,
                         elu_param=elu_param, embedding=embedding,
                         constrained_embedding=constrained_embedding,
                         dropout_p_embed=dropout_p_embed, dropout_p_hidden=dropout_p_hidden,
                         learning_rate=learning_rate, momentum=momentum,
                         random_state=random_state, n_threads=n_threads, device=device,
                         shuffle_sessions=shuffle_sessions, show_progress=show_progress)
        self.architecture = architecture
        self.combine = combine
        self.strategy = strategy
        self.feature_layers = feature_layers

    def _validated(self) -> dict:
        p = super()._validated()
        if p["architecture"] not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {list(ARCHITECTURES)}, "
                             f"got {p['architecture']!r}")
        if p["combine"] not in COMBINES:
            raise ValueError(f"combine must be one of {list(COMBINES)}, got {p['combine']!r}")
        if p["strategy"] not in STRATEGIES:
            raise ValueError(f"strategy must be one of {list(STRATEGIES)}, got {p['strategy']!r}")
        fl = p["feature_layers"]
        if fl is None:
            fl = p["layers"]
        try:
            fl = hp.validate(dict(hp.DEFAULTS, layers=fl))["layers"]
        except ValueError:
            raise ValueError(f"feature_layers must be None or a non-empty list of positive ints, "
                             f"got {p['feature_layers']!r}") from None
        p["feature_layers"] = fl
        if p["combine"] == "sum" and p["architecture"] == "parallel" and fl[-1] != p["layers"][-1]:
            raise ValueError(f"combine='sum' needs subnets of one size: "
                             f"layers[-1]={p['layers'][-1]} but feature_layers[-1]={fl[-1]}")
        if p["strategy"] == "residual" and p["combine"] != "concat":
            raise ValueError("strategy='residual' needs combine='concat' (each subnet has its own "
                             "output block)")
        return p

    # ---- fitting ----------------------------------------------------------------------------
    def fit(self, data, item_features=None, session_key: str = "SessionId",
            item_key: str = "ItemId", time_key: str = "Time", callback=None):
        """Train on an event table and item features ``{source_name: spec}`` (specs of
        :mod:`gru_engine.features`; not needed for ``architecture='id'``). ``callback(epoch,
        elapsed_s, loss)`` after every epoch. Returns self.

        Raises ``ValueError`` for bad hyperparameters or features (checked before the events are
        read), ``ModelFitError`` when the loss becomes NaN or infinite.
        """
        p = self._validated()
        feats = validate_item_features(item_features)
        if p["architecture"] != "id" and not feats:
            raise ValueError(f"architecture={p['architecture']!r} needs item_features "
                             "(a dict {name: DenseFeatures | CategoricalFeatures | TokenFeatures})")
        from .base import SessionModel
        return SessionModel.fit(self, data, session_key=session_key, item_key=item_key,
                                time_key=time_key, callback=callback, item_features=feats)

    def _fit(self, sessions, callback=None, item_features=None):
        p = self._validated()
        self.feature_info_, self.feature_vocab_ = [], []
        if p["architecture"] == "id":
            self.subnet_names_ = ["id"]
            return super()._fit(sessions, callback=callback)
        encoded = encode_item_features(item_features, self.item_index_)
        S = len(encoded) + (p["architecture"] == "parallel")
        if p["strategy"] == "residual" and p["n_epochs"] < S:
            raise ValueError(f"strategy='residual' trains the {S} subnets one after another: "
                             f"n_epochs ({p['n_epochs']}) must be >= {S}")
        self.feature_info_ = [dict(e.info, name=e.name) for e in encoded]
        self.feature_vocab_ = [e.vocab for e in encoded]
        self._encoded = encoded  # read by _init_params during SessionGRU's fit
        try:
            super()._fit(sessions, callback=callback)
        finally:
            del self._encoded

    def _init_params(self, p, n_items: int, mode: str, rng) -> dict:
        """Initial flat parameters and layout arrays (:func:`build_layout`); sets
        ``subnet_names_``."""
        if p["architecture"] == "id":
            return super()._init_params(p, n_items, mode, rng)
        layout = build_layout(n_items, p["architecture"], p["combine"], mode, p["layers"],
                              p["embedding"], p["feature_layers"], self._encoded, rng)
        self.subnet_names_ = layout["names"]
        return {k: layout[k] for k in PARAM_KEYS}

    def _make_trainer(self, p, params, mode, support, device, seed):
        """:class:`~gru_engine.backends.feature_cpu.FeatureTrainer` (CPU) or
        :class:`~gru_engine.backends.feature_cuda.FeatureEpochTrainer` (CUDA ``device``)
        following the strategy's :func:`epoch_plan` (SessionGRU's trainer for
        ``architecture='id'``)."""
        if p["architecture"] == "id":
            return super()._make_trainer(p, params, mode, support, device, seed)
        act, act_param = hp.parse_final_act(p["final_act"])
        plan = epoch_plan(p["strategy"], len(self.subnet_names_), p["n_epochs"])
        if device is not None:
            from .backends.feature_cuda import FeatureEpochTrainer
            return FeatureEpochTrainer(
                device, params, batch_size=p["batch_size"], n_sample=p["n_sample"],
                sample_alpha=p["sample_alpha"], sample_store_size=p["sample_store_size"],
                item_support=support, plan=plan, names=self.subnet_names_,
                sum_mode=p["combine"] == "sum", loss=p["loss"], final_act=(act, act_param),
                bpreg=p["bpreg"], elu_param=p["elu_param"], logq=p["logq"],
                learning_rate=p["learning_rate"], momentum=p["momentum"],
                dropout_p_embed=p["dropout_p_embed"], dropout_p_hidden=p["dropout_p_hidden"],
                seed=seed)
        return FeatureTrainer(params, len(support), support, p["batch_size"], p["n_sample"],
                              p["sample_alpha"], p["sample_store_size"],
                              loss=hp.LOSS_CODES[p["loss"]], act=act, act_param=act_param,
                              logq=p["logq"], bpreg=p["bpreg"], elu=p["elu_param"],
                              lr=p["learning_rate"], mom=p["momentum"],
                              p_embed=p["dropout_p_embed"], p_hidden=p["dropout_p_hidden"],
                              sum_mode=p["combine"] == "sum",
                              plan=plan, names=self.subnet_names_)

    # ---- scoring ----------------------------------------------------------------------------
    def _is_id(self) -> bool:
        return "theta" not in getattr(self, "params_", {})

    def scorer(self):
        """A fresh scorer: :class:`FeatureScorer`, on a CUDA-trained model (``device_ ==
        'cuda'``) :class:`~gru_engine.backends.feature_cuda.FeatureCudaScorer`, or SessionGRU's
        for ``architecture='id'``."""
        self._check_fitted()
        if self._is_id():
            return super().scorer()
        act, act_param = hp.parse_final_act(self.final_act)
        if getattr(self, "device_", "cpu") == "cuda":
            from . import model
            from .backends.feature_cuda import FeatureCudaScorer
            return FeatureCudaScorer(model._resolve_device("cuda"), self.params_,
                                     self.combine == "sum", (act, act_param), cache_on=self)
        return FeatureScorer(self.params_, self.combine == "sum", act, act_param,
                             _threads(self.n_threads))

    def recommend(self, session_items, k: int = 20, exclude=None, item_features=None):
        """Top-``k`` next items after the clicks ``session_items`` (see
        :meth:`SessionModel.recommend`). ``item_features`` (``{source_name: spec}``, as in
        ``fit``) lets the session hold new items (class docstring); they are never recommended.
        """
        self._check_fitted()
        scorer, seqs = self._scorer_for([session_items], item_features)
        return self._recommend(scorer, seqs[0], k, exclude)

    def predict_next(self, sessions_items, item_features=None) -> np.ndarray:
        """Scores of every model item after each session (see :meth:`SessionGRU.predict_next`);
        ``item_features`` as in :meth:`recommend`."""
        self._check_fitted()
        scorer, seqs = self._scorer_for(sessions_items, item_features)
        return self._predict_next(scorer, seqs)

    def _scorer_for(self, sessions_items, item_features):
        """``(scorer, index sequences)`` for sessions of original ids. New items listed in
        ``item_features`` get indices ``n_items_ + k`` in a CPU scorer whose bags cover them;
        ``KeyError`` for a new item without features."""
        seqs = [np.atleast_1d(np.asarray(s)) for s in sessions_items]
        if item_features is None:
            return self.scorer(), [self.item_index_.to_index(s) for s in seqs]
        if self._is_id():
            raise ValueError("item_features: this model (architecture='id') reads no item "
                             "features")
        flat = np.concatenate(seqs) if seqs else np.zeros(0, np.int64)
        new_ids = np.unique(flat[self.item_index_.lookup(flat) < 0])
        if len(new_ids) == 0:
            return self.scorer(), [self.item_index_.to_index(s) for s in seqs]
        if self.feature_vocab_ is None:
            raise ValueError("this model file (format version 1) has no feature encoders; "
                             "new items need a model saved by this version")
        sources = [(info["name"], info, vocab)
                   for info, vocab in zip(self.feature_info_, self.feature_vocab_)]
        bags, listed = encode_new_items(item_features, sources, new_ids)
        if not listed.all():
            missing = new_ids[~listed]
            raise KeyError(f"{len(missing)} item id(s) unknown to the model and absent from "
                           f"item_features, e.g. {missing[0]!r}")
        new_index = ItemIndex(new_ids)
        n_items = self.n_items_
        out = []
        for s in seqs:
            idx = self.item_index_.lookup(s).astype(np.int32)
            new = idx < 0
            idx[new] = n_items + new_index.lookup(s[new])
            out.append(idx)
        params = with_new_items(self.params_, n_items, bags,
                                has_id=self.subnet_names_[0] == "id")
        act, act_param = hp.parse_final_act(self.final_act)
        return FeatureScorer(params, self.combine == "sum", act, act_param,
                             _threads(self.n_threads)), out

    def subnet_params(self, name: str) -> dict:
        """Views of one subnet's parameters: ``Wx``, ``bx``, ``Wh``, ``bhn`` (lists per layer;
        ``Wx[0]`` None for one-hot input), ``table`` (its embedding table or None), ``weight``
        (combine weight under ``sum``, else None), ``columns`` (its ``Wy`` column range)."""
        self._check_fitted()
        if self._is_id():
            raise ValueError("architecture='id' has no subnet layout; see params_")
        if name not in self.subnet_names_:
            raise KeyError(f"no subnet {name!r}; subnets: {self.subnet_names_}")
        p = self.params_
        SI, LI, th = p["SI"], p["LI"], p["theta"]
        s = self.subnet_names_.index(name)
        out = {"Wx": [], "bx": [], "Wh": [], "bhn": []}
        for g in range(SI[s, S_L0], SI[s, S_L1]):
            H, n_in = int(LI[g, L_H]), int(LI[g, L_IN])
            wx = LI[g, L_WX]
            out["Wx"].append(None if wx < 0 else th[wx:wx + n_in * 3 * H].reshape(n_in, 3 * H))
            out["bx"].append(th[LI[g, L_BX]:LI[g, L_BX] + 3 * H])
            out["Wh"].append(th[LI[g, L_WH]:LI[g, L_WH] + 3 * H * H].reshape(H, 3 * H))
            out["bhn"].append(th[LI[g, L_BHN]:LI[g, L_BHN] + H])
        out["table"] = None
        if SI[s, S_TAB] == T_OWN:
            a, r, c = SI[s, S_TOFF], SI[s, S_TROWS], SI[s, S_TCOLS]
            out["table"] = p["T"][a:a + r * c].reshape(r, c)
        out["weight"] = float(th[SI[s, S_A]]) if SI[s, S_A] >= 0 else None
        out["columns"] = (int(SI[s, S_C0]), int(SI[s, S_C1]))
        return out

    # ---- files ------------------------------------------------------------------------------
    def save(self, path):
        """Write the fitted model (parameters, layout, encoded feature tables, the encoders'
        vocabularies) to one ``.npz`` (JSON header, no pickle, atomic). ``architecture='id'`` uses SessionGRU's format."""
        self._check_fitted()
        if self._is_id():
            return super().save(path)
        ids = np.asarray(self.item_index_.ids)
        if ids.dtype.kind not in "iuU":
            raise ValueError(f"cannot save item ids of dtype {ids.dtype}: only integer or string "
                             "ids")
        params = self.get_params()
        params["layers"] = [int(h) for h in np.atleast_1d(params["layers"])]
        if params["feature_layers"] is not None:
            params["feature_layers"] = [int(h) for h in np.atleast_1d(params["feature_layers"])]
        header = {"format": FORMAT, "format_version": FORMAT_VERSION, "class": type(self).__name__,
                  "params": params, "keys": self.keys_, "input_mode": self.input_mode_,
                  "subnet_names": self.subnet_names_, "feature_info": self.feature_info_,
                  "vocab_counts": [len(v) for v in self.feature_vocab_],
                  "loss_history": [float(x) for x in self.loss_history_]}
        arrays = {"header": np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8),
                  "item_ids": ids, "item_support": np.asarray(self.item_support_, np.int64)}
        arrays.update(self.params_)
        for s, vocab in enumerate(self.feature_vocab_):
            for c, codes in enumerate(vocab):
                arrays[f"vocab_{s}_{c}"] = np.asarray(codes)
        write_npz(os.fspath(path), arrays)

    @classmethod
    def load(cls, path) -> "FeatureSessionGRU":
        """Read a model written by :meth:`save`; ``ValueError`` for a foreign or newer file."""
        path = os.fspath(path)
        with np.load(path, allow_pickle=False) as f:
            header = read_header(f, path)
            if header.get("format") != FORMAT:
                model = load_model(path, cls)
                model.subnet_names_, model.feature_info_, model.feature_vocab_ = ["id"], [], []
                return model
            if header.get("format_version") not in (1, FORMAT_VERSION):
                raise ValueError(f"{path}: FeatureSessionGRU format version "
                                 f"{header.get('format_version')!r} is not supported")
            if header.get("class") != cls.__name__:
                raise ValueError(f"{path} holds a {header.get('class')!r}, not a {cls.__name__}")
            params = {k: np.array(f[k]) for k in PARAM_KEYS}
            counts = header.get("vocab_counts")
            vocab = None if counts is None else [[np.array(f[f"vocab_{s}_{c}"])
                                                  for c in range(n)] for s, n in enumerate(counts)]
            ids = np.array(f["item_ids"])
            support = np.array(f["item_support"])
        model = restore_model(cls, header, ids, support, params)
        model.subnet_names_ = header["subnet_names"]
        model.feature_info_ = header["feature_info"]
        model.feature_vocab_ = vocab
        return model
