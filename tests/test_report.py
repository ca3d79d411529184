"""gru-engine report: dataset discovery, the report on the bundled sample, resuming from cells."""
import json

import numpy as np
import pytest

from gru_engine import report
from gru_engine.cli import main
from gru_engine.data import write_events


def _sequences(rng, n, n_items, first=0, split=None):
    cols = {"SessionId": [], "ItemId": [], "Time": []}
    for s in range(n):
        start = rng.integers(0, n_items)
        for j in range(int(rng.integers(3, 7))):
            cols["SessionId"].append(first + s)
            cols["ItemId"].append(1 + (start + j) % n_items)
            cols["Time"].append(j)
    return {k: np.array(v) for k, v in cols.items()}


@pytest.fixture
def folder(tmp_path):
    """Three datasets in three layouts: train/test files, user sequences with attributes,
    one event file with Split and Category columns; and a folder nothing recognises."""
    rng = np.random.default_rng(0)
    a = tmp_path / "shop"
    a.mkdir()
    write_events(a / "shop_train.tsv.gz", _sequences(rng, 200, 30))
    write_events(a / "shop_test.tsv.gz", _sequences(rng, 30, 30, first=1000))
    b = tmp_path / "amazon-x"
    b.mkdir()
    write_events(b / "x_sequences.tsv.gz", _sequences(rng, 200, 30))
    write_events(b / "x_item_attributes.tsv.gz", {"ItemId": np.arange(1, 31),
                                                  "AttributeIds": np.array([f"{i % 4}|{i % 7 + 4}" for i in range(30)])})
    c = tmp_path / "clicks"
    c.mkdir()
    ev = _sequences(rng, 240, 30)
    sid = ev["SessionId"]
    ev["Split"] = np.where(sid < 200, "train", np.where(sid < 220, "valid", "test"))
    ev["Category"] = ev["ItemId"] % 3
    write_events(c / "clicks_events.tsv.gz", ev)
    (tmp_path / "notes").mkdir()
    return tmp_path


def test_discover_detects_each_layout(folder):
    found = {d["name"]: d["kind"] for d in report.discover(str(folder))}
    assert found == {"shop": "files", "amazon-x": "leave_last_out", "clicks": "split_column"}
    sample = report.discover(report.SAMPLE_DIR)
    assert [(d["name"], d["kind"]) for d in sample] == [("rsc15-100k-sample", "files")]
    assert sample[0]["files"]["train"] == "rsc15_100k_train_full.tsv.gz"


def test_load_protocols_and_features(folder):
    specs = {d["name"]: d for d in report.discover(str(folder))}
    amazon = report.load(specs["amazon-x"])
    assert amazon["targets"] == "last" and "attributes" in amazon["features"]
    # leave-last-out: training = each sequence without its last item
    assert len(amazon["train"]["ItemId"]) == len(amazon["test"]["ItemId"]) - 200
    clicks = report.load(specs["clicks"])
    assert set(np.unique(clicks["test"]["SessionId"])) == set(range(220, 240))
    assert "category" in clicks["features"]
    assert report.load(specs["shop"])["features"] is None


def test_report_on_bundled_sample_and_resume(tmp_path, monkeypatch, capsys):
    out, cache = tmp_path / "REPORT.md", tmp_path / "cells"
    argv = ["-q", "report", "--quick", "--models", "POP", "SKNN", "VSTAN", "SLIST",
            "--output", str(out), "--cache", str(cache), "--hidden-sizes", "--no-progress"]
    assert main(argv) == 0
    text = out.read_text()
    for name in ("| POP |", "| SKNN |", "| VSTAN |", "| SLIST |", "rsc15-100k-sample",
                 "Which model wins where", "--quick", "GRU epochs capped at 1"):
        assert name in text
    assert (tmp_path / "figures" / "report_rsc15-100k-sample_by_position.png").exists()
    cell = json.loads((cache / "rsc15-100k-sample" / "SKNN.json").read_text())["result"]
    assert 0.5 < cell["recall@20"] < 0.8 and cell["n_events"] == 10152
    assert cell["by_position"][0]["position"] == 1 and cell["predictions_per_s"] > 0
    # a second run reuses every cell ...
    monkeypatch.setattr(report, "run_cell", lambda *a, **k: pytest.fail("cell recomputed"))
    assert main(argv) == 0
    assert out.read_text().split("\n", 3)[3] == text.split("\n", 3)[3]  # same but the date line
    # ... unless the cell's parameters or caps change
    calls = []
    monkeypatch.setattr(report, "run_cell", lambda name, *a, **k: calls.append(name) or cell)
    assert main(argv[:-1] + ["--no-progress", "--fresh"]) == 0
    assert calls == ["POP", "SKNN", "VSTAN", "SLIST"]


def test_report_gru_models_by_epoch_and_throughput(folder, tmp_path):
    out = tmp_path / "R.md"
    assert main(["-q", "report", "--data", str(folder), "--datasets", "amazon-x", "--models",
                 "GRU4Rec", "GRU4Rec+features", "--max-epochs", "2", "--hidden-sizes", "8",
                 "--output", str(out), "--cache", str(tmp_path / "c"), "--no-progress"]) == 0
    text = out.read_text()
    assert "| GRU4Rec |" in text and "| GRU4Rec+features |" in text
    assert "GRU4Rec Recall@20 by epoch:" in text and "| 8 |" in text
    cell = json.loads((tmp_path / "c" / "amazon-x" / "GRU4Rec.json").read_text())["result"]
    assert [e["epoch"] for e in cell["epochs"]] == [1, 2] and "recall@20" in cell["epochs"][1]
    assert (tmp_path / "figures" / "r_amazon-x_by_epoch.png").exists()
    assert (tmp_path / "figures" / "r_throughput.png").exists()


def test_report_errors_name_the_option(folder, tmp_path, capsys):
    base = ["report", "--data", str(folder), "--output", str(tmp_path / "R.md"),
            "--cache", str(tmp_path / "c"), "--no-progress"]
    assert main(base + ["--datasets", "nope"]) == 2
    assert "--datasets" in capsys.readouterr().err
    assert main(base + ["--max-epochs", "0"]) == 2
    assert "--max-epochs" in capsys.readouterr().err
    assert main(["report", "--data", str(folder / "notes"), "--output", str(tmp_path / "R.md")]) == 2
    assert "no dataset" in capsys.readouterr().err
