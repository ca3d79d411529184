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
:func:`read_retailrocket_events`; :func:`preprocess_file` runs reader + pipeline with each
dataset's defaults (:data:`DATASETS`).
"""
from __future__ import annotations

import logging
import os

import numpy as np

from .data import extract_events, read_events, write_events

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
def _check(events: dict) -> int:
    missing = [k for k in KEYS if k not in events]
    if missing:
        raise ValueError(f"events lack column(s) {missing}; expected {list(KEYS)}")
    lengths = {len(events[k]) for k in KEYS}
    if len(lengths) != 1:
        raise ValueError(f"event columns {list(KEYS)} have different lengths {sorted(lengths)}")
    return lengths.pop()


def _take(events: dict, selector) -> dict:
    return {k: np.asarray(events[k])[selector] for k in KEYS}


def _codes(values: np.ndarray):
    """``(distinct values sorted, code of each value, count of each distinct value)``."""
    uniq, codes = np.unique(values, return_inverse=True)
    return uniq, codes, np.bincount(codes, minlength=len(uniq))


def counts(events: dict) -> dict:
    """``{'events', 'sessions', 'items'}`` of an event dict (ints)."""
    n = _check(events)
    return {"events": n, "sessions": len(np.unique(events["SessionId"])),
            "items": len(np.unique(events["ItemId"]))}


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
    logger.info("preprocess %-26s %10d events %9d sessions %7d items",
                step, c["events"], c["sessions"], c["items"])
    return events


def _holdout(events: dict, last_days: float, by_day: bool, min_session_length: int,
             stats: dict, names: tuple):
    """Steps 5-6 of the pipeline: time split, test restricted to train items and re-filtered."""
    train, test = split_by_time(events, last_days, by_day)
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
    events = dict(zip(KEYS, extract_events(events, *KEYS)))
    stats: dict = {}
    data = _log_step(stats, "input", sort_events(events))
    data = _log_step(stats, "filter_short_sessions", filter_short_sessions(data, min_session_length))
    data = _log_step(stats, "filter_rare_items", filter_rare_items(data, min_item_support))
    data = _log_step(stats, "filter_short_sessions_again",
                     filter_short_sessions(data, min_session_length))
    if len(data["ItemId"]) == 0:
        raise ValueError("no events left after the support / length filters")
    train, test = _holdout(data, test_days, by_day, min_session_length, stats, ("train", "test"))
    if len(train["ItemId"]) == 0:
        raise ValueError(f"the last {test_days} day(s) hold all sessions; nothing left to train on")
    train_tr, valid = _holdout(train, valid_days, by_day, min_session_length, stats,
                               ("train_tr", "train_valid"))
    result = {"train": train, "test": test, "train_tr": train_tr, "train_valid": valid,
              "stats": stats, "paths": {}}
    for split in SPLITS:
        if stats[split]["events"] == 0:
            logger.warning("preprocess: the %s split is empty (test_days=%s, valid_days=%s)",
                           split, test_days, valid_days)
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
        for split in SPLITS:
            path = os.path.join(os.fspath(out_dir), f"{name}_{FILE_SUFFIX[split]}.tsv.gz")
            write_events(path, result[split])
            result["paths"][split] = path
            logger.info("wrote %s", path)
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
    GRU4Rec evaluations; userId is not read. Preprocess with ``test_days=7, by_day=True``
    (:data:`DATASETS`): test = the sessions dated in the last 7 days, the SR-GNN protocol. One
    difference: SR-GNN drops the sessions dated exactly 7 days before the last date from both
    sides (its ``<`` / ``>`` split); here they are train.
    """
    raw = read_events(path, sep=";", columns=["sessionId", "itemId", "timeframe", "eventdate"])
    try:
        days = np.asarray(raw["eventdate"]).astype(str).astype("datetime64[D]")
    except ValueError as exc:
        raise ValueError(f"{path}: cannot parse eventdate as YYYY-MM-DD: {exc}") from None
    frame = np.asarray(raw["timeframe"], dtype=np.float64)
    if np.isnat(days).any() or np.isnan(frame).any():
        raise ValueError(f"{path}: missing eventdate or timeframe")
    return {"SessionId": raw["sessionId"], "ItemId": raw["itemId"],
            "Time": days.astype(np.int64) * DAY + frame / 1000.0}


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
    (visitor, time) order. Preprocess with ``test_days=7`` (:data:`DATASETS`): the last week, as
    our shared retailrocket split (SR-GNN-style) does, so results can be compared with it.
    """
    raw = read_events(path, sep=",", columns=["timestamp", "visitorid", "event", "itemid"])
    keep = np.isin(np.asarray(raw["event"]).astype(str), list(event_types))
    times = np.asarray(raw["timestamp"], dtype=np.float64)[keep] / 1000.0
    visitors = np.asarray(raw["visitorid"])[keep]
    return {"SessionId": sessionize(visitors, times, session_gap),
            "ItemId": np.asarray(raw["itemid"])[keep], "Time": times}


#: dataset name -> (reader, keyword defaults of :func:`preprocess`)
DATASETS = {
    "rsc15": (read_yoochoose_clicks, {"test_days": 1.0}),
    "diginetica": (read_diginetica_views, {"test_days": 7.0, "by_day": True}),
    "retailrocket": (read_retailrocket_events, {"test_days": 7.0}),
}


def preprocess_file(dataset: str, path: str | os.PathLike, out_dir: str | os.PathLike,
                    **options) -> dict:
    """Raw file of ``dataset`` (a key of :data:`DATASETS`) -> the four split files in ``out_dir``.

    Runs the dataset's reader and :func:`preprocess` with that dataset's defaults, overridden
    by ``options``; files are named ``<out_dir>/<dataset>_{train_full,test,train_tr,
    train_valid}.tsv.gz``. Returns the step counts (``preprocess(...)['stats']``: step name ->
    ``{'events', 'sessions', 'items'}``); call the reader and :func:`preprocess` directly for
    the arrays.
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(DATASETS)}")
    reader, defaults = DATASETS[dataset]
    events = reader(path)
    kwargs = {**defaults, "name": dataset, **options}
    return preprocess(events, out_dir=out_dir, **kwargs)["stats"]
