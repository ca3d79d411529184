"""The CPU scorers' output layer (backends/cpu_scoring.OutputLayer): which path ran (each panel
tile the CPU has, BLAS), and every panel tile against the BLAS path; run_row_blocks."""
import threading

import numpy as np
import pytest

from gru_engine.backends import cpu_scoring
from gru_engine.backends.cpu_scoring import OutputLayer, run_row_blocks
from gru_engine.exceptions import ModelFitError
from gru_engine.ranking import PANEL_PATHS, panel_path, panels_available, rank_targets
from test_ranking import isa, needs_panels  # noqa: F401  (the per-ISA fixture)


def _layer(use_panels, monkeypatch, Wy, By, act=0):
    monkeypatch.setattr(OutputLayer, "USE_PANELS", use_panels)
    return OutputLayer(Wy, By, act)


def _float_problem(rng, n_items=2933, H=100, R=40):
    Wy = rng.standard_normal((n_items, H)).astype(np.float32)
    By = rng.standard_normal(n_items).astype(np.float32)
    aug = np.hstack([rng.standard_normal((R, H)), np.ones((R, 1))]).astype(np.float32)
    return Wy, By, aug


def test_blas_path_is_reported(monkeypatch):
    rng = np.random.default_rng(1)
    Wy, By, aug = _float_problem(rng)
    layer = _layer(False, monkeypatch, Wy, By)
    assert layer.panels is None and not layer.fused_rank and not layer.path_counts
    out = np.empty((len(aug), len(By)), np.float32)
    layer.rank(aug, rng.integers(0, len(By), len(aug)), "conservative", out)
    layer.scores(aug, out)
    assert layer.path_counts == {"blas": 2}


@needs_panels
def test_panels_path_is_reported_and_agrees_with_blas(isa, monkeypatch):  # noqa: F811
    """use_panels: the tile of the ISA in use ran (never a silent BLAS fallback); its scores
    are those of the BLAS path up to rounding, and its ranks those of its own scores."""
    rng = np.random.default_rng(isa)
    Wy, By, aug = _float_problem(rng)
    fused = _layer(True, monkeypatch, Wy, By)
    blas = _layer(False, monkeypatch, Wy, By)
    assert fused.fused_rank and fused.panels is not None
    want = PANEL_PATHS[isa]
    assert panel_path() == want
    targets = rng.integers(0, len(By), len(aug))
    ranks = fused.rank(aug, targets, "median")
    assert fused.path_counts == {want: 1}
    S = fused.scores(aug, np.empty((len(aug), len(By)), np.float32))
    assert fused.path_counts == {want: 2}
    np.testing.assert_array_equal(ranks, rank_targets(S, targets, "median"))
    S_blas = blas.scores(aug, np.empty_like(S))
    np.testing.assert_allclose(S, S_blas, rtol=0, atol=2e-4)
    assert blas.path_counts == {"blas": 1}


@needs_panels
def test_panels_and_blas_give_the_same_ranks_on_exact_data(isa, monkeypatch):  # noqa: F811
    """Integer-valued data (exact in every summation order, many ties): each tile gives the
    BLAS path's scores and ranks bit for bit, in every tie mode, with and without a final
    activation (which ranks through the scores)."""
    rng = np.random.default_rng(10 + isa)
    Wy = rng.integers(-2, 3, (1001, 24)).astype(np.float32)
    By = rng.integers(-2, 3, 1001).astype(np.float32)
    aug = np.hstack([rng.integers(-2, 3, (70, 24)), np.ones((70, 1))]).astype(np.float32)
    targets = rng.integers(0, 1001, 70)
    want = PANEL_PATHS[isa]
    for act in (0, 2):
        fused = _layer(True, monkeypatch, Wy, By, act)
        blas = _layer(False, monkeypatch, Wy, By, act)
        assert fused.fused_rank == (act == 0)
        for mode in ("conservative", "optimistic", "median"):
            got = fused.rank(aug, targets, mode, np.empty((70, 1001), np.float32))
            np.testing.assert_array_equal(
                got, blas.rank(aug, targets, mode, np.empty((70, 1001), np.float32)))
        assert fused.path_counts == {want: 3} and blas.path_counts == {"blas": 3}


@needs_panels
@pytest.mark.parametrize("n_threads", [1, 2, 3])
def test_rank_split_over_items_equals_rank(n_threads, isa, monkeypatch):  # noqa: F811
    """rank_split (the items split over threads, every thread counting all rows) gives the
    ranks of rank, ties included, in every tie mode; one call counts once."""
    rng = np.random.default_rng(20 + n_threads)
    Wy = rng.integers(-2, 3, (1500, 24)).astype(np.float32)  # 47 panels: several blocks
    By = rng.integers(-2, 3, 1500).astype(np.float32)
    aug = np.hstack([rng.integers(-2, 3, (300, 24)), np.ones((300, 1))]).astype(np.float32)
    targets = rng.integers(0, 1500, 300)
    layer = _layer(True, monkeypatch, Wy, By)
    t = layer.panels.target_scores(aug, targets)
    for mode in ("conservative", "optimistic", "median"):
        np.testing.assert_array_equal(layer.rank_split(aug, t, mode, n_threads),
                                      layer.rank(aug, targets, mode))
    assert layer.path_counts == {PANEL_PATHS[isa]: 6}
    aug[5, 3] = np.nan
    with pytest.raises(ModelFitError, match="row 5"):
        layer.rank_split(aug, layer.panels.target_scores(aug, targets), "median", n_threads)


def test_no_panel_tile_falls_back_to_blas(monkeypatch):
    """On a CPU without a tile the layer is built on BLAS and says so."""
    rng = np.random.default_rng(2)
    Wy, By, aug = _float_problem(rng, n_items=300, H=8, R=5)
    monkeypatch.setattr(cpu_scoring, "panels_available", lambda: False)
    layer = _layer(True, monkeypatch, Wy, By)
    layer.rank(aug, np.zeros(5, np.int64), "conservative", np.empty((5, 300), np.float32))
    assert layer.panels is None and layer.path_counts == {"blas": 1}


@pytest.mark.skipif(not panels_available(), reason="the panel kernels need AVX-512F or AVX2")
def test_path_counts_from_threads(monkeypatch):
    """Blocks ranked on several threads are all counted."""
    rng = np.random.default_rng(3)
    Wy, By, aug = _float_problem(rng, R=256)
    layer = _layer(True, monkeypatch, Wy, By)
    targets = rng.integers(0, len(By), len(aug))
    ranks = np.empty(len(aug))
    calls = []

    def block(k, a, b):
        ranks[a:b] = layer.rank(aug[a:b], targets[a:b], "conservative")
        calls.append(k)

    for _ in range(5):
        run_row_blocks(len(aug), 4, 32, block)
    assert len(calls) >= 20
    assert sum(layer.path_counts.values()) == layer.path_counts[panel_path()] == len(calls)
    np.testing.assert_array_equal(ranks, layer.rank(aug, targets, "conservative"))


@pytest.mark.parametrize("n_rows,n_threads,min_rows", [(0, 2, 32), (1, 2, 32), (63, 2, 32),
                                                        (64, 2, 32), (512, 2, 32),
                                                        (1000, 3, 32), (100, 8, 1)])
def test_run_row_blocks_covers_every_row_once(n_rows, n_threads, min_rows):
    seen = np.zeros(n_rows, np.int64)
    workers = {}
    lock = threading.Lock()

    def block(k, a, b):
        assert 0 <= k < max(1, n_threads) and 0 <= a <= b <= n_rows
        assert b - a >= min(min_rows, n_rows) and (b > a or n_rows == 0)
        with lock:
            workers.setdefault(k, set()).add(threading.get_ident())
        seen[a:b] += 1

    run_row_blocks(n_rows, n_threads, min_rows, block)
    assert np.all(seen == 1)
    # a block number is one worker: never two threads at once with the same k
    assert all(len(t) == 1 for t in workers.values())


def test_run_row_blocks_raises_a_block_error():
    def block(k, a, b):
        if a > 0:
            raise ValueError(f"block {a}:{b} failed")

    with pytest.raises(ValueError, match="block .* failed"):
        run_row_blocks(200, 2, 32, block)


def test_row_blocks_large_first_then_small():
    """Each worker's first block is large (about 7/8 of the rows together, multiples of 8);
    the rest are small blocks of at least min_rows, so no worker waits long at the end."""
    from gru_engine.backends.cpu_scoring import _row_blocks
    sizes = [b - a for a, b in _row_blocks(512, 2, 32)]
    assert sizes == [224, 224, 32, 32]
    for n_rows, n_workers in [(64, 2), (65, 2), (100, 2), (300, 2), (1000, 3), (4096, 4)]:
        blocks = _row_blocks(n_rows, n_workers, 32)
        assert blocks[0][0] == 0 and blocks[-1][1] == n_rows
        assert all(b0[1] == b1[0] for b0, b1 in zip(blocks, blocks[1:]))
        assert min(b - a for a, b in blocks) >= 32


def test_unbalanced_row_blocks_are_one_equal_block_per_worker():
    """balance=False (light steps): each worker runs exactly one contiguous, nearly equal block."""
    import threading
    from gru_engine.backends.cpu_scoring import run_row_blocks
    seen, lock = [], threading.Lock()

    def block(k, a, b):
        with lock:
            seen.append((k, a, b))
    run_row_blocks(301, 3, 32, block, balance=False)
    seen.sort(key=lambda t: t[1])
    assert [(a, b) for _, a, b in seen] == [(0, 100), (100, 200), (200, 301)]
    assert sorted(k for k, _, _ in seen) == [0, 1, 2]


# ---- top-k: fused panel kernels or scores + top_k; Scorer.topk and Scorer.advance -------------
from gru_engine.config import FUSED_TOP_K_MAX  # noqa: E402
from gru_engine.ranking import Exclusions, top_k  # noqa: E402


def _masked_top_k(S, k, ex):
    S = S.copy()
    if ex is not None:
        ex.mask(S)
    return top_k(S, k)


@needs_panels
def test_output_layer_top_k_is_the_top_k_of_its_scores(isa, monkeypatch):  # noqa: F811
    """Fused (no final activation, k <= FUSED_TOP_K_MAX): exactly top_k of the layer's own
    scores (bits, ties), no score buffer; with a final activation or a larger k it goes through
    the scores; on integer data every path gives the BLAS path's answer."""
    rng = np.random.default_rng(20 + isa)
    Wy = rng.integers(-2, 3, (1001, 24)).astype(np.float32)
    By = rng.integers(-2, 3, 1001).astype(np.float32)
    aug = np.hstack([rng.integers(-2, 3, (70, 24)), np.ones((70, 1))]).astype(np.float32)
    ex = Exclusions([rng.choice(1001, rng.integers(0, 30), replace=False) for _ in range(70)],
                    1001)
    want = PANEL_PATHS[isa]
    for act in (0, 2):
        fused = _layer(True, monkeypatch, Wy, By, act)
        blas = _layer(False, monkeypatch, Wy, By, act)
        for k, e in ((1, None), (20, ex), (100, ex), (1001, None)):
            assert fused.fused_top_k(k) == (act == 0 and k <= FUSED_TOP_K_MAX)
            out = None if fused.fused_top_k(k) else np.empty((70, 1001), np.float32)
            idx, val = fused.top_k(aug, k, e, out)
            S = fused.scores(aug, np.empty((70, 1001), np.float32))
            ref_idx, ref_val = _masked_top_k(S, k, e)
            np.testing.assert_array_equal(idx, ref_idx)
            np.testing.assert_array_equal(val.view(np.int32), ref_val.view(np.int32))
            b_idx, b_val = blas.top_k(aug, k, e, np.empty((70, 1001), np.float32))
            np.testing.assert_array_equal(idx, b_idx)
            np.testing.assert_array_equal(val, b_val)
        assert fused.path_counts == {want: 8}  # 4 top_k (fused or through scores), 4 scores
        assert blas.path_counts == {"blas": 4}
    real = _float_problem(rng, n_items=2933, H=100, R=40)
    layer = _layer(True, monkeypatch, *real[:2])
    S = layer.scores(real[2], np.empty((40, 2933), np.float32))
    idx, val = layer.top_k(real[2], 20)
    np.testing.assert_array_equal(idx, top_k(S, 20)[0])
    np.testing.assert_array_equal(val.view(np.int32), top_k(S, 20)[1].view(np.int32))


@pytest.fixture(scope="module")
def small_model():
    from gru_engine.model import SessionGRU
    rng = np.random.default_rng(0)
    n = 3000
    data = {"SessionId": np.repeat(np.arange(n // 3), 3), "ItemId": rng.integers(0, 300, n),
            "Time": np.arange(n, dtype=float)}
    return SessionGRU(layers=[24], n_epochs=1, batch_size=16, n_sample=16, n_threads=1,
                      random_state=0).fit(data)


def _two_scorers(model, n_threads, n_rows):
    a, b = model.scorer(), model.scorer()
    for sc in (a, b):
        sc.n_threads = n_threads
        sc.begin(n_rows)
    return a, b


@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("use_panels", [True, False])
def test_scorer_topk_and_advance_equal_score(small_model, n_threads, use_panels, monkeypatch):
    """Scorer.topk = score + top_k (exclusions as -inf) bit for bit, row blocks on threads
    included; advance moves the state exactly as score does; k is checked before the state
    moves. (The GRU step's GEMM rounds by batch size, so the reference scores the same row
    blocks as the call it checks: recorded from run_row_blocks.)"""
    monkeypatch.setattr(OutputLayer, "USE_PANELS", use_panels)
    blocks = []
    real = cpu_scoring.run_row_blocks

    def recording(n_rows, n_threads, min_rows, block, balance=True):
        def rec(k, a, b):
            blocks.append((a, b))
            block(k, a, b)
        real(n_rows, n_threads, min_rows, rec, balance)

    monkeypatch.setattr(cpu_scoring, "run_row_blocks", recording)
    m = small_model
    a, b = _two_scorers(m, n_threads, 200)
    assert a.output.fused_rank == (use_panels and panels_available())
    counts0 = a.output.path_counts.copy()
    rng = np.random.default_rng(n_threads)
    for t in range(4):
        rows = np.sort(rng.choice(200, 150, replace=False)).astype(np.int64)
        items = rng.integers(0, m.n_items_, 150).astype(np.int32)
        new = rng.random(150) < 0.2
        ex = Exclusions([rng.choice(m.n_items_, rng.integers(0, 40), replace=False)
                         for _ in range(150)], m.n_items_) if t == 3 else None
        blocks.clear()
        if t == 1:  # advance: no answer, the same state
            a.advance(rows, items, new)
        else:
            idx, val = a.topk(rows, items, new, 25, ex)
        assert len(blocks) == (n_threads if n_threads > 1 else 1)
        for lo, hi in sorted(blocks):
            S = b.score(rows[lo:hi], items[lo:hi], new[lo:hi])
            if t != 1:
                ref_idx, ref_val = _masked_top_k(S, 25, None if ex is None else ex[lo:hi])
                np.testing.assert_array_equal(idx[lo:hi], ref_idx)
                np.testing.assert_array_equal(val[lo:hi].view(np.int32), ref_val.view(np.int32))
        np.testing.assert_array_equal(a.state, b.state)
    # one output layer (shared by a and b): 3 topk + 4 score calls of n_threads blocks each
    path = panel_path() if a.output.fused_rank else "blas"
    assert a.output is b.output
    assert a.output.path_counts - counts0 == {path: 7 * n_threads}
    before = a.state.copy()
    for k in (0, m.n_items_ + 1, 2.0):
        with pytest.raises(ValueError, match="k must be"):
            a.topk(rows, items, new, k)
    with pytest.raises(ValueError, match="exclude must be Exclusions of 150 rows"):
        a.topk(rows, items, new, 5, Exclusions([()], m.n_items_))
    np.testing.assert_array_equal(a.state, before)


@needs_panels
@pytest.mark.parametrize("n_threads", [2, 3])
def test_scorer_rank_item_split_equals_row_blocks(small_model, n_threads, isa,  # noqa: F811
                                                   monkeypatch):
    """Scorer.rank with the items split over the threads (the AVX2 tile's path) gives the ranks
    and states of the row-block path (each block stepped, scored and ranked on its own
    thread), over steps with new and continuing sessions, in every tie mode."""
    m = small_model
    a, b = _two_scorers(m, n_threads, 200)
    assert a.output.splits_items() == (isa == 1)
    monkeypatch.setattr(OutputLayer, "splits_items", lambda self: True)
    split_calls = []
    real_split = OutputLayer.rank_split

    def counted(self, *args):
        split_calls.append(1)
        return real_split(self, *args)

    monkeypatch.setattr(OutputLayer, "rank_split", counted)
    rng = np.random.default_rng(n_threads)
    for step, mode in enumerate(("conservative", "optimistic", "median")):
        rows = np.sort(rng.choice(200, 150, replace=False)).astype(np.int64)
        items = rng.integers(0, m.n_items_, 150).astype(np.int32)
        new = rng.random(150) < (1.0 if step == 0 else 0.2)
        targets = rng.integers(0, m.n_items_, 150)
        got = a.rank(rows, items, new, targets, mode)
        with monkeypatch.context() as mp:
            mp.setattr(OutputLayer, "splits_items", lambda self: False)
            want = b.rank(rows, items, new, targets, mode)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(a.state, b.state)
    assert len(split_calls) == 3
    with pytest.raises(ValueError, match="unknown rank mode"):
        a.rank(rows, items, new, targets, "best")
