"""gru_engine.scoring: streamed batch scoring of an event file, TSV and Parquet, CLI."""
import gzip

import numpy as np
import pytest

from gru_engine import SessionGRU, cli
from gru_engine import scoring as S
from gru_engine.data import write_events
from gru_engine.sample_data import load_sample


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    train, _ = load_sample()
    m = SessionGRU(layers=[16], n_epochs=1, n_sample=64, sample_store_size=20_000,
                   random_state=3, n_threads=1).fit(train)
    path = tmp_path_factory.mktemp("model") / "m.npz"
    m.save(path)
    return SessionGRU.load(path), str(path)


@pytest.fixture(scope="module")
def sessions(tmp_path_factory, model):
    """300 test sessions of the sample, their rows shuffled within each session, plus one
    session whose only item is unknown and one with an unknown item among known ones."""
    _, test = load_sample()
    keep = np.isin(test["SessionId"], np.unique(test["SessionId"])[:300])
    ev = {k: v[keep] for k, v in test.items()}
    rng = np.random.default_rng(0)
    order = np.lexsort((rng.random(len(ev["SessionId"])), ev["SessionId"]))
    ev = {k: v[order] for k, v in ev.items()}
    known = model[0].item_index_.ids
    big = int(ev["SessionId"].max())
    extra = {"SessionId": np.array([big + 1, big + 2, big + 2]),
             "ItemId": np.array([-5, known[0], -7]),
             "Time": np.array([1.0, 2.0, 3.0])}
    ev = {k: np.concatenate([ev[k], extra[k]]) for k in ev}
    path = tmp_path_factory.mktemp("sessions") / "sessions.tsv.gz"
    write_events(str(path), ev)
    return ev, str(path)


def _read_tsv(path):
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt") as f:
        header = f.readline().rstrip("\n").split("\t")
        rows = [line.rstrip("\n").split("\t") for line in f]
    return header, rows


def test_scores_are_the_top_k_of_recommend(model, sessions, tmp_path):
    m, path = model
    ev, spath = sessions
    out = tmp_path / "top.tsv"
    stats = S.score_file(path, spath, out, k=5, chunk_sessions=64, n_threads=1)
    header, rows = _read_tsv(out)
    assert header == ["SessionId", "Rank", "ItemId", "Score"]
    n_sessions = len(np.unique(ev["SessionId"]))
    assert stats.n_sessions == n_sessions - 1 and stats.n_skipped_sessions == 1
    assert stats.n_unknown_item_events == 2 and stats.n_events == len(ev["SessionId"])
    by_session = {}
    for sid, rank, item, score in rows:
        by_session.setdefault(int(sid), []).append((int(rank), int(item), float(score)))
    for sid in np.unique(ev["SessionId"])[::37]:
        mask = ev["SessionId"] == sid
        items = ev["ItemId"][mask][np.argsort(ev["Time"][mask], kind="stable")]
        items = items[m.item_index_.lookup(items) >= 0]
        ids, scores = m.recommend(items, k=5)
        got = by_session[int(sid)]
        assert [r for r, _, _ in got] == [1, 2, 3, 4, 5]
        assert [i for _, i, _ in got] == ids.tolist()
        # one session alone vs. in a block of 64: the GEMM may round differently (1 ulp)
        np.testing.assert_allclose(np.float32([s for _, _, s in got]), scores, rtol=1e-6)


def test_same_input_same_bits_and_gz_is_the_same_text(model, sessions, tmp_path):
    _, path = model
    _, spath = sessions
    S.score_file(path, spath, tmp_path / "a.tsv", k=3, chunk_sessions=50, n_threads=1)
    S.score_file(path, spath, tmp_path / "b.tsv.gz", k=3, chunk_sessions=50, n_threads=1)
    with gzip.open(tmp_path / "b.tsv.gz", "rt") as f:
        assert (tmp_path / "a.tsv").read_text() == f.read()
    # another chunk size: the same items, scores to float32 rounding
    S.score_file(path, spath, tmp_path / "c.tsv", k=3, chunk_sessions=7, n_threads=1)
    a, c = _read_tsv(tmp_path / "a.tsv")[1], _read_tsv(tmp_path / "c.tsv")[1]
    assert [r[:3] for r in a] == [r[:3] for r in c]
    np.testing.assert_allclose([float(r[3]) for r in a], [float(r[3]) for r in c], rtol=1e-6)


def test_exclude_seen(model, sessions, tmp_path):
    m, path = model
    ev, spath = sessions
    S.score_file(path, spath, tmp_path / "x.tsv", k=10, exclude_seen=True, n_threads=1)
    _, rows = _read_tsv(tmp_path / "x.tsv")
    clicked = {}
    for sid, item in zip(ev["SessionId"], ev["ItemId"]):
        clicked.setdefault(str(sid), set()).add(int(item))
    assert rows and all(int(item) not in clicked[sid] for sid, _, item, _ in rows)


def test_parquet_holds_the_same_rows(model, sessions, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow is not installed")
    _, path = model
    _, spath = sessions
    S.score_file(path, spath, tmp_path / "t.tsv", k=4, n_threads=1)
    S.score_file(path, spath, tmp_path / "t.parquet", k=4, n_threads=1)
    table = pq.read_table(tmp_path / "t.parquet")
    assert table.column_names == ["SessionId", "Rank", "ItemId", "Score"]
    assert str(table.schema.field("Score").type) == "float"
    _, rows = _read_tsv(tmp_path / "t.tsv")
    assert table.column("SessionId").to_pylist() == [int(r[0]) for r in rows]
    assert table.column("ItemId").to_pylist() == [int(r[2]) for r in rows]
    np.testing.assert_array_equal(table.column("Score").to_numpy(),
                                  np.float32([float(r[3]) for r in rows]))  # %.9g round-trips


def test_session_order_violations_fail_clearly(model, tmp_path):
    _, path = model
    m = SessionGRU.load(path)
    items = m.item_index_.ids[:3]
    bad = tmp_path / "split.tsv"
    write_events(str(bad), {"SessionId": np.array([1, 1, 2, 1]),
                            "ItemId": np.array([items[0], items[1], items[2], items[0]]),
                            "Time": np.arange(4.0)})
    with pytest.raises(ValueError, match="line 5: session '1' appears again"):
        S.score_file(path, bad, tmp_path / "o.tsv")
    assert not (tmp_path / "o.tsv").exists() and not (tmp_path / "o.tsv.tmp").exists()
    unsorted = tmp_path / "unsorted.tsv"
    write_events(str(unsorted), {"SessionId": np.array([2, 2, 10, 3]),
                                 "ItemId": np.array([items[0], items[1], items[2], items[0]]),
                                 "Time": np.arange(4.0)})
    with pytest.raises(ValueError, match="line 5: session '3' comes after a larger"):
        S.score_file(path, unsorted, tmp_path / "o.tsv", session_order="sorted")
    S.score_file(path, unsorted, tmp_path / "o.tsv")  # contiguous: fine (numeric 2 < 10 > 3)
    with pytest.raises(ValueError, match="session_order"):
        S.score_file(path, unsorted, tmp_path / "o.tsv", session_order="random")


def test_bad_inputs(model, tmp_path):
    _, path = model
    f = tmp_path / "ev.tsv"
    f.write_text("SessionId\tItemId\n1\t2\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['Time'\]"):
        S.score_file(path, f, tmp_path / "o.tsv")
    with pytest.raises(FileNotFoundError):
        S.score_file(path, tmp_path / "none.tsv", tmp_path / "o.tsv")
    with pytest.raises(ValueError, match="chunk_sessions"):
        S.score_file(path, f, tmp_path / "o.tsv", chunk_sessions=0)
    with pytest.raises(ValueError, match="k must be"):
        S.score_file(path, f, tmp_path / "o.tsv", k=0)


def test_cli_score(model, sessions, tmp_path, capsys):
    _, path = model
    _, spath = sessions
    out = tmp_path / "cli.tsv"
    assert cli.main(["-q", "score", path, spath, "-o", str(out), "-k", "3", "--threads", "1"]) == 0
    assert "sessions without a known item" in capsys.readouterr().out
    S.score_file(path, spath, tmp_path / "lib.tsv", k=3, n_threads=1)
    assert out.read_text() == (tmp_path / "lib.tsv").read_text()
    assert cli.main(["-q", "score", path, spath, "-o", str(out), "-k", "0"]) == 2
    with pytest.raises(SystemExit) as exc:  # -o is required
        cli.main(["score", path, spath])
    assert exc.value.code == 2
