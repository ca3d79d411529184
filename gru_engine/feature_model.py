"""FeatureSessionGRU: parallel GRU subnets over item ids and item features (p-RNN).

Hidasi, Quadrana, Karatzoglou, Tikk, "Parallel Recurrent Neural Network Architectures for
Feature-rich Session-based Recommendations" (RecSys 2016). Every input source gets its own GRU
subnet (one or more layers): the ID subnet reads the item as GRU4Rec does (one-hot, separate
embedding, or constrained: its own block of ``Wy``), a feature subnet reads the current item's
feature vector (:mod:`gru_engine.features`). The subnets' last hidden states are combined
(``concat``, or ``sum``: a learned weight per subnet) and fed to the shared sampled output layer
``Wy`` (n_items, H_comb), ``By`` as in GRU4Rec; losses, negative sampling, session-parallel
batching and Adagrad+momentum are GRU4Rec's. Every subnet's hidden state is reset at session
boundaries.

This module adds to :class:`~gru_engine.model.SessionGRU` (the estimator of every GRU model:
fitting, scoring, files) what the feature subnets need: their hyperparameters and checks, the
encoding of the item features, and new items clicked in a live session. The network layout is
:mod:`gru_engine.network`; training and scoring run in the same backends as SessionGRU's.

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
(item features are ignored).

Output features (``output_features=True``, :mod:`gru_engine.output_features`): every item's
output vector and bias get a learned part pooled from its features, ``Wy_eff[i] = Wy[i] +
sum_j w_ij Fy[r_ij]``, so similar items share what they learn and an item never clicked in
training can be scored and recommended (:meth:`FeatureSessionGRU.add_items`).

Dropout: ``dropout_p_embed`` on every subnet's input vector,
``dropout_p_hidden`` on every layer's output.

Parameters: ``params_`` is the network's flat parameter dict (:mod:`gru_engine.network`);
:meth:`FeatureSessionGRU.subnet_params` gives views per subnet.
"""
from __future__ import annotations

import logging

import numpy as np

from . import context
from . import params as hp
from .data import ItemIndex, extract_events, show_id
from .features import _as_ids, encode_item_features, encode_new_items, validate_item_features
from .model import SessionGRU
from .network import ARCHITECTURES, COMBINES, STRATEGIES, grow_items, subnet_views, with_new_items
from .output_features import build as build_output_features
from .output_features import check_options as check_output_features
from .output_features import extend_output_bags, merge_bags

logger = logging.getLogger("gru_engine")


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
    - ``feature_layers``: hidden sizes of every feature subnet (int or list; None = ``layers``);
    - ``output_features``: ``False`` (default) or ``True``: output vectors ``Wy[i]`` plus a
      learned ``(Hc,)`` row per feature code (dense sources: a learned ``(d, Hc)`` projection),
      pooled with the item's input bag weights, and likewise the bias (module docstring);
      needs ``architecture`` ``'parallel'`` or ``'feature'``; trains and scores on either
      device (CUDA: :mod:`gru_engine.backends.cuda.output_features`); ``fit(checkpoint=...)``
      saves the feature rows' optimiser state (resumes as an uninterrupted run; both devices).
      New items: :meth:`add_items`.

    Example::

        feats = {"category": CategoricalFeatures(cat_ids, cat_codes, dim=16)}
        model = FeatureSessionGRU(layers=[100], architecture="parallel")
        model.fit(train, item_features=feats)
        model.evaluate(test)["recall@20"]

    Items that did not occur in the training events (new items): without output features the
    output layer is item-indexed, so they are never recommended or scored (with them:
    :meth:`add_items`); as *clicks* of a live session they
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
                 strategy="simultaneous", feature_layers=None, augment_crop_p=0.0,
                 augment_drop_p=0.0, context_input="none", context_output="none",
                 context_time=None, context_columns=None, context_transition="none",
                 output_features=False):
        super().__init__(layers=layers, loss=loss, final_act=final_act, batch_size=batch_size,
                         n_epochs=n_epochs, n_sample=n_sample, sample_alpha=sample_alpha,
                         sample_store_size=sample_store_size, logq=logq, bpreg=bpreg,
                         elu_param=elu_param, embedding=embedding,
                         constrained_embedding=constrained_embedding,
                         dropout_p_embed=dropout_p_embed, dropout_p_hidden=dropout_p_hidden,
                         learning_rate=learning_rate, momentum=momentum,
                         random_state=random_state, n_threads=n_threads, device=device,
                         shuffle_sessions=shuffle_sessions, show_progress=show_progress,
                         augment_crop_p=augment_crop_p, augment_drop_p=augment_drop_p,
                         context_input=context_input, context_output=context_output,
                         context_time=context_time, context_columns=context_columns,
                         context_transition=context_transition)
        self.architecture = architecture
        self.combine = combine
        self.strategy = strategy
        self.feature_layers = feature_layers
        self.output_features = output_features

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
        check_output_features(p)
        if p["strategy"] == "residual" and p["combine"] != "concat":
            raise ValueError("strategy='residual' needs combine='concat' (each subnet has its own "
                             "output block)")
        return p

    def _network_spec(self, p: dict) -> dict:
        return {k: p[k] for k in ("architecture", "combine", "strategy", "feature_layers")}

    def _output_params(self, p: dict, encoded: list, n_items: int, Hc: int) -> dict:
        return build_output_features(encoded, n_items, Hc) if p["output_features"] else {}

    # ---- fitting ----------------------------------------------------------------------------
    def fit(self, data, item_features=None, session_key: str = "SessionId",
            item_key: str = "ItemId", time_key: str = "Time", callback=None, checkpoint=None,
            resume: bool = False):
        """Train on an event table and item features ``{source_name: spec}`` (specs of
        :mod:`gru_engine.features`; not needed for ``architecture='id'``). ``callback``,
        ``checkpoint``, ``resume`` and the divergence guard as for :meth:`SessionGRU.fit`.
        Returns self.

        Raises ``ValueError`` for bad hyperparameters or features (checked before the events are
        read), ``ModelFitError`` when the loss becomes NaN or infinite.
        """
        p = self._validated()
        feats = validate_item_features(item_features)
        if p["architecture"] != "id" and not feats:
            raise ValueError(f"architecture={p['architecture']!r} needs item_features "
                             "(a dict {name: DenseFeatures | CategoricalFeatures | TokenFeatures})")
        return self._fit_events(data, session_key, item_key, time_key, callback, feats,
                                checkpoint, resume)

    def partial_fit(self, data, item_features=None, n_epochs=None, session_key=None,
                    item_key=None, time_key=None, callback=None):
        """Warm start on new events (see :meth:`SessionGRU.partial_fit`). Items new to the
        model need their features in ``item_features`` (as in ``fit``; encoded with the model's
        own encoders, codes unseen in training get the unknown row); ``KeyError`` otherwise."""
        feats = validate_item_features(item_features)
        if not getattr(self, "output_features", False) or "Fy" not in getattr(self, "params_", {}):
            return self._partial_fit(data, n_epochs, session_key, item_key, time_key, callback,
                                     feats)
        # output features: new items join through add_items (zero ID rows, their features'
        # output part), then train; on failure the model is as before the call
        before = {k: getattr(self, k, None) for k in ("item_index_", "item_support_", "params_",
                                                       "optimizer_state_")}
        self.params_ = dict(self.params_, Fy=self.params_["Fy"].copy(),
                            Fb=self.params_["Fb"].copy())
        try:
            _, item_ids, _ = extract_events(data, session_key or self.keys_["session_key"],
                                            item_key or self.keys_["item_key"],
                                            time_key or self.keys_["time_key"])
            ids = np.unique(np.asarray(item_ids))
            new_ids = ids[self.item_index_.lookup(ids) < 0]
            if len(new_ids):
                self._add_items(new_ids, feats)
            return self._partial_fit(data, n_epochs, session_key, item_key, time_key,
                                     callback, feats)
        except BaseException:
            for k, v in before.items():
                setattr(self, k, v)
            raise

    def add_items(self, item_features):
        """Make the items listed in ``item_features`` (``{source_name: spec}``, encoded with
        the model's encoders as in :meth:`recommend`) that the model does not know yet model
        items, without training: their ``Wy``/``By`` rows (and ID-subnet input rows) are zero,
        so they are scored by the feature part of the output layer alone and as clicks read by
        the feature subnets. They get indices ``n_items_..`` in the order of their ids (sorted)
        and support 0 (never drawn as negative samples). Needs ``output_features=True``
        (``ValueError`` otherwise). Returns the (sorted) new ids."""
        self._check_fitted()
        if "Fy" not in self.params_:
            raise ValueError("add_items needs a model fitted with output_features=True (without "
                             "it a new item has no output vector)")
        feats = validate_item_features(item_features)
        ids = [np.asarray(_as_ids(spec.ids, name)) for name, spec in feats.items()]
        ids = np.unique(np.concatenate(ids)) if ids else np.zeros(0, np.int64)
        new_ids = ids[self.item_index_.lookup(ids) < 0]
        if len(new_ids):
            self._add_items(new_ids, feats)
        return new_ids

    def _add_items(self, new_ids, feats) -> None:
        bags = self._new_item_bags(new_ids, feats)
        n_items, has_id = self.n_items_, self.subnet_names_[0] == "id"
        state = getattr(self, "optimizer_state_", None)
        params, grown = grow_items(self.params_, len(new_ids), bags, has_id,
                                   np.random.default_rng(0),
                                   state=() if state is None else (state["acc"], state["vel"]))
        if state is not None:
            self.optimizer_state_ = {"acc": grown[0], "vel": grown[1]}
        params["Wy"][n_items:] = 0.0
        if has_id and subnet_views(params, 0)["table"] is not None:
            subnet_views(params, 0)["table"][n_items:] = 0.0
        rows = [info.get("n_rows", info.get("d")) for info in self.feature_info_]
        params.update(extend_output_bags(params, merge_bags(bags, rows, len(new_ids))))
        self.params_ = params
        self.item_index_ = ItemIndex(np.concatenate([self.item_index_.ids, new_ids]))
        self.item_support_ = np.concatenate([self.item_support_,
                                             np.zeros(len(new_ids), np.int64)])
        logger.info("add_items: %d new items (scored by their features)", len(new_ids))

    def _new_item_bags(self, new_ids, item_features) -> list:
        if not self.feature_info_ or len(new_ids) == 0:
            return []
        if self.feature_vocab_ is None:
            raise ValueError("this model file (format version 1) has no feature encoders; "
                             "new items need a model saved by a later version")
        sources = [(info["name"], info, vocab)
                   for info, vocab in zip(self.feature_info_, self.feature_vocab_)]
        bags, listed = encode_new_items(item_features or {}, sources, new_ids)
        if not listed.all():
            missing = new_ids[~listed]
            raise KeyError(f"{len(missing)} new item id(s) without features in item_features, "
                           f"e.g. {show_id(missing[0])}")
        return bags

    def _encode_inputs(self, p: dict, item_features) -> list:
        if p["architecture"] == "id":
            return super()._encode_inputs(p, item_features)
        encoded = encode_item_features(item_features, self.item_index_)
        S = len(encoded) + (p["architecture"] == "parallel")
        if p["strategy"] == "residual" and p["n_epochs"] < S:
            raise ValueError(f"strategy='residual' trains the {S} subnets one after another: "
                             f"n_epochs ({p['n_epochs']}) must be >= {S}")
        self.feature_info_ = [dict(e.info, name=e.name) for e in encoded]
        self.feature_vocab_ = [e.vocab for e in encoded]
        return encoded

    # ---- scoring ----------------------------------------------------------------------------
    def recommend(self, session_items, k: int = 20, exclude=None, item_features=None,
                  times=None, now=None, columns=None):
        """Top-``k`` next items after the clicks ``session_items`` (see
        :meth:`SessionModel.recommend`). ``item_features`` (``{source_name: spec}``, as in
        ``fit``) lets the session hold new items (class docstring); they are never recommended.
        A context-aware model takes ``times``, ``now`` and ``columns`` as
        :meth:`SessionGRU.recommend` does (its sessions hold model items only).
        """
        self._check_fitted()
        if context.serves(self, [session_items], item_features):
            return SessionGRU.recommend(self, session_items, k, exclude, times, now, columns)
        scorer, seqs = self._scorer_for([session_items], item_features)
        return self._recommend(scorer, seqs[0], k, exclude)

    def predict_next(self, sessions_items, item_features=None, times=None, now=None,
                     columns=None) -> np.ndarray:
        """Scores of every model item after each session (see :meth:`SessionGRU.predict_next`);
        ``item_features`` as in :meth:`recommend`; a context-aware model takes ``times``,
        ``now`` and ``columns`` as :meth:`SessionGRU.predict_next` does."""
        self._check_fitted()
        if context.serves(self, sessions_items, item_features):
            return SessionGRU.predict_next(self, sessions_items, times, now, columns)
        scorer, seqs = self._scorer_for(sessions_items, item_features)
        return self._predict_next(scorer, seqs)

    def _scorer_for(self, sessions_items, item_features):
        """``(scorer, index sequences)`` for sessions of original ids. New items listed in
        ``item_features`` get indices ``n_items_ + k`` in a CPU scorer whose bags cover them;
        ``KeyError`` for a new item without features."""
        seqs = [np.atleast_1d(np.asarray(s)) for s in sessions_items]
        if item_features is None:
            return self.scorer(), [self.item_index_.to_index(s) for s in seqs]
        if not self.feature_info_:
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
                           f"item_features, e.g. {show_id(missing[0])}")
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
        return self.scorer(params), out
