"""Data-parallel training of one run over several processes (launched by `torchrun`).

    torchrun --standalone --nproc_per_node 2 main.py -m LightGCN -d demo --distributed

Every rank builds the same data, loaders and model from the same seed, so all ranks see
the same global batch (the `train_batch_size` of a single-process run, with the same
negatives). Each rank computes the loss of its contiguous share of the batch columns,
weighted by share/batch, and the gradients are summed across ranks: for every loss made
of per-row means (BPR, reconstruction, reg on batch rows) and of batch-independent terms
(reg on whole tables, full-graph losses), the summed gradient equals the single-process
gradient up to floating-point order. Losses with in-batch negatives (InfoNCE over the
batch's users/items, as in MGCN, BM3, LGMRec) see smaller batches per rank, so they
differ; README ("Many runs and many machines") states the measured tolerance.

Why explicit all_reduce rather than DistributedDataParallel: the trainer calls
`model.calculate_loss`, not `forward`, so DDP's reducer would never be armed; several
models leave parameters unused in a step (cached embeddings, frozen branches, modality
switches) which DDP only tolerates with `find_unused_parameters`; and the graph ops are
torch.sparse products whose gradients may be sparse. One flat buffer holding every
gradient (dense), a has-gradient flag per parameter and the loss values is summed with a
single all_reduce per step; that works the same for every model, on gloo (CPU) and nccl
(GPU). A parameter no rank gave a gradient keeps grad None, as in a single process (so
Adam does not move it).

Mirror Gradient's second pass (trainer._mirror_step) runs on the whole batch on every
rank: the weights and batch are identical everywhere, so its gradients are too, with no
message.

Evaluation is sharded then gathered: each rank ranks every world-th user batch and the
top-k lists are all-gathered, so every rank holds identical metrics and takes identical
early-stopping decisions without further messages. Only rank 0 writes files and logs INFO.
"""
from __future__ import annotations

import os
import types
from datetime import timedelta
from typing import Any, Iterable, List, Optional

import numpy as np
import torch

from .utils import MMRecError

_CURRENT: Optional["DistContext"] = None
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def current() -> Optional["DistContext"]:
    """The active data-parallel context of this process, or None (single process)."""
    return _CURRENT


class DistContext:
    """This process's place in the process group and the collective steps the trainer uses."""

    def __init__(self, rank: int, world_size: int, local_rank: int, device: torch.device, backend: str):
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank
        self.device, self.backend = device, backend

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ---- training ----------------------------------------------------------
    def shard(self, batch: torch.Tensor) -> tuple:
        """(this rank's contiguous share of the batch columns, its weight share/batch).

        A rank left without rows (batch smaller than the world) computes one row with
        weight 0, so every rank still takes part in the same collectives."""
        if not torch.is_tensor(batch) or batch.dim() != 2:
            raise MMRecError(f"--distributed shards training batches given as [k, B] tensors; this model's "
                             f"loader yields {type(batch).__name__}. Run it without --distributed.")
        total = batch.shape[1]
        local = torch.tensor_split(batch, self.world_size, dim=1)[self.rank]
        if local.shape[1] == 0:
            return batch[:, :1], 0.0
        return local, local.shape[1] / total

    def loss_and_grads(self, model: torch.nn.Module, batch: torch.Tensor):
        """The global loss of `batch` (same structure as `calculate_loss`: a tensor or a tuple of
        them, detached) with the parameters' .grad set to the global gradient."""
        local, weight = self.shard(batch)
        out = model.calculate_loss(local)
        is_tuple = isinstance(out, (tuple, list))
        terms = [t if torch.is_tensor(t) else torch.tensor(float(t)) for t in (out if is_tuple else [out])]
        loss = sum(t * weight for t in terms)
        if torch.is_tensor(loss) and loss.requires_grad:
            loss.backward()
        params = [p for p in model.parameters() if p.requires_grad]
        dev = params[0].device if params else self.device
        grads = [(p.grad.to_dense() if p.grad.is_sparse else p.grad).reshape(-1).float()
                 if p.grad is not None else torch.zeros(p.numel(), device=dev) for p in params]
        flags = torch.tensor([float(p.grad is not None) for p in params], device=dev)
        values = torch.stack([t.detach().float().reshape(()) * weight for t in terms]).to(dev)
        flat = torch.cat(grads + [flags, values])
        torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = flat[offset:offset + n].view_as(p).to(p.dtype).clone()
            offset += n
        got = flat[offset:offset + len(params)]
        offset += len(params)
        for p, has in zip(params, got.tolist()):
            if has == 0:
                p.grad = None
        vals = flat[offset:offset + len(terms)].cpu()
        return tuple(vals.unbind()) if is_tuple else vals[0]

    def broadcast_parameters(self, model: torch.nn.Module) -> None:
        """Rank 0's parameters and buffers on every rank (identical start even if a model's
        initialisation were not seeded)."""
        with torch.no_grad():
            for t in list(model.parameters()) + list(model.buffers()):
                if t.is_floating_point() or t.dtype in (torch.int64, torch.int32):
                    torch.distributed.broadcast(t.data, src=0)

    # ---- evaluation --------------------------------------------------------
    def shard_evaluator(self, evaluator) -> None:
        """Make `evaluator.rank` rank every world-th user batch here and all-gather the results."""
        ctx = self
        orig = evaluator.rank

        def rank(_self, model, loader):
            mine = _EveryNth(loader, ctx.rank, ctx.world_size)
            users, top = orig(model, mine)
            parts: List[Any] = [None] * ctx.world_size
            torch.distributed.all_gather_object(parts, (users, top))
            users = np.concatenate([p[0] for p in parts])
            # a rank with no batch returns [0, max_k]; the others [n, min(max_k, n_items)]
            k = next((p[1].shape[1] for p in parts if len(p[0])), 0)
            top = np.concatenate([p[1].reshape(len(p[0]), k) for p in parts])
            order = np.argsort(users, kind="stable")     # the single-process order: users ascending
            return users[order], top[order]
        evaluator.rank = types.MethodType(rank, evaluator)

    def attach(self, trainer) -> None:
        """Called by Trainer.__init__: same starting weights everywhere, sharded evaluation."""
        self.broadcast_parameters(trainer.model)
        self.shard_evaluator(trainer.evaluator)


class _EveryNth:
    """Batches i of `loader` with i % n == r (the loader's own batching and masks kept)."""

    def __init__(self, loader: Iterable, r: int, n: int):
        self.loader, self.r, self.n = loader, r, n

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            if i % self.n == self.r:
                yield batch


def init_from_env(device: Optional[str] = None) -> DistContext:
    """Join the process group described by torchrun's environment variables.

    Backend nccl when the run's device is a GPU (cuda:LOCAL_RANK), else gloo."""
    global _CURRENT
    missing = [v for v in TORCHRUN_VARS if v not in os.environ]
    if missing:
        raise MMRecError(f"--distributed needs the environment torchrun sets ({', '.join(missing)} missing); "
                         f"launch with: torchrun --standalone --nproc_per_node 2 main.py -m MODEL -d DATASET "
                         f"--distributed")
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    want = str(device or "auto").lower()
    use_gpu = torch.cuda.is_available() and want != "cpu"
    if use_gpu:
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
        backend = "nccl"
    else:
        dev, backend = torch.device("cpu"), "gloo"
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend, rank=rank, world_size=world, timeout=timedelta(minutes=30))
    _CURRENT = DistContext(rank, world, local, dev, backend)
    return _CURRENT


def shutdown() -> None:
    """Leave the process group (no-op when none)."""
    global _CURRENT
    _CURRENT = None
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
