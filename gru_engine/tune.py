"""Hyperparameter search for :class:`~gru_engine.SessionGRU` with Optuna (one machine) or
Ray Tune with the Optuna searcher (a cluster; :mod:`gru_engine.distributed`).

A *space* is a JSON file in our own format, with the parameter names of ``-p`` strings::

    {"description": "...",
     "fixed":  {"loss": "bpr-max", "n_epochs": 10, ...},          # every trial
     "search": {"layers":        {"type": "int", "low": 64, "high": 512, "step": 32},
                "learning_rate": {"type": "float", "low": 0.01, "high": 0.25, "log": true},
                "elu_param":     {"type": "categorical", "choices": [0.5, 1.0, 0.0]}}}

``int``/``float`` take ``low``, ``high`` and optionally ``step`` or ``log`` (not both);
``categorical`` takes ``choices``. ``layers`` sampled as an int means one layer of that size.
The spaces of the official GRU4Rec release ship as ``cross-entropy`` and ``bpr-max``
(:func:`load_space` accepts these names or a path).

Each trial builds ``SessionGRU(**fixed, **sampled, random_state=seed, n_threads=...)``, fits it
on the training events and evaluates it on the validation events (``metric``, e.g.
``mrr@20``, conservative ties by default). With a pruner, the model is evaluated after every
epoch (through the ``fit`` callback) and a trial whose intermediate value is below the median
of the earlier trials at the same epoch is stopped (``optuna.TrialPruned``). A trial whose
training diverges (``ModelFitError``) is recorded as failed and the search goes on.

Optuna is an optional dependency (``pip install "gru_engine[tune]"``); it is imported only
when a search starts.
"""
from __future__ import annotations

import json
import dataclasses
import logging
import math
import os
import re
from dataclasses import asdict, dataclass, field
from importlib import resources

import numpy as np

from . import params as hp
from .exceptions import MissingExtraError, ModelFitError

logger = logging.getLogger("gru_engine")

BUILTIN_SPACES = ("cross-entropy", "bpr-max")
SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "none")
_METRIC_RE = re.compile(r"^(recall|mrr)@([1-9][0-9]*)$")
_TUNABLE = set(hp.DEFAULTS) - {"random_state", "n_threads", "device", "show_progress"}


def require_optuna():
    """Import optuna, or raise :class:`~gru_engine.exceptions.MissingExtraError` (an
    ``ImportError``) naming the extra to install."""
    try:
        import optuna
    except ImportError:
        raise MissingExtraError('hyperparameter search needs Optuna: pip install "gru_engine[tune]" '
                          '(or pip install optuna)') from None
    return optuna


# ---------------------------------------------------------------------------------------------
# search spaces
# ---------------------------------------------------------------------------------------------
@dataclass
class Space:
    """A parameter space: ``fixed`` values for every trial and the ``search`` distributions
    (``{name: {"type": "int"|"float"|"categorical", ...}}``, see the module docstring)."""

    fixed: dict
    search: dict
    description: str = ""

    def suggest(self, trial) -> dict:
        """Draw one configuration from an Optuna ``trial`` (names in ``search`` order)."""
        out = {}
        for name, spec in self.search.items():
            kind = spec["type"]
            if kind == "categorical":
                out[name] = trial.suggest_categorical(name, list(spec["choices"]))
            elif kind == "int":
                out[name] = trial.suggest_int(name, int(spec["low"]), int(spec["high"]),
                                              step=int(spec.get("step", 1)),
                                              log=bool(spec.get("log", False)))
            else:
                step = spec.get("step")
                out[name] = trial.suggest_float(name, float(spec["low"]), float(spec["high"]),
                                                step=None if step is None else float(step),
                                                log=bool(spec.get("log", False)))
        return out

    def model_params(self, sampled: dict, overrides: dict | None = None) -> dict:
        """SessionGRU keyword arguments: ``fixed``, then ``sampled``, then ``overrides``."""
        params = dict(self.fixed)
        params.update(sampled)
        params.update(overrides or {})
        return _as_model_params(params)


def _as_model_params(params: dict) -> dict:
    out = dict(params)
    if "layers" in out and not isinstance(out["layers"], (list, tuple)):
        out["layers"] = [int(out["layers"])]
    for key in ("elu_param", "bpreg", "logq", "learning_rate", "momentum", "sample_alpha",
                "dropout_p_embed", "dropout_p_hidden"):
        if key in out:
            out[key] = float(out[key])
    for key, value in out.items():
        if isinstance(value, float):  # stepped Optuna floats carry binary noise (0.35000000000000003)
            out[key] = round(value, 10)
    return out


def _check_spec(name: str, spec, where: str) -> None:
    if not isinstance(spec, dict) or spec.get("type") not in ("int", "float", "categorical"):
        raise ValueError(f"{where}: search parameter {name!r} needs a 'type' of 'int', 'float' "
                         f"or 'categorical', got {spec!r}")
    if spec["type"] == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ValueError(f"{where}: categorical parameter {name!r} needs a non-empty "
                             f"'choices' list")
        return
    for key in ("low", "high"):
        if not isinstance(spec.get(key), (int, float)) or isinstance(spec.get(key), bool):
            raise ValueError(f"{where}: parameter {name!r} needs a numeric {key!r}")
    if spec["low"] > spec["high"]:
        raise ValueError(f"{where}: parameter {name!r} has low {spec['low']} > high {spec['high']}")
    if spec.get("log") and spec.get("step") is not None:
        raise ValueError(f"{where}: parameter {name!r} cannot have both 'step' and 'log'")
    unknown = set(spec) - {"type", "low", "high", "step", "log"}
    if unknown:
        raise ValueError(f"{where}: parameter {name!r} has unknown keys {sorted(unknown)}")


def parse_space(obj: dict, where: str = "space") -> Space:
    """A :class:`Space` from a decoded JSON object; ``ValueError`` naming the bad entry."""
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: a space is a JSON object with 'fixed' and 'search'")
    unknown = set(obj) - {"fixed", "search", "description"}
    if unknown:
        raise ValueError(f"{where}: unknown top-level keys {sorted(unknown)}")
    fixed, search = obj.get("fixed", {}), obj.get("search", {})
    if not isinstance(fixed, dict) or not isinstance(search, dict) or not search:
        raise ValueError(f"{where}: 'fixed' must be an object and 'search' a non-empty object")
    for name in list(fixed) + list(search):
        if name not in _TUNABLE:
            raise ValueError(f"{where}: {name!r} is not a SessionGRU hyperparameter that can be "
                             f"tuned; valid: {sorted(_TUNABLE)}")
    both = set(fixed) & set(search)
    if both:
        raise ValueError(f"{where}: {sorted(both)} are both fixed and searched")
    for name, spec in search.items():
        _check_spec(name, spec, where)
    return Space(fixed=dict(fixed), search=dict(search), description=str(obj.get("description", "")))


def load_space(name_or_path) -> Space:
    """A built-in space (``'cross-entropy'``, ``'bpr-max'``) or a space JSON file."""
    if str(name_or_path) in BUILTIN_SPACES:
        text = resources.files("gru_engine").joinpath("spaces", f"{name_or_path}.json").read_text()
        return parse_space(json.loads(text), f"built-in space {name_or_path!r}")
    path = os.fspath(name_or_path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such space file: {path} (built-in spaces: "
                                f"{', '.join(BUILTIN_SPACES)})")
    with open(path) as f:
        try:
            obj = json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from None
    return parse_space(obj, path)


def param_string(params: dict) -> str:
    """The ``-p`` string of ``params`` (``layers`` joined by ``/``), parseable by
    :func:`gru_engine.params.parse_param_string`."""
    parts = []
    for key, value in params.items():
        if key == "layers":
            value = "/".join(str(int(v)) for v in (value if isinstance(value, (list, tuple)) else [value]))
        elif isinstance(value, float):
            value = repr(value)
        parts.append(f"{key}={value}")
    return ",".join(parts)


def parse_metric(metric: str) -> tuple[str, int]:
    """``'mrr@20'`` -> ``('mrr@20', 20)``; ``ValueError`` for anything but recall@k / mrr@k."""
    m = _METRIC_RE.match(str(metric).strip().lower())
    if not m:
        raise ValueError(f"metric must be recall@K or mrr@K (e.g. mrr@20), got {metric!r}")
    return f"{m.group(1)}@{m.group(2)}", int(m.group(2))


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------
def split_validation(events: dict, fraction: float, session_key: str = "SessionId",
                     time_key: str = "Time") -> tuple[dict, dict]:
    """Split an event table (dict of arrays) by time: the sessions that end last, a
    ``fraction`` of all sessions, become the validation events, the rest the training events
    (as the GRU4Rec preprocessing cuts its validation day off the training set). Returns
    ``(train, valid)`` dicts of arrays with every column."""
    if not (isinstance(fraction, float) and 0.0 < fraction < 1.0):
        raise ValueError(f"valid_split must be a fraction in (0, 1), got {fraction!r}")
    for key in (session_key, time_key):
        if key not in events:
            raise ValueError(f"column {key!r} not found; columns: {sorted(events)}")
    sessions = np.asarray(events[session_key])
    times = np.asarray(events[time_key], dtype=np.float64)
    uniq, inverse = np.unique(sessions, return_inverse=True)
    end = np.full(len(uniq), -np.inf)
    np.maximum.at(end, inverse, times)
    n_valid = int(round(fraction * len(uniq)))
    if n_valid < 1 or n_valid >= len(uniq):
        raise ValueError(f"valid_split={fraction} leaves no training or no validation sessions "
                         f"({len(uniq)} sessions)")
    order = np.lexsort((np.arange(len(uniq)), end))  # by end time, ties by session id order
    is_valid = np.zeros(len(uniq), dtype=bool)
    is_valid[order[len(uniq) - n_valid:]] = True
    mask = is_valid[inverse]
    return ({k: np.asarray(v)[~mask] for k, v in events.items()},
            {k: np.asarray(v)[mask] for k, v in events.items()})


# ---------------------------------------------------------------------------------------------
# trials
# ---------------------------------------------------------------------------------------------
@dataclass
class TrialSettings:
    """What every trial shares (picklable: Ray sends it to the workers).

    metric: ``recall@K`` or ``mrr@K`` on the validation events (maximised).
    mode / eval_batch_size: evaluation tie mode and parallel sessions (see ``evaluate``).
    seed: ``random_state`` of every trial's model (same initialisation for every trial).
    n_threads: CPU threads per trial (``SessionGRU.n_threads``).
    per_epoch: evaluate after every epoch (for pruning) instead of once after training.
    overrides: parameters forced over the space's fixed and sampled values.
    keys: the event table's column names.
    """

    metric: str = "mrr@20"
    mode: str = "conservative"
    eval_batch_size: int = 512
    seed: int = 0
    n_threads: int | None = 1
    per_epoch: bool = True
    overrides: dict = field(default_factory=dict)
    keys: dict = field(default_factory=lambda: {"session_key": "SessionId",
                                                "item_key": "ItemId", "time_key": "Time"})


def run_trial(model_params: dict, train, valid, settings: TrialSettings, report=None) -> float:
    """Fit one SessionGRU and return its validation ``settings.metric``.

    ``report(epoch, value)`` is called after each epoch when ``settings.per_epoch`` (it may
    raise to stop the trial, e.g. ``optuna.TrialPruned``); the value of the last epoch is the
    trial's value. Raises ``ModelFitError`` when training diverges.
    """
    from .model import SessionGRU
    metric, k = parse_metric(settings.metric)
    model = SessionGRU(**dict(model_params, random_state=settings.seed,
                              n_threads=settings.n_threads))
    last = {}

    def evaluate():
        result = model.evaluate(valid, cutoffs=(k,), mode=settings.mode,
                                batch_size=settings.eval_batch_size, by_position=False,
                                **settings.keys)
        return float(result[metric])

    def on_epoch(epoch, elapsed, loss):
        value = evaluate()
        last["epoch"], last["value"] = epoch, value
        logger.debug("epoch %d: loss %.5f, %s %.5f", epoch, loss, metric, value)
        if report is not None:
            report(epoch, value)

    model.fit(train, callback=on_epoch if settings.per_epoch else None, **settings.keys)
    if last.get("epoch") == len(model.loss_history_):
        return last["value"]
    value = evaluate()
    if report is not None:
        report(len(model.loss_history_), value)
    return value


# ---------------------------------------------------------------------------------------------
# the search
# ---------------------------------------------------------------------------------------------
@dataclass
class TrialRecord:
    """One trial of a finished search: its sampled parameters (as the model got them),
    value, ``state`` (``complete``, ``pruned`` or ``failed``), seconds and epochs trained."""

    number: int
    params: dict
    value: float | None
    state: str
    seconds: float | None = None
    epochs: int | None = None


@dataclass
class SearchResult:
    """The outcome of :func:`search`: the best trial (highest value among the completed ones,
    the lowest trial number on ties), its full SessionGRU parameters and every trial."""

    metric: str
    best_number: int
    best_value: float
    best_params: dict
    trials: list

    @property
    def best_param_string(self) -> str:
        """``best_params`` as a ``-p`` string."""
        return param_string(self.best_params)

    def to_json(self) -> dict:
        return {"metric": self.metric, "best_trial": self.best_number,
                "best_value": self.best_value, "best_params": self.best_params,
                "param_string": self.best_param_string,
                "trials": [asdict(t) for t in self.trials]}


def best_of(trials, metric: str, space: Space, overrides: dict) -> SearchResult:
    """The :class:`SearchResult` of a list of :class:`TrialRecord`."""
    done = [t for t in trials if t.state == "complete" and t.value is not None
            and math.isfinite(t.value)]
    if not done:
        raise ModelFitError("no trial completed (every trial failed or was pruned)")
    best = max(done, key=lambda t: (t.value, -t.number))
    return SearchResult(metric=metric, best_number=best.number, best_value=best.value,
                        best_params=space.model_params(best.params, overrides),
                        trials=sorted(trials, key=lambda t: t.number))


def make_sampler(name: str, seed):
    """An Optuna sampler: ``'tpe'`` (Optuna's default, as the official paropt) or
    ``'random'`` (the papers' random search), seeded."""
    optuna = require_optuna()
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"sampler must be one of {SAMPLERS}, got {name!r}")


def _check_search_args(n_trials, sampler, pruner):
    if isinstance(n_trials, bool) or not isinstance(n_trials, (int, np.integer)) or n_trials < 1:
        raise ValueError(f"n_trials must be a positive integer, got {n_trials!r}")
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    if isinstance(pruner, str) and pruner not in PRUNERS:
        raise ValueError(f"pruner must be one of {PRUNERS} or an optuna pruner, got {pruner!r}")


def _make_pruner(optuna, pruner):
    if not isinstance(pruner, str):
        return pruner
    if pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0)
    return optuna.pruners.NopPruner()


def _progress(total: int, show: bool):
    if not show:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        logger.info("show_progress=True but tqdm is not installed; logging trials only")
        return None
    return tqdm(total=total, desc="trials", unit="trial")


def search(train, valid, space: Space, n_trials: int = 20, settings: TrialSettings | None = None,
           sampler: str = "tpe", pruner: str = "median", storage: str | None = None,
           study_name: str = "gru_engine", show_progress: bool = False) -> SearchResult:
    """Optuna search on this machine, trials one after the other.

    train, valid: event tables (dict of arrays / DataFrame) for ``fit`` and ``evaluate``.
    space: a :class:`Space` (:func:`load_space`).
    n_trials: the study's total number of finished trials; resuming a stored study runs only
        the ones missing (a trial left running by a killed process is re-run with its params).
    settings: :class:`TrialSettings` (metric, seed, threads, ...); ``per_epoch`` is set from
        ``pruner``.
    sampler: ``'tpe'`` or ``'random'``, seeded with ``settings.seed`` (plus the number of trials
        already in a resumed study, so that it does not draw the first run's parameters again).
    pruner: ``'median'`` (Optuna's MedianPruner on the per-epoch validation value, after 5
        trials), ``'none'``, or an ``optuna.pruners.BasePruner`` instance.
    storage: Optuna storage URL, e.g. ``'sqlite:///study.db'``; the study named
        ``study_name`` is created or resumed there. ``None``: in memory.
    show_progress: a tqdm bar over the trials (when tqdm is installed).
    """
    optuna = require_optuna()
    _check_search_args(n_trials, sampler, pruner)
    settings = dataclasses.replace(settings or TrialSettings(), per_epoch=pruner != "none")
    metric, _ = parse_metric(settings.metric)
    study = optuna.create_study(
        study_name=study_name, storage=storage, load_if_exists=True, direction="maximize",
        sampler=make_sampler(sampler, settings.seed),
        pruner=_make_pruner(optuna, pruner))
    n_before = len(study.get_trials(deepcopy=False))
    if n_before and settings.seed is not None:
        # a resumed study: a sampler seeded as the first run would draw its parameters again
        study.sampler = make_sampler(sampler, settings.seed + n_before)
    states = optuna.trial.TrialState
    for t in study.get_trials(deepcopy=False, states=(states.RUNNING, states.WAITING)):
        if t.state == states.RUNNING:  # left by a killed run: fail it, re-run its parameters
            logger.warning("trial %d was left running by an earlier run; re-running its "
                           "parameters", t.number)
            study._storage.set_trial_user_attr(t._trial_id, "interrupted", True)
            study.tell(t.number, state=states.FAIL)
            study.enqueue_trial(t.params)
    # interrupted trials do not count: their parameters run again
    finished = sum(not t.user_attrs.get("interrupted") for t in study.get_trials(
        deepcopy=False, states=(states.COMPLETE, states.PRUNED, states.FAIL)))
    remaining = max(n_trials - finished, 0)
    if finished:
        logger.info("study %r: %d trials already finished, running %d more", study_name,
                    finished, remaining)
    bar = _progress(remaining, show_progress)

    def objective(trial):
        sampled = space.suggest(trial)
        params = space.model_params(sampled, settings.overrides)
        trial.set_user_attr("param_string", param_string(params))

        def report(epoch, value):
            trial.report(value, epoch)
            trial.set_user_attr("epochs", epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"{metric} {value:.4f} after epoch {epoch}")

        return run_trial(params, train, valid, settings, report)

    def after_trial(study, trial):
        value = "-" if trial.value is None else f"{trial.value:.4f}"
        try:
            best = f"{study.best_value:.4f} (trial {study.best_trial.number})"
        except ValueError:
            best = "-"
        logger.info("trial %d %s: %s %s; best %s", trial.number, trial.state.name.lower(),
                    metric, value, best)
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(f"best {best}")

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        if remaining:
            study.optimize(objective, n_trials=remaining, catch=(ModelFitError,),
                           callbacks=[after_trial])
    finally:
        if bar is not None:
            bar.close()
    return best_of(_records(study), metric, space, settings.overrides)


def _records(study) -> list:
    names = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed"}
    out = []
    for t in study.get_trials(deepcopy=False):
        if t.state.name not in names:
            continue
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() \
            if t.datetime_complete and t.datetime_start else None
        epochs = t.user_attrs.get("epochs") or (max(t.intermediate_values) if t.intermediate_values else None)
        out.append(TrialRecord(number=t.number, params=_as_model_params(t.params), value=t.value,
                               state=names[t.state.name], seconds=seconds, epochs=epochs))
    return out


def write_best(result: SearchResult, path: str) -> None:
    """Write ``result`` as JSON (best parameters, their ``-p`` string, every trial) to
    ``path`` atomically, and the ``-p`` string alone to ``path`` with ``.params`` in place of
    its extension."""
    path = os.fspath(path)
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result.to_json(), f, indent=1)
        f.write("\n")
    os.replace(tmp, path)
    with open(os.path.splitext(path)[0] + ".params", "w") as f:
        f.write(result.best_param_string + "\n")
