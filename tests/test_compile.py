"""Ahead-of-time compilation of the CPU kernels and the first-run notice."""
import functools
import logging
import os
import subprocess
import sys
import tempfile

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


# One from-scratch compile (an empty Numba cache, in a subprocess) serves two checks: which
# kernels a plain fit compiles (here) and that its training kernel has no timing code while a
# profiled fit's has (test_cpu_trainer_profile.py).
_FRESH_FIT = """
import inspect, warnings
import numpy as np
from gru_engine import SessionGRU
from gru_engine.backends.cpu import context_step, losses, output_parts, overlap
from gru_engine.backends.cpu.trainer import train_steps
rng = np.random.default_rng(0)
ev = {"SessionId": np.repeat(np.arange(20), 3), "ItemId": rng.integers(0, 15, 60),
      "Time": np.arange(60, dtype=np.float64)}
kw = dict(layers=[8], n_epochs=1, batch_size=4, n_sample=6, n_threads=1)
SessionGRU(**kw).fit(ev)
kernels = {"cross_entropy": output_parts.cross_entropy_output,
           "ranking": losses.loss_forward_backward,
           "context": context_step.context_input_forward,
           "context_out": context_step.context_output_forward,
           "context_update": context_step.context_update,
           "overlap": overlap.backward_beside_output_rows}
print("compiled", *(f"{k}={len(v.signatures)}" for k, v in kernels.items()))
class Profiled(SessionGRU):
    def _make_trainer(self, *args, **kwargs):
        trainer = super()._make_trainer(*args, **kwargs)
        trainer.start_profile()
        return trainer
Profiled(**kw).fit(ev)
at = list(inspect.signature(train_steps.py_func).parameters).index("prof")
(plain,) = [sig for sig in train_steps.signatures if str(sig[at]) == "none"]
(prof,) = [sig for sig in train_steps.signatures if str(sig[at]) != "none"]
with warnings.catch_warnings():
    warnings.simplefilter("error")  # cached code gives no valid assembly: fail, not pass
    asm, asm_prof = train_steps.inspect_asm(plain), train_steps.inspect_asm(prof)
print("asm", len(asm), "rdtsc" in asm, "step_forward_output" in asm, "rdtsc" in asm_prof)
"""


@functools.lru_cache(maxsize=None)
def fresh_fit_report() -> dict:
    """Run _FRESH_FIT once per session on an empty Numba cache: {'compiled': {kernel: number of
    compiled signatures after the plain fit}, 'asm': [words of its asm line]}."""
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        out = subprocess.run([sys.executable, "-c", _FRESH_FIT], env=env, check=True,
                             capture_output=True, text=True).stdout.splitlines()
    compiled = next(line for line in out if line.startswith("compiled ")).split()[1:]
    asm = next(line for line in out if line.startswith("asm ")).split()[1:]
    return {"compiled": dict(item.split("=") for item in compiled), "asm": asm}


def test_a_plain_fit_compiles_no_extension_code():
    """Compiled from scratch (a cached kernel compiles none of its callees), a plain
    cross-entropy fit on one thread compiles the cross-entropy output layer but neither the
    ranking losses, the context hooks nor the two-thread step (:mod:`.overlap`): those branches
    are pruned on the type of an argument (None)."""
    counts = fresh_fit_report()["compiled"]
    assert counts["cross_entropy"] == "1"  # the check sees what the fit compiles
    assert counts == {"cross_entropy": "1", "ranking": "0", "context": "0", "context_out": "0",
                      "context_update": "0", "overlap": "0"}
