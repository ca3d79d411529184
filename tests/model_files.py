"""Small fitted models of both GRU classes, their files, and mutations of those files: shared by
``test_io.py``, ``test_fuzz_model_files.py`` and ``bench/fuzz_model_files.py``.

:func:`write_models` fits and saves one model per configuration in :data:`CONFIGS` (tiny: 24
items, one epoch, a second or two in all). :func:`mutate` applies one mutation (a plain dict, so
that Hypothesis can draw it and a failure report shows it) to a model file's arrays and writes
the result. :class:`WorkerPool` loads and scores files in long-lived subprocesses and reports how
each ended: ``ok`` (loaded and scored), ``ModelFileError`` (refused), any other exception, a
crash (the worker died from a signal) or a hang (no answer within the timeout).
"""
from __future__ import annotations

import json
import os
import selectors
import subprocess
import tempfile
import sys
import time

import numpy as np

N_ITEMS = 24
SESSIONS = [[3, 5, 7], [11], [2, 2, 9, 4], [20, 1]]

#: name -> (class name, constructor kwargs, feature kinds) of the base models
CONFIGS = {
    "gru_constrained": ("SessionGRU", {}, None),
    "gru_onehot": ("SessionGRU", {"constrained_embedding": False}, None),
    "gru_embedding": ("SessionGRU", {"constrained_embedding": False, "embedding": 5,
                                     "layers": [8, 6]}, None),
    "feat_parallel": ("FeatureSessionGRU", {"architecture": "parallel"},
                      ("dense_raw", "cat_cols", "tokens")),
    "feat_sum": ("FeatureSessionGRU", {"architecture": "parallel", "combine": "sum",
                                       "constrained_embedding": False},
                 ("dense_proj", "cat_multi", "tokens_hashed")),
    "feat_only": ("FeatureSessionGRU", {"architecture": "feature", "feature_layers": [5]},
                  ("dense_raw", "cat_cols")),
}


def events(seed=0, n_items=N_ITEMS, n_sessions=150) -> dict:
    rng = np.random.default_rng(seed)
    sid, iid, t = [], [], []
    for s in range(n_sessions):
        n = rng.integers(2, 6)
        start = rng.integers(0, n_items)
        for k in range(n):
            sid.append(s)
            iid.append(int((start + k * rng.integers(1, 3)) % n_items))
            t.append(s * 10 + k)
    return {"SessionId": np.array(sid), "ItemId": np.array(iid), "Time": np.array(t)}


def features(kinds, ids=None) -> dict:
    """Item features of the given kinds for ``ids`` (default: the model items)."""
    from gru_engine.features import CategoricalFeatures, DenseFeatures, TokenFeatures
    ids = np.arange(N_ITEMS) if ids is None else np.asarray(ids)
    out = {}
    for kind in kinds:
        if kind == "dense_raw":
            out[kind] = DenseFeatures(ids, np.stack([np.sin(ids), np.cos(ids), ids % 2], 1))
        elif kind == "dense_proj":
            out[kind] = DenseFeatures(ids, np.stack([np.sin(ids), ids % 3], 1), project=3)
        elif kind == "cat_cols":
            out[kind] = CategoricalFeatures(ids, np.stack([ids % 4, ids % 3 + 10], 1), dim=4)
        elif kind == "cat_multi":
            out[kind] = CategoricalFeatures(ids, [[int(i % 4), int(i % 5) + 7] for i in ids],
                                            dim=8)
        elif kind == "tokens":
            out[kind] = TokenFeatures(ids, [f"w{i % 5} w{i % 7}" for i in ids], dim=3)
        elif kind == "tokens_hashed":
            out[kind] = TokenFeatures(ids, [f"w{i % 5} w{i % 7}" for i in ids], dim=8,
                                      n_buckets=16)
    return out


def fit(name: str):
    import gru_engine
    cls_name, kwargs, kinds = CONFIGS[name]
    cls = getattr(gru_engine, cls_name)
    base = dict(layers=[8], n_epochs=1, batch_size=8, n_sample=6, random_state=7, n_threads=1)
    model = cls(**dict(base, **kwargs))
    if kinds is None:
        return model.fit(events())
    return model.fit(events(), item_features=features(kinds))


_SAVED = {}  # name -> the bytes of its model file: fitted once per process


def write_models(folder) -> dict:
    """``{name: path}`` of one saved model per :data:`CONFIGS` entry (fitted on the first
    call of the process, copied afterwards)."""
    paths = {}
    for name in CONFIGS:
        path = os.path.join(os.fspath(folder), name + ".npz")
        if name not in _SAVED:
            fit(name).save(path)
            with open(path, "rb") as f:
                _SAVED[name] = f.read()
        else:
            with open(path, "wb") as f:
                f.write(_SAVED[name])
        paths[name] = path
    return paths


def read(path) -> dict:
    with np.load(path, allow_pickle=False) as f:
        return {k: np.array(f[k]) for k in f.files}


def write(path, arrays: dict, fix_checksum: bool = True) -> None:
    """``np.savez`` of ``arrays``; with ``fix_checksum`` the header's checksum is recomputed
    (so that the loader's other checks, not the checksum, must catch a mutation)."""
    from gru_engine.io import array_checksum
    arrays = dict(arrays)
    if fix_checksum and "header" in arrays:
        try:
            header = json.loads(bytes(arrays["header"]).decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            header = None
        if isinstance(header, dict) and "checksum" in header:
            header["checksum"] = array_checksum(arrays, header)
            arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def header_of(arrays) -> dict:
    return json.loads(bytes(arrays["header"]).decode("utf-8"))


def with_header(arrays, header) -> dict:
    return dict(arrays, header=np.frombuffer(json.dumps(header).encode(), np.uint8))


# ---------------------------------------------------------------------------------------------
# mutations
# ---------------------------------------------------------------------------------------------
#: JSON values a mutated header field may take
ODD_VALUES = [None, True, False, 0, 1, -1, 2, 3, 7, 1000, 2 ** 40, -2 ** 63, 0.5, float("nan"),
              1e308, "", "x", "onehot", "embedding", "constrained", "sum", "concat", "parallel",
              "feature", "id", "linear", "tanh", [], [0], [8], [8, 6], [2 ** 31], {}, {"a": 1}]

HEADER_PATHS = [
    ("format",), ("format_version",), ("class",), ("checksum",), ("input_mode",),
    ("subnet_names",), ("feature_info",), ("vocab_counts",), ("keys",), ("loss_history",),
    ("params", "layers"), ("params", "embedding"), ("params", "constrained_embedding"),
    ("params", "final_act"), ("params", "combine"), ("params", "architecture"),
    ("params", "feature_layers"), ("params", "n_threads"), ("params", "device"),
    ("params", "loss"), ("params", "brand_new_param"), ("feature_info", 0, "n_rows"),
    ("feature_info", 0, "type"), ("feature_info", 0, "d"), ("feature_info", 0, "project"),
    ("feature_info", 1, "n_cols"), ("feature_info", 1, "multi_hot"),
    ("feature_info", 1, "n_buckets"), ("feature_info", 1, "name"), ("vocab_counts", 0),
    ("subnet_names", 0), ("n_layers",), ("item_id_dtype",),
]


def _set_path(obj, path, value, delete=False):
    for k in path[:-1]:
        if isinstance(obj, dict) and k in obj or isinstance(obj, list) and isinstance(k, int) \
                and 0 <= k < len(obj):
            obj = obj[k]
        else:
            return False
    k = path[-1]
    if isinstance(obj, dict):
        if delete:
            obj.pop(k, None)
        else:
            obj[k] = value
        return True
    if isinstance(obj, list) and isinstance(k, int) and 0 <= k < len(obj):
        if delete:
            del obj[k]
        else:
            obj[k] = value
        return True
    return False


def mutate(arrays: dict, m: dict) -> tuple[dict, bytes | None]:
    """Apply mutation ``m`` to a model file's ``arrays``. Returns ``(arrays, raw)``: ``raw`` is
    the file's bytes when the mutation acts on the bytes (truncation, flipped bytes), else None.

    ``m['op']``: ``header`` (``path``, ``value`` or ``delete``), ``dtype`` (``array``,
    ``dtype``), ``shape`` (``array``, ``delta``: drop or add elements; ``reshape``: 2-D <-> 1-D),
    ``value`` (``array``, ``index`` fraction, ``value``), ``drop`` / ``extra`` (``array``),
    ``truncate`` (``fraction`` of the bytes kept), ``flip`` (``fraction``, ``byte``); ``stale``
    (bool) keeps the old checksum."""
    arrays = {k: v.copy() for k, v in arrays.items()}
    op = m["op"]
    names = sorted(k for k in arrays if k != "header")
    name = names[m.get("array", 0) % len(names)] if names else None
    if op == "header":
        header = header_of(arrays)
        _set_path(header, tuple(m["path"]), m.get("value"), m.get("delete", False))
        arrays = with_header(arrays, header)
    elif op == "dtype":
        a = arrays[name]
        try:
            arrays[name] = a.astype(m["dtype"])
        except (ValueError, TypeError, OverflowError):
            arrays[name] = np.zeros(a.shape, m["dtype"])
    elif op == "shape":
        a = arrays[name]
        if m.get("reshape"):
            arrays[name] = a.reshape(-1) if a.ndim > 1 else a.reshape(1, -1)
        else:
            flat = a.reshape(-1)
            d = int(m["delta"])
            arrays[name] = flat[:max(0, len(flat) + d)] if d < 0 else np.concatenate(
                [flat, np.repeat(flat[-1:] if len(flat) else np.zeros(1, a.dtype), d)])
    elif op == "value":
        a = arrays[name]
        if a.size and a.dtype.kind in "iuf":
            flat = a.reshape(-1)
            i = min(int(m["index"] * flat.size), flat.size - 1)
            v = m["value"]
            if a.dtype.kind in "iu":
                info = np.iinfo(a.dtype)
                v = max(int(info.min), min(int(info.max), int(v))) if np.isfinite(v) else 0
            flat[i] = v
    elif op == "drop":
        arrays.pop(name, None)
    elif op == "extra":
        arrays[m.get("name", "surprise")] = np.zeros(3, np.float32)
    raw = None
    if op in ("truncate", "flip"):
        import io
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        raw = bytearray(buf.getvalue())
        if op == "truncate":
            raw = raw[:int(m["fraction"] * len(raw))]
        else:
            i = min(int(m["fraction"] * len(raw)), len(raw) - 1)
            raw[i] ^= (m["byte"] or 1)
        raw = bytes(raw)
    return arrays, raw


def write_mutated(path, arrays, m) -> None:
    arrays, raw = mutate(arrays, m)
    if raw is not None:
        with open(path, "wb") as f:
            f.write(raw)
    else:
        write(path, arrays, fix_checksum=not m.get("stale", False))


# ---------------------------------------------------------------------------------------------
# scoring in subprocesses
# ---------------------------------------------------------------------------------------------
WORKER = r"""
import json, sys
import numpy as np
import gru_engine
from gru_engine.exceptions import ModelFileError
sys.path.insert(0, sys.argv[1])
import model_files

def score(cls_name, path):
    cls = getattr(gru_engine, cls_name)
    m = cls.load(path)
    ids = m.item_index_.ids
    n = len(ids)
    sessions = [[ids[0], ids[(1 * 7) % n], ids[(3 * 5) % n]], [ids[n - 1]], [ids[n // 2]] * 3]
    s = m.predict_next(sessions)
    if not np.all(np.isfinite(s)):
        return "nonfinite"
    m.recommend(sessions[0], k=5, exclude=sessions[0][:1])
    if cls_name == "FeatureSessionGRU" and m.feature_info_ and m.feature_vocab_ is not None:
        kinds = [i["name"] for i in m.feature_info_]
        new = np.array([10 ** 6], dtype=ids.dtype) if ids.dtype.kind != "U" else np.array(["new"])
        try:
            feats = model_files.features([k for k in kinds if k in model_files.KINDS], new)
        except Exception:
            feats = None
        if feats:
            try:
                m.predict_next([[new[0], ids[0]]], item_features=feats)
            except ValueError as exc:
                # features that do not fit the model's encoders (integer codes for a model
                # whose vocabulary holds strings) are refused by input validation: fine
                if not str(exc).startswith("item features"):
                    raise
    return "ok"

def self_test(cls_name):
    # jobs that show the pool can tell a crash and a hang (tests of the harness itself)
    if cls_name == "__crash__":
        import os, signal
        os.kill(os.getpid(), signal.SIGSEGV)
    if cls_name == "__hang__":
        import time
        time.sleep(3600)
    return "ok"

for line in sys.stdin:
    cls_name, path = json.loads(line)
    try:
        out = self_test(cls_name) if cls_name.startswith("__") else score(cls_name, path)
    except ModelFileError as exc:
        out = "ModelFileError"
    except Exception as exc:
        out = "other " + type(exc).__name__ + ": " + str(exc)[:300]
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
"""

KINDS = ("dense_raw", "dense_proj", "cat_cols", "cat_multi", "tokens", "tokens_hashed")


class WorkerPool:
    """``n`` long-lived Python subprocesses that load and score model files (:data:`WORKER`).
    :meth:`run` returns ``(outcome, detail)``: outcome ``'ok'``, ``'ModelFileError'``,
    ``'other'`` (another exception: detail says which), ``'crash'`` (the worker died; detail:
    its return code, negative for a signal) or ``'hang'`` (no answer in ``timeout`` s; the
    worker is killed). A dead or killed worker is replaced."""

    def __init__(self, n: int = 1, timeout: float = 60.0):
        self.timeout = timeout
        self.here = os.path.dirname(os.path.abspath(__file__))
        self.procs = [self._start() for _ in range(n)]

    def _start(self):
        env = dict(os.environ, PYTHONFAULTHANDLER="1", OMP_NUM_THREADS="1",
                   OPENBLAS_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
        # cwd: a folder without a gru_engine source tree, so that the workers import the package
        # the tests run against (in CI: the installed wheel, not the unbuilt checkout)
        return subprocess.Popen([sys.executable, "-c", WORKER, self.here], stdin=subprocess.PIPE,
                                cwd=tempfile.gettempdir(),
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                bufsize=1, env=env)

    def run_many(self, jobs):
        """``[(cls_name, path), ...]`` -> outcomes in order, the jobs spread over the
        workers."""
        results = [None] * len(jobs)
        pending = list(enumerate(jobs))
        busy = {}  # worker index -> (job index, start time)
        sel = selectors.DefaultSelector()
        for w, p in enumerate(self.procs):
            sel.register(p.stdout, selectors.EVENT_READ, w)
        try:
            while pending or busy:
                for w in range(len(self.procs)):
                    if w not in busy and pending:
                        j, job = pending.pop(0)
                        try:
                            self.procs[w].stdin.write(json.dumps(list(job)) + "\n")
                            self.procs[w].stdin.flush()
                        except (BrokenPipeError, OSError):
                            pass  # the read below sees the dead worker
                        busy[w] = (j, time.monotonic())
                events = sel.select(timeout=0.5)
                for key, _ in events:
                    w = key.data
                    if w not in busy:
                        continue
                    line = self.procs[w].stdout.readline()
                    j, _ = busy.pop(w)
                    if line:
                        out = json.loads(line)
                        results[j] = (("other", out[6:]) if out.startswith("other ")
                                      else (out, ""))
                    else:
                        rc = self.procs[w].wait()
                        results[j] = ("crash", str(rc))
                        sel.unregister(self.procs[w].stdout)
                        self.procs[w] = self._start()
                        sel.register(self.procs[w].stdout, selectors.EVENT_READ, w)
                now = time.monotonic()
                for w, (j, t0) in list(busy.items()):
                    if now - t0 > self.timeout:
                        busy.pop(w)
                        results[j] = ("hang", f"> {self.timeout} s")
                        sel.unregister(self.procs[w].stdout)
                        self.procs[w].kill()
                        self.procs[w].wait()
                        self.procs[w] = self._start()
                        sel.register(self.procs[w].stdout, selectors.EVENT_READ, w)
        finally:
            sel.close()
        return results

    def run(self, cls_name, path):
        return self.run_many([(cls_name, path)])[0]

    def close(self):
        for p in self.procs:
            try:
                p.stdin.close()
                p.wait(timeout=10)
            except Exception:
                p.kill()
                p.wait()


# ---------------------------------------------------------------------------------------------
# the space of mutations, drawn by Hypothesis (tests) or by a seeded generator (bench)
# ---------------------------------------------------------------------------------------------
DTYPES = ["float64", "float16", "int32", "int64", "uint8", "int8", "uint64", ">f4", ">i8",
          "bool", "<U3", "complex64"]
INT_VALUES = [-1, -2 ** 31, 2 ** 31 - 1, -2 ** 63, 2 ** 63 - 1, 0, 1, 23, 24, 25, 64, 1000]
FLOAT_VALUES = [float("nan"), float("inf"), -float("inf"), 1e30, -1e30, 0.0, 3.0]
OPS = ["header", "header", "header", "dtype", "shape", "value", "value", "value", "drop",
       "extra", "truncate", "flip"]


def build_mutation(pick, fraction) -> dict:
    """One mutation: ``pick(options)`` chooses among options, ``fraction()`` gives a float in
    [0, 1]."""
    op = pick(OPS)
    m = {"op": op, "base": pick(sorted(CONFIGS)), "stale": pick([False] * 9 + [True])}
    if op == "header":
        m["path"] = list(pick(HEADER_PATHS))
        if pick([False, False, False, True]):
            m["delete"] = True
        else:
            m["value"] = pick(ODD_VALUES)
    elif op in ("dtype", "shape", "value", "drop"):
        m["array"] = pick(list(range(40)))
        if op == "dtype":
            m["dtype"] = pick(DTYPES)
        elif op == "shape":
            if pick([False, False, True]):
                m["reshape"] = True
            else:
                m["delta"] = pick([-1000, -7, -3, -1, 1, 2, 5, 100])
        elif op == "value":
            m["index"] = fraction()
            m["value"] = pick(INT_VALUES + FLOAT_VALUES)
    elif op == "extra":
        m["name"] = pick(["surprise", "vocab_0_9", "SI2", "opt_acc_theta"])
    elif op == "truncate":
        m["fraction"] = fraction()
    elif op == "flip":
        m["fraction"] = fraction()
        m["byte"] = pick([1, 2, 4, 8, 16, 32, 64, 128, 255])
    return m


def random_mutation(rng) -> dict:
    """:func:`build_mutation` with a ``random.Random``."""
    return build_mutation(lambda xs: xs[rng.randrange(len(xs))], rng.random)


def run_cases(pool, bases: dict, mutations, folder) -> list:
    """Write each mutation of its base file into ``folder`` and run them on ``pool``:
    ``[(mutation, (outcome, detail)), ...]``. ``bases``: name -> (class name, arrays)."""
    jobs = []
    for k, m in enumerate(mutations):
        cls_name, arrays = bases[m["base"]]
        path = os.path.join(os.fspath(folder), f"case{k}.npz")
        write_mutated(path, arrays, m)
        jobs.append((cls_name, path))
    return list(zip(mutations, pool.run_many(jobs)))
