"""The live session store: hidden states of live sessions by session id (see
:class:`SessionStore`)."""
from __future__ import annotations

import collections
import logging
import threading
import time
from typing import NamedTuple

import numpy as np

from ..ranking import Exclusions
from ..threads import blas_one_thread, resolve_threads
from .scorers import _cpu_proto, _fork, _sum_hidden
from .slots import Slots

logger = logging.getLogger("gru_engine")


# ---------------------------------------------------------------------------------------------
# the live session store
# ---------------------------------------------------------------------------------------------
class Recommendations(NamedTuple):
    """Answer of :meth:`SessionStore.step` / :meth:`SessionStore.recommend_for`, one row per
    requested session (in the order asked).

    items:        (n, k) original item ids, best first
    scores:       (n, k) float32 model scores; NaN in rows answered from popularity (``cold``);
                  ``-inf`` pads a row when ``exclude_seen`` leaves fewer than k items
    unknown_item: (n,) bool, True where the click was an item the model does not know (and,
                  for a FeatureSessionGRU, no features were given): the session's state is
                  unchanged and the answer is the one it had before the click
    cold:         (n,) bool, True where the session holds no known click yet (a new session
                  whose clicks were all unknown, or ``recommend_for`` of a session that is not
                  live): ``items`` are the most popular training items
    new_session:  (n,) bool, True where this call started the session (never seen, or ended
                  or evicted before)
    """
    items: np.ndarray
    scores: np.ndarray
    unknown_item: np.ndarray
    cold: np.ndarray
    new_session: np.ndarray


class Advanced(NamedTuple):
    """Answer of :meth:`SessionStore.advance`, one entry per click (in the order given).

    unknown_item: (n,) bool, True where the click was an item the model does not know (the
                  session's state is unchanged, as in :meth:`SessionStore.step`)
    new_session:  (n,) bool, True where this call started the session
    """
    unknown_item: np.ndarray
    new_session: np.ndarray


class _Live:
    __slots__ = ("slot", "n_clicks", "last_item", "seen", "used")

    def __init__(self, slot: int, used: float):
        self.slot = slot
        self.n_clicks = 0     # known clicks consumed
        self.last_item = -1   # index of the last known click
        self.seen = set()     # indices of the known clicks
        self.used = used      # clock() of the last step / recommend_for


class SessionStore:
    """Live sessions of a fitted GRU model (:class:`~gru_engine.model.SessionGRU` or
    :class:`~gru_engine.feature_model.FeatureSessionGRU`, CPU or CUDA): the hidden state of each
    session by session id, advanced one click at a time, so a click costs one GRU step and one
    scoring of all items, never a replay of the session.

    model:          the fitted model (its parameters at construction are used: a store built
                    before a refit keeps the old ones; build a new store after refitting)
    capacity:       most live sessions (slots allocated up front: ``2 * capacity * sum(layers)``
                    float32, the state and the state before the last click); a new session
                    beyond it evicts the least recently used one
    idle_timeout_s: sessions not used (``step``/``advance``/``recommend_for``) for longer are
                    evicted, checked at every call (None: never)
    k:              default number of recommendations
    n_threads:      CPU threads of one call (rows split in blocks, each stepped, scored and
                    ranked on its own thread; default the model's ``n_threads``); BLAS runs one
                    thread per block during a call (:func:`gru_engine.threads.blas_one_thread`). A CUDA
                    store uses the device.
    clock:          seconds, monotonic (tests pass a fake)

    Scoring (CPU): where the CPU runs the fused panel kernels (AVX-512F or AVX2 + FMA, see
    :func:`gru_engine.ranking.panels_available`) and the model has no final activation, each
    row's top-k is kept while its scores are computed, never written: the same items, scores
    and tie order (higher score, then lower item index) as scoring all items and taking the
    top-k, at a fraction of the memory traffic. Otherwise all items are scored into a buffer
    first.

    Behaviour:

    - ``step(session_ids, item_ids)``: one click per entry; a session id may appear more than
      once (its clicks are consumed in order, each entry answered after its own click). A
      session id seen for the first time (or again after ``end`` or eviction) starts from the
      empty state.
    - ``advance(session_ids, item_ids)``: the same clicks without recommendations (no item is
      scored: the cost of a GRU step only), for clicks whose answer nobody reads; a later
      ``recommend_for`` answers as ``step`` would have (bit for bit when it asks for the
      sessions of that step, in its order: the GRU step's BLAS rounds by batch size).
    - Unknown items never raise: the session's state is unchanged and the entry is answered as
      before the click, flagged ``unknown_item`` (and ``cold`` with the most popular items if
      the session has no known click yet).
    - ``exclude_seen=True`` removes the items of the session's known clicks from its answer.
    - A model with a user-level GRU (``user_layers > 0``): ``step``/``advance`` take
      ``user_ids`` (one per entry, None for anonymous; read when a session starts); a session
      of a user starts from the user's state, and ``end(session_id)`` or the session's
      eviction (idle or least recently used) steps the user's state with the session (2+
      known clicks). Snapshots keep the users' states and each live session's user.
    - A context-aware model (``context_input``/``context_output``): ``step``/``advance`` take
      the clicks' ``times`` and ``columns``, ``recommend_for`` the request's ``now``
      (:mod:`gru_engine.serving.context_store`); snapshots keep each live session's context.
    - FeatureSessionGRU: ``item_features`` (as in ``fit``/``recommend``) lets sessions click new
      items; the store keeps their encodings for later calls (and snapshots). New items are
      never recommended.
    - Thread safety: every public method holds one lock for its whole call, so concurrent
      calls give exactly the answers of some sequential order of them (parallelism comes from
      batching: one call with many sessions, split over ``n_threads``).
    - Scores equal those of ``predict_next``/``evaluate`` for the same sessions up to float32
      rounding of BLAS on batches of different size.
    """

    def __init__(self, model, capacity: int = 10_000, idle_timeout_s: float | None = None,
                 k: int = 20, n_threads: int | None = None, clock=time.monotonic):
        model._check_fitted()
        if isinstance(capacity, bool) or not isinstance(capacity, (int, np.integer)) \
                or capacity < 1:
            raise ValueError(f"capacity must be a positive integer, got {capacity!r}")
        if idle_timeout_s is not None and not (float(idle_timeout_s) > 0):
            raise ValueError(f"idle_timeout_s must be None or > 0 seconds, got "
                             f"{idle_timeout_s!r}")
        self._check_k(k)
        self.model = model
        self.capacity = int(capacity)
        self.idle_timeout_s = None if idle_timeout_s is None else float(idle_timeout_s)
        self.k = int(k)
        self.n_threads = max(1, resolve_threads(model.n_threads if n_threads is None else n_threads))
        self.clock = clock
        self.n_items = model.n_items_
        self._params = model.params_
        self._lock = threading.RLock()
        self._live = collections.OrderedDict()  # session id -> _Live, least recently used first
        self._free = list(range(self.capacity - 1, -1, -1))
        self._new_ids = None    # FeatureSessionGRU: new items clicked in sessions (ItemIndex)
        self._new_bags = None   # their bags per feature source
        first = model.scorer()
        self.cuda = not hasattr(first, "state")
        # the prototype of this store's CPU scorer, kept: a later refit of the model does not
        # mix new tables into this store (new items of a FeatureSessionGRU fork it again)
        self._proto = None if self.cuda else _cpu_proto(model)
        if not self.cuda:
            first.n_threads = self.n_threads  # its topk / advance split the rows over threads
        self._slots = Slots(first, self.capacity)
        self.width = _sum_hidden(first)
        self._users = None  # a user-level model: the users' states (``user_ids``)
        if "UI" in model.params_:
            from .user_states import UserStates
            self._users = UserStates(model.params_)
        self._popular = np.argsort(-np.asarray(model.item_support_), kind="stable")
        self._context = None  # a context-aware model's per-slot context (context_store.py)
        if "context_in" in model.params_:
            from .context_store import StoreContext
            self._context = StoreContext(model, self.capacity)

    # ---- public API -------------------------------------------------------------------------
    def step(self, session_ids, item_ids, k: int | None = None, exclude_seen: bool = False,
             item_features=None, times=None, columns=None, user_ids=None) -> Recommendations:
        """Advance each session ``session_ids[i]`` by the click ``item_ids[i]`` (original ids)
        and return the top-``k`` next items of each (:class:`Recommendations`, rows in the order
        of the entries). ``item_features``: FeatureSessionGRU only, features of new items (class
        docstring). A context-aware model needs ``times`` (per entry, Unix seconds) and
        ``columns`` (name -> per-entry values) of the clicks
        (:mod:`gru_engine.serving.context_store`). ``user_ids``: user-level models only, the
        user of each entry (class docstring)."""
        k = self._check_k(self.k if k is None else k)
        return self._clicks(session_ids, item_ids, item_features, k, exclude_seen, times,
                            columns, user_ids)

    def advance(self, session_ids, item_ids, item_features=None, times=None,
                columns=None, user_ids=None) -> Advanced:
        """Advance each session ``session_ids[i]`` by the click ``item_ids[i]`` as :meth:`step`
        does (same state, same bookkeeping: new sessions, unknown items, seen items, LRU and
        idle clock), without scoring any item: for clicks whose recommendations nobody reads
        (costs one GRU step per click, no scoring of all items). A later
        :meth:`recommend_for` of a session answers as :meth:`step` would have after its last
        click (class docstring). Returns :class:`Advanced` (per entry: ``unknown_item``,
        ``new_session``)."""
        res = self._clicks(session_ids, item_ids, item_features, None, False, times, columns,
                           user_ids)
        return Advanced(res.unknown_item, res.new_session)

    def recommend_for(self, session_ids, k: int | None = None,
                      exclude_seen: bool = False, now=None) -> Recommendations:
        """Top-``k`` next items of live sessions without a click (the same answer as their last
        ``step``); marks them used. A session that is not live is answered ``cold``. A model
        with time context needs ``now``, the request's Unix seconds (the next event's
        context)."""
        sids = self._session_list(session_ids)
        k = self._check_k(self.k if k is None else k)
        request = None if self._context is None else self._context.request_time(now)
        with self._lock:
            now = self.clock()
            self._expire(now)
            res = self._empty_result(len(sids), k)
            uniq = list(dict.fromkeys(sids))
            live = [s for s in uniq if s in self._live and self._live[s].n_clicks > 0]
            for s in uniq:
                if s in self._live:
                    self._touch(s, now)
            rowpos = {s: [] for s in uniq}
            for pos, s in enumerate(sids):
                rowpos[s].append(pos)
            if live:
                when = None if request is None else np.full(len(live), request)
                with blas_one_thread():
                    ti, tv = self._replay([self._live[s] for s in live], k, exclude_seen, when)
                for j, s in enumerate(live):
                    res.items[rowpos[s]] = self.model.item_index_.ids[ti[j]]
                    res.scores[rowpos[s]] = tv[j]
            cold = [p for s in uniq if s not in live for p in rowpos[s]]
            self._fill_cold(res, np.asarray(cold, np.int64), k)
            return res

    peek = recommend_for

    def end(self, session_id) -> bool:
        """Forget a session (its slot is reused); True if it was live."""
        with self._lock:
            live = self._live.pop(session_id, None)
            if live is None:
                return False
            self._user_session_over(live.slot)
            self._free.append(live.slot)
            return True

    def evict_idle(self) -> int:
        """Evict the sessions idle longer than ``idle_timeout_s`` now (also done at every call);
        returns how many."""
        with self._lock:
            return self._expire(self.clock())

    def __len__(self) -> int:
        with self._lock:
            return len(self._live)

    def __contains__(self, session_id) -> bool:
        with self._lock:
            return session_id in self._live

    def session_ids(self) -> list:
        """Live session ids, least recently used first."""
        with self._lock:
            return list(self._live)

    # ---- snapshots --------------------------------------------------------------------------
    def save(self, path) -> None:
        """Write the live sessions to ``path`` (``.npz``: JSON header, no pickle, atomic
        write; :mod:`gru_engine.serving.snapshot`): per session its id, state, state before its
        last click, last item, click count, seen items and idle time, in LRU order, the new
        items of a FeatureSessionGRU store, a user-level model's user states and a
        context-aware model's per-session context (last click's time and column ids, the time
        of the click before). Session ids must all be integers or all strings."""
        from .snapshot import save_store
        save_store(self, path)

    @classmethod
    def load(cls, path, model, **options) -> "SessionStore":
        """A store over ``model`` holding the sessions of a snapshot written by :meth:`save`.
        ``options``: the constructor's (default: capacity, idle timeout and k of the file).
        Raises a ``ValueError`` subclass naming the file and the field or array when the file
        is unreadable or does not fit ``model`` (class, item count, hidden sizes, index
        ranges); a warning when the model's parameters differ from those it was saved with."""
        from .snapshot import load_store
        return load_store(cls, path, model, **options)

    # ---- internals --------------------------------------------------------------------------
    def _clicks(self, session_ids, item_ids, item_features, k, exclude_seen, times=None,
                columns=None, user_ids=None) -> Recommendations:
        """:meth:`step` (``k``: an int) or :meth:`advance` (``k`` None: nothing scored, the
        result's ``items`` / ``scores`` have no columns)."""
        sids = self._session_list(session_ids)
        items = self._id_array(item_ids)
        if items.ndim != 1 or len(items) != len(sids):
            raise ValueError(f"session_ids and item_ids must be 1-D of one length, got "
                             f"{len(sids)} session ids and item ids of shape {items.shape}")
        if self._context is not None:
            self._context.begin_call(len(sids), times, columns)
        if user_ids is not None:
            if self._users is None:
                raise ValueError("user_ids needs a model with a user-level GRU (user_layers > "
                                 "0)")
            user_ids = self._session_list(user_ids) if np.ndim(user_ids) else None
            if user_ids is None or len(user_ids) != len(sids):
                raise ValueError(f"user_ids must be 1-D with one entry per session id "
                                 f"({len(sids)})")
        with self._lock:
            self._expire(self.clock())
            n_distinct = len(set(sids))
            if n_distinct > self.capacity:
                raise ValueError(f"{n_distinct} distinct sessions in one call exceed the "
                                 f"store's capacity ({self.capacity})")
            idx = self._item_indices(items, item_features)
            res = self._empty_result(len(sids), 0 if k is None else k)
            # entries of a session repeated in the call go in rounds: its i-th click in round i
            if n_distinct == len(sids):
                rounds = {0: np.arange(len(sids))}
            else:
                seen_count = collections.Counter()
                rounds = collections.defaultdict(list)
                for pos, sid in enumerate(sids):
                    rounds[seen_count[sid]].append(pos)
                    seen_count[sid] += 1
            with blas_one_thread():
                for r in range(len(rounds)):
                    self._step_round(np.asarray(rounds[r], np.int64), sids, idx, k,
                                     exclude_seen, res, user_ids)
            return res

    @staticmethod
    def _check_k(k) -> int:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        return int(k)

    @staticmethod
    def _session_list(session_ids) -> list:
        if isinstance(session_ids, (str, bytes)) or np.ndim(session_ids) == 0:
            session_ids = [session_ids]
        if isinstance(session_ids, np.ndarray) and session_ids.dtype.kind in "iuU":
            return session_ids.reshape(-1).tolist()  # Python ints / strs, hashable
        out = [s.item() if isinstance(s, np.generic) else s for s in session_ids]
        for s in out:
            try:
                hash(s)
            except TypeError:
                raise ValueError(f"session id {s!r} is not hashable") from None
        return out

    def _id_array(self, item_ids) -> np.ndarray:
        """``item_ids`` as an array the item index compares entry by entry: a list mixing kinds
        (``[5, "x"]``, which NumPy would turn into strings) becomes an object array, so that
        one bad id leaves the others known."""
        if isinstance(item_ids, np.ndarray):
            return np.atleast_1d(item_ids)
        if isinstance(item_ids, (str, bytes)) or np.ndim(item_ids) == 0:
            item_ids = [item_ids]
        items = list(item_ids)
        try:
            arr = np.asarray(items)
        except (TypeError, ValueError):
            arr = None
        want = self.model.item_index_.ids.dtype.kind
        ok = arr is not None and arr.ndim == 1 and (
            arr.dtype.kind == want or (want in "iu" and arr.dtype.kind in "iuf"))
        if ok:
            return arr
        out = np.empty(len(items), object)
        out[:] = items
        return out

    def _empty_result(self, n: int, k: int) -> Recommendations:
        kk = min(k, self.n_items)
        ids = self.model.item_index_.ids
        return Recommendations(np.empty((n, kk), ids.dtype), np.empty((n, kk), np.float32),
                               np.zeros(n, bool), np.zeros(n, bool), np.zeros(n, bool))

    def _expire(self, now: float) -> int:
        if self.idle_timeout_s is None:
            return 0
        n = 0
        limit = now - self.idle_timeout_s
        while self._live:
            sid, live = next(iter(self._live.items()))
            if live.used >= limit:
                break
            self._live.popitem(last=False)
            self._free.append(live.slot)
            self._user_session_over(live.slot)
            n += 1
        if n:
            logger.debug("session store: %d idle sessions evicted", n)
        return n

    def _user_session_over(self, slot: int) -> None:
        """A user-level model: the session in ``slot`` ended or was evicted; its user's state
        is stepped with it."""
        if self._users is not None:
            self._users.end(self._slots.scorer, slot, self._slots.host([slot])[1][0])

    def _touch(self, sid, now: float) -> None:
        self._live[sid].used = now
        self._live.move_to_end(sid)

    def _open(self, sid, now: float) -> _Live:
        """The live record of ``sid``, started (evicting the least recently used) if new."""
        if not self._free:
            old, live = self._live.popitem(last=False)
            self._free.append(live.slot)
            self._user_session_over(live.slot)
        live = _Live(self._free.pop(), now)
        self._live[sid] = live
        return live

    def _item_indices(self, items, item_features) -> np.ndarray:
        """Scorer indices of the clicked ids: model items, then the store's new items
        (``n_items + j``); -1 where unknown."""
        try:
            idx = self.model.item_index_.lookup(items).astype(np.int64)
        except (TypeError, ValueError):  # a mix the vectorised lookup cannot compare
            idx = np.array([self.model.item_index_.lookup(np.asarray([v]))[0] for v in items],
                           np.int64)
        unknown = idx < 0
        if not unknown.any():
            return idx
        if self._new_ids is None and item_features is None:
            return idx
        if item_features is not None:
            self._register_new_items(items[unknown], item_features)
        if self._new_ids is not None:
            j = self._new_ids.lookup(items[unknown]).astype(np.int64)
            idx[np.flatnonzero(unknown)[j >= 0]] = self.n_items + j[j >= 0]
        return idx

    def _register_new_items(self, candidates, item_features) -> None:
        from ..data import ItemIndex
        from ..features import encode_new_items
        model = self.model
        if not getattr(model, "feature_info_", None):
            raise ValueError("item_features: this model reads no item features")
        if model.feature_vocab_ is None:
            raise ValueError("this model file (format version 1) has no feature encoders; new "
                             "items need a model saved by this version")
        cand = np.unique(np.asarray(candidates))
        if self._new_ids is not None:
            cand = cand[self._new_ids.lookup(cand) < 0]
        if len(cand) == 0:
            return
        sources = [(info["name"], info, vocab)
                   for info, vocab in zip(model.feature_info_, model.feature_vocab_)]
        bags, listed = encode_new_items(item_features, sources, cand)
        if not listed.any():
            return
        keep = np.flatnonzero(listed)
        bags = [_take_bag(b, keep) for b in bags]
        ids = cand[keep]
        if self._new_ids is None:
            all_ids, all_bags = ids, bags
        else:
            all_ids = np.concatenate([self._new_ids.ids, ids])
            all_bags = [_concat_bags(a, b) for a, b in zip(self._new_bags, bags)]
        self._set_new_items(ItemIndex(all_ids), all_bags)

    def _set_new_items(self, index, bags) -> None:
        from ..network import with_new_items
        model = self.model
        params = with_new_items(self._params, self.n_items, bags,
                                has_id=model.subnet_names_[0] == "id")
        if self.cuda:
            from ..backends.cuda import Scorer
            from ..model import _resolve_device
            from .. import params as hp
            old = self._slots.scorer
            if self._context is not None:  # a context-aware model: the tables come along
                from ..context_scoring import DeviceContextScorer
                sc = DeviceContextScorer(model, old.dev, params)
            else:
                sc = Scorer(_resolve_device("cuda"), params, old.sum_mode,
                            hp.parse_final_act(model.final_act))
            sc.h = old.h  # same hidden sizes: the live states carry over
        else:
            old = self._slots.scorer
            sc = _fork(self._proto, params)
            sc.state, sc.n_threads = old.state, old.n_threads
        self._slots.scorer = sc
        self._new_ids, self._new_bags = index, bags
        logger.info("session store: %d new items with features", len(index))

    def _step_round(self, pos, sids, idx, k, exclude_seen, res, user_ids=None) -> None:
        """Entries ``pos`` (distinct sessions) of a ``step`` call (``k`` None: of an
        ``advance`` call)."""
        now = self.clock()
        # plain Python lists in the per-session loops (numpy scalars index and box slowly)
        lives, started = [], []
        live_map = self._live
        for p in pos.tolist():
            sid = sids[p]
            live = live_map.get(sid)
            if live is None:
                live = self._open(sid, now)
                if self._users is not None:
                    self._users.open(live.slot, None if user_ids is None else user_ids[p])
                started.append(True)
            else:
                live.used = now
                live_map.move_to_end(sid)
                started.append(False)
            lives.append(live)
        res.new_session[pos] = started
        item = idx[pos]
        known = item >= 0
        res.unknown_item[pos] = ~known
        step_j = np.flatnonzero(known)
        if len(step_j):
            slots, new = [], []
            for j, it in zip(step_j.tolist(), item[step_j].tolist()):
                live = lives[j]
                slots.append(live.slot)
                new.append(live.n_clicks == 0)
                live.n_clicks += 1
                live.last_item = it
                live.seen.add(it)
                if self._users is not None:
                    self._users.clicked(live.slot, it)
            rows, new = np.array(slots, np.int64), np.array(new, bool)
            if self._context is not None:
                self._context.clicks(self._slots.scorer, rows, new, pos[step_j])
            if self._users is not None:
                self._users.mark(self._slots.scorer, rows[new].tolist())
            self._slots.save_prev(rows)
            if k is None:
                self._slots.scorer.advance(rows, item[step_j].astype(np.int32), new)
            else:
                excl = [lives[j].seen for j in step_j] if exclude_seen else None
                ti, tv = self._score_topk(rows, item[step_j].astype(np.int32), new, k, excl)
                res.items[pos[step_j]] = self.model.item_index_.ids[ti]
                res.scores[pos[step_j]] = tv
        if k is None:
            return
        unk = np.flatnonzero(~known)
        warm = [j for j in unk if lives[j].n_clicks > 0]
        if warm:
            when = None if self._context is None else self._context.times[pos[warm]]
            ti, tv = self._replay([lives[j] for j in warm], k, exclude_seen, when)
            res.items[pos[warm]] = self.model.item_index_.ids[ti]
            res.scores[pos[warm]] = tv
        self._fill_cold(res, pos[[j for j in unk if lives[j].n_clicks == 0]], k)

    def _replay(self, lives, k, exclude_seen, when=None):
        """Top-k of sessions without a click: their last click replayed from the state before
        it (the same computation as the step that made the state), then the state put back.
        ``when``: (n,) request times (context-aware models: the next event's context)."""
        rows = np.array([v.slot for v in lives], np.int64)
        items = np.array([v.last_item for v in lives], np.int32)
        new = np.array([v.n_clicks == 1 for v in lives], bool)
        if self._context is not None:
            self._context.replay(self._slots.scorer, rows, new, when)
        now_state = self._slots.read(rows)
        self._slots.restore_prev(rows)
        if self._users is not None:
            self._users.mark(self._slots.scorer, rows[new].tolist())
        try:
            return self._score_topk(rows, items, new, k,
                                    [v.seen for v in lives] if exclude_seen else None)
        finally:
            self._slots.write(rows, now_state)

    def _fill_cold(self, res, positions, k) -> None:
        if len(positions) == 0:
            return
        kk = res.items.shape[1]
        res.items[positions] = self.model.item_index_.ids[self._popular[:kk]]
        res.scores[positions] = np.nan
        res.cold[positions] = True

    def _score_topk(self, rows, items, new, k, exclude):
        """(R, k') item indices and scores of the sessions in slots ``rows`` after clicks
        ``items``; ``exclude``: per row a collection of indices to leave out, or None."""
        kk = min(k, self.n_items)
        sc = self._slots.scorer
        excl = None if exclude is None else Exclusions(exclude, self.n_items)
        if self.cuda:
            ti, tv = sc.topk(rows, items, new, kk, excl)
            return ti.astype(np.int64), tv
        return sc.topk(rows, items, new, kk, excl)


def _take_bag(bag, keep):
    ip, ind, w = bag
    parts = [np.arange(ip[j], ip[j + 1]) for j in keep]
    sel = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
    new_ip = np.concatenate([[0], np.cumsum(ip[1:][keep] - ip[:-1][keep])]).astype(np.int64)
    return new_ip, np.asarray(ind)[sel].astype(np.int32), np.asarray(w)[sel].astype(np.float32)


def _concat_bags(a, b):
    return (np.concatenate([a[0], b[0][1:] + a[0][-1]]).astype(np.int64),
            np.concatenate([a[1], b[1]]).astype(np.int32),
            np.concatenate([a[2], b[2]]).astype(np.float32))
