"""What every recommender of the engine shares: estimator contract, evaluation and serving.

A model subclasses :class:`SessionModel`, implements ``_fit(sessions, **fit_args)`` and
``scorer()`` (an object following :class:`gru_engine.evaluation.SessionScorer`), and inherits
``fit``, ``evaluate`` and ``recommend``.
"""
from __future__ import annotations

import inspect
import logging

import numpy as np

from .data import DEFAULT_KEYS, build_sessions
from .exceptions import NotFittedError

logger = logging.getLogger("gru_engine")


class SessionModel:
    """Base class: scikit-learn-style parameters plus ``fit``/``evaluate``/``recommend``.

    ``__init__`` of a subclass only stores its arguments under the same names.
    Fitted attributes: ``item_index_`` (:class:`~gru_engine.data.ItemIndex`), ``keys_`` (the
    column names used in ``fit``), ``fit_report_`` (:class:`~gru_engine.data.BuildReport`).
    """

    # ---- parameters -------------------------------------------------------------------------
    @classmethod
    def _param_names(cls):
        sig = inspect.signature(cls.__init__)
        return [p.name for p in sig.parameters.values()
                if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]

    def get_params(self, deep: bool = True) -> dict:
        """Hyperparameters as a dict (``deep`` is accepted for scikit-learn compatibility)."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params):
        """Set hyperparameters by name; ``ValueError`` on an unknown name. Returns self."""
        valid = set(self._param_names())
        for name, value in params.items():
            if name not in valid:
                raise ValueError(f"unknown parameter {name!r} for {type(self).__name__}; "
                                 f"valid: {sorted(valid)}")
            setattr(self, name, value)
        return self

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    # ---- fitting ----------------------------------------------------------------------------
    def fit(self, data, session_key: str = "SessionId", item_key: str = "ItemId",
            time_key: str = "Time", **fit_args):
        """Train on an event table (DataFrame, dict of arrays, or column-accessible object).

        Item ids may be of any hashable scalar type; they are mapped to dense indices stored in
        ``item_index_``. Sessions with fewer than 2 events are dropped (count logged). Returns self.
        """
        sessions, item_index, report = build_sessions(data, None, session_key, item_key, time_key)
        self.item_index_ = item_index
        self.keys_ = {"session_key": session_key, "item_key": item_key, "time_key": time_key}
        self.fit_report_ = report
        try:
            self._fit(sessions, **fit_args)
        except KeyboardInterrupt:
            if not self._keep_after_interrupt():
                self._forget_fit()
            raise
        except BaseException:
            self._forget_fit()  # a failed fit must not leave a model that looks fitted
            raise
        return self

    def _forget_fit(self):
        """Delete the fitted attributes (names ending in ``_``; hyperparameters such as
        ItemKNN's ``lambda_`` are kept)."""
        params = set(self._param_names())
        for name in [n for n in vars(self)
                     if n.endswith("_") and not n.startswith("_") and n not in params]:
            delattr(self, name)

    def _keep_after_interrupt(self) -> bool:
        """Whether an interrupted fit left a usable model (models that keep the last complete
        epoch override this)."""
        return False

    def _fit(self, sessions, **fit_args):
        raise NotImplementedError

    def _check_fitted(self):
        if not hasattr(self, "item_index_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit() first")

    @property
    def n_items_(self) -> int:
        self._check_fitted()
        return len(self.item_index_)

    # ---- scoring ----------------------------------------------------------------------------
    def scorer(self):
        """A fresh :class:`~gru_engine.evaluation.SessionScorer` over the fitted model."""
        raise NotImplementedError

    def evaluate(self, test, cutoffs=(1, 5, 10, 20), mode: str = "conservative",
                 batch_size: int = 512, session_key: str | None = None,
                 item_key: str | None = None, time_key: str | None = None,
                 by_position: bool = True, targets: str = "all") -> dict:
        """Next-item evaluation on a test event table (GRU4Rec protocol).

        Test events of items unknown to the model are removed first, then sessions of at least
        2 events are replayed click by click; after each click the true next item is ranked
        against all items (``targets='last'``: only the last click of each session is
        predicted, the leave-last-out protocol). Returns ``{'recall@k': .., 'mrr@k': .., 'n_events': n_predictions,
        'n_unknown_item_events': .., 'by_position': [...]}``; see
        :func:`gru_engine.evaluation.evaluate_sessions`.
        """
        from .evaluation import evaluate_sessions
        self._check_fitted()
        keys = dict(DEFAULT_KEYS, **self.keys_)
        keys.update({k: v for k, v in (("session_key", session_key), ("item_key", item_key),
                                        ("time_key", time_key)) if v is not None})
        sessions, _, report = build_sessions(test, self.item_index_, **keys)
        result = evaluate_sessions(self._eval_scorer(sessions, test), sessions, cutoffs=cutoffs,
                                   mode=mode,
                                   batch_size=batch_size, by_position=by_position,
                                   targets=targets)
        result["n_unknown_item_events"] = report.n_unknown_item_events
        return result

    def _eval_scorer(self, sessions, test):
        """The scorer that :meth:`evaluate` replays ``sessions`` (built from the table
        ``test``) through."""
        return self.scorer()

    def recommend(self, session_items, k: int = 20, exclude=None):
        """Top-``k`` next items after the clicks ``session_items`` (original ids, in order).

        ``exclude``: item ids never to recommend (e.g. the ones already clicked). Returns
        ``(item_ids, scores)``, best first. Unknown item ids raise ``KeyError``.
        """
        self._check_fitted()
        items = self.item_index_.to_index(np.atleast_1d(np.asarray(session_items)))
        return self._recommend(self.scorer(), items, k, exclude)

    def _recommend(self, scorer, items, k, exclude):
        """:meth:`recommend` for the clicks ``items`` (indices understood by ``scorer``)."""
        from .ranking import Exclusions, top_k
        check_request(items, k)
        scorer.begin(1)
        row = np.zeros(1, dtype=np.int64)
        excl = None
        if exclude is not None:
            excl = self.item_index_.lookup(np.atleast_1d(np.asarray(exclude)))
            excl = excl[excl >= 0]
        if hasattr(scorer, "advance") and hasattr(scorer, "topk"):
            # the GRU scorers: the earlier clicks only move the state, the last one is scored
            # straight into its top-k (fused kernels: no all-item score row)
            for step, item in enumerate(items[:-1]):
                scorer.advance(row, np.array([item], dtype=np.int32), np.array([step == 0]))
            idx, vals = scorer.topk(row, np.array([items[-1]], dtype=np.int32),
                                    np.array([len(items) == 1]), min(int(k), scorer.n_items),
                                    None if excl is None else Exclusions([excl], scorer.n_items))
            idx = np.asarray(idx, np.int64)
        else:
            for step, item in enumerate(items):
                scores = scorer.score(row, np.array([item], dtype=np.int32),
                                      np.array([step == 0]))
            scores = np.array(scores, dtype=np.float32, copy=True).reshape(1, -1)
            if excl is not None:
                scores[0, excl] = -np.inf
            idx, vals = top_k(scores, min(int(k), scores.shape[1]))
        keep = np.isfinite(vals[0])
        return self.item_index_.ids[idx[0][keep]], vals[0][keep]


def check_request(items, k) -> None:
    """``ValueError`` for a recommendation request without clicks (``items`` empty) or whose
    ``k`` is not a positive integer."""
    if len(items) == 0:
        raise ValueError("session_items is empty: a session needs at least one click")
    if not (isinstance(k, (int, np.integer)) and k >= 1):
        raise ValueError(f"k must be a positive integer, got {k!r}")
