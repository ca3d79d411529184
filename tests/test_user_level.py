"""The user-level GRU (gru_engine.user_level, backends/cpu/user_trainer.py): gradients of one
whole training step against central finite differences (float64), the user-parallel schedule,
the fallback to the plain model, files, scoring and errors."""
import numpy as np
import pytest

from gru_engine import params as hp
from gru_engine.backends.cpu.user_trainer import UserTrainer
from gru_engine.evaluation import evaluate_session_aware
from gru_engine.model import SessionGRU
from gru_engine.network import L_H, L_HOFF, PARAM_KEYS, build_layout
from gru_engine.session_aware import build_user_sessions
from gru_engine.synthetic import session_aware_events, session_aware_split
from gru_engine.user_batching import UserSchedule
from gru_engine.user_level import U_HU, U_ITEMS, U_SIN, user_layout

N_ITEMS, BATCH, N_SAMPLE, HU = 9, 4, 3, 3


def _hyper(n_sample=N_SAMPLE):
    return hp.hyper(hp.validate(dict(hp.DEFAULTS, n_sample=n_sample, batch_size=BATCH,
                                     logq=0.0, sample_store_size=100)))


def _problem(mode, user_input, layers, input_mode, seed):
    rng = np.random.default_rng(seed)
    lay = build_layout(N_ITEMS, "id", "concat", input_mode, list(layers), 3, list(layers), [],
                       rng, np.float64)
    flat = {k: lay[k] for k in PARAM_KEYS}
    flat.update(user_layout(HU, mode, user_input, lay["Hc"], lay["LI"], N_ITEMS, rng,
                            np.float64))
    for key in ("theta", "U", "By"):  # non-zero biases, so that their gradients are exercised
        flat[key] += rng.normal(0, 0.1, flat[key].shape)
    flat["Wy"] *= 3.0
    # session bags for 'items' (sessions 0..2 of an epoch CSR), combined states for 'hidden'
    items = rng.integers(0, N_ITEMS, 10).astype(np.int32)
    offsets = np.array([0, 3, 7, 10], np.int64)
    UI = flat["UI"]
    S = (np.array([0, 2, 1, 2], np.int64) if UI[U_ITEMS]
         else rng.normal(0, 0.5, (BATCH, int(UI[U_SIN]))))
    state = {"S": S, "Ub": rng.normal(0, 0.5, (BATCH, int(UI[U_HU]))),
             "has": np.array([True, True, False, True]),
             "reset": np.array([True, False, True, False])}
    hprev = [rng.normal(0, 0.5, (BATCH, h)) for h in layers]
    hprev[0][2] = 0.0
    in_items = rng.integers(0, N_ITEMS, BATCH).astype(np.int32)
    cols = np.concatenate([rng.integers(0, N_ITEMS, BATCH),
                           rng.integers(0, N_ITEMS, N_SAMPLE)]).astype(np.int32)
    return flat, (items, offsets), state, hprev, in_items, cols


def _trainer(flat, epoch, layers):
    tr = UserTrainer(flat, _hyper(), np.ones(N_ITEMS, np.int64), walks=[], start_times=None,
                     shuffle=False, rng=None)
    from gru_engine.user_level import SessionBags
    tr.bags = SessionBags(*epoch)
    return tr


def _set_hidden(tr, flat, hprev):
    LI = flat["LI"]
    for g, h in enumerate(hprev):
        H, off = int(LI[g, L_H]), int(LI[g, L_HOFF])
        tr.work.HP[BATCH * off:BATCH * (off + H)].reshape(BATCH, H)[:] = h


@pytest.mark.parametrize("mode,user_input,layers,input_mode", [
    ("all", "items", (4,), "constrained"),
    ("init", "items", (4,), "onehot"),
    ("both", "hidden", (4, 3), "embedding"),
    ("init", "hidden", (3, 2), "constrained"),
    ("all", "hidden", (4,), "onehot"),
])
def test_step_gradients_match_finite_differences(mode, user_input, layers, input_mode):
    flat, epoch, state, hprev, in_items, cols = _problem(mode, user_input, layers, input_mode, 0)
    tr = _trainer(flat, epoch, layers)
    C = len(cols)

    def loss():
        _set_hidden(tr, flat, hprev)
        return tr.forward_backward(in_items, BATCH, cols, C, **state)

    _, grads = loss()
    grads = {k: v.copy() for k, v in grads.items()}
    assert np.abs(grads["U"]).max() > 0
    worst = {}
    for key in ("theta", "T", "Wy", "By", "U"):
        arr = flat[key]
        fd = np.zeros_like(arr).reshape(-1)
        view = arr.reshape(-1)
        for j in range(view.size):
            old = view[j]
            view[j] = old + 1e-6
            lp = loss()[0]
            view[j] = old - 1e-6
            lm = loss()[0]
            view[j] = old
            fd[j] = (lp - lm) / 2e-6
        g = grads[key].reshape(-1)
        scale = max(np.linalg.norm(fd), 1e-8)
        worst[key] = np.linalg.norm(g - fd) / scale
    assert max(worst.values()) < 1e-6, worst
