"""Training loop with MMRec's epoch protocol, early stopping, checkpoints and resume.

Each epoch: pre_epoch_processing -> batches (loss, backward, clip, step) -> lr
scheduler step (lr * a^(epoch/b)) -> post_epoch_processing -> every `eval_step` epochs
evaluate valid and test. Early stopping on a strict improvement of `valid_metric`; the
patience `stopping_step` counts evaluations (stop once more than `stopping_step`
evaluations in a row did not improve). The reported test result is the one at the
best-valid epoch. A NaN loss ends the combination with a clear message.
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from tqdm import tqdm

from .evaluation import TopKEvaluator
from .utils import MMRecError, get_logger, torch_save_atomic, write_json

OPTIMIZERS = {
    "adam": torch.optim.Adam,
    "sgd": torch.optim.SGD,
    "adagrad": torch.optim.Adagrad,
    "rmsprop": torch.optim.RMSprop,
}


def build_optimizer(config, params) -> torch.optim.Optimizer:
    """The optimizer named by `learner` with `learning_rate` and `weight_decay`."""
    name = str(config["learner"] or "adam").lower()
    if name not in OPTIMIZERS:
        raise MMRecError(f"unknown optimizer learner: '{config['learner']}'; expected one of "
                         f"{', '.join(OPTIMIZERS)} (set learner in the yaml or --learner adam)")
    kwargs = {"lr": float(config["learning_rate"] or 1e-3), "weight_decay": float(config["weight_decay"] or 0.0)}
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
        self.epochs = int(config["epochs"] or 1000)
        self.stopping_step = int(config["stopping_step"] if config["stopping_step"] is not None else 20)
        self.eval_step = max(1, int(config["eval_step"] or 1))
        self.valid_metric = str(config["valid_metric"] or "Recall@20").lower()
        self.clip = config["clip_grad_norm"]
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(config, params)
        sched = config["learning_rate_scheduler"] or [1.0, 50]
        if not (isinstance(sched, (list, tuple)) and len(sched) == 2):
            raise MMRecError(f"learning_rate_scheduler must be [a, b] (lr * a^(epoch/b)), found {sched!r}")
        a, b = float(sched[0]), float(sched[1])
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda e: a ** (e / b))
        self.evaluator = TopKEvaluator(config)
        self.progress = show_progress(config)
        self.item_groups = None
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

    # ---- checkpoints -----------------------------------------------------
    def _state(self, epoch: int, train_loader) -> Dict[str, Any]:
        return {
            "epoch": epoch, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "best_score": self.best_score, "cur_step": self.cur_step,
            "best_epoch": self.best_epoch, "best_valid": self.best_valid, "best_test": self.best_test,
            "history": self.history, "torch_rng": torch.get_rng_state(), "np_rng": np.random.get_state(),
            "loader_rng": train_loader.get_rng_state() if hasattr(train_loader, "get_rng_state") else None,
            "config_key": self.config["_combo_key"],
        }

    def resume_from(self, path: Path, train_loader) -> bool:
        """Load the last checkpoint of an interrupted run; False if it does not match."""
        state = torch.load(path, map_location="cpu", weights_only=False)
        if state.get("config_key") != self.config["_combo_key"]:
            self.log.warning("checkpoint %s was written for another configuration; starting afresh", path)
            return False
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        for k in ("best_score", "cur_step", "best_epoch", "best_valid", "best_test", "history"):
            setattr(self, k, state[k])
        torch.set_rng_state(state["torch_rng"])
        np.random.set_state(state["np_rng"])
        if state.get("loader_rng") is not None and hasattr(train_loader, "set_rng_state"):
            train_loader.set_rng_state(state["loader_rng"])
        self.start_epoch = state["epoch"] + 1
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
            out = self.model.calculate_loss(batch)
            if isinstance(out, (tuple, list)):
                loss = sum(out)
                vals = np.array([float(x.detach()) if torch.is_tensor(x) else float(x) for x in out])
                parts = vals if parts is None else parts + vals
            else:
                loss = out
            if torch.isnan(loss) or torch.isinf(loss):
                return None, batch_idx
            loss.backward()
            if self.clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), **dict(self.clip))
            self.optimizer.step()
            total += float(loss.detach())
            n += 1
        return (total, parts), n

    def evaluate(self, loader) -> Dict[str, float]:
        return self.evaluator.evaluate(self.model, loader, self.item_groups)

    def evaluate_valid_test(self, valid_loader, test_loader) -> Tuple[Dict[str, float], Dict[str, float]]:
        """Valid and test metrics from one ranking pass (both mask the training items)."""
        valid, test = self.evaluator.evaluate_splits(self.model, [valid_loader, test_loader], self.item_groups)
        return valid, test

    # ---- fit -------------------------------------------------------------
    def fit(self, train_loader, valid_loader, test_loader, resume_path: Optional[Path] = None) -> Dict[str, Any]:
        """Train to early stopping; returns best-valid results and the test result at that epoch."""
        if resume_path is not None and resume_path.is_file():
            self.resume_from(resume_path, train_loader)
        log = self.log
        epoch_times: List[float] = []
        eval_times: List[float] = []
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
            epoch_times.append(t_train)
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
                eval_times.append(t_eval)
                score = valid.get(self.valid_metric)
                if score is None:
                    raise MMRecError(f"valid_metric '{self.config['valid_metric']}' is not among the computed "
                                     f"metrics {sorted(valid)}")
                rec.update(valid=valid, test=test, eval_seconds=round(t_eval, 4))
                improved = score > self.best_score
                if improved:
                    self.best_score, self.cur_step, self.best_epoch = score, 0, epoch
                    self.best_valid, self.best_test = valid, test
                    if self.run_dir is not None and self.config["save_model"] is not False:
                        torch_save_atomic({"epoch": epoch, "model": self.model.state_dict(),
                                           "config_key": self.config["_combo_key"]}, self.run_dir / "best.pt")
                    else:
                        self._best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
                else:
                    self.cur_step += 1
                    stop = self.cur_step > self.stopping_step
                msg += (f" | valid {self.valid_metric} {score:.4f} test {self.valid_metric} "
                        f"{test.get(self.valid_metric, float('nan')):.4f} [{t_eval:.2f}s]" + (" *" if improved else ""))
            self.history.append(rec)
            log.info(msg)
            if self.run_dir is not None:
                torch_save_atomic(self._state(epoch, train_loader), self.run_dir / "last.pt")
                write_json(self.run_dir / "history.json", self.history)
            if stop:
                log.info("early stopping: no improvement of valid %s for %d evaluations; best epoch %d",
                         self.valid_metric, self.cur_step, self.best_epoch)
                break
        if self.status == "running":
            self.status = "finished"
        return {
            "status": self.status, "best_epoch": self.best_epoch, "epochs_run": epoch + 1,
            "best_valid": self.best_valid, "best_test": self.best_test,
            "seconds_per_epoch": float(np.median(epoch_times)) if epoch_times else None,
            "seconds_per_eval": float(np.median(eval_times)) if eval_times else None,
        }

    def load_best(self) -> None:
        """Restore the best-valid weights saved during fit (if any)."""
        if self._best_state is not None:
            self.model.load_state_dict(self._best_state)
        elif self.run_dir is not None and (self.run_dir / "best.pt").is_file():
            state = torch.load(self.run_dir / "best.pt", map_location="cpu", weights_only=False)
            self.model.load_state_dict(state["model"])
