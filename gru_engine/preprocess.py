"""Standard GRU4Rec preprocessing of the raw public datasets that users download themselves.

The raw files are not shipped (licences); this module turns them into the gzip TSV event files
(``SessionId  ItemId  Time``, Time in Unix seconds) that every other part of gru_engine reads.

Events are handled as a dict of three equal-length numpy arrays: ``'SessionId'`` (int64 or str),
``'ItemId'`` (int64 or str) and ``'Time'`` (float64, Unix seconds). Every step is vectorised
numpy (sorting and ``np.unique`` dominate), so the 33M-click YooChoose file fits in a few
minutes and a few GB of memory; pandas is used only by :func:`~gru_engine.data.read_events` to
parse the raw files faster when it is installed.

The pipeline (:func:`preprocess`), as in the published GRU4Rec preprocessing of RSC15:

1. sort the events by (session, time), stably;
2. drop sessions with fewer than ``min_session_length`` (2) events;
3. drop items with fewer than ``min_item_support`` (5) events;
4. drop the sessions now shorter than ``min_session_length``;
5. split by time: the sessions whose *last* event is within the last ``test_days`` days of the
   data (``time >= t_max - test_days * 86400``) are the test set, all others train
   (``by_day=True``: by UTC calendar day instead, see :func:`split_by_time`);
6. remove test events whose item is not in train, then test sessions shorter than
   ``min_session_length``;
7. repeat 5-6 inside train with ``valid_days`` (default ``test_days``): ``train_tr`` and
   ``train_valid`` (for tuning, so that the test set is never looked at).

Each step logs its counts (logger ``"gru_engine"``, level INFO) and :func:`preprocess` returns
them. Readers of the raw formats: :func:`read_yoochoose_clicks`, :func:`read_diginetica_views`,
:func:`read_retailrocket_events`, :func:`read_lastfm_listens`; all but YooChoose also give a
``UserId`` column, which every step carries along. :func:`preprocess_session_aware` is the
session-aware split instead (each user's last session as test, HRNN);
:func:`preprocess_file` runs reader + pipeline with each dataset's defaults (:data:`DATASETS`).
"""
from __future__ import annotations

import gzip
import hashlib
import logging
import os

import numpy as np

from .data import extract_events, read_events, write_events
from .session_aware import USER_KEY, extract_users, user_column, users_of_sessions

logger = logging.getLogger("gru_engine")

DAY = 86400.0
KEYS = ("SessionId", "ItemId", "Time")
SPLITS = ("train", "test", "train_tr", "train_valid")
#: file name suffix of each split (as the official scripts and the bundled sample name them)
FILE_SUFFIX = {"train": "train_full", "test": "test", "train_tr": "train_tr",
               "train_valid": "train_valid"}


# ---------------------------------------------------------------------------------------------
# generic steps on event dicts
# ---------------------------------------------------------------------------------------------
def _keys(events: dict) -> tuple:
    """The columns a step carries: :data:`KEYS`, plus ``UserId`` when the events have it."""
    return KEYS + ((USER_KEY,) if USER_KEY in events else ())


def _check(events: dict) -> int:
    missing = [k for k in KEYS if k not in events]
    if missing:
        raise ValueError(f"events lack column(s) {missing}; expected {list(KEYS)}")
    lengths = {len(events[k]) for k in _keys(events)}
    if len(lengths) != 1:
        raise ValueError(f"event columns {list(_keys(events))} have different lengths "
                         f"{sorted(lengths)}")
    return lengths.pop()


def _take(events: dict, selector) -> dict:
    return {k: np.asarray(events[k])[selector] for k in _keys(events)}


def _codes(values: np.ndarray):
    """``(distinct values sorted, code of each value, count of each distinct value)``."""
    uniq, codes = np.unique(values, return_inverse=True)
    return uniq, codes, np.bincount(codes, minlength=len(uniq))


def counts(events: dict) -> dict:
    """``{'events', 'sessions', 'items'}`` of an event dict (ints), and ``'users'`` (distinct
    known users) when it has a ``UserId`` column."""
    n = _check(events)
    out = {"events": n, "sessions": len(np.unique(events["SessionId"])),
           "items": len(np.unique(events["ItemId"]))}
    if USER_KEY in events:
        ids, known = extract_users(events)
        out["users"] = len(np.unique(ids[known]))
    return out


def sort_events(events: dict) -> dict:
    """Events ordered by (SessionId, Time), stably (equal times keep their input order)."""
    _check(events)
    order = np.lexsort((np.asarray(events["Time"]), np.asarray(events["SessionId"])))
    return _take(events, order)


def filter_short_sessions(events: dict, min_length: int = 2) -> dict:
    """Events of the sessions with at least ``min_length`` events (order kept)."""
    if _check(events) == 0:
        return _take(events, slice(None))
    _, codes, n = _codes(np.asarray(events["SessionId"]))
    return _take(events, n[codes] >= min_length)


def filter_rare_items(events: dict, min_support: int = 5) -> dict:
    """Events of the items with at least ``min_support`` events (order kept)."""
    if _check(events) == 0:
        return _take(events, slice(None))
    _, codes, n = _codes(np.asarray(events["ItemId"]))
    return _take(events, n[codes] >= min_support)


def split_by_time(events: dict, last_days: float = 1.0, by_day: bool = False):
    """``(train, test)``: test = the sessions whose last event falls in the last ``last_days``.

    ``by_day=False`` (GRU4Rec, seconds): with ``t_max`` the latest event time, a session is test
    when its last event time is ``>= t_max - last_days * 86400``.
    ``by_day=True`` (SR-GNN-style "last N days by session date"): a session's date is the UTC
    calendar day of its last event; test = the sessions dated within the last ``last_days``
    calendar days (``day > max_day - last_days``).
    A session goes to one side whole; event order is kept.
    """
    if last_days <= 0:
        raise ValueError(f"last_days must be > 0, got {last_days}")
    if _check(events) == 0:
        raise ValueError("cannot split an empty event set")
    times = np.asarray(events["Time"], dtype=np.float64)
    _, codes, _ = _codes(np.asarray(events["SessionId"]))
    last = np.full(codes.max() + 1, -np.inf)
    np.maximum.at(last, codes, times)
    if by_day:
        day = np.floor(last / DAY)
        test_session = day > day.max() - last_days
    else:
        test_session = last >= times.max() - last_days * DAY
    is_test = test_session[codes]
    return _take(events, ~is_test), _take(events, is_test)


def restrict_to_train_items(test: dict, train: dict) -> dict:
    """Test events whose item occurs in ``train`` (sessions are NOT re-filtered here)."""
    _check(test)
    return _take(test, np.isin(test["ItemId"], np.unique(train["ItemId"])))


def _log_step(stats: dict, step: str, events: dict) -> dict:
    c = counts(events)
    stats[step] = c
    users = f" {c['users']:7d} users" if "users" in c else ""
    logger.info("preprocess %-26s %10d events %9d sessions %7d items%s",
                step, c["events"], c["sessions"], c["items"], users)
    return events


def _holdout(events: dict, split, min_session_length: int, stats: dict, names: tuple):
    """Steps 5-6 of the pipeline: ``split(events) -> (train, test)`` (by time, or each user's
    last sessions), then test restricted to train items and re-filtered."""
    train, test = split(events)
    _log_step(stats, names[0], train)
    _log_step(stats, names[1] + "_split", test)
    test = _log_step(stats, names[1] + "_train_items", restrict_to_train_items(test, train))
    test = _log_step(stats, names[1], filter_short_sessions(test, min_session_length))
    return train, test


def preprocess(events: dict, min_item_support: int = 5, min_session_length: int = 2,
               test_days: float = 1.0, valid_days: float | None = None, by_day: bool = False,
               out_dir: str | os.PathLike | None = None, name: str = "events") -> dict:
    """Run the GRU4Rec preprocessing (module docstring, steps 1-7) on raw events.

    events: dict with 'SessionId', 'ItemId', 'Time' (Unix seconds) equal-length 1-D arrays,
    validated as by :func:`~gru_engine.data.extract_events` (``ValueError`` on missing ids,
    NaN / infinite / non-numeric times, an empty table).
    Returns a dict: ``'train'``, ``'test'``, ``'train_tr'``, ``'train_valid'`` (event dicts, each
    sorted by session then time), ``'stats'`` (step name -> ``{'events', 'sessions', 'items'}``,
    in pipeline order) and ``'paths'`` (split -> file written; empty without ``out_dir``).
    With ``out_dir``, each split is written as gzip TSV ``<out_dir>/<name>_<suffix>.tsv.gz``
    with header ``SessionId  ItemId  Time`` (suffixes: train_full, test, train_tr, train_valid).
    Raises ``ValueError`` when a step leaves nothing to split or train on.
    """
    if min_item_support < 1 or min_session_length < 1:
        raise ValueError(f"min_item_support and min_session_length must be >= 1, got "
                         f"{min_item_support} and {min_session_length}")
    valid_days = test_days if valid_days is None else valid_days
    events = _validated(events)
    stats: dict = {}
    data = _log_step(stats, "input", sort_events(events))
    data = _log_step(stats, "filter_short_sessions", filter_short_sessions(data, min_session_length))
    data = _log_step(stats, "filter_rare_items", filter_rare_items(data, min_item_support))
    data = _log_step(stats, "filter_short_sessions_again",
                     filter_short_sessions(data, min_session_length))
    if len(data["ItemId"]) == 0:
        raise ValueError("no events left after the support / length filters")
    train, test = _holdout(data, lambda ev: split_by_time(ev, test_days, by_day),
                           min_session_length, stats, ("train", "test"))
    if len(train["ItemId"]) == 0:
        raise ValueError(f"the last {test_days} day(s) hold all sessions; nothing left to train on")
    train_tr, valid = _holdout(train, lambda ev: split_by_time(ev, valid_days, by_day),
                               min_session_length, stats, ("train_tr", "train_valid"))
    result = {"train": train, "test": test, "train_tr": train_tr, "train_valid": valid,
              "stats": stats, "paths": {}}
    for split in SPLITS:
        if stats[split]["events"] == 0:
            logger.warning("preprocess: the %s split is empty (test_days=%s, valid_days=%s)",
                           split, test_days, valid_days)
    _write_splits(result, out_dir, name)
    return result


def _validated(events: dict) -> dict:
    """The event columns validated (:func:`~gru_engine.data.extract_events`); ``UserId``, when
    present, as :func:`~gru_engine.session_aware.user_column` writes it, one user per session
    checked."""
    out = dict(zip(KEYS, extract_events(events, *KEYS)))
    if USER_KEY in events:
        ids, known = extract_users(events)
        if len(ids) != len(out["ItemId"]):
            raise ValueError(f"column {USER_KEY!r} has {len(ids)} rows, the events "
                             f"{len(out['ItemId'])}")
        users_of_sessions(out["SessionId"], ids, known)
        out[USER_KEY] = user_column(events[USER_KEY])
    return out


def _write_splits(result: dict, out_dir, name: str) -> None:
    if out_dir is None:
        return
    os.makedirs(out_dir, exist_ok=True)
    for split in SPLITS:
        path = os.path.join(os.fspath(out_dir), f"{name}_{FILE_SUFFIX[split]}.tsv.gz")
        write_events(path, result[split])
        result["paths"][split] = path
        logger.info("wrote %s", path)


# ---------------------------------------------------------------------------------------------
# the session-aware split (HRNN protocol)
# ---------------------------------------------------------------------------------------------
def _session_table(events: dict):
    """Per event: session code; per session: ``(start, end, user id, user known)``."""
    _, codes, _ = _codes(np.asarray(events["SessionId"]))
    n = codes.max() + 1 if len(codes) else 0
    times = np.asarray(events["Time"], dtype=np.float64)
    start, end = np.full(n, np.inf), np.full(n, -np.inf)
    np.minimum.at(start, codes, times)
    np.maximum.at(end, codes, times)
    ids, known = extract_users(events)
    _, session_user, session_known = users_of_sessions(codes, ids, known)
    return codes, start, end, session_user, session_known


def drop_anonymous(events: dict) -> dict:
    """Events whose ``UserId`` is known (order kept); ``ValueError`` without a ``UserId``
    column."""
    if USER_KEY not in events:
        raise ValueError(f"events lack the column {USER_KEY!r} that the session-aware split "
                         f"needs; columns: {sorted(events)}")
    _check(events)
    _, known = extract_users(events)
    return _take(events, known)


def filter_users(events: dict, min_sessions: int = 2) -> dict:
    """Events of the users with at least ``min_sessions`` sessions (order kept; anonymous
    events must have been dropped: :func:`drop_anonymous`)."""
    if _check(events) == 0:
        return _take(events, slice(None))
    codes, _, _, session_user, known = _session_table(events)
    if not known.all():
        raise ValueError("filter_users: drop the anonymous sessions first (drop_anonymous)")
    _, user_code, n_sessions = _codes(session_user)
    return _take(events, (n_sessions[user_code] >= min_sessions)[codes])


def split_last_sessions(events: dict, n_sessions: int = 1, min_history: int = 1):
    """``(train, test)``: test = each user's last ``n_sessions`` sessions, for the users with
    at least ``n_sessions + min_history`` sessions (the others stay whole in train).

    A user's sessions are ordered by their first event's time (ties: last event's time, then
    session id). A session goes to one side whole; event order is kept. Every event needs a
    known ``UserId`` (:func:`drop_anonymous`).
    """
    if n_sessions < 1 or min_history < 0:
        raise ValueError(f"n_sessions must be >= 1 and min_history >= 0, got {n_sessions} and "
                         f"{min_history}")
    if _check(events) == 0:
        raise ValueError("cannot split an empty event set")
    codes, start, end, session_user, known = _session_table(events)
    if not known.all():
        raise ValueError("split_last_sessions: every session needs a known user; drop the "
                         "anonymous ones first (drop_anonymous)")
    _, user_code, per_user = _codes(session_user)
    order = np.lexsort((np.arange(len(start)), end, start, user_code))
    rank = np.empty(len(order), dtype=np.int64)  # position of each session among its user's
    first_of_user = np.searchsorted(user_code[order], user_code[order])
    rank[order] = np.arange(len(order)) - first_of_user
    from_end = per_user[user_code] - 1 - rank
    is_test = (from_end < n_sessions) & (per_user[user_code] >= n_sessions + min_history)
    return _take(events, ~is_test[codes]), _take(events, is_test[codes])


def preprocess_session_aware(events: dict, min_item_support: int = 5,
                             min_session_length: int = 2, min_sessions_per_user: int = 2,
                             test_sessions: int = 1, valid_sessions: int | None = None,
                             out_dir: str | os.PathLike | None = None,
                             name: str = "events") -> dict:
    """The session-aware split of the HRNN paper (Quadrana et al., RecSys 2017): each user's
    last session(s) are the test set, the user's earlier sessions are in train (the history a
    user-level model reads). Every click of a test session is predicted
    (:func:`gru_engine.evaluation.evaluate_session_aware`).

    events: as :func:`preprocess`, plus a ``UserId`` column (``ValueError`` without one).
    Steps, each logged and counted in ``'stats'``:

    1. sort by (session, time); 2. ``drop_anonymous``: sessions without a user;
    3. sessions shorter than ``min_session_length`` (2); 4. items with fewer than
    ``min_item_support`` (5) events; 5. sessions now too short;
    6. ``filter_users``: users with fewer than ``min_sessions_per_user`` (2) sessions (one
       history session + the test one at least; the HRNN paper used stricter filters);
    7. ``train`` / ``test_split``: each user's last ``test_sessions`` (1) sessions are test
       (:func:`split_last_sessions`); 8. test events whose item is not in train are removed,
       then test sessions shorter than ``min_session_length``;
    9. the same inside train with ``valid_sessions`` (default ``test_sessions``), for the users
       with more than ``valid_sessions`` train sessions: ``train_tr`` and ``train_valid``.

    The filters run once each, in this order (a user may fall below ``min_sessions_per_user``
    through step 8; the split does not re-filter). Returns what :func:`preprocess` returns;
    the files keep the ``UserId`` column.
    """
    if min_item_support < 1 or min_session_length < 1:
        raise ValueError(f"min_item_support and min_session_length must be >= 1, got "
                         f"{min_item_support} and {min_session_length}")
    valid_sessions = test_sessions if valid_sessions is None else valid_sessions
    if test_sessions < 1 or valid_sessions < 1:
        raise ValueError(f"test_sessions and valid_sessions must be >= 1, got {test_sessions} "
                         f"and {valid_sessions}")
    if min_sessions_per_user < test_sessions + 1:
        raise ValueError(f"min_sessions_per_user must be >= test_sessions + 1 = "
                         f"{test_sessions + 1} (a test user needs a history), got "
                         f"{min_sessions_per_user}")
    if USER_KEY not in events:
        raise ValueError(f"the session-aware split needs a {USER_KEY!r} column; the events have "
                         f"{sorted(events)}")
    events = _validated(events)
    stats: dict = {}
    data = _log_step(stats, "input", sort_events(events))
    data = _log_step(stats, "drop_anonymous", drop_anonymous(data))
    data = _log_step(stats, "filter_short_sessions", filter_short_sessions(data, min_session_length))
    data = _log_step(stats, "filter_rare_items", filter_rare_items(data, min_item_support))
    data = _log_step(stats, "filter_short_sessions_again",
                     filter_short_sessions(data, min_session_length))
    data = _log_step(stats, "filter_users", filter_users(data, min_sessions_per_user))
    if len(data["ItemId"]) == 0:
        raise ValueError("no events left after the user / support / length filters")
    data[USER_KEY] = extract_users(data)[0]  # every user known from here on
    train, test = _holdout(data, lambda ev: split_last_sessions(ev, test_sessions),
                           min_session_length, stats, ("train", "test"))
    train_tr, valid = _holdout(train, lambda ev: split_last_sessions(ev, valid_sessions),
                               min_session_length, stats, ("train_tr", "train_valid"))
    result = {"train": train, "test": test, "train_tr": train_tr, "train_valid": valid,
              "stats": stats, "paths": {}}
    for split in SPLITS:
        if stats[split]["events"] == 0:
            logger.warning("preprocess: the %s split is empty", split)
    _write_splits(result, out_dir, name)
    return result


# ---------------------------------------------------------------------------------------------
# raw formats
# ---------------------------------------------------------------------------------------------
def parse_iso_utc(values, chunk: int = 1_000_000) -> np.ndarray:
    """(n,) float64 Unix seconds of ISO-8601 UTC strings like ``2014-04-07T10:51:09.277Z``.

    A trailing ``Z`` is optional; millisecond resolution. ``ValueError`` on anything else
    (other time zones included). Parsed in chunks to bound memory.
    """
    values = np.asarray(values)
    out = np.empty(len(values), dtype=np.float64)
    for lo in range(0, len(values), chunk):
        part = values[lo:lo + chunk].astype(str)
        part = np.where(np.strings.endswith(part, "Z"), np.strings.rstrip(part, "Z"), part)
        offset = (np.strings.find(part, "+") >= 0) | (np.strings.rfind(part, "-") > 7)
        if offset.any():
            row = lo + int(np.flatnonzero(offset)[0])
            raise ValueError(f"timestamp {str(values[row])!r} (row {row}) has a UTC offset; expected UTC "
                             "('Z' or none)")
        try:
            ms = part.astype("datetime64[ms]")
        except ValueError as exc:
            raise ValueError(f"cannot parse timestamps as ISO-8601 UTC: {exc}") from None
        if np.isnat(ms).any():
            raise ValueError(f"missing timestamp at row {lo + int(np.flatnonzero(np.isnat(ms))[0])}")
        out[lo:lo + chunk] = ms.astype(np.int64) / 1000.0
    return out


def read_yoochoose_clicks(path: str | os.PathLike) -> dict:
    """Events of YooChoose ``yoochoose-clicks.dat`` (RecSys Challenge 2015, "RSC15").

    Raw format: no header, comma-separated ``SessionId,Timestamp,ItemId,Category`` with ISO-8601
    UTC timestamps (``2014-04-07T10:51:09.277Z``); the category is not read. Time = Unix seconds
    (UTC; the official script converts through the local time zone, which only shifts all
    times alike). With the defaults of :func:`preprocess` (``test_days=1``) the RSC15 paper
    (Hidasi et al. 2016) reports for the full file: train 7,966,257 sessions / 31,637,239
    clicks / 37,483 items; test 15,324 sessions / 71,222 events. Not verified here: the raw file
    is not on our machines.
    """
    raw = read_events(path, sep=",", names=["SessionId", "Timestamp", "ItemId", "Category"],
                      columns=["SessionId", "Timestamp", "ItemId"])
    return {"SessionId": raw["SessionId"], "ItemId": raw["ItemId"],
            "Time": parse_iso_utc(raw["Timestamp"])}


def read_diginetica_views(path: str | os.PathLike) -> dict:
    """Events of Diginetica ``train-item-views.csv`` (CIKM Cup 2016, track 2).

    Raw format: ``;``-separated with header ``sessionId;userId;itemId;timeframe;eventdate``;
    ``timeframe`` is milliseconds since the session's start, ``eventdate`` ``YYYY-MM-DD``.
    Time = midnight UTC of eventdate + timeframe / 1000 (seconds), as in the session-rec
    GRU4Rec evaluations. ``UserId`` = userId, missing (``NA`` or empty in the file: most
    sessions are anonymous) for anonymous sessions. Preprocess with ``test_days=7, by_day=True``
    (:data:`DATASETS`): test = the sessions dated in the last 7 days, the SR-GNN protocol. One
    difference: SR-GNN drops the sessions dated exactly 7 days before the last date from both
    sides (its ``<`` / ``>`` split); here they are train.
    """
    raw = read_events(path, sep=";", columns=["sessionId", "userId", "itemId", "timeframe",
                                              "eventdate"])
    try:
        days = np.asarray(raw["eventdate"]).astype(str).astype("datetime64[D]")
    except ValueError as exc:
        raise ValueError(f"{path}: cannot parse eventdate as YYYY-MM-DD: {exc}") from None
    frame = np.asarray(raw["timeframe"], dtype=np.float64)
    if np.isnat(days).any() or np.isnan(frame).any():
        raise ValueError(f"{path}: missing eventdate or timeframe")
    return {"SessionId": raw["sessionId"], "ItemId": raw["itemId"],
            "Time": days.astype(np.int64) * DAY + frame / 1000.0,
            USER_KEY: user_column(raw["userId"])}


def sessionize(user_ids, times, max_gap: float = 1800.0) -> np.ndarray:
    """(n,) int64 session ids 0.. for events of users: a user's next event more than
    ``max_gap`` seconds after the previous one starts a new session. Ids follow (user, time)."""
    user_ids, times = np.asarray(user_ids), np.asarray(times, dtype=np.float64)
    if len(times) == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((times, user_ids))
    u, t = user_ids[order], times[order]
    new = np.ones(len(t), dtype=bool)
    new[1:] = (u[1:] != u[:-1]) | (t[1:] - t[:-1] > max_gap)
    sessions = np.empty(len(t), dtype=np.int64)
    sessions[order] = np.cumsum(new) - 1
    return sessions


def read_retailrocket_events(path: str | os.PathLike, session_gap: float = 1800.0,
                             event_types=("view",)) -> dict:
    """View events of RetailRocket ``events.csv``, sessionised per visitor.

    Raw format: header ``timestamp,visitorid,event,itemid,transactionid``; ``timestamp`` in Unix
    milliseconds; ``event`` one of view / addtocart / transaction. Only ``event_types`` (views)
    are kept; the dataset has no sessions, so a visitor's views are cut into sessions at gaps
    of more than ``session_gap`` seconds (30 minutes, the usual web-analytics inactivity timeout
    and the one session-rec uses for this dataset). SessionId = dense session number in
    (visitor, time) order; ``UserId`` = visitorid. Preprocess with ``test_days=7`` (:data:`DATASETS`): the last week, as
    our shared retailrocket split (SR-GNN-style) does, so results can be compared with it.
    """
    raw = read_events(path, sep=",", columns=["timestamp", "visitorid", "event", "itemid"])
    keep = np.isin(np.asarray(raw["event"]).astype(str), list(event_types))
    times = np.asarray(raw["timestamp"], dtype=np.float64)[keep] / 1000.0
    visitors = np.asarray(raw["visitorid"])[keep]
    return {"SessionId": sessionize(visitors, times, session_gap),
            "ItemId": np.asarray(raw["itemid"])[keep], "Time": times, USER_KEY: visitors}


#: fields of a Last.fm 1K listening line, in file order
LASTFM_FIELDS = ("userid", "timestamp", "artist_mbid", "artist_name", "track_mbid", "track_name")


def lastfm_name_id(artist: str, track: str) -> str:
    """Item id of a Last.fm track without a MusicBrainz id: ``'name:'`` + the first 24 hex
    digits of BLAKE2b of ``artist + '\\x1f' + track`` (UTF-8; the ASCII unit separator, which
    no name holds, keeps the (artist, track) pairs apart). A fixed short id, so that the id
    column stays as narrow as a MusicBrainz id (36 characters) whatever the names' length."""
    digest = hashlib.blake2b(f"{artist}\x1f{track}".encode("utf-8"), digest_size=12)
    return "name:" + digest.hexdigest()


def read_lastfm_listens(path: str | os.PathLike, session_gap: float = 1800.0,
                        chunk_lines: int = 1_000_000) -> dict:
    """Listening events of Last.fm 1K ``userid-timestamp-artid-artname-traid-traname.tsv``
    (Celma 2010), sessionised per user.

    Raw format: no header, tab-separated ``userid, timestamp (ISO-8601 UTC, e.g.
    2009-05-04T23:08:57Z), musicbrainz-artist-id, artist-name, musicbrainz-track-id,
    track-name``, each user's lines newest first; names may hold quotes, which are read as
    written (no quoting). Item = the track's MusicBrainz id; a track without one (about a
    tenth of the lines) gets :func:`lastfm_name_id` of its artist and track name. Lines with
    neither a track id nor a track name, and lines without exactly six fields, are skipped and
    counted in a logged warning. A user's next listen more than ``session_gap`` seconds (30
    minutes) after the previous one starts a new session (:func:`sessionize`); ``UserId`` =
    userid. Read line by line (no pandas: quotes must stay literal), ids interned.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such event file: {path}")
    opener = gzip.open if path.endswith(".gz") else open
    intern: dict = {}
    name_ids: dict = {}
    users, items, stamps = [], [], []
    n_bad_fields = n_no_track = 0
    first_bad = None
    with opener(path, "rt", encoding="utf-8", errors="replace", newline="\n") as f:
        for line_no, line in enumerate(f, start=1):
            fields = line.rstrip("\r\n").split("\t")
            if len(fields) != 6:
                if line.strip():
                    n_bad_fields += 1
                    first_bad = first_bad or line_no
                continue
            user, stamp, _, artist, track_id, track = fields
            if not track_id:
                if not track:
                    n_no_track += 1
                    continue
                key = (artist, track)
                track_id = name_ids.get(key)
                if track_id is None:
                    track_id = name_ids[key] = lastfm_name_id(artist, track)
            users.append(intern.setdefault(user, user))
            items.append(intern.setdefault(track_id, track_id))
            stamps.append(stamp)
    if n_bad_fields:
        logger.warning("%s: skipped %d lines without exactly 6 tab-separated fields (first: "
                       "line %d)", path, n_bad_fields, first_bad)
    if n_no_track:
        logger.warning("%s: skipped %d lines with neither a track id nor a track name", path,
                       n_no_track)
    if not users:
        raise ValueError(f"{path} holds no listening line (6 tab-separated fields)")
    times = parse_iso_utc(np.array(stamps, dtype=object), chunk=chunk_lines)
    users = np.array(users, dtype=object).astype(str)
    item_ids = np.array(items, dtype=str)
    return {"SessionId": sessionize(users, times, session_gap), "ItemId": item_ids,
            "Time": times, USER_KEY: users}


#: dataset name -> (reader, keyword defaults of :func:`preprocess`); the session-aware split
#: (:func:`preprocess_session_aware`) uses its own defaults for every dataset
DATASETS = {
    "rsc15": (read_yoochoose_clicks, {"test_days": 1.0}),
    "diginetica": (read_diginetica_views, {"test_days": 7.0, "by_day": True}),
    "retailrocket": (read_retailrocket_events, {"test_days": 7.0}),
    "lastfm": (read_lastfm_listens, {"test_days": 30.0}),
}
#: the split each dataset can get: 'time' (:func:`preprocess`), 'user' (session-aware,
#: :func:`preprocess_session_aware`; needs the user column, which rsc15 lacks)
SPLIT_KINDS = ("time", "user")


def preprocess_file(dataset: str, path: str | os.PathLike, out_dir: str | os.PathLike,
                    split: str = "time", **options) -> dict:
    """Raw file of ``dataset`` (a key of :data:`DATASETS`) -> the four split files in ``out_dir``.

    ``split='time'``: the reader and :func:`preprocess` with that dataset's defaults,
    overridden by ``options``; files ``<out_dir>/<dataset>_{train_full,test,train_tr,
    train_valid}.tsv.gz``. ``split='user'``: the session-aware split
    (:func:`preprocess_session_aware`, each user's last session as test); files
    ``<out_dir>/<dataset>_sessionaware_{...}.tsv.gz``; rsc15 has no user column
    (``ValueError``). The files keep the ``UserId`` column of the datasets that have one.
    Returns the step counts (``preprocess(...)['stats']``: step name -> ``{'events',
    'sessions', 'items'[, 'users']}``); call the reader and the pipeline directly for the
    arrays.
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(DATASETS)}")
    if split not in SPLIT_KINDS:
        raise ValueError(f"split must be one of {SPLIT_KINDS}, got {split!r}")
    reader, defaults = DATASETS[dataset]
    if split == "user" and dataset == "rsc15":
        raise ValueError("rsc15 (yoochoose-clicks.dat) has no user column; the session-aware "
                         "split needs one (diginetica, retailrocket, lastfm)")
    events = reader(path)
    if split == "user":
        kwargs = {"name": f"{dataset}_sessionaware", **options}
        return preprocess_session_aware(events, out_dir=out_dir, **kwargs)["stats"]
    kwargs = {**defaults, "name": dataset, **options}
    return preprocess(events, out_dir=out_dir, **kwargs)["stats"]
