"""Batch scoring: the top-k next items of every session in an event file, streamed.

The event file (delimited text with a header, ``.gz`` accepted; columns as in training) is
read incrementally, a chunk of ``chunk_sessions`` sessions at a time, so memory stays bounded
whatever the file's size: one chunk of events, its ``(chunk_sessions, n_items)`` score block
and the model. For that the file must keep **each session's events together** (contiguous
rows); within a session the rows may be in any order (they are sorted by time, stably).
``session_order='contiguous'`` (default) checks this with a set of the session ids seen (a few
dozen bytes per session); ``'sorted'`` requires ascending session ids (numerically when they
are integers) and checks it in constant memory. A violation raises ``ValueError`` naming the
line. Sort a file first with e.g. ``sort -t$'\\t' -k1,1n -s``.

Each session is scored after its last event (its whole history, as ``predict_next``): events
on items unknown to the model are dropped (counted), sessions with no known item produce no
row (counted). A context-aware model (``context_input``/``context_output``) reads each click's
context from the file: its time (``time_key``, Unix seconds, for ``context_time``) and its
``context_columns`` (columns of the file, by name; ``ValueError`` when one is missing); the
request is the next event right after the session's last known click (its time, a gap of 0
seconds), as :meth:`SessionStore.step` answers; dropped clicks take their context with them. Output, one row per (session, rank): ``SessionId``, ``Rank`` (1 = best),
``ItemId``, ``Score`` (float32; text: ``%.9g``, which round-trips). Parquet (``.parquet``,
needs pyarrow: ``pip install "gru_engine[parquet]"``) or tab-separated text otherwise.
Both are written to a temporary name and renamed when complete.

The scores come from :meth:`SessionGRU.predict_next` and the top-k kernel of
:func:`gru_engine.evaluation.top_k` (ties to the lower item index), under ``n_threads`` BLAS
threads; the output is bit-identical for the same model, input, ``k`` and chunk size.
"""
from __future__ import annotations

import csv
import gzip
import io
import logging
import os
import time
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger("gru_engine")

SESSION_ORDERS = ("contiguous", "sorted")
FORMATS = ("auto", "tsv", "parquet")


@dataclass
class ScoreStats:
    """Counts of a scoring run: sessions scored, events read, events on unknown items,
    sessions skipped (no known item), wall-clock seconds."""

    n_sessions: int = 0
    n_events: int = 0
    n_unknown_item_events: int = 0
    n_skipped_sessions: int = 0
    seconds: float = 0.0


@dataclass
class Chunk:
    """Sessions read from the file: ``session_ids`` (list of str, as written in the file),
    ``items`` (list of 1-D arrays of item-id strings, sorted by time), ``first_line`` (file line
    of the chunk's first event), ``times`` (list of 1-D float64 arrays: the events' times, in
    the same order), ``columns`` (name -> list of 1-D str arrays, same order: the extra
    columns asked for)."""

    session_ids: list
    items: list
    first_line: int
    times: list = None
    columns: dict = None


def _int_or_none(text: str):
    try:
        return int(text)
    except ValueError:
        return None


def iter_chunks(path, chunk_sessions: int = 1024, session_key: str = "SessionId",
                item_key: str = "ItemId", time_key: str = "Time", sep: str = "\t",
                session_order: str = "contiguous", columns=()):
    """Yield :class:`Chunk` s of up to ``chunk_sessions`` sessions from an event file, reading
    it line by line (see the module docstring for the order the file must have); ``columns``:
    names of further columns to read per event (``Chunk.columns``)."""
    if isinstance(chunk_sessions, bool) or not isinstance(chunk_sessions, int) or chunk_sessions < 1:
        raise ValueError(f"chunk_sessions must be a positive integer, got {chunk_sessions!r}")
    if session_order not in SESSION_ORDERS:
        raise ValueError(f"session_order must be one of {SESSION_ORDERS}, got {session_order!r}")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such event file: {path}")
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", newline="") as f:
        reader = csv.reader(f, delimiter=sep)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path} is empty")
        columns = list(columns)
        missing = [c for c in [session_key, item_key, time_key] + columns if c not in header]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; header is {header}")
        js, ji, jt = (header.index(c) for c in (session_key, item_key, time_key))
        jc = [header.index(c) for c in columns]
        seen = set() if session_order == "contiguous" else None
        last_key = None
        sessions, items, times, extra = [], [], [], {c: [] for c in columns}
        cur_id, cur_items, cur_times, cur_extra = None, [], [], []
        first_line = line = 1

        def close_session():
            t = np.array(cur_times, dtype=np.float64)
            order = np.argsort(t, kind="stable")
            sessions.append(cur_id)
            items.append(np.array(cur_items, dtype=object)[order])
            times.append(t[order])
            for j, c in enumerate(columns):
                extra[c].append(np.array([row[j] for row in cur_extra], dtype=str)[order])

        def chunk():
            return Chunk(sessions, items, first_line, times, extra)

        for line, row in enumerate(reader, start=2):
            if len(row) != len(header):
                raise ValueError(f"{path}, line {line}: {len(row)} fields, expected {len(header)}")
            sid = row[js]
            if sid != cur_id:
                if cur_id is not None:
                    close_session()
                    if len(sessions) == chunk_sessions:
                        yield chunk()
                        sessions, items, times, first_line = [], [], [], line
                        extra = {c: [] for c in columns}
                if seen is not None:
                    if sid in seen:
                        raise ValueError(
                            f"{path}, line {line}: session {sid!r} appears again after other "
                            f"sessions; each session's events must be contiguous (sort the file "
                            f"by {session_key})")
                    seen.add(sid)
                else:
                    as_int = _int_or_none(sid)
                    key = (0, as_int) if as_int is not None else (1, sid)
                    if last_key is not None and key < last_key:
                        raise ValueError(
                            f"{path}, line {line}: session {sid!r} comes after a larger session "
                            f"id; session_order='sorted' needs ascending {session_key}")
                    last_key = key
                cur_id, cur_items, cur_times, cur_extra = sid, [], [], []
            cur_items.append(row[ji])
            if jc:
                cur_extra.append([row[j] for j in jc])
            try:
                cur_times.append(float(row[jt]))
            except ValueError:
                raise ValueError(f"{path}, line {line}: {time_key} {row[jt]!r} is not a number") from None
        if cur_id is not None:
            close_session()
        if sessions:
            yield chunk()


class ChunkScorer:
    """Scores :class:`Chunk` s with a fitted SessionGRU (the model's item ids parsed from the
    file's text with the model's id dtype).

    model: a fitted :class:`~gru_engine.SessionGRU`. k: items per session (at most n_items).
    exclude_seen: never recommend a session's clicked items. n_threads: BLAS threads (None:
    the library's default). ``columns``: the per-event columns a chunk must carry for this
    model (a context-aware model's ``context_columns``; read them with
    ``iter_chunks(..., columns=scorer.columns)``).
    """

    def __init__(self, model, k: int = 20, exclude_seen: bool = False, n_threads=None):
        model._check_fitted()
        self.context = "context_in" in model.params_
        self.columns = []
        if self.context:
            from .context_scoring import encoder_of
            self.columns = list(encoder_of(model).columns)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if n_threads is not None and (isinstance(n_threads, bool) or not isinstance(n_threads, int)
                                      or n_threads < 1):
            raise ValueError(f"n_threads must be a positive integer or None, got {n_threads!r}")
        self.model = model
        self.k = min(int(k), model.n_items_)
        self.exclude_seen = exclude_seen
        self.n_threads = n_threads
        self.ids = model.item_index_.ids

    def _parse(self, texts: np.ndarray) -> np.ndarray:
        dtype = self.ids.dtype
        if dtype.kind in "iuf":
            try:
                return texts.astype(np.float64 if dtype.kind == "f" else np.int64).astype(dtype)
            except (ValueError, OverflowError):
                raise ValueError(f"item ids {texts[:3].tolist()}... do not parse as the model's "
                                 f"item ids ({dtype})") from None
        return texts.astype(dtype)

    def score(self, chunk: Chunk) -> dict:
        """Top-k of every session of ``chunk`` with at least one known item. Returns
        ``{'session_ids': list of str, 'items': (n, k) ids (the model's dtype), 'scores': (n, k)
        float32, 'counts': (n,) int64 valid entries per row, 'n_events', 'n_unknown',
        'n_skipped'}``."""
        from threadpoolctl import threadpool_limits

        from .ranking import top_k
        kept_ids, seqs, n_events, n_unknown = [], [], 0, 0
        times, cols = [], {c: [] for c in self.columns}
        for j, (sid, texts) in enumerate(zip(chunk.session_ids, chunk.items)):
            items = self._parse(texts)
            idx = self.model.item_index_.lookup(items)
            n_events += len(items)
            n_unknown += int(np.sum(idx < 0))
            if np.any(idx >= 0):
                kept_ids.append(sid)
                seqs.append(items[idx >= 0])
                if self.context:  # the known clicks' own context
                    times.append(chunk.times[j][idx >= 0])
                    for c in self.columns:
                        cols[c].append(chunk.columns[c][j][idx >= 0])
        n = len(seqs)
        top_items = np.empty((n, self.k), dtype=self.ids.dtype)
        top_scores = np.empty((n, self.k), dtype=np.float32)
        counts = np.zeros(n, dtype=np.int64)
        if n:
            with threadpool_limits(self.n_threads):
                scores = (self.model.predict_next(seqs, times=times, columns=cols)
                          if self.context else self.model.predict_next(seqs))
            if self.exclude_seen:
                for r, s in enumerate(seqs):
                    scores[r, self.model.item_index_.lookup(s)] = -np.inf
            idx, vals = top_k(scores, self.k)
            del scores
            top_items[:] = self.ids[idx]
            top_scores[:] = vals
            counts[:] = np.isfinite(vals).sum(axis=1)
        return {"session_ids": kept_ids, "items": top_items, "scores": top_scores,
                "counts": counts, "n_events": n_events, "n_unknown": n_unknown,
                "n_skipped": len(chunk.session_ids) - n}


# ---------------------------------------------------------------------------------------------
# writers
# ---------------------------------------------------------------------------------------------
def output_format(path, fmt: str = "auto") -> str:
    """``'parquet'`` or ``'tsv'`` for an output path (``auto``: ``.parquet``/``.pq`` is
    Parquet, anything else text)."""
    if fmt not in FORMATS:
        raise ValueError(f"output format must be one of {FORMATS}, got {fmt!r}")
    if fmt != "auto":
        return fmt
    return "parquet" if str(path).lower().endswith((".parquet", ".pq")) else "tsv"


class _TSVWriter:
    def __init__(self, path: str, sep: str, header, compress: bool):
        if compress:  # mtime=0: the same rows give the same bytes
            self.file = io.TextIOWrapper(gzip.GzipFile(path, "wb", compresslevel=1, mtime=0),
                                         newline="")
        else:
            self.file = open(path, "w", newline="")
        self.sep = sep
        self.file.write(sep.join(header) + "\n")

    def write(self, part: dict) -> None:
        buf = io.StringIO()
        sep = self.sep
        for sid, row_items, row_scores, c in zip(part["session_ids"], part["items"].tolist(),
                                                 part["scores"].tolist(), part["counts"].tolist()):
            for r in range(c):
                buf.write(f"{sid}{sep}{r + 1}{sep}{row_items[r]}{sep}{row_scores[r]:.9g}\n")
        self.file.write(buf.getvalue())

    def close(self) -> None:
        self.file.close()


class _ParquetWriter:
    def __init__(self, path: str, header, item_dtype):
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            from .exceptions import MissingExtraError
            raise MissingExtraError('Parquet output needs pyarrow: pip install '
                                    '"gru_engine[parquet]" (or write a .tsv file)') from None
        self.pa, self.pq = pa, pq
        self.path, self.header, self.item_dtype = path, header, item_dtype
        self.writer = None
        self.session_type = None

    def write(self, part: dict) -> None:
        pa = self.pa
        counts = part["counts"]
        mask = np.arange(part["items"].shape[1])[None, :] < counts[:, None]
        sids = part["session_ids"]
        if self.session_type is None:
            self.session_type = "int" if all(_int_or_none(s) is not None for s in sids) else "str"
        if self.session_type == "int":
            try:
                sid_col = np.repeat(np.array([int(s) for s in sids], dtype=np.int64), counts)
            except ValueError:
                raise ValueError("session ids changed from integers to text in the middle of the "
                                 "file; Parquet needs one type (use a .tsv output)") from None
        else:
            sid_col = pa.array(np.repeat(np.array(sids, dtype=object), counts), type=pa.string())
        ranks = np.broadcast_to(np.arange(1, mask.shape[1] + 1, dtype=np.int32), mask.shape)[mask]
        items = part["items"][mask]
        table = pa.table({self.header[0]: sid_col, self.header[1]: ranks,
                          self.header[2]: items if items.dtype.kind in "iuf"
                          else pa.array(items.astype(str), type=pa.string()),
                          self.header[3]: part["scores"][mask]})
        if self.writer is None:
            self.writer = self.pq.ParquetWriter(self.path, table.schema)
        self.writer.write_table(table.cast(self.writer.schema))

    def close(self) -> None:
        if self.writer is None:  # no session scored: an empty file with the schema
            pa = self.pa
            schema = pa.schema([(self.header[0], pa.string()), (self.header[1], pa.int32()),
                                (self.header[2], pa.from_numpy_dtype(self.item_dtype)
                                 if np.dtype(self.item_dtype).kind in "iuf" else pa.string()),
                                (self.header[3], pa.float32())])
            self.writer = self.pq.ParquetWriter(self.path, schema)
        self.writer.close()


class ResultWriter:
    """Writes scored chunks in order to ``path`` (format per :func:`output_format`), through a
    temporary file renamed on :meth:`close`; :meth:`abort` removes it."""

    def __init__(self, path, item_dtype, fmt: str = "auto", sep: str = "\t",
                 session_key: str = "SessionId", item_key: str = "ItemId"):
        self.path = os.fspath(path)
        fmt = output_format(self.path, fmt)
        header = (session_key, "Rank", item_key, "Score")
        self.tmp = self.path + ".tmp"
        if os.path.dirname(self.path):
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self._w = (_ParquetWriter(self.tmp, header, item_dtype) if fmt == "parquet"
                   else _TSVWriter(self.tmp, sep, header, self.path.endswith(".gz")))

    def write(self, part: dict) -> None:
        self._w.write(part)

    def close(self) -> None:
        self._w.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        try:
            if getattr(self._w, "writer", None) is not None or hasattr(self._w, "file"):
                self._w.close()
        finally:
            if os.path.exists(self.tmp):
                os.remove(self.tmp)


def add_counts(stats: ScoreStats, part: dict) -> None:
    stats.n_sessions += len(part["session_ids"])
    stats.n_events += part["n_events"]
    stats.n_unknown_item_events += part["n_unknown"]
    stats.n_skipped_sessions += part["n_skipped"]


def score_file(model_file, sessions_path, output, k: int = 20, chunk_sessions: int = 1024,
               session_order: str = "contiguous", exclude_seen: bool = False,
               output_format: str = "auto", n_threads=None, session_key: str = "SessionId",
               item_key: str = "ItemId", time_key: str = "Time", sep: str = "\t") -> ScoreStats:
    """Score every session of ``sessions_path`` with the model saved in ``model_file`` (or a
    fitted SessionGRU) in this process and write the top ``k`` to ``output`` (see the module
    docstring). Returns :class:`ScoreStats`."""
    from .model import SessionGRU
    t0 = time.perf_counter()
    model = model_file if isinstance(model_file, SessionGRU) else SessionGRU.load(model_file)
    scorer = ChunkScorer(model, k=k, exclude_seen=exclude_seen, n_threads=n_threads)
    chunks = iter_chunks(sessions_path, chunk_sessions, session_key, item_key, time_key, sep,
                         session_order, scorer.columns)
    writer = ResultWriter(output, scorer.ids.dtype, output_format, sep, session_key, item_key)
    stats = ScoreStats()
    try:
        for chunk in chunks:
            part = scorer.score(chunk)
            writer.write(part)
            add_counts(stats, part)
    except BaseException:
        writer.abort()
        raise
    writer.close()
    stats.seconds = time.perf_counter() - t0
    logger.info("scored %d sessions in %.1f s", stats.n_sessions, stats.seconds)
    return stats
