"""The search and the batch scoring on a Ray cluster (``pip install "gru_engine[distributed]"``).

:func:`ray_search` runs the trials of :func:`gru_engine.tune.search` as Ray Tune trials, with
Ray's Optuna searcher (the same space, sampler and seed) choosing the parameters: one trial per
worker slot of ``n_threads`` CPUs (``TrialSettings.n_threads``, default 1). A worker lost in
the middle of a trial (its process killed, its node gone) is retried by Ray from the start, up
to ``max_failures`` times (Ray Tune's ``FailureConfig``); nothing of ours retries. The training
and validation events travel once through Ray's object store (``tune.with_parameters``), so
the nodes need gru_engine installed but no shared file system. With a pruner, Ray's
``MedianStoppingRule`` stops a trial whose per-epoch value is below the median of the
others at the same epoch (Ray's searcher then records the stopped trial as complete with its
last value; our result lists it as ``pruned``).

:func:`ray_score` scores the chunks of :func:`gru_engine.scoring.score_file` on a pool of Ray
actors; each actor loads the model once (the file's bytes go through the object store, so the
model file need only be readable by the driver). Chunks are read by the driver, at most two per
actor in flight, and written in input order: the output is the in-process one, bit for bit,
for the same ``n_threads``, chunk size and ``OMP_NUM_THREADS`` (Ray sets it to each actor's
CPU count; the scores' last bit depended on it in our measurements, see docs/cluster.md).

Connect with ``address``: a cluster address (``ray://host:10001`` or ``host:6379``),
``'auto'`` (the cluster this machine belongs to, e.g. started by ``ray start``) or
``'local'`` (start a Ray instance on this machine). When Ray is already initialised in this
process (``ray.init`` called by the caller), that instance is used and ``address`` ignored.
See ``docs/cluster.md``.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import resource
import tempfile
import time

from .exceptions import MissingExtraError, ModelFitError
from .tune import (Space, TrialRecord, TrialSettings, _as_model_params, _check_search_args,
                   _progress, best_of, make_sampler, parse_metric, require_optuna, run_trial)

logger = logging.getLogger("gru_engine")

_OBJECTIVE = "objective"


def require_ray():
    """Import ray (with Ray Tune), or raise ``MissingExtraError`` naming the extra."""
    try:
        import ray
        from ray import tune  # noqa: F401
    except ImportError:
        raise MissingExtraError('running on Ray needs Ray Tune: pip install '
                                '"gru_engine[distributed]" (or pip install "ray[tune]")') from None
    return ray


def connect(address: str | None):
    """Initialise Ray for ``address`` (see the module docstring) unless it already is."""
    ray = require_ray()
    if not ray.is_initialized():
        if address in (None, "", "local"):
            ray.init(include_dashboard=False, log_to_driver=False)
        else:
            try:
                ray.init(address=address, log_to_driver=False)
            except ConnectionError as exc:
                raise ValueError(f"cannot connect to a Ray cluster at {address!r} ({exc}); "
                                 f"start one with 'ray start --head' or use 'local'") from None
    return ray


# ---------------------------------------------------------------------------------------------
# the search
# ---------------------------------------------------------------------------------------------
def _trainable(config, train=None, valid=None, settings=None, space=None):
    """One Ray Tune trial: :func:`gru_engine.tune.run_trial` reporting every epoch."""
    from ray import tune
    number = config["trial_number"]
    sampled = {name: config[name] for name in space.search}
    params = space.model_params(sampled, settings.overrides)

    def report(epoch, value):
        tune.report({_OBJECTIVE: value, "epoch": epoch, "trial_number": number})

    try:
        run_trial(params, train, valid, settings, report)
    except ModelFitError as exc:  # diverged: the worst value for the searcher, not a retry
        tune.report({_OBJECTIVE: float("-inf"), "epoch": 0, "trial_number": number,
                     "failed": str(exc)})


class _DefineByRun:
    """Ray's searcher asks Optuna for a trial and calls this with it (picklable: Ray saves the
    searcher with the experiment)."""

    def __init__(self, space: Space):
        self.space = space

    def __call__(self, trial):
        self.space.suggest(trial)
        return {"trial_number": trial.number}


def _progress_callback(bar, metric: str):
    """A Ray Tune callback that advances the tqdm ``bar`` (when not None) and logs as each
    trial ends."""
    from ray.tune import Callback

    class ProgressCallback(Callback):
        def on_trial_complete(self, iteration, trials, trial, **info):
            value = (trial.last_result or {}).get(_OBJECTIVE)
            logger.info("ray trial %s finished: %s %s", trial.trial_id, metric,
                        "-" if value is None else f"{value:.4f}")
            if bar is not None:
                bar.update(1)

        def on_trial_error(self, iteration, trials, trial, **info):
            logger.warning("ray trial %s failed for good (after Ray's retries)", trial.trial_id)
            if bar is not None:
                bar.update(1)

    return ProgressCallback()


def ray_search(train, valid, space: Space, n_trials: int = 20,
               settings: TrialSettings | None = None, sampler: str = "tpe",
               pruner: str = "median", storage: str | None = None,
               study_name: str = "gru_engine", show_progress: bool = False,
               address: str | None = "auto", max_failures: int = 3,
               ray_storage: str | None = None, callbacks=None):
    """:func:`gru_engine.tune.search` on Ray Tune with its Optuna searcher.

    Arguments as :func:`gru_engine.tune.search` (``settings.n_threads``: CPUs and threads per
    trial, default 1), plus:
    address: Ray cluster (see the module docstring).
    max_failures: Ray's retries of a trial whose worker died.
    ray_storage: Ray Tune's experiment folder (absolute path or URI; default ~/ray_results).
    callbacks: extra Ray Tune callbacks (e.g. a logger).
    ``storage``/``study_name`` keep the searcher's Optuna study there (SQLite for one driver).
    Returns a :class:`gru_engine.tune.SearchResult`; trials are numbered in the order Ray's
    searcher created them (the serial search's order).
    """
    require_optuna()
    _check_search_args(n_trials, sampler, pruner)
    if pruner not in ("median", "none"):
        raise ValueError(f"pruner must be 'median' or 'none' on Ray, got {pruner!r}")
    if isinstance(max_failures, bool) or not isinstance(max_failures, int) or max_failures < 0:
        raise ValueError(f"max_failures must be a non-negative integer, got {max_failures!r}")
    settings = dataclasses.replace(settings or TrialSettings(), per_epoch=pruner != "none")
    if settings.n_threads is None:
        settings.n_threads = 1
    metric, _ = parse_metric(settings.metric)
    connect(address)
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna_storage = None
    if storage:
        optuna_storage = optuna.storages.RDBStorage(storage) if "://" in storage else storage
    searcher = OptunaSearch(space=_DefineByRun(space), metric=_OBJECTIVE, mode="max",
                            sampler=make_sampler(sampler, settings.seed), study_name=study_name,
                            storage=optuna_storage)
    scheduler = None
    if pruner == "median":
        from ray.tune.schedulers import MedianStoppingRule
        scheduler = MedianStoppingRule(time_attr="epoch", metric=_OBJECTIVE, mode="max",
                                       grace_period=1, min_samples_required=5)
    trainable = tune.with_resources(
        tune.with_parameters(_trainable, train=train, valid=valid, settings=settings,
                             space=space),
        {"cpu": settings.n_threads})
    bar = _progress(n_trials, show_progress)
    run_config = tune.RunConfig(
        name=study_name, storage_path=ray_storage, verbose=0,
        failure_config=tune.FailureConfig(max_failures=max_failures),
        callbacks=[_progress_callback(bar, metric)] + list(callbacks or []))
    tuner = tune.Tuner(trainable, run_config=run_config,
                       tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler,
                                                   num_samples=n_trials, reuse_actors=True))
    t0 = time.perf_counter()
    try:
        grid = tuner.fit()
    finally:
        if bar is not None:
            bar.close()
    logger.info("ray search: %d trials in %.1f s", len(grid), time.perf_counter() - t0)
    n_epochs = space.model_params({}, settings.overrides).get("n_epochs", 10)
    records = []
    for res in grid:
        m = res.metrics or {}
        config = res.config or {}
        number = config.get("trial_number", m.get("trial_number"))
        sampled = {k: config[k] for k in space.search if k in config}
        value = m.get(_OBJECTIVE)
        epochs = m.get("epoch")
        if res.error is not None or "failed" in m or value is None:
            state, value = "failed", None
        elif settings.per_epoch and epochs is not None and epochs < n_epochs:
            state = "pruned"  # value: the last epoch's, as Optuna keeps for a pruned trial
        else:
            state = "complete"
        secs = m.get("time_total_s")
        records.append(TrialRecord(number=int(number), params=_as_model_params(sampled),
                                   value=None if value is None else float(value), state=state,
                                   seconds=None if secs is None or not math.isfinite(secs)
                                   else float(secs), epochs=epochs))
    return best_of(records, metric, space, settings.overrides)


# ---------------------------------------------------------------------------------------------
# batch scoring
# ---------------------------------------------------------------------------------------------
class _ScoringActorImpl:
    """Holds one loaded model and a :class:`gru_engine.scoring.ChunkScorer`."""

    def __init__(self, model_bytes: bytes, k: int, exclude_seen: bool, n_threads: int):
        from .model import SessionGRU
        from .scoring import ChunkScorer
        fd, path = tempfile.mkstemp(suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(model_bytes)
            model = SessionGRU.load(path)
        finally:
            os.remove(path)
        self.scorer = ChunkScorer(model, k=k, exclude_seen=exclude_seen, n_threads=n_threads)

    def score(self, chunk):
        return self.scorer.score(chunk)

    def peak_rss_mb(self) -> float:
        """This actor process's peak resident memory in MB (Linux ``ru_maxrss``)."""
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def ray_score(model_file, sessions_path, output, k: int = 20, chunk_sessions: int = 1024,
              session_order: str = "contiguous", exclude_seen: bool = False,
              output_format: str = "auto", n_threads: int = 1, n_actors: int = 2,
              address: str | None = "auto", session_key: str = "SessionId",
              item_key: str = "ItemId", time_key: str = "Time", sep: str = "\t",
              stats_out: dict | None = None):
    """:func:`gru_engine.scoring.score_file` with the chunks scored on ``n_actors`` Ray actors
    of ``n_threads`` CPUs each (see the module docstring). ``stats_out``, when given, receives
    ``'actor_peak_rss_mb'`` (one value per actor). Returns
    :class:`gru_engine.scoring.ScoreStats`."""
    from .model import SessionGRU
    from .scoring import ChunkScorer, ResultWriter, ScoreStats, add_counts, iter_chunks
    for name, v in (("n_actors", n_actors), ("n_threads", n_threads)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    t0 = time.perf_counter()
    model_file = os.fspath(model_file)
    loaded = SessionGRU.load(model_file)  # fail early on a bad file
    ids_dtype = loaded.item_index_.ids.dtype
    chunks = iter_chunks(sessions_path, chunk_sessions, session_key, item_key, time_key, sep,
                         session_order, ChunkScorer(loaded).columns)
    ray = connect(address)
    from ray.util import ActorPool
    with open(model_file, "rb") as f:
        model_ref = ray.put(f.read())
    actor_cls = ray.remote(num_cpus=n_threads)(_ScoringActorImpl)
    actors = [actor_cls.remote(model_ref, k, exclude_seen, n_threads) for _ in range(n_actors)]
    pool = ActorPool(actors)
    writer = ResultWriter(output, ids_dtype, output_format, sep, session_key, item_key)
    stats = ScoreStats()
    in_flight, max_in_flight = 0, 2 * n_actors
    try:
        for chunk in chunks:
            pool.submit(lambda actor, c: actor.score.remote(c), chunk)
            in_flight += 1
            if in_flight >= max_in_flight:
                part = pool.get_next()  # in submission order
                in_flight -= 1
                writer.write(part)
                add_counts(stats, part)
        while in_flight:
            part = pool.get_next()
            in_flight -= 1
            writer.write(part)
            add_counts(stats, part)
        if stats_out is not None:
            stats_out["actor_peak_rss_mb"] = ray.get([a.peak_rss_mb.remote() for a in actors])
    except BaseException:
        writer.abort()
        raise
    finally:
        for a in actors:
            ray.kill(a)
    writer.close()
    stats.seconds = time.perf_counter() - t0
    logger.info("scored %d sessions on %d Ray actors in %.1f s", stats.n_sessions, n_actors,
                stats.seconds)
    return stats
