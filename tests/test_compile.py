"""Ahead-of-time compilation of the CPU kernels and the first-run notice."""
import logging

from gru_engine import cli
from gru_engine.backends.cpu import compile as aot
from test_model import SMALL, _events


def test_compile_command_caches_the_kernels(capsys):
    assert cli.main(["compile"]) == 0
    assert "cached: True" in capsys.readouterr().out
    assert aot.kernels_cached()


def test_first_fit_says_it_is_compiling(monkeypatch, caplog):
    from gru_engine import SessionGRU
    monkeypatch.setattr(aot, "_cached", lambda kernel: False)
    with caplog.at_level(logging.WARNING, logger="gru_engine"):
        SessionGRU(**SMALL).fit(_events())
    assert "compiling the CPU kernels" in caplog.text
    caplog.clear()
    monkeypatch.setattr(aot, "_cached", lambda kernel: True)
    with caplog.at_level(logging.WARNING, logger="gru_engine"):
        SessionGRU(**SMALL).fit(_events())
    assert "compiling" not in caplog.text


_PLAIN_FIT_COMPILES = """
import numpy as np
from gru_engine import SessionGRU
from gru_engine.backends.cpu import context_step, losses, output_parts, overlap
rng = np.random.default_rng(0)
ev = {"SessionId": np.repeat(np.arange(20), 3), "ItemId": rng.integers(0, 15, 60),
      "Time": np.arange(60, dtype=np.float64)}
SessionGRU(layers=[8], n_epochs=1, batch_size=4, n_sample=6, n_threads=1).fit(ev)
kernels = {"cross_entropy": output_parts.cross_entropy_output,
           "ranking": losses.loss_forward_backward,
           "context": context_step.context_input_forward,
           "context_out": context_step.context_output_forward,
           "context_update": context_step.context_update,
           "overlap": overlap.backward_beside_output_rows}
print(*(f"{k}={len(v.signatures)}" for k, v in kernels.items()))
"""


def test_a_plain_fit_compiles_no_extension_code(tmp_path):
    """Compiled from scratch (a cached kernel compiles none of its callees), a plain
    cross-entropy fit on one thread compiles the cross-entropy output layer but neither the
    ranking losses, the context hooks nor the two-thread step (:mod:`.overlap`): those branches
    are pruned on the type of an argument (None)."""
    import os
    import subprocess
    import sys
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", _PLAIN_FIT_COMPILES], env=env, check=True,
                         capture_output=True, text=True).stdout.split()
    counts = dict(item.split("=") for item in out[-6:])
    assert counts["cross_entropy"] == "1"  # the check sees what the fit compiles
    assert counts == {"cross_entropy": "1", "ranking": "0", "context": "0", "context_out": "0",
                      "context_update": "0", "overlap": "0"}
