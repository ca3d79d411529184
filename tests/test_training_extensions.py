"""Training in production for the extensions on the CPU (issue 14): checkpoints and resume of
context-aware, user-level and output-feature models give the parameters of an uninterrupted
run, and the refusals that remain."""
import numpy as np
import pytest

from gru_engine import FeatureSessionGRU, SessionGRU
from gru_engine.checkpoint import load_checkpoint
from test_context import FULL, _mixed_data
from test_output_features import _data as _feature_data
from test_training import _same, _stop_after
from test_user_level import _data as _user_data

RUN = dict(n_epochs=4, momentum=0.2, dropout_p_hidden=0.2, shuffle_sessions=True, n_threads=1)


def _context_case():
    return (SessionGRU(layers=[8], batch_size=16, n_sample=8, random_state=0,
                       dropout_p_embed=0.1, **FULL, **RUN), _mixed_data(), {})


def _user_case(mode="all", user_input="items"):
    train, _ = _user_data()
    return (SessionGRU(layers=[8], batch_size=8, n_sample=4, random_state=1, user_layers=5,
                       user_mode=mode, user_input=user_input, user_dropout=0.2, **RUN),
            train, {})


def _output_case():
    events, feats = _feature_data()
    return (FeatureSessionGRU(output_features=True, layers=[8], batch_size=16, n_sample=16,
                              random_state=0, **RUN), events, {"item_features": feats})


CASES = {"context": _context_case, "user_items": _user_case,
         "user_hidden_both": lambda: _user_case("both", "hidden"), "output": _output_case}


@pytest.mark.parametrize("case", list(CASES))
def test_checkpoint_resume_equals_uninterrupted_run(case, tmp_path):
    model, data, fit_args = CASES[case]()
    whole = model.__class__(**model.get_params()).fit(data, **fit_args)
    stopped = model.__class__(**model.get_params())
    with pytest.raises(KeyboardInterrupt):
        stopped.fit(data, checkpoint=tmp_path, callback=_stop_after(2), **fit_args)
    resumed = model.__class__(**model.get_params()).fit(data, checkpoint=tmp_path, resume=True,
                                                         **fit_args)
    assert set(resumed.params_) == set(whole.params_) and _same(whole, resumed)
    assert resumed.loss_history_ == whole.loss_history_
    # the extension's own optimiser state is in the checkpoint (a resume without it would
    # differ: the Adagrad accumulators of these parameters would restart at zero)
    ck = load_checkpoint(tmp_path, model.__class__)
    extra = set(ck.optimizer_state_["acc"]) - {"theta", "T", "Wy", "By"}
    assert extra == {"context": {"context_in", "context_out"}, "output": {"Fy", "Fb"}}.get(
        case, {"U"})
    for key in extra:
        assert np.any(ck.optimizer_state_["acc"][key] != 0)


def test_resume_without_the_extension_state_differs(tmp_path, monkeypatch):
    """The check above can fail: dropping the context tables' optimiser state from the restore
    changes the resumed parameters."""
    from gru_engine import checkpoint
    model, data, _ = _context_case()
    whole = SessionGRU(**model.get_params()).fit(data)
    with pytest.raises(KeyboardInterrupt):
        SessionGRU(**model.get_params()).fit(data, checkpoint=tmp_path,
                                             callback=_stop_after(2))
    real = checkpoint._optimizer_state
    monkeypatch.setattr(checkpoint, "_optimizer_state",
                        lambda arrays, m, path, keys=None: real(arrays, m, path,
                                                                ["theta", "T", "Wy", "By"]))
    resumed = SessionGRU(**model.get_params()).fit(data, checkpoint=tmp_path, resume=True)
    assert not _same(whole, resumed)


def test_resume_refuses_other_context_or_users(tmp_path):
    model, data, _ = _context_case()
    SessionGRU(**dict(model.get_params(), n_epochs=1)).fit(data, checkpoint=tmp_path / "c")
    later = dict(data, Time=data["Time"] + 3600.0 * 5)  # same sessions, other hours
    with pytest.raises(ValueError, match="other training data"):
        SessionGRU(**model.get_params()).fit(later, checkpoint=tmp_path / "c", resume=True)
    model, train, _ = _user_case()
    SessionGRU(**dict(model.get_params(), n_epochs=1)).fit(train, checkpoint=tmp_path / "u")
    users = np.asarray(train["UserId"])
    swapped = dict(train, UserId=np.where(users == users[0], users[-1],
                                          np.where(users == users[-1], users[0], users)))
    with pytest.raises(ValueError, match="other training data"):
        SessionGRU(**model.get_params()).fit(swapped, checkpoint=tmp_path / "u", resume=True)


def test_cuda_checkpoint_of_an_extension_is_refused():
    from gru_engine.checkpoint import check_supported
    with pytest.raises(ValueError, match="CPU only.*'context_in'"):
        check_supported({"Wy": 0, "context_in": 0, "context_out": 0}, object())
    with pytest.raises(ValueError, match="'U'"):
        check_supported({"Wy": 0, "U": 0}, object())
    check_supported({"Wy": 0, "U": 0}, None)
    check_supported({"Wy": 0}, object())
