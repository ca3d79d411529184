"""The context layers of the context-aware GRU (:mod:`gru_engine.context`) on a CUDA device:
the device twin of :mod:`gru_engine.backends.cpu.context_step`, with the same operations in
the same order (kernels/context.cu), so that a CUDA fit gives the CPU fit's parameters up to
float32 rounding.

:class:`DeviceContext` holds the tables ``Cin`` (R_in, w_in), ``Cout`` (R_out, Hc) and
``Ch`` (R_in, H_0) on the device and, per step, the rows' table rows ``rin`` (R, F_in) /
``rout`` (R, F_out) int32 (the current event's input context, the next event's output
context). The trainer and the scorer call its hooks from the shared forward
(:meth:`DeviceNet.subnet_forward` with ``context=``, subnet 0 only) and the trainer from its
backward:

* input ``concat``: :meth:`gates` adds ``sum_f Cin[rin_f]`` to layer 0's gate pre-activations;
  :meth:`input_backward` with ``dgx`` adds it to ``gin``;
* input ``multiply``: :meth:`modulate_input` scales the (dropped-out) input by ``1 + sum_f
  Cin[rin_f]`` (one-hot input: the gathered table row, before ``bx``); :meth:`input_backward`
  with the input gradient adds ``D * x_raw`` to ``gin`` and scales ``D`` by the modulation;
* output ``multiply``: :meth:`output` returns ``hc * (1 + sum_f Cout[rout_f])`` (a copy; the
  unmodulated ``hc`` stays for the backward); :meth:`output_backward` adds ``dhc * hc`` to
  ``gout`` and scales ``dhc`` in place;
* transition ``multiply``: :meth:`transition` returns layer 0's previous state as ``W_h``
  reads it, ``h_prev * (1 + sum_f Ch[rin_f])`` (a copy); :meth:`transition_backward` gives
  ``dWh``'s operand (the cell's effective previous state, modulated) and adds ``(dgh W_h^T) *
  h_prev`` to ``gh``.

Training (``events`` given): dense gradients ``gin``/``gout``/``gh`` zeroed by
:meth:`zero_grads` at the start of every step and a dense Adagrad + momentum of the whole
tables (:meth:`update`, after the network's updates), as the CPU trainer; untouched rows have
zero gradient and, without momentum, keep their values. Every buffer a step reads is
allocated before the step (the per-step rows through :meth:`stage` into fixed staging
buffers), so a step captured into a CUDA graph replays correctly.
"""
from __future__ import annotations

import numpy as np

from ..cpu.context_step import (CIN_CONCAT, CIN_MULTIPLY, CIN_NONE, COUT_MULTIPLY, COUT_NONE,
                                CTR_NONE, kept_events)
from ..device import Device
from .ops import BLOCK, grid


class DeviceContext:
    """Context tables and per-step context of a network on ``device``.

    cfg: ``(input mode CIN_*, output mode COUT_*[, transition mode CTR_*])``; Cin (R_in,
    w_in), Cout (R_out, Hc), Ch (R_in, H_0; None: no transition): host tables (float, copied
    to the device as float32); n_in, n_out: features per side (F_in, F_out); ``buf``: the
    owner's scratch allocator (``ScratchBuffers._buf``); ``events``:
    training only, ``(ev_in (n_events, F_in), ev_out (n_events, F_out))`` int32 host table
    rows of the training events (``all_events``; gradients and optimiser state are allocated
    then), ``events`` those of the epoch's events (:meth:`select_events`).
    """

    def __init__(self, device: Device, cfg, Cin, Cout, n_in: int, n_out: int, buf,
                 events=None, Ch=None):
        d = self.dev = device
        self.cin, self.cout = int(cfg[0]), int(cfg[1])
        self.ctr = int(cfg[2]) if len(cfg) > 2 else CTR_NONE
        self.n_in = n_in if self.cin != CIN_NONE or self.ctr != CTR_NONE else 0
        self.n_out = n_out if self.cout != COUT_NONE else 0
        self.Cin = d.to_device(np.asarray(Cin), np.float32)
        self.Cout = d.to_device(np.asarray(Cout), np.float32)
        self.Ch = d.to_device(np.zeros((0, 1)) if Ch is None else np.asarray(Ch), np.float32)
        self.w_in, self.w_out = int(self.Cin.shape[1]), int(self.Cout.shape[1])
        self._buf = buf
        self.events = self.all_events = events
        self.rin = self.rout = None  # (R, F) int32 device rows of the current step
        self._hraw = None            # the unmodulated combined state of the current step
        self._epoch = None           # training: (rin, rout) of every row of the epoch
        if events is not None:
            z = lambda a: d.zeros(a.shape)
            self.gin, self.gout = z(self.Cin), z(self.Cout)
            self.acc_in, self.vel_in = z(self.Cin), z(self.Cin)
            self.acc_out, self.vel_out = z(self.Cout), z(self.Cout)
            self.gh, self.acc_h, self.vel_h = z(self.Ch), z(self.Ch), z(self.Ch)
            self._zero_in, self._zero_out, self._zero_h = z(self.Cin), z(self.Cout), z(self.Ch)

    # ---- the rows' context ---------------------------------------------------------------------
    def set_rows(self, rin, rout) -> None:
        """The next step's rows: host ``rin`` (R, F_in), ``rout`` (R, F_out) int table rows
        (copied into the staging buffers)."""
        R = len(rin)
        host = lambda a, n: np.ascontiguousarray(np.asarray(a, np.int32)[:, :n])
        self._stage_rows(R, self.dev.to_device(host(rin, self.n_in)),
                         self.dev.to_device(host(rout, self.n_out)))

    def _stage_rows(self, R, rin, rout) -> None:
        d = self.dev
        self.rin = self._buf("ctx_rin", (R, self.n_in), np.int32)
        self.rout = self._buf("ctx_rout", (R, self.n_out), np.int32)
        if self.n_in and R:
            d.copy(self.rin, rin)
        if self.n_out and R:
            d.copy(self.rout, rout)

    def select_events(self, rows) -> None:
        """Training: the coming epochs train on the training events ``rows`` ((n,) int, in
        their epoch order: the kept events of augmented sessions); :meth:`start_epoch`'s event
        numbers then count these (each kept event keeps its own table rows)."""
        self.events = kept_events(self.all_events, rows)

    def start_epoch(self, events) -> None:
        """Training: the epoch's rows, ``events`` (n,) int the input event of every row of
        every step in schedule order (its target is the next event); their table rows copied
        to the device once."""
        d, (ev_in, ev_out) = self.dev, self.events
        events = np.asarray(events, np.int64)
        rin = ev_in[events] if self.n_in else np.zeros((len(events), 0), np.int32)
        rout = ev_out[events + 1] if self.n_out else np.zeros((len(events), 0), np.int32)
        self._epoch = (d.to_device(np.ascontiguousarray(rin, np.int32)),
                       d.to_device(np.ascontiguousarray(rout, np.int32)))

    def stage(self, a: int, b: int) -> None:
        """Training: the rows ``a:b`` of the epoch (one step) into the staging buffers."""
        self._stage_rows(b - a, self._epoch[0][a:b], self._epoch[1][a:b])

    # ---- forward ---------------------------------------------------------------------------
    def _sums(self, table, rows, R, W, out, base, accumulate, out_ld):
        self.dev.launch("context_rows_sum", grid(R * W), BLOCK,
                        [table, W, rows, R, int(rows.shape[1]), base, accumulate, out, out_ld])

    @property
    def multiplies_input(self) -> bool:
        return self.cin == CIN_MULTIPLY

    def modulate_input(self, x, R) -> None:
        """Multiply mode: ``x`` (R, w_in) ``*= 1 + sum Cin[rin]`` in place (keeps ``x_raw`` and
        the modulation)."""
        if self.cin != CIN_MULTIPLY:
            return
        d, W = self.dev, self.w_in
        raw, mod = self._buf("ctx_xraw", (R, W)), self._buf("ctx_mod_in", (R, W))
        d.copy(raw, x)
        self._sums(self.Cin, self.rin, R, W, mod, 1.0, 0, W)
        d.launch("multiply_inplace", grid(R * W), BLOCK, [x, mod, R * W])

    def gates(self, gx, R) -> None:
        """Concat mode: ``gx`` (R, 3 H_0) ``+= sum Cin[rin]`` (layer 0's gate pre-activations)."""
        if self.cin == CIN_CONCAT:
            self._sums(self.Cin, self.rin, R, self.w_in, gx, 0.0, 1, self.w_in)

    def output(self, hc, R):
        """The combined state (R, Hc) the output layer reads: ``hc * (1 + sum Cout[rout])`` (a
        new buffer) with output context, else ``hc`` itself."""
        if self.cout != COUT_MULTIPLY:
            return hc
        d, W = self.dev, self.w_out
        mod, out = self._buf("ctx_mod_out", (R, W)), self._buf("ctx_hc", (R, W))
        self._hraw = hc
        self._sums(self.Cout, self.rout, R, W, mod, 1.0, 0, W)
        d.copy(out, hc)
        d.launch("multiply_inplace", grid(R * W), BLOCK, [out, mod, R * W])
        return out

    def _modulated(self, h, R, name):
        """Buffer ``name`` = ``h`` (R, H_0) ``* (1 + sum Ch[rin])`` (the modulation kept)."""
        d, W = self.dev, int(self.Ch.shape[1])
        out = self._buf(name, (R, W))
        d.copy(out, h)
        d.launch("multiply_inplace", grid(R * W), BLOCK, [out, self._buf("ctx_mod_h", (R, W)),
                                                          R * W])
        return out

    def transition(self, hprev, R):
        """Layer 0's previous state (R, H_0) as ``W_h`` reads it: ``hprev * (1 + sum
        Ch[rin])`` (a new buffer) in transition mode, else ``hprev`` itself."""
        if self.ctr == CTR_NONE:
            return hprev
        W = int(self.Ch.shape[1])
        self._sums(self.Ch, self.rin, R, W, self._buf("ctx_mod_h", (R, W)), 1.0, 0, W)
        return self._modulated(hprev, R, "ctx_hmod")

    # ---- backward and update (training) ----------------------------------------------------
    def zero_grads(self) -> None:
        d = self.dev
        if self.cin != CIN_NONE:
            d.copy(self.gin, self._zero_in)
        if self.cout != COUT_NONE:
            d.copy(self.gout, self._zero_out)
        if self.ctr != CTR_NONE:
            d.copy(self.gh, self._zero_h)

    def transition_state(self, hpe, R):
        """The operand of ``dWh = h^T dgh`` for layer 0: the cell's effective previous state
        ``hpe`` (R, H_0; zero on reset rows), modulated in transition mode."""
        return hpe if self.ctr == CTR_NONE else self._modulated(hpe, R, "ctx_hmod_e")

    def transition_backward(self, dgh, Wh, hpe, R) -> None:
        """Transition mode: ``gh[rin] += (dgh W_h^T) * hpe`` from layer 0's ``dgh`` (R, 3 H_0)
        and ``Wh`` (H_0, 3 H_0)."""
        if self.ctr == CTR_NONE:
            return
        W = int(self.Ch.shape[1])
        dh = self._buf("ctx_dh", (R, W))
        self.dev.gemm(dgh, Wh, out=dh, trans_b=True)
        self._table_grad(dh, hpe, self.rin, R, W, self.gh)

    def _table_grad(self, D, raw, rows, R, W, G):
        F = int(rows.shape[1])
        self.dev.launch("context_table_grad", grid(F * W), BLOCK, [D, raw, rows, R, F, W, G])

    def output_backward(self, dhc, R) -> None:
        """From ``dhc`` (R, Hc) = dL/d(modulated state): ``gout[rout] += dhc * hc``, then
        ``dhc *= 1 + sum Cout[rout]`` in place (what the subnets' backward reads)."""
        if self.cout != COUT_MULTIPLY:
            return
        W = self.w_out
        self._table_grad(dhc, self._hraw, self.rout, R, W, self.gout)
        self.dev.launch("multiply_inplace", grid(R * W), BLOCK,
                        [dhc, self._buf("ctx_mod_out", (R, W)), R * W])

    def input_backward(self, D, R, gates: bool) -> None:
        """Input context gradient from ``D`` (R, w_in): with ``gates`` D = dL/d(layer 0's gate
        pre-activations), concat mode: ``gin[rin] += D``; else D = dL/d(modulated input),
        multiply mode: ``gin[rin] += D * x_raw`` and ``D *= 1 + sum Cin[rin]`` in place (then
        dL/d(input)). One-hot input calls it both ways with its gate gradient."""
        W = self.w_in
        if gates and self.cin == CIN_CONCAT:
            self._table_grad(D, None, self.rin, R, W, self.gin)
        elif not gates and self.cin == CIN_MULTIPLY:
            self._table_grad(D, self._buf("ctx_xraw", (R, W)), self.rin, R, W, self.gin)
            self.dev.launch("multiply_inplace", grid(R * W), BLOCK,
                            [D, self._buf("ctx_mod_in", (R, W)), R * W])

    def update(self, lr: float, momentum: float) -> None:
        """Dense Adagrad + momentum of the tables (as the CPU trainer's ``context_update``)."""
        for on, p, g, acc, vel in ((self.cin != CIN_NONE, self.Cin, self.gin, self.acc_in,
                                    self.vel_in),
                                   (self.cout != COUT_NONE, self.Cout, self.gout, self.acc_out,
                                    self.vel_out),
                                   (self.ctr != CTR_NONE, self.Ch, self.gh, self.acc_h,
                                    self.vel_h)):
            if on and p.size:
                self.dev.launch("adagrad_dense", grid(p.size), BLOCK,
                                [p, g, acc, vel, p.size, lr, momentum])

    def _state_arrays(self) -> dict:
        """``{key: (acc, vel)}`` device arrays of the trained tables, keyed as the CPU
        trainer's :meth:`~gru_engine.backends.cpu.trainer.Trainer.optimizer_state`."""
        out = {"context_in": (self.acc_in, self.vel_in),
               "context_out": (self.acc_out, self.vel_out)}
        if self.ctr != CTR_NONE:
            out["context_h"] = (self.acc_h, self.vel_h)
        return out

    def optimizer_state(self) -> dict:
        """Training: ``{'acc': {...}, 'vel': {...}}`` host float32 copies of the tables'
        Adagrad accumulators and momentum velocities (``context_in``, ``context_out``, with a
        transition ``context_h``; shaped like the tables)."""
        arrays = self._state_arrays().items()
        return {kind: {k: self.dev.to_host(pair[j]) for k, pair in arrays}
                for j, kind in enumerate(("acc", "vel"))}

    def load_state(self, params=None, optimizer_state=None) -> None:
        """Training: copy the tables of host ``params`` (``context_in``/``context_out``/
        ``context_h``) and/or their entries of ``optimizer_state`` (as :meth:`optimizer_state`
        returns; tables it lacks keep theirs) onto the device (warm start, checkpoints)."""
        tables = {"context_in": self.Cin, "context_out": self.Cout, "context_h": self.Ch}
        pairs = []
        for key, (acc, vel) in self._state_arrays().items():
            if params is not None:
                pairs.append((tables[key], params[key]))
            if optimizer_state is not None and key in optimizer_state["acc"]:
                pairs += [(acc, optimizer_state["acc"][key]), (vel, optimizer_state["vel"][key])]
        for dst, src in pairs:
            if dst.size:
                self.dev.copy(dst, self.dev.to_device(
                    np.reshape(np.asarray(src, np.float32), dst.shape)))

    def host_tables(self) -> dict:
        """``{'context_in', 'context_out', 'context_h'}``: host float32 copies of the tables."""
        return {"context_in": self.dev.to_host(self.Cin),
                "context_out": self.dev.to_host(self.Cout),
                "context_h": self.dev.to_host(self.Ch)}

    def grads(self) -> dict:
        """Training: host copies of the step's table gradients (tests)."""
        return {"context_in": self.dev.to_host(self.gin),
                "context_out": self.dev.to_host(self.gout),
                "context_h": self.dev.to_host(self.gh)}


def training_context(device, ctx, buf) -> DeviceContext:
    """The :class:`DeviceContext` of a CUDA fit from the CPU record ``ctx``
    (:class:`~gru_engine.backends.cpu.context_step.Ctx` of :func:`gru_engine.context.fit_context`:
    its modes, initial tables and the training events' rows ``ev_in``/``ev_out``)."""
    return DeviceContext(device, ctx.cfg, ctx.Cin, ctx.Cout, ctx.ev_in.shape[1],
                         ctx.ev_out.shape[1], buf, events=(ctx.ev_in, ctx.ev_out), Ch=ctx.Ch)
