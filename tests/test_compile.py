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
