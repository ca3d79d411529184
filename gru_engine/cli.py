"""``gru-engine`` command line: preprocess, train, evaluate, recommend, tune, score, demo.

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
from .exceptions import MissingExtraError, ModelFitError, NotFittedError

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
    if args.save:
        from .safe_npz import check_writable
        check_writable(args.save)  # before training, not after it
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
    except (ValueError, OverflowError):
        raise ValueError(f"item ids {args.items} do not parse as the model's ids ({id_dtype})") from None
    exclude = items if args.exclude_seen else None
    ids, scores = model.recommend(items, k=args.k, exclude=exclude)
    for rank, (item, score) in enumerate(zip(ids, scores), 1):
        print(f"{rank}\t{item}\t{score:.6f}")
    return 0


def cmd_preprocess(args) -> int:
    from . import preprocess
    # the statistics are printed below, once: not also as the per-step log lines
    quiet_steps = logging.Filter()
    quiet_steps.filter = lambda record: not str(record.msg).startswith("preprocess ")
    logger.addFilter(quiet_steps)
    try:
        options = {k: v for k, v in (("min_item_support", args.min_item_support),
                                     ("min_session_length", args.min_session_length),
                                     ("min_sessions_per_user", args.min_sessions_per_user))
                   if v is not None}
        if "min_sessions_per_user" in options and args.split != "user":
            raise ValueError("--min-sessions-per-user applies to --split user only")
        stats = preprocess.preprocess_file(args.dataset, args.raw_file, args.out_dir,
                                           split=args.split, **options)
    finally:
        logger.removeFilter(quiet_steps)
    for key, value in stats.items():
        print(f"{key}: {value}")
    return 0


def cmd_compile(args) -> int:
    from .backends.cpu.compile import compile_kernels, kernels_cached
    seconds = compile_kernels()
    print(f"CPU kernels compiled and cached in {seconds:.1f} s (cached: {kernels_cached()})")
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


def cmd_tune(args) -> int:
    from . import tune
    from .params import parse_param_string
    space = tune.load_space(args.space)
    overrides = parse_param_string(args.params) if args.params else {}
    for bad in ("random_state", "n_threads"):
        if bad in overrides:
            raise ValueError(f"-p {bad}=... is not allowed here: use --seed / --threads")
    metric, _ = tune.parse_metric(args.metric)
    tune.require_optuna()
    train = _read(args.train, args)
    if args.valid:
        valid = _read(args.valid, args)
    else:
        train, valid = tune.split_validation(train, args.valid_split, args.session_key,
                                             args.time_key)
        logger.info("validation split: the last %d of %d events (sessions ending last)",
                    len(valid[args.session_key]),
                    len(valid[args.session_key]) + len(train[args.session_key]))
    settings = tune.TrialSettings(metric=metric, mode=args.mode,
                                  eval_batch_size=args.eval_batch_size, seed=args.seed,
                                  n_threads=args.threads, overrides=overrides, keys=_keys(args))
    common = dict(space=space, n_trials=args.trials, settings=settings, sampler=args.sampler,
                  pruner=args.pruner, storage=args.storage, study_name=args.study_name,
                  show_progress=not args.no_progress)
    if args.ray:
        from . import distributed
        result = distributed.ray_search(train, valid, address=args.ray,
                                        max_failures=args.max_failures,
                                        ray_storage=args.ray_storage, **common)
    else:
        result = tune.search(train, valid, **common)
    counts = {s: sum(t.state == s for t in result.trials) for s in ("complete", "pruned", "failed")}
    print(f"trials: {len(result.trials)} ({counts['complete']} complete, {counts['pruned']} "
          f"pruned, {counts['failed']} failed)")
    print(f"best trial: {result.best_number}  {metric}: {result.best_value:.6f}")
    print(f"best parameters: -p \"{result.best_param_string}\"")
    if args.output:
        tune.write_best(result, args.output)
        logger.info("wrote %s and its .params file", args.output)
    return 0


def cmd_score(args) -> int:
    from . import scoring
    kwargs = dict(k=args.k, chunk_sessions=args.chunk_sessions, session_order=args.session_order,
                  exclude_seen=args.exclude_seen, output_format=args.format, sep=args.sep,
                  **_keys(args))
    if args.ray:
        from . import distributed
        stats = distributed.ray_score(args.model_file, args.sessions, args.output,
                                      address=args.ray, n_actors=args.actors,
                                      n_threads=args.threads or 1, **kwargs)
    else:
        stats = scoring.score_file(args.model_file, args.sessions, args.output,
                                   n_threads=args.threads, **kwargs)
    print(f"scored {stats.n_sessions} sessions ({stats.n_events} events, "
          f"{stats.n_unknown_item_events} on unknown items, {stats.n_skipped_sessions} sessions "
          f"without a known item) in {stats.seconds:.1f} s "
          f"({stats.n_sessions / max(stats.seconds, 1e-9):.0f} sessions/s) -> {args.output}")
    return 0


def _add_tune_parser(sub) -> None:
    p = sub.add_parser("tune", help="hyperparameter search for SessionGRU (Optuna; Ray Tune with --ray)")
    p.add_argument("train", help="training events file")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--valid", help="validation events file")
    group.add_argument("--valid-split", type=float, metavar="FRACTION",
                       help="validate on this fraction of the training sessions, the ones that "
                            "end last (e.g. 0.1)")
    p.add_argument("--space", required=True,
                   help="parameter space: 'cross-entropy' or 'bpr-max' (the official "
                        "release's spaces) or a space JSON file")
    p.add_argument("--trials", type=int, default=20, help="number of trials (default: %(default)s)")
    p.add_argument("--metric", default="mrr@20",
                   help="validation metric to maximise, recall@K or mrr@K (default: %(default)s)")
    p.add_argument("--mode", choices=("conservative", "median", "optimistic", "standard"),
                   default="conservative", help="tie handling of the rank (default: %(default)s)")
    p.add_argument("--eval-batch-size", type=int, default=512,
                   help="validation sessions replayed in parallel (default: %(default)s)")
    p.add_argument("-p", "--params", default="",
                   help="parameters forced on every trial, as a key=value string (e.g. "
                        "'n_epochs=3'); they override the space")
    p.add_argument("--sampler", choices=("tpe", "random"), default="tpe",
                   help="Optuna sampler (default: %(default)s)")
    p.add_argument("--pruner", choices=("median", "none"), default="median",
                   help="stop trials below the median at the same epoch (per-epoch "
                        "validation; default: %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the sampler and random_state of every trial (default: %(default)s)")
    p.add_argument("--threads", type=int,
                   help="CPU threads per trial (default: every CPU; with --ray: 1)")
    p.add_argument("--storage", help="Optuna storage URL to keep and resume the study, e.g. "
                                     "sqlite:///study.db")
    p.add_argument("--study-name", default="gru_engine",
                   help="study name in --storage (default: %(default)s)")
    p.add_argument("-o", "--output", help="write the best parameters and every trial as JSON "
                                          "(and the -p string to the same name with .params)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar over the trials")
    p.add_argument("--ray", metavar="ADDRESS",
                   help="run the trials on a Ray cluster: its address, 'auto' (the cluster this "
                        "node belongs to) or 'local' (start one on this machine)")
    p.add_argument("--max-failures", type=int, default=3,
                   help="with --ray: times Ray retries a trial whose worker died (default: %(default)s)")
    p.add_argument("--ray-storage", help="with --ray: Ray Tune's experiment folder "
                                         "(default: ~/ray_results)")
    _add_keys(p)
    p.set_defaults(func=cmd_tune)


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


def _add_score_parser(sub) -> None:
    p = sub.add_parser("score", help="top-k next items for every session of an event file "
                                     "(batch scoring, streamed)")
    p.add_argument("model_file", help="saved SessionGRU model (.npz)")
    p.add_argument("sessions", help="event file of the sessions to score (.gz accepted); each "
                                    "session's events must be contiguous (see --session-order)")
    p.add_argument("-o", "--output", required=True,
                   help="output file: .parquet (needs pyarrow) or tab-separated text (.gz accepted)")
    p.add_argument("-k", type=int, default=20, help="items per session (default: %(default)s)")
    p.add_argument("--format", choices=("auto", "tsv", "parquet"), default="auto",
                   help="output format (default: from the extension)")
    p.add_argument("--session-order", choices=("sorted", "contiguous"), default="contiguous",
                   help="'sorted': session ids ascending (checked in constant memory); "
                        "'contiguous': each session's events together (checked with a set of the "
                        "ids seen; default: %(default)s)")
    p.add_argument("--chunk-sessions", type=int, default=1024,
                   help="sessions scored per chunk (default: %(default)s)")
    p.add_argument("--exclude-seen", action="store_true",
                   help="never recommend items already clicked in the session")
    p.add_argument("--threads", type=int, help="CPU threads (per actor with --ray; default: "
                                               "every CPU, with --ray 1)")
    p.add_argument("--ray", metavar="ADDRESS",
                   help="score the chunks on a Ray actor pool: cluster address, 'auto' or 'local'")
    p.add_argument("--actors", type=int, default=2, help="with --ray: actors (default: %(default)s)")
    _add_keys(p)
    p.set_defaults(func=cmd_score)


# ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gru-engine",
                                     description=__doc__.splitlines()[0].replace("``", ""))
    _add_verbosity(parser, False)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train SessionGRU (and evaluate it with --test)",
                       epilog=_param_names_epilog(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
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
    p.add_argument("dataset", choices=("rsc15", "diginetica", "retailrocket", "lastfm"))
    p.add_argument("raw_file", help="yoochoose-clicks.dat, train-item-views.csv, events.csv or "
                                    "userid-timestamp-artid-artname-traid-traname.tsv")
    p.add_argument("out_dir", help="folder for the train/test/train_tr/train_valid files")
    p.add_argument("--split", choices=("time", "user"), default="time",
                   help="time: the last days are test (GRU4Rec); user: each user's last "
                        "session is test (session-aware, HRNN; not rsc15) "
                        "(default: %(default)s)")
    p.add_argument("--min-item-support", type=int, default=None,
                   help="drop items with fewer events (default 5)")
    p.add_argument("--min-session-length", type=int, default=None,
                   help="drop sessions with fewer events (default 2)")
    p.add_argument("--min-sessions-per-user", type=int, default=None,
                   help="--split user: drop users with fewer sessions (default 2)")
    p.set_defaults(func=cmd_preprocess)

    p = sub.add_parser("compile", help="compile and cache the CPU kernels ahead of time (e.g. "
                                       "when building a container image)")
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("demo", help="train and evaluate on the bundled rsc15-100k sample")
    p.add_argument("--epochs", type=int, default=3, help="training epochs (default: %(default)s)")
    p.add_argument("--seed", type=int, default=42, help="random seed (default: %(default)s)")
    p.set_defaults(func=cmd_demo, measure=[5, 10, 20], mode="conservative",
                   eval_batch_size=512, by_position=True,
                   session_key="SessionId", item_key="ItemId", time_key="Time", sep="\t")
    _add_tune_parser(sub)
    _add_score_parser(sub)
    _add_report_parser(sub)
    for p in sub.choices.values():  # -q / -v also after the subcommand
        _add_verbosity(p, argparse.SUPPRESS)
    return parser


def _add_verbosity(parser, default) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", default=default,
                        help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", default=default,
                        help="warnings and errors only")


def _param_names_epilog() -> str:
    """The -p parameter names with their defaults, wrapped, for ``train --help``."""
    import textwrap
    from .params import DEFAULTS
    names = ", ".join(f"{k}={'/'.join(map(str, v)) if isinstance(v, list) else v}"
                      for k, v in DEFAULTS.items())
    return "-p parameters (name=default):\n" + textwrap.fill(names, 78, initial_indent="  ",
                                                            subsequent_indent="  ")


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
    except (ValueError, KeyError, FileNotFoundError, MissingExtraError, ModelFitError,
            NotFittedError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"gru-engine: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
