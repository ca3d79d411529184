"""``gru-engine report``: every model on every dataset of a folder, as one Markdown report + plots.

For each dataset (a sub-folder of ``--data``, or the folder itself when it holds the event files;
default: the bundled rsc15-100k sample) the train/test protocol is detected from the file names
(:func:`discover`), then every model is fitted and evaluated with the one evaluator (GRU4Rec
protocol: all items ranked, conservative ties, test events on unknown items removed):
the baselines (POP, S-POP, Item-KNN, BPR-MF), the neighbourhood models (SKNN, V-SKNN, STAN,
VSTAN), SLIST, SessionGRU (the official best parameters where they exist, :data:`GRU_PARAMS`)
and FeatureSessionGRU where the dataset has item features. Each (dataset, model) *cell* stores
its result as JSON under ``--cache``; a run that was killed resumes without redoing finished
cells (a cell is redone only when its parameters or caps changed). The report holds a table
per dataset (Recall@k / MRR@k for k = 5, 10, 20, fit time, predictions/s, peak memory), and PNG
plots (matplotlib, the ``[report]`` extra): Recall@20 by position per model, Recall@20 by epoch
for the GRU models (evaluated inside the fit callback) and training / evaluation throughput
against the hidden size.
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import json
import logging
import os
import platform
import resource
import sys
import threading
import time
from datetime import datetime, timezone

import numpy as np

from .data import leave_last_out, read_events
from .report_output import write_report
from .exceptions import NotFittedError

logger = logging.getLogger("gru_engine")

KEYS = ["SessionId", "ItemId", "Time"]
CUTOFFS = (5, 10, 20)
SAMPLE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sample_data")
#: Official GRU4Rec best parameters (the rows of the official release used in bench/RESULTS.md).
GRU_PARAMS = {
    "rsc15": "loss=cross-entropy,layers=100,batch_size=32,dropout_p_embed=0.0,dropout_p_hidden=0.4,"
             "learning_rate=0.2,momentum=0.2,n_sample=2048,sample_alpha=0.5,bpreg=0.0,logq=1.0,"
             "n_epochs=3,constrained_embedding=True",
    "retailrocket": "loss=bpr-max,layers=224,batch_size=80,learning_rate=0.05,momentum=0.4,"
                    "dropout_p_embed=0.5,dropout_p_hidden=0.05,sample_alpha=0.4,bpreg=1.95,"
                    "elu_param=0.5,logq=0,n_sample=2048,n_epochs=10,constrained_embedding=True",
    "yoochoose-1-64": "loss=cross-entropy,layers=480,batch_size=48,learning_rate=0.07,momentum=0.0,"
                      "dropout_p_embed=0.0,dropout_p_hidden=0.2,sample_alpha=0.2,bpreg=0,"
                      "elu_param=0,logq=1,n_sample=2048,n_epochs=10,constrained_embedding=True",
    "diginetica": "loss=bpr-max,layers=512,batch_size=128,learning_rate=0.05,momentum=0.15,"
                  "dropout_p_embed=0.5,dropout_p_hidden=0.3,sample_alpha=0.3,bpreg=0.9,elu_param=1,"
                  "logq=0,n_sample=2048,n_epochs=10,constrained_embedding=True",
}
#: Datasets without an official row: the budget used for them in bench/RESULTS.md.
GRU_GENERIC = ("loss=cross-entropy,layers=100,batch_size=32,learning_rate=0.05,momentum=0.1,"
               "dropout_p_hidden=0.3,n_sample=2048,sample_alpha=0.5,logq=1.0,n_epochs=10")
MODELS = ("POP", "S-POP", "Item-KNN", "BPR-MF", "SKNN", "V-SKNN", "STAN", "VSTAN", "SLIST",
          "GRU4Rec", "GRU4Rec+features")
GRU_MODELS = ("GRU4Rec", "GRU4Rec+features")


# ---------------------------------------------------------------------------------------------
# datasets
# ---------------------------------------------------------------------------------------------
def _subset(table, mask):
    return {k: np.asarray(v)[mask] for k, v in table.items()}


def discover(folder: str) -> list:
    """Datasets under ``folder`` as ``[{'name', 'path', 'kind', 'files'}]``, by file names:
    ``*train_full*`` + ``*test*`` or ``*_train*`` + ``*_test*`` (train file -> test file),
    ``*_sequences*`` (+ ``*_item_attributes*``: leave-last-out, attribute features),
    ``*_events*`` (a ``Split`` column; ``Category`` as feature), ``*_views*`` +
    ``*_categories*`` (last 20% of sessions by start time as test; category features).
    The folder itself is one dataset when it holds such files; else each sub-folder is."""
    def detect(path):
        names = sorted(os.path.basename(p) for p in glob.glob(os.path.join(path, "*.tsv*")))
        pick = lambda *parts: next((n for n in names if all(p in n for p in parts)), None)
        train = pick("train_full") or pick("_train.")
        test = pick("_test.")
        if train and test:
            return "files", {"train": train, "test": test}
        if pick("_sequences."):
            return "leave_last_out", {"events": pick("_sequences."), "attributes": pick("_item_attributes.")}
        if pick("_events."):
            return "split_column", {"events": pick("_events.")}
        if pick("_views.") and pick("_categories."):
            return "time_split", {"events": pick("_views."), "categories": pick("_categories.")}
        return None, None

    kind, files = detect(folder)
    if kind:
        name = os.path.basename(os.path.normpath(folder))
        if name == "sample_data":
            name = "rsc15-100k-sample"
        return [{"name": name, "path": folder, "kind": kind, "files": files}]
    found = []
    for sub in sorted(os.listdir(folder)):
        path = os.path.join(folder, sub)
        if os.path.isdir(path):
            kind, files = detect(path)
            if kind:
                found.append({"name": sub, "path": path, "kind": kind, "files": files})
            else:
                logger.warning("report: no train/test layout recognised in %s; skipped", path)
    return found


def load(spec: dict) -> dict:
    """``{'train', 'test', 'targets', 'features', 'protocol'}`` of one discovered dataset."""
    from .features import CategoricalFeatures
    f = lambda key: os.path.join(spec["path"], spec["files"][key])
    kind, feats = spec["kind"], None
    if kind == "files":
        train, test = read_events(f("train"), columns=KEYS), read_events(f("test"), columns=KEYS)
        return {"train": train, "test": test, "targets": "all", "features": None,
                "protocol": f"next click at every position, {spec['files']['train']} -> {spec['files']['test']}"}
    if kind == "leave_last_out":
        train, test, _ = leave_last_out(read_events(f("events"), columns=KEYS))
        if spec["files"].get("attributes"):
            attr = read_events(f("attributes"), columns=["ItemId", "AttributeIds"])
            lists = [[int(a) for a in str(s).split("|") if a] for s in attr["AttributeIds"]]
            feats = {"attributes": CategoricalFeatures(attr["ItemId"], lists, dim=32)}
        return {"train": train, "test": test, "targets": "last", "features": feats,
                "protocol": "leave-last-out: the last item of each sequence (known to training)"}
    if kind == "split_column":
        table = read_events(f("events"))
        split = np.asarray(table.pop("Split")).astype(str)
        if "Category" in table:
            items, cat = np.asarray(table["ItemId"]), np.asarray(table["Category"]).astype(np.int64)
            pairs, counts = np.unique(np.stack([items.astype(np.int64), cat], 1), axis=0,
                                      return_counts=True)
            pairs = pairs[np.lexsort((pairs[:, 1], -counts, pairs[:, 0]))]
            first = np.r_[True, pairs[1:, 0] != pairs[:-1, 0]]  # most frequent category per item
            feats = {"category": CategoricalFeatures(pairs[first, 0], pairs[first, 1], dim=16)}
        table = {k: table[k] for k in KEYS}
        return {"train": _subset(table, split == "train"), "test": _subset(table, split == "test"),
                "targets": "all", "features": feats,
                "protocol": "next click at every position, Split=train -> Split=test"}
    table = read_events(f("events"), columns=KEYS)
    sid = np.asarray(table["SessionId"])
    uniq, inv = np.unique(sid, return_inverse=True)
    start = np.full(len(uniq), np.inf)
    np.minimum.at(start, inv, np.asarray(table["Time"], float))
    is_test = start[inv] > np.quantile(start, 0.8)
    cats = read_events(f("categories"), columns=["ItemId", "CategoryId"])
    return {"train": _subset(table, ~is_test), "test": _subset(table, is_test), "targets": "all",
            "features": {"category": CategoricalFeatures(cats["ItemId"], cats["CategoryId"], dim=16)},
            "protocol": "next click, the last 20% of sessions by start time as test"}


# ---------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------
def gru_param_string(dataset: str) -> tuple:
    """``(parameter string, source)`` of SessionGRU for a dataset name."""
    for key, params in GRU_PARAMS.items():
        if dataset.startswith(key):
            return params, f"official GRU4Rec row '{key}'"
    return GRU_GENERIC, "no official row: the generic budget of bench/RESULTS.md"


def make_model(name: str, dataset: str, caps: dict):
    """A fresh, unfitted model for one cell (``caps``: ``max_epochs``, ``n_threads``)."""
    from . import baselines, neighbors, slist
    simple = {"POP": baselines.Pop, "S-POP": baselines.SessionPop, "Item-KNN": baselines.ItemKNN,
              "SKNN": neighbors.SKNN, "V-SKNN": neighbors.VSKNN, "STAN": neighbors.STAN,
              "VSTAN": neighbors.VSTAN, "SLIST": slist.SLIST}
    if name in simple:
        return simple[name]()
    if name == "BPR-MF":
        return baselines.BPRMF(random_state=1)
    epochs = lambda n: n if caps.get("max_epochs") is None else min(n, caps["max_epochs"])
    if name == "GRU4Rec":
        from .model import SessionGRU
        model = SessionGRU.from_param_string(gru_param_string(dataset)[0], random_state=1,
                                             n_threads=caps.get("n_threads"))
        return model.set_params(n_epochs=epochs(model.n_epochs))
    if name == "GRU4Rec+features":
        from .feature_model import FeatureSessionGRU
        return FeatureSessionGRU(layers=[64], feature_layers=[64], architecture="parallel",
                                 combine="concat", strategy="alternating", n_epochs=epochs(4),
                                 batch_size=32, n_sample=512, learning_rate=0.1, loss="cross-entropy",
                                 logq=1.0, sample_alpha=0.5, sample_store_size=1_000_000,
                                 random_state=1, n_threads=caps.get("n_threads"))
    raise ValueError(f"unknown model {name!r}; valid: {list(MODELS)}")


class _PeakRSS:
    """Peak resident memory of this process while the block runs, sampled every 20 ms."""

    def __enter__(self):
        self.start = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _rss(self) -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _watch(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())
        return False


def run_cell(name: str, dataset: str, data: dict, caps: dict, epoch_eval: bool = True) -> dict:
    """Fit and evaluate one model on one dataset; the cell's JSON-ready result."""
    model = make_model(name, dataset, caps)
    evaluate = lambda m, cutoffs, by_pos: m.evaluate(data["test"], cutoffs=cutoffs,
                                                     by_position=by_pos, targets=data["targets"])
    epochs, eval_in_fit = [], []
    fit_args = {}
    if name in GRU_MODELS:
        model.set_params(show_progress=caps.get("progress", False))
        if data["features"] is not None and name == "GRU4Rec+features":
            fit_args["item_features"] = data["features"]

        def callback(epoch, seconds, loss):
            row = {"epoch": int(epoch), "seconds": float(seconds), "loss": float(loss)}
            if epoch_eval:
                t_eval = time.perf_counter()
                try:  # on the CPU the model sees this epoch's parameters inside the callback
                    res = evaluate(model, (20,), False)
                    row.update({"recall@20": res["recall@20"], "mrr@20": res["mrr@20"]})
                except NotFittedError:
                    logger.warning("report: %s cannot be evaluated inside its fit callback; "
                                   "no Recall@20 by epoch", name)
                eval_in_fit.append(time.perf_counter() - t_eval)
            epochs.append(row)
            logger.info("report: %s on %s, epoch %d: loss %.4f%s", name, dataset, epoch, loss,
                        f", Recall@20 {row['recall@20']:.4f}" if "recall@20" in row else "")
        fit_args["callback"] = callback
    with _PeakRSS() as mem:
        t0 = time.perf_counter()
        model.fit(data["train"], **fit_args)
        fit_s = time.perf_counter() - t0 - sum(eval_in_fit)  # without the per-epoch evaluations
        res = evaluate(model, CUTOFFS, True)
    out = {k: res[k] for k in res if k.startswith(("recall@", "mrr@"))}
    out.update(model=name, dataset=dataset, n_events=res["n_events"],
               n_unknown_item_events=res.get("n_unknown_item_events", 0), fit_s=fit_s,
               eval_s=res["seconds"], predictions_per_s=res["n_events"] / max(res["seconds"], 1e-9),
               peak_rss_mb=mem.peak / 2**20, rss_increase_mb=(mem.peak - mem.start) / 2**20,
               by_position=[{"position": r["position"], "n": r["n"], "recall@20": r["recall@20"]}
                            for r in res.get("by_position", [])],
               epochs=epochs, params={k: repr(v) for k, v in model.get_params().items()},
               n_items=int(model.n_items_), epoch_eval_s=float(sum(eval_in_fit)))
    return out


def run_throughput(dataset: str, data: dict, hidden: int, caps: dict) -> dict:
    """SessionGRU with ``layers=[hidden]``, one epoch: training events/s, predictions/s."""
    from .model import SessionGRU
    model = SessionGRU.from_param_string(gru_param_string(dataset)[0], random_state=1,
                                         n_threads=caps.get("n_threads"))
    model.set_params(layers=[int(hidden)], n_epochs=1)
    t0 = time.perf_counter()
    model.fit(data["train"])
    fit_s = time.perf_counter() - t0
    res = model.evaluate(data["test"], cutoffs=(20,), by_position=False, targets=data["targets"])
    return {"hidden": int(hidden), "dataset": dataset, "fit_s": fit_s,
            "train_events_per_s": float(np.median(model.events_per_s_)),
            "predictions_per_s": res["n_events"] / max(res["seconds"], 1e-9),
            "recall@20": res["recall@20"]}


# ---------------------------------------------------------------------------------------------
# the cache of cells
# ---------------------------------------------------------------------------------------------
def _signature(*parts) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _cached(path: str, signature: str, compute, fresh: bool):
    if not fresh and os.path.exists(path):
        with open(path) as fh:
            stored = json.load(fh)
        if stored.get("signature") == signature:
            return stored["result"], True
    result = compute()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump({"signature": signature, "result": result}, fh, indent=1)
    os.replace(tmp, path)  # atomic: a killed run never leaves half a cell
    return result, False


def _progress(iterable, total, desc, enabled):
    if enabled:
        try:
            from tqdm import tqdm
            return tqdm(iterable, total=total, desc=desc)
        except ImportError:
            pass
    return iterable


# ---------------------------------------------------------------------------------------------
# writing the report
# ---------------------------------------------------------------------------------------------
def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(l.split(":", 1)[1].strip() for l in fh if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    blas = os.environ.get("OPENBLAS_CORETYPE")
    return (f"{cpu}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}, "
            f"numpy {np.__version__}" + (f", OPENBLAS_CORETYPE={blas}" if blas else ""))




# ---------------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``gru-engine report`` (also used by ``bench/report.py``)."""
    p.add_argument("--data", default=SAMPLE_DIR,
                   help="folder of datasets, or one dataset's folder (default: the bundled sample)")
    p.add_argument("--datasets", nargs="+", metavar="NAME", help="only these datasets (folder names)")
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS), metavar="MODEL",
                   help=f"models to run (default: all of {', '.join(MODELS)})")
    p.add_argument("--output", default=os.path.join("bench", "REPORT.md"),
                   help="the Markdown report; PNGs go to <its folder>/figures (default: %(default)s)")
    p.add_argument("--cache", default=os.path.join("bench", "out", "report_cells"),
                   help="one JSON per finished cell; a rerun reuses them (default: %(default)s)")
    p.add_argument("--fresh", action="store_true", help="ignore cached cells and recompute")
    p.add_argument("--quick", action="store_true",
                   help="a few-minute pass: --max-epochs 1, --hidden-sizes 32 64, SLIST only up to "
                        "5,000 items, no per-epoch evaluation")
    p.add_argument("--max-epochs", type=int, metavar="N",
                   help="cap the epochs of the GRU models (stated in the report)")
    p.add_argument("--hidden-sizes", type=int, nargs="*", metavar="H",
                   help="hidden sizes of the throughput plot (default: 50 100 200 400; none: skip)")
    p.add_argument("--throughput-dataset", metavar="NAME",
                   help="dataset of the throughput plot (default: the first one)")
    p.add_argument("--slist-max-items", type=int, default=20000, metavar="N",
                   help="skip SLIST on datasets with more items (memory ~ 12 * N^2 bytes; "
                        "default: %(default)s)")
    p.add_argument("--gru-max-train-events", type=int, metavar="N",
                   help="skip the GRU models on datasets with more training events (a cap for "
                        "small or busy machines, stated in the report; default: no cap)")
    p.add_argument("--no-epoch-eval", action="store_true",
                   help="do not evaluate the GRU models after every epoch")
    p.add_argument("--threads", type=int, metavar="N", help="n_threads of the GRU models")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args, command: str = "gru-engine report") -> str:
    """Run the report described by parsed ``args``; returns the path of the written report."""
    for name in ("max_epochs", "slist_max_items", "threads", "gru_max_train_events"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    max_epochs = 1 if args.quick and args.max_epochs is None else args.max_epochs
    hidden = args.hidden_sizes if args.hidden_sizes is not None else (
        [32, 64] if args.quick else [50, 100, 200, 400])
    slist_max = min(args.slist_max_items, 5000) if args.quick else args.slist_max_items
    epoch_eval = not (args.no_epoch_eval or args.quick)
    progress = not args.no_progress
    specs = discover(args.data)
    if args.datasets:
        unknown = set(args.datasets) - {s["name"] for s in specs}
        if unknown:
            raise ValueError(f"--datasets: {sorted(unknown)} not found under {args.data}; "
                             f"found: {[s['name'] for s in specs]}")
        specs = [s for s in specs if s["name"] in args.datasets]
    if not specs:
        raise ValueError(f"no dataset found under {args.data}")
    caps = {"max_epochs": max_epochs, "n_threads": args.threads, "progress": progress}
    caps_text = (f"GRU epochs capped at {max_epochs}" if max_epochs else "no epoch cap (official epochs)")
    caps_text += (f"; SLIST skipped above {slist_max:,} items; models: {', '.join(args.models)}; "
                  f"per-epoch test evaluation {'on' if epoch_eval else 'off'}; hidden sizes "
                  f"{hidden or 'none'}" + ("; --quick" if args.quick else ""))
    results, protocols, gru_source, skipped, skipped_models = {}, {}, {}, [], {}
    throughput = []
    t_ds = args.throughput_dataset or specs[0]["name"]
    for spec in specs:
        t0 = time.perf_counter()
        data = load(spec)
        logger.info("report: %s loaded in %.1f s (%d train / %d test events)", spec["name"],
                    time.perf_counter() - t0, len(data["train"]["ItemId"]), len(data["test"]["ItemId"]))
        n_items = len(np.unique(data["train"]["ItemId"]))
        protocols[spec["name"]] = data["protocol"]
        gru_source[spec["name"]] = gru_param_string(spec["name"])[1]
        files = {k: os.path.getsize(os.path.join(spec["path"], v))
                 for k, v in spec["files"].items() if v}
        cells = {}
        names = [m for m in args.models if not (m == "GRU4Rec+features" and data["features"] is None)]
        for name in _progress(names, len(names), spec["name"], progress):
            if name == "SLIST" and n_items > slist_max:
                skipped.append(f"SLIST on {spec['name']} ({n_items:,} items > {slist_max:,})")
                skipped_models.setdefault(spec["name"], []).append(name)
                continue
            n_train = len(data["train"]["ItemId"])
            if name in GRU_MODELS and args.gru_max_train_events and n_train > args.gru_max_train_events:
                skipped.append(f"{name} on {spec['name']} ({n_train:,} training events > "
                               f"{args.gru_max_train_events:,})")
                skipped_models.setdefault(spec["name"], []).append(name)
                continue
            sig = _signature(name, spec["name"], files, repr(make_model(name, spec["name"], caps)),
                             epoch_eval, 1)
            path = os.path.join(args.cache, spec["name"], f"{name}.json")
            cells[name], hit = _cached(path, sig, lambda: run_cell(name, spec["name"], data, caps,
                                                                   epoch_eval), args.fresh)
            logger.info("report: %s / %s: Recall@20 %.4f%s", spec["name"], name,
                        cells[name]["recall@20"], " (cached)" if hit else "")
        results[spec["name"]] = cells
        if spec["name"] == t_ds and hidden:
            for h in _progress(hidden, len(hidden), "hidden sizes", progress):
                sig = _signature("throughput", spec["name"], files, h, caps["n_threads"], 1)
                path = os.path.join(args.cache, spec["name"], f"throughput_{h}.json")
                throughput.append(_cached(path, sig, lambda: run_throughput(spec["name"], data, h, caps),
                                          args.fresh)[0])
        del data
    if skipped:
        caps_text += "; skipped: " + ", ".join(skipped)
    meta = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "command": command,
            "machine": _machine(), "caps": caps_text, "gru_source": gru_source,
            "max_epochs": max_epochs, "skipped_models": skipped_models}
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    write_report(args.output, results, throughput, meta, protocols)
    return args.output


def main(argv=None) -> int:
    """``python -m gru_engine.report`` / ``bench/report.py``."""
    p = argparse.ArgumentParser(prog="report", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        path = run(args, command="python bench/report.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    except ValueError as exc:
        p.error(str(exc))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
