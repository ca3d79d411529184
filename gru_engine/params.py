"""SessionGRU hyperparameters: defaults, validation and the official ``key=value`` strings.

Names follow the official GRU4Rec release so that its published parameter files carry over,
e.g. ``parse_param_string("loss=bpr-max,layers=224/224,batch_size=80")``.
"""
from __future__ import annotations

import math
import re
from typing import NamedTuple

DEFAULTS = {
    "layers": [100],
    "loss": "cross-entropy",
    "final_act": "linear",
    "batch_size": 32,
    "n_epochs": 10,
    "n_sample": 2048,
    "sample_alpha": 0.5,
    "sample_store_size": 10_000_000,
    "logq": 1.0,
    "bpreg": 0.0,
    "elu_param": 0.0,
    "embedding": 0,
    "constrained_embedding": True,
    "dropout_p_embed": 0.0,
    "dropout_p_hidden": 0.0,
    "learning_rate": 0.1,
    "momentum": 0.0,
    "random_state": None,
    "n_threads": None,
    "device": "cpu",
    "shuffle_sessions": False,
    "show_progress": False,
    "augment_crop_p": 0.0,
    "augment_drop_p": 0.0,
    "context_input": "none",
    "context_output": "none",
    "context_time": None,
    "context_columns": None,
    "context_transition": "none",
    "user_layers": 0,
    "user_mode": "all",
    "user_input": "items",
    "user_dropout": 0.0,
}

# Context-aware GRU (Smirnova & Vasile, DLRS 2017; :mod:`gru_engine.context`): per-event
# context features (``context_time``: time since the previous click in log2 buckets, hour of
# day and day of week, UTC, from the time column in Unix seconds, None = all three;
# ``context_columns``: named per-event categorical columns, None = none), each with its own
# rows in a context table.
#   context_input: 'none' | 'concat' (the current event's context, one-hot, concatenated to
#       the input of layer 0: its rows are added to the layer-0 gate pre-activations) |
#       'multiply' (the input vector times ``1 + W c``);
#   context_output: 'none' | 'multiply' (the combined state before the output layer times
#       ``1 + W c'``, c' the next event's time context: the target's time in training, the
#       request's time at serving); categorical columns enter the input side only;
#   context_transition: 'none' | 'multiply' (the recurrent matrix of layer 0 as a function of
#       the current event's context, ``W_h(c) = diag(1 + W c) W_h``: the previous state times
#       ``1 + W c`` where ``W_h`` reads it).

#: The user-level GRU across sessions (HRNN, Quadrana et al. RecSys 2017;
#: :mod:`gru_engine.user_level`, docs/user_level_gru.md); ``fit`` then needs a user column:
#:   user_layers: units of the user GRU (0, the default: none, the plain session GRU bit for
#:       bit);
#:   user_mode: how the user state reaches a session: ``'init'`` (HRNN-init, the initial hidden
#:       state of every layer), ``'all'`` (HRNN-all's user input: an extra input of layer 0 at
#:       every step) or ``'both'``;
#:   user_input: what the user GRU reads of each finished session: ``'items'`` (the mean of
#:       its clicks' rows in a user input table) or ``'hidden'`` (HRNN: the combined session
#:       state after its last input);
#:   user_dropout: inverted-dropout probability on the user state where it feeds a session,
#:       in training (HRNN uses dropout on the user representation), in [0, 1).
USER_KEYS = ("user_layers", "user_mode", "user_input", "user_dropout")
USER_MODES = ("init", "all", "both")
USER_INPUTS = ("items", "hidden")

#: Session augmentation (Tan, Xu & Liu, DLRS 2016), redrawn every epoch from the epoch-order
#: generator (reproducible under ``random_state``). Tan et al. train on every prefix of every
#: session and randomly drop clicks. Under session-parallel one-step training a prefix's
#: (history, next click) pairs are already pairs of the full session, so materialising prefixes
#: would only re-weight early positions; what changes what the network sees is a different
#: history. Hence two per-epoch options, O(n_events) work, applied where the epoch's sessions
#: are handed to the batcher (both devices train on the same augmented sessions):
#:   augment_crop_p: a session of >= 3 clicks is replaced, with this probability, by one of its
#:       contiguous sub-sessions of >= 2 clicks drawn uniformly (prefixes included; the hidden
#:       state is reset at the crop's first click, so a crop starting mid-session is a new,
#:       shorter history);
#:   augment_drop_p: each click is removed with this probability (the neighbours become
#:       consecutive), unless fewer than 2 clicks of the session would remain, in which case it
#:       is kept whole. A removed click is neither an input nor a target in that epoch.
#: Cropping happens first, then dropping within the crop. 0 (default) leaves training as without
#: the option, bit for bit. With context (:mod:`gru_engine.context`) each kept click keeps its
#: own context rows, as recorded (its time-gap bucket is still the gap to its original
#: predecessor; the target's output context is the kept next click's).
AUGMENT_KEYS = ("augment_crop_p", "augment_drop_p")

LOSSES = ("cross-entropy", "bpr-max", "top1-max", "bpr", "top1")
#: loss name -> integer code used by the compiled kernels
LOSS_CODES = {name: i for i, name in enumerate(LOSSES)}
#: final activation kind -> integer code used by the compiled kernels
ACT_CODES = {"linear": 0, "relu": 1, "tanh": 2, "leaky": 3, "elu": 4}
DEVICES = ("cpu", "cuda", "auto")

_ACT_RE = re.compile(r"^(linear|relu|tanh|leaky-[^-].*|elu-[^-].*)$")
_INT_KEYS = ("batch_size", "n_epochs", "n_sample", "sample_store_size", "embedding",
             "user_layers")
_FLOAT_KEYS = ("sample_alpha", "logq", "bpreg", "elu_param", "dropout_p_embed",
               "dropout_p_hidden", "learning_rate", "momentum", "user_dropout") + AUGMENT_KEYS
_BOOL_KEYS = ("constrained_embedding", "shuffle_sessions", "show_progress")
_LIST_KEYS = ("context_time", "context_columns")


def parse_final_act(final_act: str) -> tuple[int, float]:
    """``'linear'|'relu'|'tanh'|'leaky-<x>'|'elu-<x>'`` -> (activation code, parameter).

    ``leaky-0.01`` is a leaky ReLU with negative slope 0.01; ``elu-1`` an ELU with alpha 1.
    Raises ``ValueError`` on anything else.
    """
    if not isinstance(final_act, str) or not _ACT_RE.match(final_act):
        raise ValueError(f"final_act must be 'linear', 'relu', 'tanh', 'leaky-<x>' or 'elu-<x>', "
                         f"got {final_act!r}")
    kind, _, arg = final_act.partition("-")
    if not arg:
        return ACT_CODES[kind], 0.0
    try:
        value = float(arg)
    except ValueError:
        raise ValueError(f"final_act {final_act!r}: {arg!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"final_act {final_act!r}: the parameter must be finite and >= 0")
    return ACT_CODES[kind], value


class Hyper(NamedTuple):
    """The training hyperparameters in the form every trainer (CPU and CUDA) and the compiled
    kernels read them: built once per fit by :func:`hyper` from validated parameters. Names are
    the official ones; ``loss`` and ``final_act`` are integer codes (:data:`LOSS_CODES`,
    :data:`ACT_CODES`), ``final_act_param`` the activation's parameter."""
    loss: int
    final_act: int
    final_act_param: float
    logq: float
    bpreg: float
    elu_param: float
    learning_rate: float
    momentum: float
    dropout_p_embed: float
    dropout_p_hidden: float
    batch_size: int
    n_sample: int
    sample_alpha: float
    sample_store_size: int


def hyper(p: dict) -> Hyper:
    """The :class:`Hyper` record of a validated parameter dict (:func:`validate`)."""
    act, act_param = parse_final_act(p["final_act"])
    return Hyper(loss=LOSS_CODES[p["loss"]], final_act=act, final_act_param=float(act_param),
                 logq=float(p["logq"]), bpreg=float(p["bpreg"]),
                 elu_param=float(p["elu_param"]), learning_rate=float(p["learning_rate"]),
                 momentum=float(p["momentum"]), dropout_p_embed=float(p["dropout_p_embed"]),
                 dropout_p_hidden=float(p["dropout_p_hidden"]),
                 batch_size=int(p["batch_size"]), n_sample=int(p["n_sample"]),
                 sample_alpha=float(p["sample_alpha"]),
                 sample_store_size=int(p["sample_store_size"]))


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) or type(v).__name__.startswith("int")


def validate(params: dict) -> dict:
    """Check a full hyperparameter dict; return a normalised copy (``layers`` a list of ints).

    Raises ``ValueError`` naming the parameter and the bad value.
    """
    p = dict(params)
    layers = p["layers"]
    if _is_int(layers):
        layers = [layers]
    try:
        layers = list(layers)
    except TypeError:
        raise ValueError(f"layers must be a list of positive ints, got {p['layers']!r}") from None
    if not layers or not all(_is_int(h) and int(h) > 0 for h in layers):
        raise ValueError(f"layers must be a non-empty list of positive ints, got {p['layers']!r}")
    p["layers"] = [int(h) for h in layers]
    if p["loss"] not in LOSSES:
        raise ValueError(f"unknown loss {p['loss']!r}; choose one of {list(LOSSES)}")
    parse_final_act(p["final_act"])
    for key, low in (("batch_size", 1), ("n_epochs", 0), ("n_sample", 0),
                     ("sample_store_size", 0), ("embedding", 0)):
        v = p[key]
        if not _is_int(v) or int(v) < low:
            raise ValueError(f"{key} must be an integer >= {low}, got {v!r}")
        p[key] = int(v)
    for key in (k for k in _FLOAT_KEYS if k in p):  # user_dropout: where the estimator has it
        v = p[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) and not type(v).__name__.startswith("float"):
            raise ValueError(f"{key} must be a number, got {v!r}")
        if not math.isfinite(float(v)):
            raise ValueError(f"{key} must be finite, got {v!r}")
        p[key] = float(v)
    for key in ("sample_alpha", "logq", "bpreg", "elu_param", "momentum"):
        if p[key] < 0:
            raise ValueError(f"{key} must be >= 0, got {p[key]!r}")
    if p["momentum"] >= 1:
        raise ValueError(f"momentum must be in [0, 1), got {p['momentum']!r}")
    if p["learning_rate"] <= 0:
        raise ValueError(f"learning_rate must be > 0, got {p['learning_rate']!r}")
    for key in ("dropout_p_embed", "dropout_p_hidden"):
        if not 0.0 <= p[key] < 1.0:
            raise ValueError(f"{key} must be in [0, 1), got {p[key]!r}")
    if not 0.0 <= p["augment_crop_p"] <= 1.0:
        raise ValueError(f"augment_crop_p must be in [0, 1], got {p['augment_crop_p']!r}")
    if not 0.0 <= p["augment_drop_p"] < 1.0:
        raise ValueError(f"augment_drop_p must be in [0, 1), got {p['augment_drop_p']!r}")
    if p["n_sample"] > 0 and p["sample_store_size"] < p["n_sample"] and p["sample_store_size"] != 0:
        raise ValueError(f"sample_store_size ({p['sample_store_size']}) must be 0 or at least "
                         f"n_sample ({p['n_sample']})")
    for key in _BOOL_KEYS:
        if not isinstance(p[key], (bool, type(None))) and type(p[key]).__name__ != "bool_":
            raise ValueError(f"{key} must be True or False, got {p[key]!r}")
        p[key] = bool(p[key])
    from .context import validate_context
    p.update(validate_context(p))
    rs = p["random_state"]
    if rs is not None and not (_is_int(rs) and int(rs) >= 0):
        raise ValueError(f"random_state must be None or a non-negative int, got {rs!r}")
    nt = p["n_threads"]
    if nt is not None and not (_is_int(nt) and int(nt) >= 1):
        raise ValueError(f"n_threads must be None or a positive int, got {nt!r}")
    if p["device"] not in DEVICES:
        raise ValueError(f"device must be one of {list(DEVICES)}, got {p['device']!r}")
    _validate_user(p)
    return p


def _validate_user(p: dict) -> None:
    """The user-level options (:data:`USER_KEYS`), where the estimator has them."""
    if "user_layers" not in p:
        return
    v = p["user_layers"]
    if not _is_int(v) or int(v) < 0:
        raise ValueError(f"user_layers must be an integer >= 0, got {v!r}")
    p["user_layers"] = int(v)
    if p["user_mode"] not in USER_MODES:
        raise ValueError(f"user_mode must be one of {list(USER_MODES)}, got {p['user_mode']!r}")
    if not 0.0 <= p["user_dropout"] < 1.0:
        raise ValueError(f"user_dropout must be in [0, 1), got {p['user_dropout']!r}")
    if p["user_input"] not in USER_INPUTS:
        raise ValueError(f"user_input must be one of {list(USER_INPUTS)}, got "
                         f"{p['user_input']!r}")


def _parse_bool(key: str, text: str) -> bool:
    low = text.strip().lower()
    if low in ("true", "1", "yes"):
        return True
    if low in ("false", "0", "no"):
        return False
    raise ValueError(f"parameter {key!r}: {text!r} is not a boolean (True/False)")


def parse_param_string(text: str) -> dict:
    """Parse an official parameter string ``"loss=bpr-max,layers=224/224,batch_size=80"``.

    ``,`` separates parameters, ``=`` a name from its value and ``/`` the values of a list
    (``layers``). Values are converted to the parameter's type. Unknown names and malformed
    values raise ``ValueError``. Returns ``{name: value}`` for the names given.
    """
    out = {}
    if not text or not text.strip():
        return out
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "=" not in part:
            raise ValueError(f"parameter {part!r} has no '=': expected key=value")
        key, value = (s.strip() for s in part.split("=", 1))
        if key not in DEFAULTS:
            raise ValueError(f"unknown parameter {key!r}; valid: {sorted(DEFAULTS)}")
        try:
            if key == "layers":
                out[key] = [int(v) for v in value.split("/")]
            elif key in _LIST_KEYS:
                out[key] = [v.strip() for v in value.split("/") if v.strip()]
            elif key in _INT_KEYS:
                out[key] = int(float(value)) if float(value).is_integer() else int(value)
            elif key in _FLOAT_KEYS:
                out[key] = float(value)
            elif key in _BOOL_KEYS:
                out[key] = _parse_bool(key, value)
            elif key in ("random_state", "n_threads"):
                out[key] = None if value.lower() == "none" else int(value)
            else:
                out[key] = value
        except ValueError as exc:
            if "boolean" in str(exc):
                raise
            raise ValueError(f"parameter {key!r}: cannot parse {value!r}") from None
    return out
