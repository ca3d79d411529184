"""GRU4Rec training step and scoring on a CUDA device, written once against :class:`Device`.

:class:`CudaTrainer` runs the session-parallel training step of the reference page
(``/work/shared/GRU4REC-REFERENCE.md``) on device arrays; :class:`CudaScorer` follows the
evaluator's scorer protocol (``begin(n_rows)``, ``score(rows, items, new_session)``) and adds
device-side ``rank`` and ``topk``. :class:`EpochTrainer` puts a :class:`CudaTrainer` behind
the trainer interface of ``SessionGRU``'s epoch loop (that of ``backends/cpu.CPUTrainer``), so
``SessionGRU(device='cuda')`` trains with the same schedule and negative samples as on the
CPU. All run unchanged on :class:`~.device.CupyDevice` (GPU) and
:class:`~.device.EmulatedDevice` (the CPU emulator used by the tests).

Parameter layout (shared with the CPU backend; float32): ``{'Wx': [L], 'bx': [L], 'Wh': [L],
'bhn': [L], 'Wy': (n_items, H_last), 'By': (n_items,), 'E': (n_items, k) optional}``, gates
[r | z | n]. Input mode: ``'E'`` present -> embedding; else ``constrained_embedding=True`` ->
``x = Wy[item]``; else one-hot (``Wx[0]`` is (n_items, 3H_0), a row lookup).

One training step with R rows, L layers, C = R + n_sample sampled columns::

    layer-0 input gather (+ dropout)  -> per layer: GEMM x@Wx, bias, GEMM h@Wh, fused cell
    -> gather Wy/By[cols] -> GEMM scores, bias [-> final act] -> fused loss (+ dS)
    -> GEMMs dBy/dWy/dh -> per layer: fused cell backward, GEMMs dWx/dWh/dx, column sums
    -> dense Adagrad per GRU array -> sparse Adagrad (claim/combine/update) for item rows

Launches per step (counted with ``device.stats`` in the tests): 9L + 12 kernels and 5L + 3 GEMMs
for L layers (one-hot input: one kernel more, 3 GEMMs fewer; rows carried from the previous
step, as in every epoch step, add L state gathers; dropout adds L (+1) mask kernels, with an
embedding/constrained input 2 mask multiplies, and 1 step-counter kernel; logq 2 gathers, a
final activation 2 kernels), plus L + 3 device-to-device copies. The roofline MODEL of
``bench/cuda_static.py`` puts the work of a step at ~6 us on an H100 at hidden 100 / batch 64 /
2048 samples, so at that shape the 36 host-issued calls of an epoch step (1 layer, logq),
not the arithmetic, would set the time (~114 us modelled with an ASSUMED 3 us per launch); at
hidden 1000 / batch 256 the modelled work (~130-260 us) dominates. Launches are asynchronous and
nothing in a step synchronises with the host (the loss accumulates on the device and is read
once per :meth:`EpochTrainer.run`).

CUDA graphs (``use_graphs``, default on a :class:`~.device.CupyDevice`): the first full step
(R == batch_size, rows carried) runs kernel by kernel and sizes every scratch buffer; the next
one captures the whole step once (:meth:`Device.capture`: CuPy stream capture on the GPU, a
recorded replay in the emulator) over fixed staging buffers for ``in_items``/``out_items``/
``reset``/``src``/the sample block and a fixed loss slot; every later full step, in every epoch,
is 5 device-to-device copies into the staging buffers (4 without negative samples), ONE graph
launch and one kernel adding the step loss to the caller's slot: 7 host calls instead of 36.
What the graph removes is the host-side cost of launching its 37 nodes (Python + CuPy + driver
per call) and most inter-kernel gaps; the nodes still execute one after another on the GPU.
Per-step values never reach a captured kernel as a scalar argument (it would be frozen at
capture): the dropout step index is a counter in device memory (``dropout_mask`` reads it,
``counter_add`` advances it inside the step), R is fixed by the capture shape, and the inputs
come through the staging buffers. The shrinking tail of an epoch, steps with fixed test
masks, and steps without ``src`` run uncaptured; a capture that fails (an allocation inside
the step, a library call CuPy refuses during capture) is logged and training continues kernel
by kernel with identical results. In the emulator a graph epoch equals the uncaptured epoch
bit for bit (``tests/test_cuda_graphs.py``, which also shows a frozen per-step scalar caught).

Data stays on the device for the whole epoch: :meth:`CudaTrainer.run_epoch` and
:class:`EpochTrainer` copy the epoch's schedule once (and the sample store once per draw) and
only slice them per step.

The pieces shared with FeatureSessionGRU's CUDA backend (:mod:`.feature_cuda`) live in
:mod:`.cuda_common`.
"""
from __future__ import annotations

import logging

import numpy as np

from .cuda_common import (BLOCK, EpochLoopBase, ScorerBase, TrainerBase, _cached_net, _grid,
                          topk_device)
from .device import Device, GraphCaptureError

logger = logging.getLogger("gru_engine")

__all__ = ["CudaTrainer", "EpochTrainer", "CudaScorer", "topk_device"]


def _as_list(v):
    return list(v) if isinstance(v, (list, tuple)) else [v]


def _flat_arrays(params: dict):
    return [(f"{k}[{i}]", a) for k, v in params.items() for i, a in enumerate(_as_list(v))]


class _Net:
    """Shapes and device arrays of the network parameters (shared by trainer and scorer)."""

    def __init__(self, device: Device, params: dict, constrained_embedding: bool):
        self.dev = device
        for key in ("Wx", "bx", "Wh", "bhn", "Wy", "By"):
            if key not in params:
                raise ValueError(f"params lacks {key!r}")
        p = {k: [device.to_device(a, np.float32) for a in _as_list(params[k])]
             for k in ("Wx", "bx", "Wh", "bhn")}
        p["Wy"] = device.to_device(params["Wy"], np.float32)
        p["By"] = device.to_device(np.reshape(params["By"], -1), np.float32)
        if params.get("E") is not None:
            p["E"] = device.to_device(params["E"], np.float32)
        self.p = p
        self.L = len(p["Wh"])
        self.H = [int(w.shape[0]) for w in p["Wh"]]
        self.n_items = int(p["Wy"].shape[0])
        if "E" in p:
            self.mode = "embedding"
        elif constrained_embedding:
            self.mode = "constrained"
        else:
            self.mode = "onehot"
        in0 = {"embedding": lambda: int(p["E"].shape[1]), "constrained": lambda: self.H[-1],
               "onehot": lambda: self.n_items}[self.mode]()
        self.in_sizes = [in0] + self.H[:-1]
        for l in range(self.L):
            H = self.H[l]
            want = {"Wx": (self.in_sizes[l], 3 * H), "bx": (3 * H,), "Wh": (H, 3 * H), "bhn": (H,)}
            for key, shape in want.items():
                if tuple(p[key][l].shape) != shape:
                    raise ValueError(f"params[{key!r}][{l}] has shape {tuple(p[key][l].shape)}, "
                                     f"expected {shape} (mode {self.mode})")
        if tuple(p["Wy"].shape) != (self.n_items, self.H[-1]) or p["By"].shape[0] != self.n_items:
            raise ValueError(f"Wy/By shapes {tuple(p['Wy'].shape)}/{tuple(p['By'].shape)} do "
                             f"not match n_items={self.n_items}, H_last={self.H[-1]}")

    def to_host(self) -> dict:
        out = {k: [self.dev.to_host(a) for a in self.p[k]] for k in ("Wx", "bx", "Wh", "bhn")}
        for k in ("Wy", "By", "E"):
            if k in self.p:
                out[k] = self.dev.to_host(self.p[k])
        return out

    def input_layer0(self, items, R, gx0, x0, embed_scale=None):
        """gx0 (R, 3H0) of the layer-0 input; x0 (R, in0) receives the input vector (not in
        one-hot mode). embed_scale: (R, in0) dropout mask, or (R,) per-row scale for one-hot."""
        d, p, H3 = self.dev, self.p, 3 * self.H[0]
        if self.mode == "onehot":
            d.launch("gather_rows", _grid(R * H3), BLOCK,
                     [p["Wx"][0], H3, items, R, H3, p["bx"][0], embed_scale, gx0, H3])
            return
        src = p["E"] if self.mode == "embedding" else p["Wy"]
        k = self.in_sizes[0]
        d.launch("gather_rows", _grid(R * k), BLOCK, [src, k, items, R, k, None, None, x0, k])
        if embed_scale is not None:
            d.launch("multiply_inplace", _grid(R * k), BLOCK, [x0, embed_scale, R * k])
        d.gemm(x0, p["Wx"][0], out=gx0)
        d.launch("add_bias", _grid(R * H3), BLOCK, [gx0, p["bx"][0], R, H3])


class CudaTrainer(TrainerBase):
    """Session-parallel GRU4Rec training on a :class:`Device` (see the module docstring).

    ``params``: host parameter dict (module docstring; copied to the device); the other
    arguments are those of :class:`TrainerBase`. Hidden state: ``self.h[l]`` (batch_size, H_l)
    device arrays, rows compact (row r of a step is row r of the state after it).
    ``use_graphs``: replay full steps from a captured CUDA graph (module docstring); None = on
    for a CupyDevice, off otherwise.
    """

    def __init__(self, device: Device, params: dict, *, constrained_embedding: bool = True,
                 use_graphs: bool | None = None, **settings):
        super().__init__(device, **settings)
        d = device
        self.net = net = _Net(device, params, constrained_embedding)
        self.masks_per_step = net.L + 1
        self.n_steps = 0
        self.acc = {k: [d.zeros(a.shape) for a in v] if isinstance(v, list) else d.zeros(v.shape)
                    for k, v in net.p.items()}
        self.vel = {k: [d.zeros(a.shape) for a in v] if isinstance(v, list) else d.zeros(v.shape)
                    for k, v in net.p.items()}
        self._init_state(net.H, net.n_items)
        self.use_graphs = device.name == "cuda" if use_graphs is None else bool(use_graphs)
        self._graph = None
        self._stage = None
        self._warm = False

    def _masks(self, R, masks):
        """Dropout masks of this step: given (tests) or drawn by the ``dropout_mask`` kernel."""
        net = self.net
        embed = hidden = None
        if masks is not None:
            embed, hidden = masks.get("embed"), masks.get("hidden")
        if embed is None and self.p_embed > 0:
            width = 1 if net.mode == "onehot" else net.in_sizes[0]
            embed = self._dropout_mask("mask_e", (R,) if width == 1 else (R, width),
                                       self.p_embed, 0)
        if hidden is None:
            hidden = [None] * net.L
            if self.p_hidden > 0:
                for l in range(net.L):
                    hidden[l] = self._dropout_mask(f"mask_h{l}", (R, net.H[l]), self.p_hidden,
                                                   1 + l)
        return embed, hidden

    def step(self, in_items, out_items, reset, sample, src=None, masks=None, loss_slot=None):
        """One training step; nothing is synchronised with the host.

        With ``use_graphs``, a full step (R == batch_size, ``src`` given, no fixed ``masks``)
        runs as a replay of a CUDA graph captured once (see :meth:`_graph_step`); any other
        step, and every step when capture is off or failed, runs kernel by kernel. Both give
        the same bits.

        in_items, out_items: (R,) int32 device arrays (input / target item per row);
        reset: (R,) uint8, 1 where the row's session starts (hidden state 0);
        sample: (n_sample,) int32 shared negatives; src: (R,) int32 row of each row in the
        previous step's state (None = the same row; rows compact as in ``batching.py``);
        masks: optional ``{'embed': .., 'hidden': [..]}`` fixed dropout masks (tests).
        The step loss (sum over rows / batch_size) is added to ``loss_slot`` (a 1-element
        float32 device array; default ``self.loss_sum``).
        """
        R = self._step_rows(in_items, sample)
        if self.use_graphs and R == self.batch_size and src is not None and masks is None:
            if self._warm:
                self._graph_step(in_items, out_items, reset, sample, src, loss_slot)
                return
            self._warm = True  # this full step, run directly, sizes every scratch buffer
        self._step(in_items, out_items, reset, sample, src, masks, loss_slot)
        self.n_steps += 1

    def _capture(self):
        """Allocate the staging buffers and capture one full step reading them."""
        d, B = self.dev, self.batch_size
        st = {"in": d.zeros((B,), np.int32), "out": d.zeros((B,), np.int32),
              "reset": d.zeros((B,), np.uint8), "src": d.zeros((B,), np.int32),
              "sample": d.zeros((self.n_sample,), np.int32), "loss": d.zeros((1,)),
              "zero": d.zeros((1,))}

        d.copy(st["loss"], st["zero"])  # every call the capture makes has run once before

        def body():
            d.copy(st["loss"], st["zero"])
            self._step(st["in"], st["out"], st["reset"], st["sample"], st["src"], None,
                       st["loss"])

        self._graph = d.capture(body)
        self._stage = st

    def _graph_step(self, in_items, out_items, reset, sample, src, loss_slot):
        """A full step as a graph replay. Host calls: copies of the step's inputs into the
        staging buffers (4, +1 with negative samples), ONE graph launch, one ``add_bias``
        adding the staged step loss into ``loss_slot``. The graph holds the whole step: the
        loss-slot reset, every kernel and GEMM of :meth:`_step`, and the dropout counter
        advance (per-step values come from device memory, never from kernel arguments)."""
        d = self.dev
        if self._graph is None:
            try:
                self._capture()
            except GraphCaptureError as exc:
                logger.warning("CUDA graph capture of the training step failed (%s); training "
                               "continues kernel by kernel", exc)
                self.use_graphs = False
                self._step(in_items, out_items, reset, sample, src, None, loss_slot)
                self.n_steps += 1
                return
        st = self._stage
        d.copy(st["in"], in_items)
        d.copy(st["out"], out_items)
        d.copy(st["reset"], reset)
        d.copy(st["src"], src)
        if self.n_sample:
            d.copy(st["sample"], sample)
        self._graph.launch()
        d.launch("add_bias", 1, BLOCK, [self.loss_sum if loss_slot is None else loss_slot,
                                        st["loss"], 1, 1])
        self.n_steps += 1

    def _step(self, in_items, out_items, reset, sample, src, masks, loss_slot):
        """The step's kernels and GEMMs (arguments as :meth:`step`); also what is captured."""
        d, net, p = self.dev, self.net, self.net.p
        R = int(in_items.shape[0])
        C, L, Hl = R + self.n_sample, net.L, net.H[-1]
        embed_mask, hidden_masks = self._masks(R, masks)
        # ---- forward --------------------------------------------------------------------
        xs, saveds, hpes, outs = [], [], [], []
        for l in range(L):
            H = net.H[l]
            gx = self._buf(f"gx{l}", (R, 3 * H))
            if l == 0:
                x = None if net.mode == "onehot" else self._buf("x0", (R, net.in_sizes[0]))
                net.input_layer0(in_items, R, gx, x, embed_mask)
            else:
                x = outs[l - 1]
                d.gemm(x, p["Wx"][l], out=gx)
                d.launch("add_bias", _grid(R * 3 * H), BLOCK, [gx, p["bx"][l], R, 3 * H])
            hprev = self._prev_state(l, src, R)
            gh = self._buf(f"gh{l}", (R, 3 * H))
            d.gemm(hprev, p["Wh"][l], out=gh)
            out, saved, hpe = (self._buf(f"out{l}", (R, H)), self._buf(f"saved{l}", (R, 4 * H)),
                               self._buf(f"hpe{l}", (R, H)))
            d.launch("gru_cell_forward", _grid(R * H), BLOCK,
                     [gx, gh, p["bhn"][l], hprev, reset, hidden_masks[l], out, saved, hpe, R, H])
            d.copy(self.h[l][:R], out)  # the dropped-out output is the carried state
            xs.append(x); saveds.append(saved); hpes.append(hpe); outs.append(out)
        h_last = outs[-1]
        # sampled columns [targets | negatives] and output-layer gradients; idx_wy also holds
        # the inputs (constrained), their rows of G_wy come from the backward below
        idx_wy = self._buf("idx_wy", (C + R,), np.int32)
        n_wy = C + R if net.mode == "constrained" else C
        dBy, G_wy, dh = self._output_layer(h_last, out_items, sample, idx_wy, n_wy,
                                           f"dh{L - 1}", loss_slot)
        # ---- backward (all gradients before any update) --------------------------------
        dense = []  # (param, acc, vel, grad)
        G_in = None
        for l in reversed(range(L)):
            H = net.H[l]
            dWh, dbx, dbhn = (self._buf(f"dWh{l}", (H, 3 * H)), self._buf(f"dbx{l}", (3 * H,)),
                              self._buf(f"dbhn{l}", (H,)))
            d_gx = self._cell_backward(l, dh, saveds[l], hpes[l], hidden_masks[l], dWh, dbx, dbhn)
            dense += [(p["Wh"][l], self.acc["Wh"][l], self.vel["Wh"][l], dWh),
                      (p["bx"][l], self.acc["bx"][l], self.vel["bx"][l], dbx),
                      (p["bhn"][l], self.acc["bhn"][l], self.vel["bhn"][l], dbhn)]
            if l == 0 and net.mode == "onehot":
                G_in = d_gx
                if embed_mask is not None:
                    G_in = self._buf("G_in", (R, 3 * H))
                    d.launch("gather_rows", _grid(R * 3 * H), BLOCK,
                             [d_gx, 3 * H, self.arange, R, 3 * H, None, embed_mask, G_in, 3 * H])
                continue
            x = xs[l] if l == 0 else outs[l - 1]
            dWx = self._buf(f"dWx{l}", (net.in_sizes[l], 3 * H))
            d.gemm(x, d_gx, out=dWx, trans_a=True)
            dense.append((p["Wx"][l], self.acc["Wx"][l], self.vel["Wx"][l], dWx))
            if l > 0:
                dh = self._buf(f"dh{l - 1}", (R, net.H[l - 1]))
                d.gemm(d_gx, p["Wx"][l], out=dh, trans_b=True)
            else:
                G_in = G_wy[C:] if net.mode == "constrained" else self._buf("G_e", (R, net.in_sizes[0]))
                d.gemm(d_gx, p["Wx"][0], out=G_in, trans_b=True)
                if embed_mask is not None:
                    d.launch("multiply_inplace", _grid(G_in.size), BLOCK, [G_in, embed_mask, G_in.size])
        # ---- optimiser -------------------------------------------------------------------
        for prm, acc, vel, g in dense:
            self._dense_update(prm, acc, vel, g)
        if net.mode == "constrained":
            d.copy(idx_wy[C:], in_items)
        self._sparse_update(p["Wy"], self.acc["Wy"], self.vel["Wy"], G_wy, idx_wy, n_wy, Hl)
        self._sparse_update(p["By"], self.acc["By"], self.vel["By"], dBy, idx_wy[:C], C, 1)
        if net.mode == "onehot":
            H3 = 3 * net.H[0]
            self._sparse_update(p["Wx"][0], self.acc["Wx"][0], self.vel["Wx"][0], G_in,
                                in_items, R, H3)
        elif net.mode == "embedding":
            k = net.in_sizes[0]
            self._sparse_update(p["E"], self.acc["E"], self.vel["E"], G_in, in_items, R, k)
        if self.p_embed > 0 or self.p_hidden > 0:
            d.launch("counter_add", 1, 1, [self.step_counter, 1])

    def run_epoch(self, step_rows, inputs, targets, resets, srcs, sample_store, sample_offsets):
        """Train one epoch from host arrays copied to the device ONCE, then sliced per step.

        step_rows (n_steps,) rows per step; inputs/targets (sum rows,) int item indices;
        resets (sum rows,) bool; srcs (sum rows,) int previous row of each row (as
        ``batching.schedule_advance``'s ``src``); sample_store (store,) int item indices;
        sample_offsets (n_steps,) start of each step's n_sample block in the store.
        Returns the (n_steps,) float32 step losses (each = sum over rows / batch_size), read
        with one host sync at the end; the official epoch loss is
        ``(losses * step_rows).sum() / step_rows.sum()``.
        """
        d = self.dev
        ins = d.to_device(inputs, np.int32)
        outs = d.to_device(targets, np.int32)
        rst = d.to_device(np.asarray(resets).astype(np.uint8))
        srcd = d.to_device(srcs, np.int32)
        store = d.to_device(sample_store, np.int32)
        step_rows = np.asarray(step_rows, dtype=np.int64)
        losses = d.zeros((len(step_rows),))
        pos = 0
        for t, R in enumerate(step_rows):
            R = int(R)
            o = int(sample_offsets[t])
            self.step(ins[pos:pos + R], outs[pos:pos + R], rst[pos:pos + R],
                      store[o:o + self.n_sample], srcd[pos:pos + R], loss_slot=losses[t:t + 1])
            pos += R
        return d.to_host(losses)


class EpochTrainer(EpochLoopBase):
    """:class:`CudaTrainer` behind SessionGRU's epoch loop (see :class:`EpochLoopBase`).
    Dropout masks are drawn on the device (``dropout_mask`` kernel, seeded by ``seed``), so a
    fit with dropout follows a different random stream than on the CPU."""

    trainer_class = CudaTrainer

    def fix_dropout_masks(self, embed, hidden):
        """Test hook: use these masks in every step (as ``CPUTrainer.fix_dropout_masks``)."""
        d, net = self.dev, self.trainer.net
        embed = np.asarray(embed, np.float32)
        embed = embed.reshape(len(embed), -1)
        if net.mode == "onehot":
            embed = embed[:, 0]
        self._masks = (d.to_device(embed, np.float32),
                       [d.to_device(h, np.float32) for h in hidden])

    def _train_step(self, t: int, a: int, b: int, loss_slot):
        """Step t over schedule rows [a, b); its loss goes to ``loss_slot``."""
        masks = None
        if self._masks is not None:
            masks = {"embed": self._masks[0][:b - a],
                     "hidden": [h[:b - a] for h in self._masks[1]]}
        self.trainer.step(*self._step_inputs(a, b), masks=masks, loss_slot=loss_slot)


class CudaScorer(ScorerBase):
    """SessionGRU inference on the device (protocol of :class:`ScorerBase`).

    ``cache_on``: an object (the model) for which the device copy of ``params`` is kept
    between scorers (in a weak-keyed table of this module, so copies and pickles of the model
    never carry device arrays), reused while ``params`` is the very same dict holding the very
    same arrays, on the same device: a fit or load gives the model a new params dict, so the
    copy is uploaded again then. Values written INTO the arrays in place are not seen by a
    cached copy (assign a new array or dict instead).
    """

    def __init__(self, device: Device, params: dict, constrained_embedding: bool = True,
                 final_act=(0, 0.0), cache_on=None):
        key = (device.name, getattr(device, "device_id", None), bool(constrained_embedding),
               id(params), tuple(id(a) for _, a in sorted(_flat_arrays(params))))
        net = _cached_net(cache_on, params, key,
                          lambda: _Net(device, params, constrained_embedding))
        super().__init__(device, net, final_act)

    def _forward_rows(self, rows_d, items_d, reset_d, R: int):
        """One click per row through the layers (rows_d, items_d (R,) int32, reset_d (R,)
        uint8); writes the rows' new state into ``self.h``; returns h_last (R, H_last)."""
        d, net, p = self.dev, self.net, self.net.p
        x = None
        for l in range(net.L):
            H = net.H[l]
            gx = self._buf(f"gx{l}", (R, 3 * H))
            if l == 0:
                x0 = None if net.mode == "onehot" else self._buf("x0", (R, net.in_sizes[0]))
                net.input_layer0(items_d, R, gx, x0)
            else:
                d.gemm(x, p["Wx"][l], out=gx)
                d.launch("add_bias", _grid(R * 3 * H), BLOCK, [gx, p["bx"][l], R, 3 * H])
            hprev = self._buf(f"hprev{l}", (R, H))
            d.launch("gather_rows", _grid(R * H), BLOCK,
                     [self.h[l], H, rows_d, R, H, None, None, hprev, H])
            gh = self._buf(f"gh{l}", (R, 3 * H))
            d.gemm(hprev, p["Wh"][l], out=gh)
            out = self._buf(f"out{l}", (R, H))
            d.launch("gru_cell_forward", _grid(R * H), BLOCK,
                     [gx, gh, p["bhn"][l], hprev, reset_d, None, out,
                      self._buf(f"saved{l}", (R, 4 * H)), self._buf(f"hpe{l}", (R, H)), R, H])
            d.launch("scatter_rows", _grid(R * H), BLOCK, [out, rows_d, R, H, self.h[l]])
            x = out
        return x
