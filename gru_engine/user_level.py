"""The user-level GRU across sessions (HRNN: Quadrana, Karatzoglou, Hidasi & Cremonesi, RecSys
2017): its parameters and forward (NumPy, any float dtype; the scorers' user states). The
training step's forward and hand-written backward are compiled: ``backends/cpu/user_step.py``
(CPU), ``backends/cuda/user_trainer.py`` (CUDA).

A user GRU (hidden ``Hu = user_layers``) is stepped once per finished session of the user,
``u_k = GRU_u(s_k, u_{k-1})``, ``u_0 = 0``; ``s_k`` is the session's representation
(``user_input``): ``'hidden'`` the combined session state ``hc`` after the session's last
input click (HRNN), ``'items'`` the mean over the session's clicks (inputs and the last
target) of rows of a user input table (one-hot items, a bag). The state after the user's
previous sessions reaches the next session (``user_mode``):

* ``'init'`` (HRNN-init): the session's initial hidden state, every layer of every subnet,
  ``h0 = tanh(u Wi + bi)`` (``Wi (Hu, W)``, ``W`` = the network's state width);
* ``'all'`` (HRNN-all): an extra input of layer 0 of the first subnet at every step of the
  session, ``gx0 += u Wu`` (``Wu (Hu, 3 H0)``);
* ``'both'``: the two.

A user's first session (no state yet) and sessions without a known user start as in the plain
session GRU (zero state, no extra input): they are the fallback, trained by the same steps.
Training is one-step (GRU4Rec): ``s`` and ``u_{k-1}`` are constants; each step's loss reaches
the user GRU's last update ``u_k`` (recomputed with the current parameters, so forward and
backward agree), through ``h0`` at a session's first step and through ``Wu`` at every step.

Layout: the user parameters are one flat array ``U`` (float) with the offsets table ``UI``
(N_UCOL,) int64 (columns ``U_*``), keys ``'U'``/``'UI'`` of a model's ``params_`` (absent for a
plain model). Gate convention as :mod:`gru_engine.backends.cpu.gru` (``[r|z|n]``, ``bhn``
inside ``r * (...)``).

Devices: the trainers ``backends/cpu/user_trainer.py`` and ``backends/cuda/user_trainer.py``
run the same steps in the same order (results equal to float32 rounding); the scorers
``backends/cpu_user_scoring.py`` and ``backends/cuda/user_scorer.py`` share the users'
states (``backends/user_scoring.py``).
"""
from __future__ import annotations

import numpy as np

from .network import L_H, init_block

#: keys of the user part in a model's params_ (options: :data:`gru_engine.params.USER_KEYS`)
USER_PARAM_KEYS = ("UI", "U")
# Columns of UI: U_HU hidden size; U_INIT, U_ALL (0/1) the paths used; U_ITEMS (0/1) the input
# kind; U_SIN the input width (Hc for 'hidden', 3 Hu table columns for 'items'); U_NROWS input
# table rows (n_items for 'items', else 0); U_WX Wxu (Hc, 3Hu) or the (n_items, 3Hu) table,
# U_BX bxu (3Hu), U_WH Whu (Hu, 3Hu), U_BHN bhnu (Hu); U_WI Wi (Hu, W), U_BI bi (W) (-1 when
# not 'init'); U_W the state width W; U_WU Wu (Hu, 3H0) (-1 when not 'all'); U_G0 3 H0;
# U_DENSE the first offset of the dense part (after the items table; 0 for 'hidden').
(U_HU, U_INIT, U_ALL, U_ITEMS, U_SIN, U_NROWS, U_WX, U_BX, U_WH, U_BHN, U_WI, U_BI, U_W, U_WU,
 U_G0, U_DENSE, N_UCOL) = range(17)


def user_layout(Hu: int, mode: str, user_input: str, Hc: int, LI, n_items: int, rng,
                dtype=np.float32) -> dict:
    """``{'UI', 'U'}`` of a user GRU of ``Hu`` units on a network with combined width ``Hc``
    and layer table ``LI``. Drawn after the network (so ``user_layers=0`` leaves every other
    draw as it was): the input weights (or table), ``Whu``, then ``Wi``, then ``Wu``, each per
    gate block uniform in ``[-s, s]``, ``s = sqrt(6 / (fan_in + fan_out))``; biases zero."""
    UI = np.full(N_UCOL, -1, np.int64)
    W = int(LI[:, L_H].sum())
    G0 = 3 * int(LI[0, L_H])
    items = user_input == "items"
    UI[U_HU], UI[U_INIT], UI[U_ALL] = Hu, mode in ("init", "both"), mode in ("all", "both")
    UI[U_ITEMS], UI[U_W], UI[U_G0] = items, W, G0
    UI[U_SIN] = 3 * Hu if items else Hc
    UI[U_NROWS] = n_items if items else 0
    parts, off = [], 0

    def put(col, block):
        nonlocal off
        UI[col] = off
        parts.append(block.ravel())
        off += block.size

    put(U_WX, init_block(rng, n_items, Hu, 3, dtype) if items else init_block(rng, Hc, Hu, 3, dtype))
    UI[U_DENSE] = off if items else 0
    put(U_BX, np.zeros(3 * Hu, dtype))
    put(U_WH, init_block(rng, Hu, Hu, 3, dtype))
    put(U_BHN, np.zeros(Hu, dtype))
    if UI[U_INIT]:
        put(U_WI, init_block(rng, Hu, W, 1, dtype))
        put(U_BI, np.zeros(W, dtype))
    if UI[U_ALL]:
        put(U_WU, init_block(rng, Hu, G0 // 3, 3, dtype))
    return {"UI": UI, "U": np.concatenate(parts).astype(dtype)}


def user_views(UI, U) -> dict:
    """Views of the user parameters: ``Wx`` (Hc, 3Hu) or the (n_items, 3Hu) table, ``bx``,
    ``Wh``, ``bhn``, ``Wi``/``bi`` (None unless 'init'), ``Wu`` (None unless 'all')."""
    Hu = int(UI[U_HU])
    rows = int(UI[U_NROWS]) if UI[U_ITEMS] else int(UI[U_SIN])

    def view(col, shape):
        if UI[col] < 0:
            return None
        n = int(np.prod(shape))
        return U[UI[col]:UI[col] + n].reshape(shape)

    return {"Wx": view(U_WX, (rows, 3 * Hu)), "bx": view(U_BX, (3 * Hu,)),
            "Wh": view(U_WH, (Hu, 3 * Hu)), "bhn": view(U_BHN, (Hu,)),
            "Wi": view(U_WI, (Hu, int(UI[U_W]))), "bi": view(U_BI, (int(UI[U_W]),)),
            "Wu": view(U_WU, (Hu, int(UI[U_G0])))}


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def gru_step(gx, h, Wh, bhn):
    """``(h', cache)`` of one GRU step: gx (R, 3H) = input pre-activations, h (R, H)."""
    H = h.shape[1]
    gh = h @ Wh
    r = _sigmoid(gx[:, :H] + gh[:, :H])
    z = _sigmoid(gx[:, H:2 * H] + gh[:, H:2 * H])
    a = gh[:, 2 * H:] + bhn
    n = np.tanh(gx[:, 2 * H:] + r * a)
    return (1 - z) * n + z * h, (r, z, n, a)


class SessionBags:
    """The session representation of ``user_input='items'``: session ``s`` is the bag of its
    clicks ``items[offsets[s]:offsets[s+1]]`` (int32, CSR), each with weight ``1 / length``."""

    def __init__(self, items, offsets):
        self.items, self.offsets = items, offsets

    def gather(self, sessions):
        """``(rows, cols, weights)`` of the bags of ``sessions`` (R,): bag entry ``j`` of row
        ``rows[j]`` is item ``cols[j]`` with weight ``weights[j]``."""
        a, b = self.offsets[sessions], self.offsets[sessions + 1]
        n = b - a
        rows = np.repeat(np.arange(len(sessions)), n)
        starts = np.repeat(a - np.r_[0, np.cumsum(n)[:-1]], n)
        cols = self.items[starts + np.arange(int(n.sum()))]
        return rows, cols, np.repeat(1.0 / np.maximum(n, 1), n)


def bag_matrix(bags, S, n_rows: int, dtype):
    """(R, n_rows) sparse matrix of the bags of sessions ``S`` (R,) (scipy CSR)."""
    from scipy.sparse import csr_matrix
    rows, cols, w = bags.gather(S)
    return csr_matrix((w.astype(dtype), (rows, cols)), shape=(len(S), n_rows))


def user_input_gates(UI, views, S, bags):
    """(R, 3Hu) input pre-activations ``s Wxu + bxu`` of the user GRU: ``S`` (R, Hc) states
    for 'hidden'; for 'items' ``S`` (R,) int64 session numbers of ``bags``."""
    if not UI[U_ITEMS]:
        return S @ views["Wx"] + views["bx"]
    Wx = views["Wx"]
    return np.asarray(bag_matrix(bags, S, Wx.shape[0], Wx.dtype) @ Wx) + views["bx"]


def check_options(p: dict) -> None:
    """``ValueError`` when validated parameters ``p`` combine the user-level GRU with the
    context-aware GRU (the user-level trainer has no context input)."""
    from .context import enabled as context_enabled
    if context_enabled(p) and p.get("user_layers", 0) > 0:
        raise ValueError("context_input/context_output and user_layers > 0 cannot be "
                         "combined yet (the user-level trainer has no context input); use "
                         "one of them")


def fit_events(p: dict, data, session_key: str, user_key: str):
    """Hook of the estimator (:mod:`gru_engine.model`): what a fit with validated ``p`` reads
    of the event table ``data``: its users (:func:`fit_users`), None when ``user_layers`` is
    0 (or the estimator has no user GRU)."""
    if p.get("user_layers", 0) > 0:
        return fit_users(data, session_key, user_key, p["user_layers"])
    return None


def warm_events(model, p: dict, data, session_key: str, user_key: str):
    """Hook: the users of the new event table of ``model.partial_fit``, None when ``model``
    has no user GRU (its ``params_``, not the hyperparameters, decide)."""
    if "UI" in model.params_:
        return fit_users(data, session_key, user_key, p["user_layers"])
    return None


def start_fit(model, p, layout, params, sessions, user_table, order_rng, rng) -> dict:
    """Hook: the user part of a new fit (:func:`user_training`). Returns the trainer's keyword
    arguments (``users``: those of the user trainer, :func:`trainer_class`)."""
    return {"users": user_training(p, layout, params, sessions, user_table, order_rng, rng)}


def start_warm(model, p, params, state, n_new, sessions, user_table, order_rng, rng) -> dict:
    """Hook: the user part of a warm start (:func:`warm_users`). Returns the trainer's keyword
    arguments (``users``)."""
    return {"users": warm_users(model, p, params, state, n_new, sessions, user_table,
                                order_rng, rng)}


#: fitted attributes besides ``params_`` that a warm start changes (none: users need no rows)
FITTED_ATTRS = ()


def trainer_class(device):
    """The user-level trainer of ``device`` (None: the CPU, else a CUDA
    :class:`~gru_engine.backends.device.Device`): a subclass of that backend's ``Trainer``
    taking its arguments plus the ``users`` keyword arguments of :func:`start_fit`."""
    if device is None:
        from .backends.cpu.user_trainer import UserTrainer
    else:
        from .backends.cuda.user_trainer import UserTrainer
    return UserTrainer


def scorer_class(model, device):
    """The user-level scorer class of a fitted ``model`` with a user GRU on ``device`` (None:
    the CPU, else a CUDA ``Device``): a subclass of that backend's ``Scorer`` taking its
    arguments; None for a model without a user GRU."""
    if "UI" not in model.params_:
        return None
    if device is None:
        from .backends.cpu_user_scoring import UserScorer
    else:
        from .backends.cuda.user_scorer import UserScorer
    return UserScorer


def fit_users(data, session_key: str, user_key: str, user_layers: int):
    """``(session ids (sorted), user of each, known)`` of a training table for a user-level
    model; ``ValueError`` naming ``user_key`` and the table's columns when it has no such
    column, or naming a session with events of two users."""
    from .data import _column_names, _ids
    from .session_aware import extract_users, users_of_sessions
    cols = _column_names(data)
    if isinstance(cols, list) and user_key not in cols:
        raise ValueError(f"user_layers={user_layers} needs a user column {user_key!r} "
                         f"(user_key); the table has {cols}")
    users, known = extract_users(data, user_key)
    return users_of_sessions(_ids(data, session_key), users, known, user_key)


def training_walks(sessions, user_table, rng, shuffle: bool, user_dropout: float = 0.0) -> dict:
    """Keyword arguments of the user trainer (``walks``, ``start_times``, ``shuffle``,
    ``rng``) for ``sessions`` (:class:`~gru_engine.data.Sessions` of the fit) and
    ``user_table`` (:func:`fit_users`)."""
    from .session_aware import UserSessions
    from .user_batching import user_walks
    uniq, session_user, session_known = user_table
    kept = np.searchsorted(uniq, sessions.session_ids)
    has = session_known[kept]
    user_ids = np.unique(session_user[kept][has])
    codes = np.full(sessions.n_sessions, -1, dtype=np.int64)
    codes[has] = np.searchsorted(user_ids, session_user[kept][has])
    walks = user_walks(UserSessions(sessions, codes, user_ids))
    return {"walks": walks, "start_times": sessions.times[sessions.offsets[:-1]],
            "shuffle": bool(shuffle), "rng": rng, "user_dropout": user_dropout}


def user_training(p: dict, layout: dict, params: dict, sessions, user_table, order_rng,
                  rng) -> dict:
    """The user part of a fit (``user_layers > 0``): adds ``UI``/``U`` (drawn from ``rng``
    after the network) to ``params`` and returns the user trainer's keyword arguments
    (:func:`training_walks`), the same for both devices."""
    params.update(user_layout(p["user_layers"], p["user_mode"], p["user_input"], layout["Hc"],
                              layout["LI"], params["Wy"].shape[0],
                              rng))
    return training_walks(sessions, user_table, order_rng, p["shuffle_sessions"],
                          p["user_dropout"])


def warm_users(model, p: dict, params: dict, state, n_new: int, sessions, user_table,
               order_rng, rng) -> dict:
    """Start a warm start (``partial_fit``) of a fitted user-level ``model`` on ``sessions``
    (``user_table``: :func:`fit_users` of the new events) with ``n_new`` items new to it:
    ``params`` gets a copy of ``U`` whose user input table (``user_input='items'``) has rows
    for the new items, drawn from ``rng`` as ``fit`` draws the table (``state``: their
    optimiser state zero, the old rows' kept). Users need no rows: the user GRU walks each
    user's sessions of the new events from an empty state (users new to the model and known
    ones alike). Returns the user trainer's keyword arguments (:func:`training_walks`)."""
    UI, U = model.params_["UI"].copy(), model.params_["U"]
    kept = getattr(model, "optimizer_state_", None) or {}
    grow = bool(UI[U_ITEMS]) and n_new > 0
    d0, Hu = int(UI[U_DENSE]), int(UI[U_HU])
    N = int(UI[U_NROWS]) + n_new
    s = np.sqrt(6.0 / (N + Hu))  # the scale fit draws a table of N rows with

    def grown(a, rows):
        return np.concatenate([a[:d0], rows.ravel(), a[d0:]]).astype(a.dtype) if grow \
            else a.copy()

    params["U"] = grown(U, rng.uniform(-s, s, size=(n_new, 3 * Hu)) if grow else None)
    if state is not None and "U" in kept.get("acc", {}):
        for kind in ("acc", "vel"):
            state[kind]["U"] = grown(kept[kind]["U"], np.zeros((n_new, 3 * Hu)))
    if grow:
        for col in (U_BX, U_WH, U_BHN, U_WI, U_BI, U_WU):
            if UI[col] >= 0:
                UI[col] += n_new * 3 * Hu
        UI[U_DENSE] += n_new * 3 * Hu
        UI[U_NROWS] = N
    params["UI"] = UI
    return training_walks(sessions, user_table, order_rng, p["shuffle_sessions"],
                          p["user_dropout"])
