"""The epoch loop of one fit or partial fit (:class:`EpochRun`), used by
:class:`~gru_engine.model.SessionGRU` on every device: per-epoch augmentation and session order,
the trainer's epochs, progress bars, the divergence guard, the last good epoch's parameters
and checkpoints."""
from __future__ import annotations

import copy
import logging
import time

import numpy as np

from .batching import augment_sessions, session_order
from .exceptions import ModelFitError

logger = logging.getLogger("gru_engine")


def _progress_bar(show: bool):
    """``make(epoch, total) -> bar or None``: tqdm bars when asked for and installed."""
    if not show:
        return lambda epoch, total: None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        logger.info("show_progress=True but tqdm is not installed; logging epochs only")
        return lambda epoch, total: None
    return lambda epoch, total: tqdm(total=total, desc=f"epoch {epoch}", unit="ev")


class EpochRun:
    """The epoch loop of one fit or partial fit: runs the trainer's epochs, records the
    per-epoch figures on the model, guards against divergence, keeps the last good epoch's
    parameters (for ``KeyboardInterrupt`` and the divergence error) and writes checkpoints."""

    def __init__(self, model, p, trainer, sessions, order_rng, checkpoint):
        self.model, self.p, self.trainer, self.sessions = model, p, trainer, sessions
        self.order_rng, self.checkpoint = order_rng, checkpoint
        self.good = None  # (epoch, host parameter copy) of the last good epoch
        # cross-entropy: an upper bound of the loss that constant scores give, log C + logq *
        # log(max support) (C sampled columns); the ranking losses have no such bound check
        self.constant_loss = np.inf
        if p["loss"] == "cross-entropy":
            C = p["batch_size"] + p["n_sample"]
            self.constant_loss = np.log(C) + p["logq"] * np.log(max(model.item_support_.max(),
                                                                    1))

    def epochs(self, first: int, last: int, callback, offset: int = 0):
        model, p, trainer, sessions = self.model, self.p, self.trainer, self.sessions
        progress = _progress_bar(p["show_progress"])
        best = min(model.loss_history_) if model.loss_history_ else np.inf
        try:
            for epoch in range(first, last + 1):
                order = session_order(sessions, p["shuffle_sessions"], self.order_rng)
                t0 = time.perf_counter()  # the epoch's time includes drawing its augmentation
                items, offsets = self._augmented(trainer, sessions, p)
                trainer.start_epoch(items, order, offsets)
                bar = progress(epoch, len(items) - sessions.n_sessions)
                loss_sum, events, finite = 0.0, 0, True
                while trainer.rows_left() and finite:
                    ls, ev, finite = trainer.run(500 if bar is not None else -1)
                    loss_sum += ls
                    events += ev
                    if bar is not None:
                        bar.update(ev)
                elapsed = time.perf_counter() - t0
                if bar is not None:
                    bar.close()
                loss = loss_sum / max(events, 1)
                params = trainer.host_params()
                self._check(epoch + offset, finite, loss, best, params)
                best = min(best, loss)
                model.params_ = params
                model.loss_history_.append(loss)
                model.epoch_times_.append(elapsed)
                model.events_per_s_.append(events / elapsed if elapsed > 0 else float("inf"))
                logger.info("epoch %d: loss %.6f, %d events, %.0f events/s (%.2f s)",
                            epoch + offset, loss, events, model.events_per_s_[-1], elapsed)
                self.good = (epoch, {k: v.copy() for k, v in params.items()})
                if self.checkpoint is not None:
                    from .checkpoint import save_checkpoint
                    save_checkpoint(model, self.checkpoint, trainer, self.order_rng, epoch,
                                    sessions)
                if callback is not None:
                    callback(epoch + offset, elapsed, loss)
        except KeyboardInterrupt:
            if self.good is not None:
                model.params_ = self.good[1]
                model._interrupted_usable = True
                logger.warning("interrupted: the model holds the parameters of epoch %d",
                               self.good[0] + offset)
            raise
        model.params_ = trainer.host_params()
        model.optimizer_state_ = trainer.optimizer_state()

    def _augmented(self, trainer, sessions, p) -> tuple:
        """``(items, offsets)`` of the epoch's augmented sessions (:func:`augment_sessions`;
        the inputs without augmentation). A network that reads per-event data (context) gets
        the kept events' numbers, so that each kept event keeps its own context rows."""
        crop, drop = p["augment_crop_p"], p["augment_drop_p"]
        if (crop == 0 and drop == 0) or not getattr(trainer, "follows_events", False):
            return augment_sessions(sessions.items, sessions.offsets, crop, drop,
                                    self.order_rng)
        events = np.arange(len(sessions.items), dtype=sessions.items.dtype)
        rows, offsets = augment_sessions(events, sessions.offsets, crop, drop, self.order_rng)
        trainer.select_events(rows)
        return sessions.items[rows], offsets

    def _check(self, epoch, finite, loss, best, params):
        """``ModelFitError`` when epoch ``epoch`` diverged (see :meth:`SessionGRU.fit`)."""
        from . import config
        why = None
        if not finite or not np.isfinite(loss):
            why = "the loss became NaN or infinite"
        elif loss > config.DIVERGENCE_LOSS_FACTOR * best:
            why = (f"the loss {loss:.4g} exceeds {config.DIVERGENCE_LOSS_FACTOR:g} x the best "
                   f"earlier epoch's ({best:.4g})")
        elif loss > config.DIVERGENCE_CONSTANT_FACTOR * self.constant_loss:
            why = (f"the loss {loss:.4g} exceeds {config.DIVERGENCE_CONSTANT_FACTOR:g} x what "
                   f"constant scores give (at most {self.constant_loss:.4g})")
        else:
            bad = [k for k, v in params.items() if v.dtype.kind == "f"
                   and (not np.all(np.isfinite(v)) or v.size
                        and np.abs(v).max() > config.DIVERGENCE_MAX_WEIGHT)]
            if bad:
                why = (f"weights in {bad} are non-finite or beyond "
                       f"{config.DIVERGENCE_MAX_WEIGHT:g}")
        if why is None:
            return
        good = None
        if self.good is not None:
            good = copy.copy(self.model)
            good.params_ = self.good[1]
        raise ModelFitError(f"training diverged in epoch {epoch}: {why}; lower learning_rate "
                            f"or momentum, or check the data", epoch=epoch, model=good)
