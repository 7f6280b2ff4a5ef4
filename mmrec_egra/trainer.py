"""Training loop with MMRec's epoch protocol, early stopping, checkpoints and resume.

Each epoch: pre_epoch_processing -> batches (loss, backward, clip, step) -> lr
scheduler step (lr * a^(epoch/b)) -> post_epoch_processing -> every `eval_step` epochs
evaluate valid and test. Early stopping on a strict improvement of `valid_metric`; the
patience `stopping_step` counts evaluations (stop once more than `stopping_step`
evaluations in a row did not improve). The reported test result is the one at the
best-valid epoch. A NaN loss ends the combination with a clear message.

Optional Mirror Gradient (`mirror_gradient: true`, knobs mg_alpha1, mg_alpha2, mg_beta):
every mg_beta-th batch takes a scaled descent step and then a mirrored ascent step on the
same batch, which favours flat minima (Trainer._mirror_step). Off, training is unchanged.

Files (run_dir): best.pt is written only when the best changed and at most every
`checkpoint_every` epochs (the best weights wait in memory), last.pt every
`checkpoint_every` epochs and when a capped or interrupted run stops, history.jsonl gets
one line per epoch (appended) and history.json the whole history once, at the stop.
SIGTERM or Ctrl-C finish the current epoch, write last.pt and raise RunInterrupted
(exit 130/143 on the command line); a second signal stops at once.
"""
from __future__ import annotations

import errno
import json
import math
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from tqdm import tqdm

from .evaluation import TopKEvaluator
from .utils import (MMRecError, _json_default, atomic_write, get_logger, no_space_error, torch_load_safe,
                    torch_save_atomic, write_json)

OPTIMIZERS = {
    "adam": torch.optim.Adam,
    "sgd": torch.optim.SGD,
    "adagrad": torch.optim.Adagrad,
    "rmsprop": torch.optim.RMSprop,
}


class RunInterrupted(KeyboardInterrupt):
    """SIGTERM/SIGINT stopped training cleanly after writing last.pt; `signum` names the signal
    (the command line exits with 128 + signum). A KeyboardInterrupt, so hosts treat it as one."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


def build_optimizer(config, params) -> torch.optim.Optimizer:
    """The optimizer named by `learner` with `learning_rate` and `weight_decay`."""
    name = str(_or(config["learner"], "adam")).lower()
    if name not in OPTIMIZERS:
        raise MMRecError(f"unknown optimizer learner: '{config['learner']}'; expected one of "
                         f"{', '.join(OPTIMIZERS)} (set learner in the yaml or --learner adam)")
    kwargs = {"lr": float(_or(config["learning_rate"], 1e-3)), "weight_decay": float(_or(config["weight_decay"], 0.0))}
    params = list(params)
    if name == "adam" and (config.get("fused_optimizer") if isinstance(config, dict) else config["fused_optimizer"]) is not False and params and \
            all(p.dtype == torch.float32 and not p.is_sparse for p in params):
        # one fused kernel over all tensors: same update, ~40% cheaper steps for
        # embedding-table models on CPU
        try:
            return torch.optim.Adam(params, fused=True, **kwargs)
        except (RuntimeError, TypeError):
            pass
    return OPTIMIZERS[name](params, **kwargs)


def _or(value: Any, default: Any) -> Any:
    """`default` only when the key is missing (None): 0, 0.0 and [] are real values."""
    return default if value is None else value


def _np_rng_to_json(state) -> str:
    """np.random's MT19937 state as JSON, so checkpoints hold only weights_only-safe types."""
    name, keys, pos, has_gauss, cached = state
    return json.dumps([name, np.asarray(keys).tolist(), int(pos), int(has_gauss), float(cached)])


def _np_rng_from_json(text: str):
    name, keys, pos, has_gauss, cached = json.loads(text)
    return name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached


def _is_empty(loader) -> bool:
    users = getattr(loader, "users", None)
    return users is not None and len(users) == 0


def show_progress(config) -> bool:
    v = config["show_progress"]
    if v is None or str(v).lower() == "auto":
        return sys.stderr.isatty()
    return bool(v)


class Trainer:
    """Fits one model (one grid combination) and records everything in `run_dir`."""

    def __init__(self, config, model: torch.nn.Module, run_dir: Optional[Path] = None):
        self.config = config
        self.model = model
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.log = get_logger()
        self.epochs = int(_or(config["epochs"], 1000))
        self.stopping_step = int(_or(config["stopping_step"], 20))
        self.eval_step = max(1, int(_or(config["eval_step"], 1)))
        self.valid_metric = str(_or(config["valid_metric"], "Recall@20")).lower()
        self.clip = config["clip_grad_norm"]
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(config, params)
        sched = _or(config["learning_rate_scheduler"], [1.0, 50])
        if not (isinstance(sched, (list, tuple)) and len(sched) == 2):
            raise MMRecError(f"learning_rate_scheduler must be [a, b] (lr * a^(epoch/b)), found {sched!r}")
        a, b = float(sched[0]), float(sched[1])
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda e: a ** (e / b))
        self.evaluator = TopKEvaluator(config)
        self.progress = show_progress(config)
        from .distributed import current
        self.dist = current()          # --distributed: this rank's collective steps (None: one process)
        if self.dist is not None:
            self.dist.attach(self)
        self.item_groups = None
        # Mirror Gradient (mirror_gradient: true; see _mirror_step): 0 = off, plain steps only
        self.mg_beta = int(_or(config["mg_beta"], 3)) if config["mirror_gradient"] else 0
        self.mg_alpha1 = float(_or(config["mg_alpha1"], 1.0))
        self.mg_alpha2 = float(_or(config["mg_alpha2"], 1.0))
        if self.mg_beta and getattr(self, "dist", None) is not None:
            raise MMRecError("mirror_gradient: true is not supported with --distributed (its second, mirrored "
                             "step would need its own collective pass); set mirror_gradient: false or train "
                             "in one process")
        # last.pt (full state) every `checkpoint_every` epochs and when the run stops
        self.checkpoint_every = max(1, int(_or(config["checkpoint_every"], 10)))
        # state
        self.start_epoch = 0
        self.best_score = -math.inf
        self.cur_step = 0
        self.best_epoch = -1
        self.best_valid: Dict[str, float] = {}
        self.best_test: Dict[str, float] = {}
        self.history: List[Dict[str, Any]] = []
        self.status = "running"
        self._best_state: Optional[Dict[str, torch.Tensor]] = None
        self._best_dirty = False           # best weights changed since best.pt was last written
        self.resumed_at: List[int] = []    # epochs at which this run was resumed (result.json says so)
        self.prior_seconds = 0.0           # fit time spent by earlier processes of a resumed run
        self._stop_signal: Optional[int] = None

    # ---- checkpoints -----------------------------------------------------
    def _state(self, epoch: int, train_loader) -> Dict[str, Any]:
        return {
            "epoch": epoch, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "best_score": self.best_score, "cur_step": self.cur_step,
            "best_epoch": self.best_epoch, "best_valid": self.best_valid, "best_test": self.best_test,
            "history": self.history, "torch_rng": torch.get_rng_state(),
            # RNG states as JSON text: the checkpoint then loads with weights_only=True
            "np_rng": _np_rng_to_json(np.random.get_state()),
            "loader_rng": json.dumps(train_loader.get_rng_state()) if hasattr(train_loader, "get_rng_state") else None,
            "config_key": self.config["_combo_key"], "dataset_fingerprint": self.config["_dataset_fingerprint"],
            "resumed_at": list(self.resumed_at),
            "elapsed_seconds": self.prior_seconds + time.time() - getattr(self, "_fit_t0", time.time()),
        }

    def resume_from(self, path: Path, train_loader) -> bool:
        """Load the last checkpoint of an interrupted run; False (start afresh) if it does not match.

        Loaded with weights_only=True: a crafted file cannot run code. A damaged file is moved
        aside (`last.pt.damaged`) and the combination starts afresh, saying so.
        """
        try:
            state = torch_load_safe(path, "resume checkpoint")
        except MMRecError as exc:
            if "refusing" in str(exc):
                raise
            path.replace(path.with_name(path.name + ".damaged"))
            self.log.warning("%s; moved it to %s and starting this combination afresh", exc,
                             path.with_name(path.name + ".damaged"))
            return False
        if not isinstance(state, dict) or "model" not in state:
            raise MMRecError(f"resume checkpoint {path} is not one of ours (no model state). Delete it and rerun.")
        fp_old, fp_new = state.get("dataset_fingerprint"), self.config["_dataset_fingerprint"]
        if fp_old is not None and fp_new is not None and fp_old != fp_new:
            self.log.warning("checkpoint %s was written for other dataset files (fingerprint %s, now %s): the "
                             "dataset changed, so this combination starts afresh", path, fp_old, fp_new)
            return False
        if state.get("config_key") != self.config["_combo_key"]:
            self.log.warning("checkpoint %s was written for another configuration; starting afresh", path)
            return False
        if int(state.get("epoch", -1)) + 1 > self.epochs:
            self.log.warning("checkpoint %s is at epoch %d, past this run's budget of %d epochs; starting afresh",
                             path, state["epoch"], self.epochs)
            return False
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        for k in ("best_score", "cur_step", "best_epoch", "best_valid", "best_test", "history"):
            setattr(self, k, state[k])
        torch.set_rng_state(state["torch_rng"])
        np.random.set_state(_np_rng_from_json(state["np_rng"]))
        if state.get("loader_rng") is not None and hasattr(train_loader, "set_rng_state"):
            train_loader.set_rng_state(json.loads(state["loader_rng"]))
        self.start_epoch = state["epoch"] + 1
        self.resumed_at = [int(e) for e in state.get("resumed_at") or []] + [self.start_epoch]
        self.prior_seconds = float(state.get("elapsed_seconds") or 0.0)
        self.log.info("resumed from %s at epoch %d (best valid %s %.4f at epoch %d)", path, self.start_epoch,
                      self.valid_metric, self.best_score, self.best_epoch)
        return True

    # ---- one epoch -------------------------------------------------------
    def _train_epoch(self, train_loader, epoch: int):
        self.model.train()
        total = 0.0
        parts: Optional[np.ndarray] = None
        n = 0
        total_batches = len(train_loader) if hasattr(train_loader, "__len__") else None
        it = tqdm(train_loader, total=total_batches, desc=f"epoch {epoch:>3} train", leave=False,
                  disable=not self.progress, file=sys.stderr)
        for batch_idx, batch in enumerate(it):
            batch = batch.to(self.model.device) if isinstance(batch, torch.Tensor) else batch
            self.optimizer.zero_grad(set_to_none=True)
            # --distributed: the loss of this rank's share, grads summed over ranks (global values)
            out = self.model.calculate_loss(batch) if self.dist is None else self.dist.loss_and_grads(self.model, batch)
            if isinstance(out, (tuple, list)):
                loss = sum(out)
                vals = np.array([float(x.detach()) if torch.is_tensor(x) else float(x) for x in out])
                parts = vals if parts is None else parts + vals
            else:
                loss = out
            if torch.isnan(loss) or torch.isinf(loss):
                return None, batch_idx
            mirror = self.mg_beta > 0 and (batch_idx + 1) % self.mg_beta == 0    # Mirror Gradient batch
            if self.dist is None:
                (loss * self.mg_alpha1 if mirror else loss).backward()
            elif mirror:                   # --distributed: grads already summed; scale them the same way
                for p in self.model.parameters():
                    if p.grad is not None:
                        p.grad.mul_(self.mg_alpha1)
            if self.clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), **dict(self.clip))
            self.optimizer.step()
            if mirror and not self._mirror_step(batch):
                return None, batch_idx
            total += float(loss.detach())
            n += 1
        return (total, parts), n

    def _mirror_step(self, batch) -> bool:
        """The mirrored half of a Mirror Gradient batch; False when its loss is NaN/inf.

        Mirror Gradient (Zhong et al., WWW 2024) in our words: on every `mg_beta`-th batch of
        an epoch, the usual step is taken on the gradient scaled by `mg_alpha1`, then the loss
        of the SAME batch is computed again at the moved parameters and a second step is taken
        on its gradient scaled by -`mg_alpha2`, i.e. uphill. With plain SGD (rate lr):
            theta' = theta - lr * a1 * grad L(theta);   theta'' = theta' + lr * a2 * grad L(theta')
        A Taylor expansion of grad L(theta') gives theta'' ~ theta - lr (a1 - a2) grad L
        - lr^2 a1 a2 H grad L: descent on L plus a penalty on the gradient norm (H grad L =
        grad 1/2 |grad L|^2), which steers training towards flat minima, the paper's aim.
        Where the paper is silent we chose: both halves go through the configured optimizer
        (Adam's moments see the scaled gradients), clip_grad_norm applies to each half, the
        epoch loss sums only the first half's losses, and batches count from 1 within each
        epoch (mg_beta 3: batches 3, 6, 9, ...).
        """
        self.optimizer.zero_grad(set_to_none=True)
        out = self.model.calculate_loss(batch)
        loss = sum(out) if isinstance(out, (tuple, list)) else out
        if torch.isnan(loss) or torch.isinf(loss):
            return False
        (loss * -self.mg_alpha2).backward()
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), **dict(self.clip))
        self.optimizer.step()
        return True

    def evaluate(self, loader) -> Dict[str, float]:
        return self.evaluator.evaluate(self.model, loader, self.item_groups)

    def evaluate_valid_test(self, valid_loader, test_loader) -> Tuple[Dict[str, float], Dict[str, float]]:
        """Valid and test metrics from one ranking pass (both mask the training items).

        An empty test split gives {} (no test metrics), never zeros that look measured.
        """
        if test_loader is None or _is_empty(test_loader):
            return self.evaluate(valid_loader), {}
        valid, test = self.evaluator.evaluate_splits(self.model, [valid_loader, test_loader], self.item_groups)
        return valid, test

    # ---- fit -------------------------------------------------------------
    def fit(self, train_loader, valid_loader, test_loader, resume_path: Optional[Path] = None) -> Dict[str, Any]:
        """Train to early stopping; returns best-valid results and the test result at that epoch.

        SIGTERM or SIGINT (Ctrl-C) while training: the current epoch finishes, last.pt is written
        and RunInterrupted is raised; a second signal raises KeyboardInterrupt at once.
        """
        restore = self._catch_stop_signals()
        try:
            return self._fit(train_loader, valid_loader, test_loader, resume_path)
        finally:
            restore()

    def _catch_stop_signals(self):
        """Turn the first SIGINT/SIGTERM into a stop after this epoch; returns the undo function."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None            # signals reach only the main thread

        def on_signal(signum, frame):
            if self._stop_signal is not None:
                raise KeyboardInterrupt    # the second one: stop now (last.pt is the previous one)
            self._stop_signal = signum
            self.log.warning("%s received: finishing this epoch, then writing a checkpoint and stopping (send "
                             "it again to stop at once)", signal.Signals(signum).name)
        old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for s in old:
            signal.signal(s, on_signal)

        def restore():
            for s, h in old.items():
                signal.signal(s, h if h is not None else signal.SIG_DFL)
        return restore

    def _checkpoint(self, epoch: int, train_loader) -> None:
        """best.pt (if the best changed) then last.pt: a resumable state, never older than best.pt."""
        self._flush_best()
        torch_save_atomic(self._state(epoch, train_loader), self.run_dir / "last.pt", durable=False)

    def _flush_best(self) -> None:
        if self._best_dirty and self.run_dir is not None and self.config["save_model"] is not False:
            torch_save_atomic({"epoch": self.best_epoch, "model": self._best_state,
                               "config_key": self.config["_combo_key"]}, self.run_dir / "best.pt", durable=False)
        self._best_dirty = False

    def _append_history(self, rec: Dict[str, Any]) -> None:
        """One JSON line per epoch in history.jsonl: appended, never rewritten (a torn last line
        after a hard kill is dropped on --resume, which rewrites the file from last.pt)."""
        path = self.run_dir / "history.jsonl"
        try:
            with open(path, "a") as fh:
                fh.write(json.dumps(rec, default=_json_default) + "\n")
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
                raise no_space_error(path, exc) from None
            raise MMRecError(f"cannot write {path}: {exc.strerror or exc}") from None

    def _fit(self, train_loader, valid_loader, test_loader, resume_path: Optional[Path]) -> Dict[str, Any]:
        if resume_path is not None and resume_path.is_file():
            self.resume_from(resume_path, train_loader)
        self._fit_t0 = time.time()
        if self.run_dir is not None:       # the live history starts as the checkpoint's (empty when fresh)
            atomic_write(self.run_dir / "history.jsonl", lambda fh: fh.writelines(
                json.dumps(h, default=_json_default) + "\n" for h in self.history), durable=False)
        log = self.log
        test_empty = test_loader is None or _is_empty(test_loader)
        if test_empty:
            log.warning("the test split has no rows (after dropping cold-start users): test metrics are not "
                        "measured and are reported as absent, not 0")
        epoch = self.start_epoch - 1
        for epoch in range(self.start_epoch, self.epochs):
            t0 = time.time()
            self.model.pre_epoch_processing()
            out, nb = self._train_epoch(train_loader, epoch)
            if out is None:
                self.status = "nan"
                log.error("loss became NaN/inf at epoch %d, batch %d: this combination stops here. Try a lower "
                          "learning_rate, a smaller reg/cl weight or clip_grad_norm.", epoch, nb)
                break
            self.scheduler.step()
            post = self.model.post_epoch_processing()
            t_train = time.time() - t0
            total, parts = out
            rec: Dict[str, Any] = {"epoch": epoch, "loss": total, "train_seconds": round(t_train, 4),
                                   "lr": self.optimizer.param_groups[0]["lr"]}
            if parts is not None:
                rec["loss_parts"] = [float(p) for p in parts]
            msg = f"epoch {epoch:>3} [{t_train:.2f}s] train loss {total:.4f}"
            if parts is not None:
                msg += " (" + ", ".join(f"{p:.4f}" for p in parts) + ")"
            if post:
                msg += f" | {post}"
            stop = False
            if (epoch + 1) % self.eval_step == 0:
                t1 = time.time()
                valid, test = self.evaluate_valid_test(valid_loader, test_loader)
                t_eval = time.time() - t1
                score = valid.get(self.valid_metric)
                if score is None:
                    raise MMRecError(f"valid_metric '{self.config['valid_metric']}' is not among the computed "
                                     f"metrics {sorted(valid)}")
                rec.update(valid=valid, test=test, eval_seconds=round(t_eval, 4))
                improved = score > self.best_score
                if improved:
                    self.best_score, self.cur_step, self.best_epoch = score, 0, epoch
                    self.best_valid, self.best_test = valid, test
                    # kept in memory (on the CPU); best.pt is written with the next checkpoint
                    self._best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
                    self._best_dirty = True
                else:
                    self.cur_step += 1
                    stop = self.cur_step > self.stopping_step
                tag = lambda m: f"[SAMPLED {m['sampled_users']} users]" if "sampled_users" in m else ""  # eval_sample_users
                msg += (f" | valid{tag(valid)} {self.valid_metric} {score:.4f} test{tag(test)} {self.valid_metric} "
                        f"{test.get(self.valid_metric, float('nan')):.4f} [{t_eval:.2f}s]" + (" *" if improved else ""))
            self.history.append(rec)
            log.info(msg)
            if self.run_dir is not None:
                self._append_history(rec)  # one line; history.json is written once, at the stop
            if stop:
                self.status = "early_stopped"
                log.info("early stopping: no improvement of valid %s for %d evaluations; best epoch %d",
                         self.valid_metric, self.cur_step, self.best_epoch)
                break
            if self._stop_signal is not None:
                self.status = "interrupted"
                break
            if self.run_dir is not None and (epoch + 1) % self.checkpoint_every == 0:
                self._checkpoint(epoch, train_loader)
        if self.status == "running":
            self.status = "capped"         # the whole epoch budget ran out before early stopping
        if self.run_dir is not None:
            if self.status in ("capped", "interrupted") and epoch >= self.start_epoch:
                self._checkpoint(epoch, train_loader)   # --resume (or a larger epochs) continues from here
            else:
                self._flush_best()
            write_json(self.run_dir / "history.json", self.history, durable=False)
        if self.status == "interrupted":
            where = (f"checkpoint written to {self.run_dir / 'last.pt'}" if self.run_dir is not None
                     else "nothing saved for this stage")
            raise RunInterrupted(f"{signal.Signals(self._stop_signal).name}: stopped after epoch {epoch}, {where}; "
                                 f"rerun the same command with --resume to continue", self._stop_signal)
        # timings of every epoch of the run, also those before a --resume (kept in the history)
        secs = [h["train_seconds"] for h in self.history if "train_seconds" in h]
        evals = [h["eval_seconds"] for h in self.history if "eval_seconds" in h]
        return {
            "status": self.status, "best_epoch": self.best_epoch, "epochs_run": epoch + 1,
            "best_valid": self.best_valid, "best_test": self.best_test,
            "seconds_per_epoch": float(np.median(secs)) if secs else None,
            "seconds_per_eval": float(np.median(evals)) if evals else None,
            "test_measured": not test_empty, "resumed_at_epochs": list(self.resumed_at),
        }

    def load_best(self) -> None:
        """Restore the best-valid weights saved during fit (if any)."""
        if self._best_state is not None:
            self.model.load_state_dict(self._best_state)
        elif self.run_dir is not None and (self.run_dir / "best.pt").is_file():
            state = torch_load_safe(self.run_dir / "best.pt", "best-valid checkpoint")
            self.model.load_state_dict(state["model"])
