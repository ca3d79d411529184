"""``gru-engine`` command line: preprocess, train, evaluate, recommend, demo.

Event files are delimited text (tab by default, ``.gz`` accepted) with a header naming the
session, item and time columns (``SessionId ItemId Time`` unless ``--session-key`` etc. say
otherwise). Errors print one line and exit with status 2.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time

import numpy as np

from .data import read_events
from .exceptions import ModelFitError, NotFittedError

logger = logging.getLogger("gru_engine")

BASELINES = ("pop", "spop", "itemknn", "bprmf")


# ---------------------------------------------------------------------------------------------
# shared argument groups
# ---------------------------------------------------------------------------------------------
def _add_keys(parser):
    group = parser.add_argument_group("columns")
    group.add_argument("--session-key", default="SessionId", help="session id column (default: %(default)s)")
    group.add_argument("--item-key", default="ItemId", help="item id column (default: %(default)s)")
    group.add_argument("--time-key", default="Time", help="time column (default: %(default)s)")
    group.add_argument("--sep", default="\t", help="field separator of the event files (default: tab)")


def _add_eval(parser):
    parser.add_argument("-m", "--measure", type=int, nargs="+", default=[20], metavar="K",
                        help="cut-offs for Recall@K and MRR@K (default: 20)")
    parser.add_argument("--mode", choices=("conservative", "median", "optimistic", "standard"),
                        default="conservative", help="tie handling of the rank (default: %(default)s)")
    parser.add_argument("--eval-batch-size", type=int, default=512,
                        help="test sessions replayed in parallel (default: %(default)s)")
    parser.add_argument("--by-position", action="store_true",
                        help="also print Recall/MRR by position of the click in the session")


def _keys(args) -> dict:
    return {"session_key": args.session_key, "item_key": args.item_key, "time_key": args.time_key}


def _read(path, args):
    t0 = time.perf_counter()
    data = read_events(path, sep=args.sep)
    n = len(next(iter(data.values()))) if data else 0
    logger.info("read %s: %d events in %.1f s", path, n, time.perf_counter() - t0)
    return data


def _print_metrics(result: dict, cutoffs, by_position: bool) -> None:
    for k in cutoffs:
        print(f"Recall@{k}: {result[f'recall@{k}']:.4f}  MRR@{k}: {result[f'mrr@{k}']:.4f}")
    print(f"Predictions evaluated: {result['n_events']}"
          + (f"  (test events removed as unknown items: {result['n_unknown_item_events']})"
             if result.get("n_unknown_item_events") else ""))
    if by_position and result.get("by_position"):
        k = max(cutoffs)
        print(f"position\tn\tRecall@{k}\tMRR@{k}")
        for row in result["by_position"]:
            print(f"{row['position']}\t{row['n']}\t{row[f'recall@{k}']:.4f}\t{row[f'mrr@{k}']:.4f}")


def _evaluate(model, test, args):
    t0 = time.perf_counter()
    result = model.evaluate(test, cutoffs=tuple(args.measure), mode=args.mode,
                            batch_size=args.eval_batch_size, by_position=args.by_position,
                            **_keys(args))
    elapsed = time.perf_counter() - t0
    logger.info("evaluation: %d predictions in %.2f s (%.0f predictions/s)", result["n_events"],
                elapsed, result["n_events"] / max(elapsed, 1e-9))
    _print_metrics(result, args.measure, args.by_position)
    return result


def _baseline(name: str):
    from . import baselines
    return {"pop": baselines.Pop, "spop": baselines.SessionPop, "itemknn": baselines.ItemKNN,
            "bprmf": baselines.BPRMF}[name]()


# ---------------------------------------------------------------------------------------------
# subcommands
# ---------------------------------------------------------------------------------------------
def cmd_train(args) -> int:
    from .model import SessionGRU
    from .params import parse_param_string
    params = parse_param_string(args.params) if args.params else {}
    if args.device:
        params["device"] = args.device
    if args.threads:
        params["n_threads"] = args.threads
    if args.load:
        model = SessionGRU.load(args.load)
        logger.info("loaded %s", args.load)
    else:
        model = SessionGRU(**params).fit(_read(args.train, args), **_keys(args))
    if args.save:
        model.save(args.save)
        logger.info("saved the model to %s", args.save)
    if args.test:
        _evaluate(model, _read(args.test, args), args)
    return 0


def cmd_evaluate(args) -> int:
    if args.load:
        from .model import SessionGRU
        if len(args.files) != 1:
            raise ValueError("with --load give exactly one file: the test events")
        model = SessionGRU.load(args.load)
        test_path = args.files[0]
    else:
        if len(args.files) != 2:
            raise ValueError("give TRAIN and TEST event files (or --load MODEL and TEST)")
        model = _baseline(args.model)
        t0 = time.perf_counter()
        model.fit(_read(args.files[0], args), **_keys(args))
        logger.info("fitted %s in %.1f s", args.model, time.perf_counter() - t0)
        test_path = args.files[1]
    _evaluate(model, _read(test_path, args), args)
    return 0


def cmd_recommend(args) -> int:
    from .model import SessionGRU
    model = SessionGRU.load(args.model_file)
    id_dtype = model.item_index_.ids.dtype
    try:
        items = np.array(args.items).astype(id_dtype)
    except ValueError:
        raise ValueError(f"item ids {args.items} do not parse as the model's ids ({id_dtype})") from None
    exclude = items if args.exclude_seen else None
    ids, scores = model.recommend(items, k=args.k, exclude=exclude)
    for rank, (item, score) in enumerate(zip(ids, scores), 1):
        print(f"{rank}\t{item}\t{score:.6f}")
    return 0


def cmd_preprocess(args) -> int:
    from . import preprocess
    stats = preprocess.preprocess_file(args.dataset, args.raw_file, args.out_dir)
    for key, value in stats.items():
        print(f"{key}: {value}")
    return 0


def cmd_demo(args) -> int:
    from .baselines import ItemKNN, Pop
    from .model import SessionGRU
    from .sample_data import load_sample
    train, test = load_sample()
    print("Bundled sample: rsc15-100k (YooChoose clicks), "
          f"{len(train['SessionId'])} training events, {len(test['SessionId'])} test events")
    params = dict(loss="cross-entropy", layers=[100], batch_size=32, n_epochs=args.epochs,
                  n_sample=2048, sample_alpha=0.5, logq=1.0, dropout_p_hidden=0.4,
                  learning_rate=0.2, momentum=0.2, random_state=args.seed)
    print("SessionGRU " + ",".join(f"{k}={v}" for k, v in params.items()))
    t0 = time.perf_counter()
    model = SessionGRU(**params).fit(train)
    print(f"trained in {time.perf_counter() - t0:.1f} s")
    _evaluate(model, test, args)
    for name, baseline in (("Item-KNN", ItemKNN()), ("POP", Pop())):
        result = baseline.fit(train).evaluate(test, cutoffs=tuple(args.measure), mode=args.mode)
        k = max(args.measure)
        print(f"{name} baseline: Recall@{k}: {result[f'recall@{k}']:.4f}  "
              f"MRR@{k}: {result[f'mrr@{k}']:.4f}")
    session = test["ItemId"][:3]
    ids, _ = model.recommend(session, k=5)
    print(f"Next-item recommendations after the clicks {session.tolist()}: {ids.tolist()}")
    return 0


# ---------------------------------------------------------------------------------------------
def cmd_report(args) -> int:
    from . import report
    path = report.run(args, command="gru-engine report " + " ".join(args.argv_))
    print(f"wrote {path}")
    return 0


def _add_report_parser(sub) -> None:
    from . import report
    p = sub.add_parser("report", help="every model on every dataset of a folder: bench/REPORT.md "
                                      "+ plots (resumable)")
    report.add_arguments(p)
    p.set_defaults(func=cmd_report)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gru-engine", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train SessionGRU (and evaluate it with --test)")
    p.add_argument("train", nargs="?", help="training events file")
    p.add_argument("--test", help="test events file to evaluate on after training")
    p.add_argument("-p", "--params", default="",
                   help="hyperparameters as the official key=value string, e.g. "
                        "'loss=bpr-max,layers=224,batch_size=80' ('/' separates list values)")
    p.add_argument("-s", "--save", help="write the trained model to this file (.npz)")
    p.add_argument("-l", "--load", help="load a saved model instead of training")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), help="compute device")
    p.add_argument("--threads", type=int, help="CPU threads for training and scoring")
    _add_keys(p)
    _add_eval(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="fit a baseline and evaluate it, or evaluate a saved model")
    p.add_argument("files", nargs="+", metavar="FILE", help="TRAIN TEST, or TEST with --load")
    p.add_argument("--model", choices=BASELINES, default="itemknn", help="baseline (default: %(default)s)")
    p.add_argument("-l", "--load", help="saved SessionGRU model file")
    _add_keys(p)
    _add_eval(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("recommend", help="top-k next items for one session from a saved model")
    p.add_argument("model_file")
    p.add_argument("items", nargs="+", help="the session's clicked item ids, in order")
    p.add_argument("-k", type=int, default=20, help="number of items (default: %(default)s)")
    p.add_argument("--exclude-seen", action="store_true", help="never recommend the clicked items")
    p.set_defaults(func=cmd_recommend)

    p = sub.add_parser("preprocess", help="GRU4Rec preprocessing of a raw public dataset")
    p.add_argument("dataset", choices=("rsc15", "diginetica", "retailrocket"))
    p.add_argument("raw_file", help="yoochoose-clicks.dat, train-item-views.csv or events.csv")
    p.add_argument("out_dir", help="folder for the train/test/train_tr/train_valid files")
    p.set_defaults(func=cmd_preprocess)

    p = sub.add_parser("demo", help="train and evaluate on the bundled rsc15-100k sample")
    p.add_argument("--epochs", type=int, default=3, help="training epochs (default: %(default)s)")
    p.add_argument("--seed", type=int, default=42, help="random seed (default: %(default)s)")
    p.set_defaults(func=cmd_demo, measure=[5, 10, 20], mode="conservative",
                   eval_batch_size=512, by_position=True,
                   session_key="SessionId", item_key="ItemId", time_key="Time", sep="\t")
    _add_report_parser(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    given = list(sys.argv[1:] if argv is None else argv)
    args.argv_ = given[given.index(args.command) + 1:] if args.command in given else given
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    if args.command == "train" and not args.train and not args.load:
        parser.error("train needs a TRAIN file (or --load MODEL)")
    try:
        return args.func(args)
    except (ValueError, KeyError, FileNotFoundError, ModelFitError, NotFittedError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"gru-engine: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
