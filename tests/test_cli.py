"""The gru-engine command line: output format, model files, one-line errors."""
import re

import numpy as np
import pytest

from gru_engine.cli import main
from gru_engine.data import write_events


def _events(rng, n_sessions, n_items, first_session=0):
    sessions, items, times = [], [], []
    t = 0
    for s in range(n_sessions):
        length = rng.integers(2, 7)
        start = rng.integers(0, n_items)
        for j in range(length):
            sessions.append(first_session + s)
            items.append(100 + (start + j) % n_items)   # a learnable "next item" pattern
            times.append(t)
            t += 1
    return {"SessionId": np.array(sessions), "ItemId": np.array(items), "Time": np.array(times)}


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    train, test = tmp_path / "train.tsv.gz", tmp_path / "test.tsv"
    write_events(train, _events(rng, 300, 30))
    write_events(test, _events(rng, 40, 30, first_session=1000))
    return str(train), str(test)


def test_evaluate_baseline_prints_metric_lines(files, capsys):
    assert main(["-q", "evaluate", "--model", "pop", *files, "-m", "5", "20"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^Recall@5: 0\.\d{4}  MRR@5: 0\.\d{4}$", out, re.M)
    assert re.search(r"^Recall@20: [01]\.\d{4}  MRR@20: 0\.\d{4}$", out, re.M)


def test_bad_input_is_one_line_error(tmp_path, files, capsys):
    bad = tmp_path / "bad.tsv"
    bad.write_text("Session\tItem\tTime\n1\t2\t3\n")
    assert main(["evaluate", "--model", "pop", str(bad), files[1]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("gru-engine: error:") and "SessionId" in err[-1]
    assert main(["evaluate", "--model", "pop", str(tmp_path / "missing.tsv"), files[1]]) == 2


def test_train_save_recommend_roundtrip(files, tmp_path, capsys):
    model_file = str(tmp_path / "m.npz")
    assert main(["-q", "train", files[0], "--test", files[1], "-m", "5", "-s", model_file, "-p",
                 "layers=16,n_epochs=2,batch_size=8,n_sample=8,learning_rate=0.1,random_state=3"]) == 0
    first = capsys.readouterr().out
    assert "Recall@5:" in first
    assert main(["-q", "evaluate", "--load", model_file, files[1], "-m", "5"]) == 0
    again = capsys.readouterr().out
    assert first.splitlines()[0] == again.splitlines()[0]  # the saved model scores the same
    assert main(["-q", "recommend", model_file, "100", "101", "-k", "3", "--exclude-seen"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and all(line.split("\t")[1] not in ("100", "101") for line in lines)
    assert main(["recommend", model_file, "999999"]) == 2
    assert "unknown" in capsys.readouterr().err
