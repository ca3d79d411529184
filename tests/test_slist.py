"""SLIST: the closed form against dense NumPy built row by row; scoring; parameter errors."""
import math

import numpy as np
import pytest

from gru_engine.exceptions import NotFittedError
from gru_engine.slist import SLIST

from test_neighbors import DAY, generated


def reference_weights(model, train):
    """B from dense matrices built one training row at a time, solved in float64."""
    from gru_engine.data import build_sessions
    sessions, _, _ = build_sessions(train)
    n = model.n_items_
    t_last = sessions.times[sessions.offsets[1:] - 1]
    X, Y, W = [], [], []
    for s in range(sessions.n_sessions):
        seq = sessions.items[sessions.offsets[s]:sessions.offsets[s + 1]]
        ws = math.exp(-(t_last.max() - t_last[s]) / (model.session_weight * DAY))
        x = np.zeros(n)
        x[np.unique(seq)] = 1.0
        X.append(x / x.sum())
        Y.append((x > 0).astype(float))
        W.append(model.alpha * ws)
        for t in range(len(seq) - 1):
            x = np.zeros(n)
            if model.direction == "sr":
                x[seq[t]] = 1.0
            else:
                for v in range(t + 1):
                    x[seq[v]] += math.exp(-(t - v) / model.train_weight)
                x /= x.sum()
            y = np.zeros(n)
            for u in range(t + 1, len(seq)):
                y[seq[u]] += math.exp(-(u - t - 1) / model.train_weight)
            X.append(x)
            Y.append(y)
            W.append((1 - model.alpha) * ws)
    X, Y, W = np.array(X), np.array(Y), np.array(W)
    G = X.T @ (W[:, None] * X) + model.reg * np.eye(n)
    return np.linalg.solve(G, X.T @ (W[:, None] * Y))


@pytest.mark.parametrize("params", [
    dict(), dict(alpha=0.3, reg=2.0, train_weight=0.5, session_weight=3.0, direction="part"),
])
def test_weights_match_dense_reference(params):
    train = generated(n_sessions=120)
    model = SLIST(**params).fit(train)
    want = reference_weights(model, train)
    np.testing.assert_allclose(model.weights_, want, rtol=1e-3, atol=1e-5)


def test_scores_are_position_weighted_rows():
    train = generated(n_sessions=120)
    model = SLIST(predict_weight=1.5).fit(train)
    sc = model.scorer()
    sc.begin(2)
    clicks = [4, 9, 4]
    for step, it in enumerate(clicks):
        out = sc.score(np.array([1]), np.array([it], np.int32), np.array([step == 0]))
    B = model.weights_.astype(np.float64)
    want = sum(math.exp(-(2 - j) / 1.5) * B[c] for j, c in enumerate(clicks))
    np.testing.assert_allclose(out[0], want, rtol=1e-5, atol=1e-6)


def test_evaluate_beats_random_and_contract():
    model = SLIST()
    with pytest.raises(NotFittedError):
        model.scorer()
    res = model.fit(generated()).evaluate(generated(n_sessions=40, seed=9), cutoffs=(20,))
    assert res["recall@20"] > 0.6
    assert SLIST(**model.get_params()).get_params() == model.get_params()


@pytest.mark.parametrize("params, bad", [
    (dict(alpha=1.0), "alpha"), (dict(alpha=-0.1), "alpha"), (dict(reg=0), "reg"),
    (dict(train_weight=0), "train_weight"), (dict(predict_weight=-1), "predict_weight"),
    (dict(session_weight=0), "session_weight"), (dict(direction="all"), "direction"),
])
def test_bad_parameters_name_the_parameter(params, bad):
    model = SLIST(**params)
    with pytest.raises(ValueError, match=bad):
        model.fit(generated(n_sessions=20))
    assert not hasattr(model, "weights_")
