"""The Cython rank and top-k kernels (through rank_targets / top_k) against plain NumPy."""
import numpy as np
import pytest

from gru_engine import _ranking
from gru_engine.ranking import rank_targets, top_k
from gru_engine.exceptions import ModelFitError


def reference_ranks(scores, targets, mode):
    scores = np.asarray(scores, dtype=np.float32)
    t = scores[np.arange(len(targets)), targets][:, None]
    greater = (scores > t).sum(1)
    equal = (scores == t).sum(1)
    if mode == "conservative":
        return (greater + equal).astype(np.float64)
    if mode in ("optimistic", "standard"):
        return greater + 1.0
    return greater + 0.5 * (equal + 1)


def reference_top_k(scores, k):
    # Stable argsort of the negated scores: higher first, lower index first among ties.
    order = np.argsort(-np.asarray(scores, dtype=np.float32), axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(scores, order, axis=1)


def tied_scores(rng, batch, n_items, levels=4):
    """Scores with only ``levels`` distinct values, so most targets tie with many items."""
    return rng.integers(0, levels, size=(batch, n_items)).astype(np.float32) / levels


SHAPES = [(1, 1), (1, 7), (3, 1), (5, 17), (2, 33), (64, 1000), (7, 4099)]


@pytest.mark.parametrize("mode", ["conservative", "optimistic", "standard", "median"])
@pytest.mark.parametrize("shape", SHAPES)
def test_rank_matches_numpy_with_many_ties(mode, shape):
    rng = np.random.default_rng(hash(shape) % 2**32)
    scores = tied_scores(rng, *shape)
    targets = rng.integers(0, shape[1], size=shape[0])
    got = rank_targets(scores, targets, mode)
    assert got.dtype == np.float64 and got.shape == (shape[0],)
    np.testing.assert_array_equal(got, reference_ranks(scores, targets, mode))


def test_rank_modes_on_a_hand_example():
    scores = np.array([[0.5, 0.9, 0.5, 0.1, 0.5]], dtype=np.float32)
    target = np.array([0])
    # one item above the target, three (target included) equal to it
    assert rank_targets(scores, target, "conservative")[0] == 4
    assert rank_targets(scores, target, "optimistic")[0] == 2
    assert rank_targets(scores, target, "standard")[0] == 2
    assert rank_targets(scores, target, "median")[0] == 3
    assert rank_targets(scores, np.array([1]))[0] == 1
    assert rank_targets(scores, np.array([3]))[0] == 5


def test_rank_with_infinities():
    scores = np.array([[-np.inf, 1.0, np.inf, -np.inf, 0.0]], dtype=np.float32)
    assert rank_targets(scores, [0])[0] == 5
    assert rank_targets(scores, [0], "optimistic")[0] == 4
    assert rank_targets(scores, [2])[0] == 1


def test_rank_distinct_scores_random():
    rng = np.random.default_rng(1)
    scores = rng.standard_normal((33, 1001)).astype(np.float32)
    targets = rng.integers(0, 1001, size=33)
    for mode in ("conservative", "optimistic", "median"):
        np.testing.assert_array_equal(rank_targets(scores, targets, mode),
                                      reference_ranks(scores, targets, "optimistic"))


@pytest.mark.parametrize("n_threads", [0, 1, 2, 3])
def test_rank_thread_counts_agree(n_threads):
    rng = np.random.default_rng(2)
    scores = tied_scores(rng, 40, 3001, levels=7)  # big enough to use the OpenMP path
    targets = rng.integers(0, 3001, size=40)
    np.testing.assert_array_equal(rank_targets(scores, targets, n_threads=n_threads),
                                  reference_ranks(scores, targets, "conservative"))


def test_rank_converts_float64_and_strided_input(recwarn):
    rng = np.random.default_rng(3)
    base = tied_scores(rng, 12, 50)
    targets = rng.integers(0, 25, size=6)
    strided = base[::2, ::2]  # non-contiguous float32: copied silently
    assert not strided.flags.c_contiguous
    np.testing.assert_array_equal(rank_targets(strided, targets),
                                  reference_ranks(np.ascontiguousarray(strided), targets, "conservative"))
    fortran = np.asfortranarray(base)
    t12 = rng.integers(0, 50, size=12)
    np.testing.assert_array_equal(rank_targets(fortran, t12), reference_ranks(base, t12, "conservative"))
    assert len(recwarn) == 0
    as64 = base.astype(np.float64)
    with pytest.warns(UserWarning, match="float64 to float32"):
        np.testing.assert_array_equal(rank_targets(as64, t12), reference_ranks(base, t12, "conservative"))
    as_int = (base * 4).astype(np.int64)
    with pytest.warns(UserWarning, match="int64 to float32"):
        np.testing.assert_array_equal(rank_targets(as_int, t12), reference_ranks(base, t12, "conservative"))
    # int32 / uint targets are accepted
    np.testing.assert_array_equal(rank_targets(base, t12.astype(np.int32)),
                                  rank_targets(base, t12.astype(np.uint16)))


def test_float64_rounding_ties_are_counted():
    # 1 + 1e-12 and 1 differ in float64 but are the same float32: a tie after conversion
    scores = np.array([[1.0 + 1e-12, 1.0, 0.5]])
    with pytest.warns(UserWarning, match="ties"):
        assert rank_targets(scores, [1])[0] == 2


def test_rank_readonly_input():
    scores = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)
    scores.setflags(write=False)
    assert rank_targets(scores, [0])[0] == 3


def test_rank_nan_raises_model_fit_error():
    scores = np.zeros((4, 100), dtype=np.float32)
    scores[2, 77] = np.nan
    with pytest.raises(ModelFitError, match="row 2"):
        rank_targets(scores, np.zeros(4, dtype=np.int64))
    scores[2, 77] = 0
    scores[3, 5] = np.nan  # the target itself is NaN
    with pytest.raises(ModelFitError, match="row 3"):
        rank_targets(scores, np.full(4, 5))


@pytest.mark.parametrize("scores, targets, match", [
    (np.zeros(5, dtype=np.float32), [0], "2-D"),
    (np.zeros((2, 5), dtype=np.float32), [0], "shape"),
    (np.zeros((2, 5), dtype=np.float32), [[0], [1]], "shape"),
    (np.zeros((2, 5), dtype=np.float32), [0, 5], "outside"),
    (np.zeros((2, 5), dtype=np.float32), [-1, 0], "outside"),
    (np.zeros((2, 5), dtype=np.float32), [0.0, 1.0], "integer"),
    (np.zeros((2, 0), dtype=np.float32), [0, 0], "no item"),
    (np.zeros((2, 5), dtype=complex), [0, 0], "real"),
    (np.array([["a", "b"]]), [0], "real"),
])
def test_rank_bad_input(scores, targets, match):
    with pytest.raises(ValueError, match=match):
        rank_targets(scores, targets)


def test_rank_bad_mode_and_empty_batch():
    with pytest.raises(ValueError, match="mode"):
        rank_targets(np.zeros((1, 3), dtype=np.float32), [0], "pessimistic")
    assert rank_targets(np.zeros((0, 3), dtype=np.float32), np.zeros(0, dtype=np.int64)).shape == (0,)


# ---------------------------------------------------------------------------------------------
# top-k
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape, k", [((1, 1), 1), ((3, 7), 7), ((5, 17), 3), ((4, 100), 1),
                                      ((16, 1000), 20), ((3, 4099), 50), ((2, 33), 32)])
@pytest.mark.parametrize("levels", [3, 1000])
def test_top_k_matches_stable_argsort(shape, k, levels):
    rng = np.random.default_rng(shape[1] * 7 + k)
    scores = tied_scores(rng, *shape, levels=levels)
    idx, val = top_k(scores, k)
    ref_idx, ref_val = reference_top_k(scores, k)
    assert idx.dtype == np.int64 and val.dtype == np.float32 and idx.shape == (shape[0], k)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_array_equal(val, ref_val)


def test_top_k_with_minus_inf_excluded_items():
    rng = np.random.default_rng(5)
    scores = tied_scores(rng, 8, 60)
    scores[rng.random(scores.shape) < 0.6] = -np.inf
    scores[0, :] = -np.inf
    scores[1, 3] = np.inf
    for k in (1, 10, 60):
        idx, val = top_k(scores, k)
        ref_idx, ref_val = reference_top_k(scores, k)
        np.testing.assert_array_equal(idx, ref_idx)
        np.testing.assert_array_equal(val, ref_val)
    assert list(top_k(scores, 3)[0][0]) == [0, 1, 2]  # all excluded: lowest indices, -inf


def test_top_k_descending_input_is_worst_case_for_heap():
    scores = np.tile(np.arange(500, dtype=np.float32), (3, 1))
    scores[1] = scores[1][::-1]
    idx, _ = top_k(scores, 10)
    np.testing.assert_array_equal(idx[0], np.arange(499, 489, -1))
    np.testing.assert_array_equal(idx[1], np.arange(10))


def test_top_k_threads_and_conversion():
    rng = np.random.default_rng(6)
    scores = tied_scores(rng, 50, 2000, levels=5)
    ref_idx, _ = reference_top_k(scores, 25)
    for n_threads in (0, 1, 2, 3):
        np.testing.assert_array_equal(top_k(scores, 25, n_threads=n_threads)[0], ref_idx)
    np.testing.assert_array_equal(top_k(np.asfortranarray(scores), 25)[0], ref_idx)
    with pytest.warns(UserWarning, match="float64"):
        np.testing.assert_array_equal(top_k(scores.astype(np.float64), 25)[0], ref_idx)


def test_top_k_nan_and_bad_k():
    scores = np.zeros((2, 10), dtype=np.float32)
    scores[1, 8] = np.nan
    with pytest.raises(ModelFitError, match="row 1"):
        top_k(scores, 3)
    scores[1, 8] = 0
    scores[0, 1] = np.nan  # inside the first k
    with pytest.raises(ModelFitError, match="row 0"):
        top_k(scores, 3)
    far = np.zeros((3, 1000), dtype=np.float32)
    far[2, 901] = np.nan  # in a late chunk where nothing else beats the kept entries
    with pytest.raises(ModelFitError, match="row 2"):
        top_k(far, 5)
    for k in (0, 11, -1, 2.0, True, None):
        with pytest.raises(ValueError, match="k must be"):
            top_k(np.zeros((2, 10), dtype=np.float32), k)
    idx, val = top_k(np.zeros((0, 10), dtype=np.float32), 4)
    assert idx.shape == (0, 4) and val.shape == (0, 4)


@pytest.mark.parametrize("n_threads", [-1, 1.0, True, None])
def test_bad_thread_counts(n_threads):
    scores = np.zeros((2, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="n_threads"):
        rank_targets(scores, [0, 1], n_threads=n_threads)
    with pytest.raises(ValueError, match="n_threads"):
        top_k(scores, 1, n_threads=n_threads)


def test_kernel_introspection():
    assert isinstance(_ranking.openmp_enabled(), bool)
    assert _ranking.max_threads() >= 1


# ---- fused scoring + ranking over item panels (AVX-512F and AVX2 + FMA tiles) ----------------
from gru_engine.ranking import (PANEL_PATHS, ItemPanels, panel_path, panels_available,  # noqa: E402
                                ranks_from_counts)

needs_panels = pytest.mark.skipif(not panels_available(),
                                  reason="the panel kernels need x86-64 with AVX-512F or AVX2")
_CPU_ISA = _ranking.panel_isa()


@pytest.fixture(params=[2, 1], ids=["avx512", "avx2"])
def isa(request):
    """Run the test with each tile this CPU has: AVX-512 where it has AVX-512F, AVX2 on every
    CPU with AVX2 + FMA (AVX-512 ones included, where the tile is forced). Skips only for a
    tile the CPU lacks."""
    if request.param > _CPU_ISA:
        pytest.skip(f"this CPU has no {PANEL_PATHS[request.param]} tile (panel ISA {_CPU_ISA})")
    assert _ranking.limit_panel_isa(request.param) == request.param
    assert panel_path() == PANEL_PATHS[request.param]
    yield request.param
    _ranking.limit_panel_isa(2)
    assert _ranking.panel_isa() == _CPU_ISA


def fmaf_chain(A, B):
    """The panel kernels' scores computed independently: S[i, j] = fmaf(A[i, K-1], B[K-1, j],
    ... fmaf(A[i, 0], B[0, j], 0)), each step one float32 rounding of the exact a * b + s
    (the product of two float32 is exact in float64; TwoSum gives the exact error of the
    float64 sum, which decides the float32 rounding only at a float32 midpoint)."""
    A = np.asarray(A, np.float32)
    B = np.asarray(B, np.float32)
    S = np.zeros((A.shape[0], B.shape[1]), np.float32)
    for k in range(A.shape[1]):
        p = A[:, k, None].astype(np.float64) * B[None, k, :].astype(np.float64)
        c = S.astype(np.float64)
        s = p + c
        bp = s - p
        e = (p - (s - bp)) + (c - bp)  # p + c == s + e exactly
        r = s.astype(np.float32)
        r64 = r.astype(np.float64)
        other = np.nextafter(r, np.where(s > r64, np.inf, -np.inf).astype(np.float32))
        at_mid = (s == (r64 + other.astype(np.float64)) / 2) & (e != 0) & (r64 != s)
        S = np.where(at_mid & ((r64 < s) == (e > 0)), other, r)
    return S


#: 1 + fmaf(2^-24 (1 + 2^-12), 1 - 2^-12 + 2^-24): the exact sum is 1 + 2^-24 + 2^-60, just above
#: the float32 midpoint 1 + 2^-24, so one rounding gives 1 + 2^-23; the float64 sum rounds to
#: the midpoint itself, whose tie-to-even float32 is 1
MIDPOINT_CASE = (np.array([[1, 2**-24 * (1 + 2**-12)]], np.float32),
                 np.array([[1], [1 - 2**-12 + 2**-24]], np.float32))


def test_fmaf_chain_reference_rounds_once_per_step():
    """The reference itself: one fma rounding, not two (a*b rounded, then the sum)."""
    a = np.float32(1 + 2**-12)
    A = np.array([[1, a]], np.float32)
    B = np.array([[-(1 + 2**-11)], [a]], np.float32)
    # fmaf(a, a, -(1 + 2^-11)) = 2^-24 exactly; a*a rounded to float32 first would give 0
    assert fmaf_chain(A, B)[0, 0] == np.float32(2**-24)
    A, B = MIDPOINT_CASE
    assert fmaf_chain(A, B)[0, 0] == np.float32(1 + 2**-23)
    rng = np.random.default_rng(0)
    A = rng.integers(-4, 5, (6, 9)).astype(np.float32)
    B = rng.integers(-4, 5, (9, 5)).astype(np.float32)
    np.testing.assert_array_equal(fmaf_chain(A, B), A @ B)


def integer_problem(rng, R, K, N, levels=3):
    """A @ B with small integer entries: every summation order gives the exact same float32
    scores (so BLAS is a bit-exact reference) and targets tie with many items."""
    A = rng.integers(-levels, levels + 1, (R, K)).astype(np.float32)
    B = rng.integers(-levels, levels + 1, (K, N)).astype(np.float32)
    return A, B


# rows not a multiple of the 8-row tile, items not a multiple of the 32-item panel, K = 1,
# more rows than the kernel's 256-row chunk; 3 row chunks x 3 groups of 16 panels
PANEL_SHAPES = [(1, 1, 1), (3, 1, 5), (8, 7, 32), (13, 101, 2933), (9, 64, 31), (300, 17, 77),
                (520, 5, 1100)]


@needs_panels
@pytest.mark.parametrize("mode", ["conservative", "optimistic", "median"])
@pytest.mark.parametrize("R,K,N", PANEL_SHAPES)
def test_panels_scores_and_ranks_exact(R, K, N, mode, isa):
    rng = np.random.default_rng(R * 1000 + K * 10 + N)
    A, B = integer_problem(rng, R, K, N)
    panels = ItemPanels(B)
    out = np.full((R, N + 3), -7.0, np.float32)  # row stride > n_items: the rest untouched
    panels.scores(A, out)
    np.testing.assert_array_equal(out[:, :N], A @ B)
    assert np.all(out[:, N:] == -7.0)
    assert panels.last_path == PANEL_PATHS[isa]
    panels.last_path = None
    targets = rng.integers(0, N, R)
    np.testing.assert_array_equal(panels.rank(A, targets, mode),
                                  reference_ranks(A @ B, targets, mode))
    assert panels.last_path == PANEL_PATHS[isa]


@needs_panels
@pytest.mark.parametrize("R,K,N", [(37, 101, 2933), (11, 481, 100), (300, 7, 65)])
def test_panels_scores_are_the_fmaf_chain(R, K, N, isa):
    """Random floats: each tile's scores are bit for bit the independent fmaf-chain reference
    (rounding cases included), and its ranks those of the reference scores."""
    rng = np.random.default_rng(R + K + N)
    A = rng.standard_normal((R, K)).astype(np.float32)
    B = rng.standard_normal((K, N)).astype(np.float32)
    B[:, 10:20] = B[:, 3:4]  # exact ties
    A[0, :2], B[:2, 0], A[0, 2:] = MIDPOINT_CASE[0][0], MIDPOINT_CASE[1][:, 0], 0
    panels = ItemPanels(B)
    S = panels.scores(A, np.empty((R, N), np.float32))
    assert panels.last_path == PANEL_PATHS[isa]
    want = fmaf_chain(A, B)
    assert want[0, 0] == np.float32(1 + 2**-23)
    np.testing.assert_array_equal(S, want)
    targets = rng.integers(0, N, R)
    targets[:3] = 3
    for mode in ("conservative", "optimistic", "median"):
        np.testing.assert_array_equal(panels.rank(A, targets, mode),
                                      reference_ranks(want, targets, mode))


@needs_panels
def test_panels_against_blas(isa):
    """Each tile against the BLAS GEMM on random floats (rounding apart) and a tie-heavy integer
    block (exact in every order: same scores, same ranks)."""
    rng = np.random.default_rng(9)
    A = rng.standard_normal((70, 129)).astype(np.float32)
    B = rng.standard_normal((129, 1500)).astype(np.float32)
    panels = ItemPanels(B)
    blas = A @ B
    np.testing.assert_allclose(panels.scores(A, np.empty_like(blas)), blas, rtol=0, atol=1e-3)
    A, B = integer_problem(rng, 70, 129, 1500, levels=1)
    panels, blas = ItemPanels(B), A @ B
    targets = rng.integers(0, 1500, 70)
    np.testing.assert_array_equal(panels.scores(A, np.empty_like(blas)), blas)
    for mode in ("conservative", "median"):
        np.testing.assert_array_equal(panels.rank(A, targets, mode),
                                      rank_targets(blas, targets, mode))
    assert panels.last_path == PANEL_PATHS[isa]


def test_panels_refuse_without_a_tile():
    """With no tile (a CPU without AVX2, or the level limited to 0) ItemPanels raises instead of
    returning counts it never computed."""
    panels = ItemPanels(np.ones((3, 40), np.float32))
    try:
        assert _ranking.limit_panel_isa(0) == 0
        assert not panels_available() and panel_path() is None
        with pytest.raises(RuntimeError, match="cannot run"):
            panels.rank(np.ones((2, 3), np.float32), np.zeros(2, np.int64))
        with pytest.raises(RuntimeError, match="cannot run"):
            panels.scores(np.ones((2, 3), np.float32), np.empty((2, 40), np.float32))
    finally:
        _ranking.limit_panel_isa(2)
    assert _ranking.panel_isa() == _CPU_ISA


@needs_panels
def test_panels_rank_is_the_rank_of_its_own_scores(isa):
    """Random floats: the ranks equal rank_targets of the kernel's own scores, ties included
    (the target's score is the same fmaf chain as its tile entry)."""
    rng = np.random.default_rng(5)
    A = rng.standard_normal((50, 101)).astype(np.float32)
    B = rng.standard_normal((101, 1000)).astype(np.float32)
    B[:, 10:20] = B[:, 3:4]  # ten copies of item 3: exact ties
    panels = ItemPanels(B)
    targets = rng.integers(0, 1000, 50)
    targets[:5] = 3
    S = panels.scores(A, np.empty((50, 1000), np.float32))
    for mode in ("conservative", "optimistic", "median"):
        np.testing.assert_array_equal(panels.rank(A, targets, mode),
                                      rank_targets(S, targets, mode))
    np.testing.assert_allclose(S, A.astype(np.float64) @ B, rtol=1e-4, atol=1e-4)


@needs_panels
def test_panels_nan_and_bad_input(isa):
    rng = np.random.default_rng(6)
    A, B = integer_problem(rng, 10, 4, 40)
    A[7, 2] = np.nan
    panels = ItemPanels(B)
    with pytest.raises(ModelFitError, match="row 7"):
        panels.rank(A, np.zeros(10, np.int64))
    with pytest.raises(ValueError, match="C-contiguous float32"):
        panels.rank(A.astype(np.float64), np.zeros(10, np.int64))
    with pytest.raises(ValueError, match="outside"):
        panels.rank(np.nan_to_num(A), np.full(10, 40))
    with pytest.raises(ValueError, match="rank mode"):
        panels.rank(np.nan_to_num(A), np.zeros(10, np.int64), "best")
    with pytest.raises(ValueError, match="out must be"):
        panels.scores(A, np.empty((10, 39), np.float32))
    with pytest.raises(ValueError, match="item matrix"):
        ItemPanels(np.zeros((0, 3), np.float32))


@needs_panels
@pytest.mark.parametrize("R,K,N", [(13, 101, 2933), (520, 5, 1100), (7, 3, 40)])
def test_panels_counts_over_a_split_of_the_items_add_up(R, K, N, isa):
    """count over any split of the panel range (as threads split it) adds up to the counts of
    all items, ties included; target_scores are the tiles' own values bit for bit."""
    rng = np.random.default_rng(R + N)
    A, B = integer_problem(rng, R, K, N, levels=1)  # tie-heavy
    panels = ItemPanels(B)
    assert panels.n_panels == -(-N // 32)
    targets = rng.integers(0, N, R)
    S = A @ B
    t = panels.target_scores(A, targets)
    np.testing.assert_array_equal(t.view(np.int32), S[np.arange(R), targets].view(np.int32))
    cuts = np.unique(np.r_[0, rng.integers(0, panels.n_panels + 1, 4), panels.n_panels])
    n_greater, n_equal = np.zeros(R, np.int64), np.zeros(R, np.int64)
    has_nan = np.zeros(R, np.uint8)
    for p0, p1 in zip(cuts[:-1], cuts[1:]):
        panels.count(A, t, n_greater, n_equal, has_nan, (p0, p1))
    panels.count(A, t, n_greater, n_equal, has_nan, (1, 1))  # an empty range adds nothing
    np.testing.assert_array_equal(n_greater, (S > t[:, None]).sum(1))
    np.testing.assert_array_equal(n_equal, (S == t[:, None]).sum(1))
    assert not has_nan.any() and panels.last_path == PANEL_PATHS[isa]
    for mode in ("conservative", "median"):
        np.testing.assert_array_equal(ranks_from_counts(n_greater, n_equal, has_nan, mode, "x"),
                                      reference_ranks(S, targets, mode))
    A[2, 0] = np.nan
    nan_flags = np.zeros(R, np.uint8)
    panels.count(A, panels.target_scores(A, targets), n_greater, n_equal, nan_flags, (0, 1))
    assert nan_flags[2] == 1 and nan_flags.sum() == 1


@needs_panels
def test_panels_count_bad_input(isa):
    rng = np.random.default_rng(4)
    A, B = integer_problem(rng, 6, 4, 70)
    panels = ItemPanels(B)  # 3 panels
    t = panels.target_scores(A, np.zeros(6, np.int64))
    arrays = np.zeros(6, np.int64), np.zeros(6, np.int64), np.zeros(6, np.uint8)
    for bad in ((0, 4), (2, 1), (-1, 2)):
        with pytest.raises(ValueError, match="panels must be a range within"):
            panels.count(A, t, *arrays, bad)
    with pytest.raises(ValueError, match="n_greater must be a contiguous"):
        panels.count(A, t, np.zeros(6, np.int32), *arrays[1:])
    with pytest.raises(ValueError, match="t must be a contiguous"):
        panels.count(A, t[:5], *arrays)
    with pytest.raises(ValueError, match="target item index outside"):
        panels.target_scores(A, np.full(6, 70))
    with pytest.raises(ValueError, match="targets must have shape"):
        panels.target_scores(A, np.zeros(5, np.int64))


@needs_panels
def test_panel_isas_give_identical_scores():
    """The AVX-512 and AVX2 tiles compute the same fmaf chains: bit-identical scores."""
    if _CPU_ISA < 2:
        pytest.skip("needs a CPU with both tiles (AVX-512F)")
    rng = np.random.default_rng(8)
    A = rng.standard_normal((37, 101)).astype(np.float32)
    B = rng.standard_normal((101, 2933)).astype(np.float32)
    panels = ItemPanels(B)
    try:
        outs = []
        for level in (2, 1):
            _ranking.limit_panel_isa(level)
            outs.append(panels.scores(A, np.empty((37, 2933), np.float32)))
    finally:
        _ranking.limit_panel_isa(2)
    np.testing.assert_array_equal(outs[0], outs[1])
    assert _ranking.limit_panel_isa(0) == 0 and not panels_available()
    assert _ranking.limit_panel_isa(2) == _CPU_ISA


# ---- fused scoring + top-k over item panels ---------------------------------------------------
from gru_engine.ranking import Exclusions  # noqa: E402


def random_exclusions(rng, R, N, frac):
    """Per row a random set of item indices (about ``frac`` of the items), some rows empty."""
    return [set(rng.choice(N, size=rng.integers(0, max(1, int(frac * N)) + 1), replace=False)
                .tolist()) if r % 3 else set() for r in range(R)]


def reference_top_k_excluded(S, k, excluded):
    """NumPy: -inf written into the excluded entries, then the stable argsort reference."""
    S = S.copy()
    for i, e in enumerate(excluded):
        S[i, sorted(e)] = -np.inf
    return reference_top_k(S, k)


# k <= 128: the kernel's sorted-array rows, k > 128: its heap rows; rows beyond the 256-row
# chunk; items not a multiple of the panel; k = n_items
TOP_K_SHAPES = [(1, 1, 1, 1), (3, 5, 7, 7), (13, 101, 2933, 20), (300, 17, 77, 50),
                (9, 64, 31, 3), (70, 9, 3000, 128), (5, 8, 300, 129), (70, 9, 3000, 200),
                (260, 33, 1000, 1000)]


@needs_panels
@pytest.mark.parametrize("levels", [1, 1000])  # many ties / nearly distinct scores
@pytest.mark.parametrize("R,K,N,k", TOP_K_SHAPES)
def test_panels_top_k_equals_scores_then_top_k(R, K, N, k, levels, isa):
    """The fused kernel against the old path (panel scores, then top_k) bit for bit, and both
    against NumPy's stable argsort, with and without exclusions."""
    rng = np.random.default_rng(R * 7 + K * 3 + N + levels)
    A, B = integer_problem(rng, R, K, N, levels)
    panels = ItemPanels(B)
    S = panels.scores(A, np.empty((R, N), np.float32))
    np.testing.assert_array_equal(S, A @ B)  # integers: exact
    for excluded in (None, random_exclusions(rng, R, N, 0.5)):
        ex = None if excluded is None else Exclusions(excluded, N)
        panels.last_path = None
        idx, val = panels.top_k(A, k, ex)
        assert panels.last_path == PANEL_PATHS[isa]
        assert idx.dtype == np.int64 and val.dtype == np.float32 and idx.shape == (R, k)
        old = S.copy()
        if ex is not None:
            ex.mask(old)
        old_idx, old_val = top_k(old, k)
        np.testing.assert_array_equal(idx, old_idx)
        np.testing.assert_array_equal(val.view(np.int32), old_val.view(np.int32))
        ref_idx, ref_val = reference_top_k_excluded(S, k, excluded or [()] * R)
        np.testing.assert_array_equal(idx, ref_idx)
        np.testing.assert_array_equal(val, ref_val)


@needs_panels
def test_panels_top_k_on_real_valued_scores(isa):
    """Non-integer inputs: the fused values are the panel scores' bits (the fmaf chain)."""
    rng = np.random.default_rng(11)
    A = rng.standard_normal((40, 33)).astype(np.float32)
    B = rng.standard_normal((33, 5000)).astype(np.float32)
    panels = ItemPanels(B)
    S = panels.scores(A, np.empty((40, 5000), np.float32))
    np.testing.assert_array_equal(S, fmaf_chain(A, B))
    for k in (1, 20, 128, 129, 300):
        idx, val = panels.top_k(A, k)
        ref_idx, ref_val = reference_top_k(S, k)
        np.testing.assert_array_equal(idx, ref_idx)
        np.testing.assert_array_equal(val.view(np.int32), ref_val.view(np.int32))


@needs_panels
@pytest.mark.parametrize("k", [5, 80, 150])
def test_panels_top_k_pads_with_excluded_items(k, isa):
    """A row with fewer than k items left: the rest of its answer is its excluded items at
    -inf, lowest index first (as -inf written into the scores); a fully excluded row too."""
    rng = np.random.default_rng(3)
    N = 200
    A, B = integer_problem(rng, 4, 6, N)
    panels = ItemPanels(B)
    keep = [[], [7], list(range(10, N, 3)), list(range(N))]  # items NOT excluded per row
    excluded = [set(range(N)) - set(kp) for kp in keep]
    idx, val = panels.top_k(A, k, Exclusions(excluded, N))
    ref_idx, ref_val = reference_top_k_excluded(A @ B, k, excluded)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_array_equal(val, ref_val)
    assert np.isneginf(val[0]).all() and list(idx[0]) == list(range(k))
    assert idx[1, 0] == 7 and np.isneginf(val[1, 1:]).all() and list(idx[1, 1:4]) == [0, 1, 2]
    assert np.isfinite(val[3]).all()


@needs_panels
def test_panels_top_k_with_infinite_scores(isa):
    """Scores of +-inf from the inputs tie like any value; -inf ties with excluded items."""
    B = np.zeros((2, 40), np.float32)
    B[0, 5] = np.inf
    B[0, 9] = -np.inf
    B[1, :] = np.arange(40) % 4
    A = np.array([[1, 1], [1, 0]], np.float32)
    panels = ItemPanels(B)
    S = panels.scores(A, np.empty((2, 40), np.float32))
    excluded = [{3, 5}, {1, 2, 3}]
    for k in (1, 3, 40):
        for ex in (None, excluded):
            idx, val = panels.top_k(A, k, None if ex is None else Exclusions(ex, 40))
            ref_idx, ref_val = reference_top_k_excluded(S, k, ex or [(), ()])
            np.testing.assert_array_equal(idx, ref_idx)
            np.testing.assert_array_equal(val, ref_val)


@needs_panels
def test_panels_top_k_nan_and_bad_input(isa):
    rng = np.random.default_rng(4)
    A, B = integer_problem(rng, 10, 5, 300)
    panels = ItemPanels(B)
    bad = A.copy()
    bad[6, 2] = np.nan  # row 6 scores NaN everywhere
    with pytest.raises(ModelFitError, match="row 6"):
        panels.top_k(bad, 5)
    B2 = B.copy()
    B2[:, 250] = np.nan  # one NaN item, late in every row
    with pytest.raises(ModelFitError, match="10 of 10"):
        ItemPanels(B2).top_k(A, 3)
    # ... excluded: masked out as -inf before top_k would see it, so no error
    idx, _ = ItemPanels(B2).top_k(A, 3, Exclusions([{250}] * 10, 300))
    assert not (idx == 250).any()
    for k in (0, 301, -1, 2.0, True):
        with pytest.raises(ValueError, match="k must be"):
            panels.top_k(A, k)
    with pytest.raises(ValueError, match="exclude must be Exclusions of 10 rows"):
        panels.top_k(A, 3, Exclusions([{1}] * 9, 300))
    with pytest.raises(ValueError, match="exclude must be"):
        panels.top_k(A, 3, [{1}] * 10)
    with pytest.raises(ValueError, match="C-contiguous float32"):
        panels.top_k(A.astype(np.float64), 3)
    idx, val = panels.top_k(np.zeros((0, 5), np.float32), 3)
    assert idx.shape == val.shape == (0, 3)


def test_exclusions_normalise_and_slice():
    ex = Exclusions([{5, 1, 99}, None, [3, 3, -1, 2], np.array([7])], n_items=10)
    assert ex.n_rows == 4 and ex.indptr.tolist() == [0, 2, 2, 4, 5]
    assert ex.indices.tolist() == [1, 5, 2, 3, 7]  # sorted, distinct, outside [0, 10) dropped
    part = ex[1:3]
    assert part.n_rows == 2 and part.indices[part.indptr[0]:part.indptr[-1]].tolist() == [2, 3]
    S = np.zeros((2, 10), np.float32)
    part.mask(S)
    assert np.isneginf(S[1, [2, 3]]).all() and np.isfinite(S[0]).all() and np.isneginf(S).sum() == 2
    assert Exclusions([], 4).n_rows == 0
    with pytest.raises(ValueError, match="contiguous"):
        ex[::2]
