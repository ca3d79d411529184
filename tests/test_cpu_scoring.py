"""The CPU scorers' output layer (backends/cpu_scoring.OutputLayer): which path ran (each panel
tile the CPU has, BLAS), and every panel tile against the BLAS path; run_row_blocks."""
import threading

import numpy as np
import pytest

from gru_engine.backends import cpu_scoring
from gru_engine.backends.cpu_scoring import OutputLayer, run_row_blocks
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
