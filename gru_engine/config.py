"""Every tunable constant of the engine in one place (numerical epsilons, block sizes, size
limits). The CPU kernels read these at compile time: after changing one, clear Numba's cache
(the ``__pycache__`` folders of ``gru_engine/backends/cpu``) so that cached kernels are rebuilt.
The CUDA kernels' own constants (e.g. ``kernels/common.cuh``) must agree with the ones marked
"CUDA" here.
"""

#: Adagrad: ``step = g / sqrt(acc + ADAGRAD_EPS)`` (the official GRU4Rec value; CPU and CUDA)
ADAGRAD_EPS = 1e-6
#: losses: ``-log(p + LOG_EPS)`` (the official GRU4Rec value; CPU and CUDA)
LOG_EPS = 1e-24
#: divergence guard of fit: an epoch loss above this factor times the best earlier epoch's
DIVERGENCE_LOSS_FACTOR = 3.0
#: divergence guard of fit (cross-entropy): an epoch loss above this factor times an upper bound
#: of the loss that constant scores give, log C + logq * log(max support), C sampled columns
DIVERGENCE_CONSTANT_FACTOR = 2.0
#: divergence guard of fit: any weight beyond this magnitude after an epoch
DIVERGENCE_MAX_WEIGHT = 1e4
#: CPU training, cross-entropy: the output layer of a step runs in this many parts, one per
#: thread up to ``n_threads`` (``backends/cpu/output_parts.py``); fixed, so that results do not
#: depend on ``n_threads``
TRAIN_OUTPUT_PARTS = 2
#: CPU training, cross-entropy: the parts run on threads (BLAS on one) up to this combined
#: hidden size, above it BLAS gets the threads (``threads.training_threads``). Measured on 2
#: cores: hidden 100 (rsc15-100k) 59-67k events/s with parts vs 36-52k with BLAS threads;
#: hidden 480 (yoochoose-1-64, batch 48) 7.46k with parts (and the products and updates side
#: by side, ``backends/cpu/overlap.py``) vs 6.50k with BLAS threads (session 8; 6.4-7.2k vs
#: 7.1-8.9k before the side-by-side work); larger hidden sizes not measured
TRAIN_PARTS_MAX_HIDDEN = 512
#: CUDA: threads per block of the element-wise and row kernels (a multiple of 32, <= 1024)
CUDA_BLOCK = 256
#: CUDA: the most CUDA graphs one trainer keeps (one per phase and table-entry count of a step)
CUDA_MAX_GRAPHS = 64
#: CPU scorer: largest (n_items x 3 H_0) layer-0 input-projection table precomputed for the
#: ID-only network (float32 entries; 50M = 200 MB)
INPUT_TABLE_MAX_ENTRIES = 50_000_000
#: CPU scorer: ``rank`` balances its row blocks over a queue (one large block per thread, then
#: small ones) when a row's scoring work, n_items x combined hidden size, is at least this;
#: lighter steps get one equal block per thread
BALANCE_MIN_WORK = 2_000_000
#: CPU scorer: fewest rows per thread block of ``rank`` (smaller blocks cost more than they save)
MIN_BLOCK_ROWS = 32
#: CPU scorer: fewest item panels (32 items each) per thread block where ``rank`` splits the
#: fused counting over the items (every block meets all rows of the step): small last blocks
#: let the threads finish together (4 panels x 512 rows x 481: ~0.3 ms), a call costs ~5 us
MIN_BLOCK_PANELS = 4
#: CPU scorer: ``topk`` keeps each row's k best inside the fused panel kernel for k up to this
#: (k = 20 of 40k items: 1.4x faster than scores + top-k; the two meet near k = 200); larger k
#: scores all items into a buffer first
FUSED_TOP_K_MAX = 128
