"""Time and peak memory per stage on synthetic data at 100k, 300k and 1M items (issue #13).

Each (size, stage) runs in its own Python process, so the peak RSS printed is that stage's
own (getrusage of the child, which includes reading the data the stage needs). A watchdog
kills a stage whose resident memory passes --max_rss_gib and records it as over the limit.

Sizes (users = items, 20 interactions per user on average): 100k -> 100k x 100k x 2M,
300k -> 300k x 300k x 6M, 1m -> 1M x 1M x 20M (mmrec_egra.data.synth presets).

Stages:
  generate     write the synthetic dataset (text 384-d; image --image_dim, 0 = none)
  load         read <name>.inter + features, build train/valid/test loaders
  negsample    one epoch of shuffling + negative sampling over all training rows
  knn          item-item kNN (k=10) of the text features with --knn_backend; recall@10
               against exact search on --recall_rows sampled items (exact blockwise
               over the whole catalog for those rows)
  knn_exact    the full exact blockwise kNN (n^2 d, only sensible at 100k); saved, and a later
               knn stage of the same size then also reports recall over every item
  lightgcn     LightGCN construction (normalised adjacency) + --steps training steps of
               batch --batch; the epoch time is extrapolated from the step time and
               labelled as such unless --steps 0 (a full epoch)
  eval         chunked full-ranking evaluation of --eval_users valid users (0: all of
               them) against all items; the full-split time is extrapolated when sampled
  checkpoint   torch_save_atomic of LightGCN weights + Adam state (what last.pt holds)
  pipeline     load, negsample, LightGCN build + steps, eval and checkpoint in one process
               (data read once; each row's RSS is the process peak so far)

    python benchmarks/scale_bench.py --sizes 100k 300k --stages generate load negsample knn lightgcn eval checkpoint
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))

from mmrec_egra.data.synth import SIZES, ensure_synth  # noqa: E402

STAGES = ("generate", "load", "negsample", "knn", "knn_exact", "lightgcn", "eval", "checkpoint", "pipeline")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _config(args, model: str = "LightGCN"):
    from mmrec_egra.runner import make_config
    config = make_config(model, f"synth_{args.size}", {
        "data_path": str(Path(args.data_dir)) + "/", "show_progress": False, "device": "cpu",
        "modalities": {"text": "text_feat.npy"}, "train_batch_size": args.batch, "graph_cache": False,
        "checkpoint_dir": str(Path(args.data_dir) / "saved")})
    config = config.for_combination(config.grid()[0])     # the default (first) value of every grid key
    config["_combo_key"] = "scale_bench"
    return config


def _load(args):
    from mmrec_egra.data import build_loaders, load_dataset
    config = _config(args)
    ds = load_dataset(config)
    return config, ds, build_loaders(config, ds)


class RandomEmbeddings:
    """Scores = fixed random 64-d user vectors . item vectors: the evaluator's cost without a model's."""

    def __init__(self, n_users: int, n_items: int, dim: int = 64):
        import torch
        g = torch.Generator().manual_seed(0)
        self.u = torch.randn(n_users, dim, generator=g)
        self.i = torch.randn(n_items, dim, generator=g)
        self.device = torch.device("cpu")
        self.n_items = n_items

    def parameters(self):
        return iter([])

    def eval(self):
        return self

    def full_sort_predict(self, batch):
        return self.u[batch[0]] @ self.i.t()


def timed_eval(config, model, valid, eval_users: int):
    """Chunked full ranking of `eval_users` sampled valid users (all when 0) -> (seconds,
    metrics, users ranked, valid users)."""
    from mmrec_egra.evaluation import TopKEvaluator
    ev = TopKEvaluator(config)
    model.eval()
    n_all = len(valid.users)
    if eval_users and eval_users < n_all:
        valid.users = np.sort(np.random.default_rng(2).choice(valid.users, eval_users, replace=False))
    t = time.perf_counter()
    res = ev.evaluate(model, valid)
    return time.perf_counter() - t, res, len(valid.users), n_all


def run_pipeline(args) -> list:
    """load -> negsample -> lightgcn -> eval -> checkpoint in ONE process (the data is read
    once, as in a real run); each row's peak RSS is the process peak up to that point."""
    import torch
    from mmrec_egra.data import build_loaders, load_dataset
    from mmrec_egra.models.lightgcn import LightGCN
    from mmrec_egra.trainer import build_optimizer
    from mmrec_egra.utils import torch_save_atomic
    torch.manual_seed(0)
    rows = []

    def row(stage, seconds, note, **extra):
        rows.append(dict(size=args.size, stage=stage, seconds=seconds, note=note, peak_rss_mib=peak_rss_mib(),
                         load1=os.getloadavg()[0], **extra))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)   # progress, in case a later step is killed

    t = time.perf_counter()
    config = _config(args)
    ds = load_dataset(config)
    train, valid, test = build_loaders(config, ds)
    row("load", time.perf_counter() - t, ds.summary())
    t = time.perf_counter()
    data = torch.from_numpy(train.epoch_arrays())
    row("negsample", time.perf_counter() - t, f"{data.shape[1]} rows shuffled + 1 negative each")
    t = time.perf_counter()
    model = LightGCN(config, train)
    row("lightgcn_build", time.perf_counter() - t, "normalised (U+I)^2 adjacency + embeddings")
    opt = build_optimizer(config, list(model.parameters()))
    model.train()
    n_batches = len(train)
    limit = args.steps if args.steps > 0 else n_batches
    t = time.perf_counter()
    done = 0
    for batch in data.split(train.batch_size, dim=1):
        opt.zero_grad(set_to_none=True)
        model.calculate_loss(batch).backward()
        opt.step()
        done += 1
        if done >= limit:
            break
    per = (time.perf_counter() - t) / done
    row("lightgcn_steps", per * done, f"{done} of {n_batches} steps of batch {args.batch}, {per:.2f} s/step; epoch "
        + ("measured" if done == n_batches else "EXTRAPOLATED") + f" {per * n_batches:.0f} s",
        step_s=per, epoch_s=per * n_batches)
    del data
    te, res, n_ranked, n_all = timed_eval(config, model, valid, args.eval_users)
    full = n_ranked == n_all
    row("eval", te, f"chunked full ranking of {n_ranked} of {n_all} valid users x {ds.n_items} "
        f"items (LightGCN after {done} steps, recall@20 {res['recall@20']:.4f}; includes its one propagation); "
        "full split " + ("measured" if full else f"EXTRAPOLATED {te * n_all / n_ranked:.0f} s"),
        eval_s_full=te * n_all / n_ranked)
    path = Path(args.data_dir) / f"ckpt_{args.size}.pt"
    t = time.perf_counter()
    torch_save_atomic({"model": model.state_dict(), "optimizer": opt.state_dict()}, path)
    row("checkpoint", time.perf_counter() - t, f"{path.stat().st_size / 2 ** 20:.0f} MiB (weights + Adam state)")
    path.unlink()
    return rows


def run_stage(args) -> dict:
    """One stage in this process; returns its measurements."""
    import torch
    torch.manual_seed(0)
    folder = Path(args.data_dir) / f"synth_{args.size}"
    u, i, n = SIZES[args.size]
    out: dict = {"size": args.size, "stage": args.stage}
    t0 = time.perf_counter()
    if args.stage == "generate":
        ensure_synth(folder, n_users=u, n_items=i, n_inter=n, seed=0, text_dim=384, image_dim=args.image_dim)
        out["seconds"] = time.perf_counter() - t0
        out["note"] = json.loads((folder / "synth.json").read_text())
    elif args.stage == "load":
        config, ds, _ = _load(args)
        out["seconds"] = time.perf_counter() - t0
        out["note"] = ds.summary()
    elif args.stage == "negsample":
        config, ds, (train, _, _) = _load(args)
        t0 = time.perf_counter()
        arr = train.epoch_arrays()
        out["seconds"] = time.perf_counter() - t0
        out["note"] = f"{arr.shape[1]} training rows shuffled + 1 negative each (RSS includes loading)"
    elif args.stage in ("knn", "knn_exact"):
        from mmrec_egra.graphs import FAISS_DEFAULTS, exact_knn_rows, knn_graph, knn_graph_faiss
        feats = np.load(folder / "text_feat.npy", mmap_mode="r")
        backend = "exact" if args.stage == "knn_exact" else args.knn_backend
        faiss_kw = {k: v for k, v in (("nprobe", args.faiss_nprobe), ("nlist", args.faiss_nlist),
                                      ("train_per_list", args.faiss_train_per_list)) if v}
        if faiss_kw and backend == "faiss":     # settings other than graphs.FAISS_DEFAULTS
            g = knn_graph_faiss(feats, 10, weighted=True, include_self=False, **faiss_kw)
        else:
            g = knn_graph(feats, 10, weighted=True, include_self=False, backend=backend)
        out["seconds"] = time.perf_counter() - t0
        note = f"{feats.shape[0]} x {feats.shape[1]} text features (memmap), k=10, backend {backend}, nnz {g.nnz}"
        if backend == "faiss":
            note += f", faiss settings {dict(FAISS_DEFAULTS, **faiss_kw)} (nlist None = min(4 sqrt n, n/39))"
        if args.recall_rows and args.stage == "knn":
            rows = np.sort(np.random.default_rng(1).choice(feats.shape[0], args.recall_rows, replace=False))
            t1 = time.perf_counter()
            ids, _ = exact_knn_rows(feats, rows, 10, include_self=False)
            hit = [len(set(ids[j]) & set(g.indices[g.indptr[r]:g.indptr[r + 1]])) / 10 for j, r in enumerate(rows)]
            out["recall@10"] = float(np.mean(hit))
            note += f"; recall@10 vs exact on {len(rows)} sampled items (exact reference {time.perf_counter() - t1:.1f} s)"
        exact_file = Path(args.data_dir) / f"exact_knn_{args.size}.npz"
        import scipy.sparse as sp
        if args.stage == "knn_exact":
            sp.save_npz(exact_file, g)          # the reference for the knn stage's whole-catalog recall
        elif exact_file.is_file():
            ref = sp.load_npz(exact_file)
            e = ref.indices.reshape(ref.shape[0], -1)
            f = g.indices.reshape(g.shape[0], -1)
            hits = sum(int((e[s:s + 50000, :, None] == f[s:s + 50000, None, :]).any(2).sum())
                       for s in range(0, e.shape[0], 50000))
            out["recall@10_all"] = hits / e.size
            note += f"; recall@10 vs the exact graph over all {e.shape[0]} items"
        out["note"] = note
    elif args.stage in ("lightgcn", "eval", "checkpoint"):
        from mmrec_egra.models.lightgcn import LightGCN
        from mmrec_egra.trainer import build_optimizer
        config, ds, (train, valid, test) = _load(args)
        t0 = time.perf_counter()
        model = LightGCN(config, train) if not (args.stage == "eval" and args.eval_model == "random") \
            else RandomEmbeddings(ds.n_users, ds.n_items)
        t_build = time.perf_counter() - t0
        opt = build_optimizer(config, list(model.parameters())) if args.stage != "eval" else None
        if args.stage == "lightgcn":
            model.train()
            n_batches = len(train)
            limit = args.steps if args.steps > 0 else n_batches
            import torch as _t
            data = _t.from_numpy(train.epoch_arrays())    # sampling is timed by its own stage
            t1 = time.perf_counter()
            done = 0
            for batch in data.split(train.batch_size, dim=1):
                opt.zero_grad(set_to_none=True)
                loss = model.calculate_loss(batch)
                loss.backward()
                opt.step()
                done += 1
                if done % 10 == 0:
                    print(f"progress: {done}/{limit} steps, {time.perf_counter() - t1:.0f} s, "
                          f"peak RSS {peak_rss_mib():.0f} MiB", file=sys.stderr, flush=True)
                if done >= limit:
                    break
            t_steps = time.perf_counter() - t1
            per_step = t_steps / done
            out["seconds"] = t_steps + t_build
            out["build_s"] = t_build
            out["step_s"] = per_step
            out["epoch_s"] = per_step * n_batches
            out["epoch_measured"] = done == n_batches
            out["note"] = (f"adjacency + model build {t_build:.1f} s; {done} of {n_batches} steps of batch "
                           f"{args.batch}, {per_step:.3f} s/step; epoch "
                           + ("measured" if done == n_batches else "EXTRAPOLATED") + f" {per_step * n_batches:.0f} s")
        elif args.stage == "eval":
            t_eval, res, n_ranked, n_all = timed_eval(config, model, valid, args.eval_users)
            full = n_ranked == n_all
            out["seconds"] = t_eval
            out["eval_s_full"] = t_eval * n_all / n_ranked
            out["note"] = (f"{n_ranked} of {n_all} valid users x {ds.n_items} items, "
                           f"recall@20 {res['recall@20']:.4f} (untrained {args.eval_model}); full split "
                           + ("measured" if full else f"EXTRAPOLATED {out['eval_s_full']:.0f} s")
                           + f"; model build {t_build:.1f} s not included")
        else:
            from mmrec_egra.utils import torch_save_atomic
            state = {"model": model.state_dict(), "optimizer": opt.state_dict()}
            # one step so Adam's moment buffers exist, as in a real last.pt
            model.train()
            batch = next(iter(train))
            opt.zero_grad(set_to_none=True)
            model.calculate_loss(batch).backward()
            opt.step()
            state = {"model": model.state_dict(), "optimizer": opt.state_dict()}
            path = Path(args.data_dir) / f"ckpt_{args.size}.pt"
            t1 = time.perf_counter()
            torch_save_atomic(state, path)
            out["seconds"] = time.perf_counter() - t1
            out["note"] = f"{path.stat().st_size / 2 ** 20:.0f} MiB written (weights + Adam state)"
            path.unlink()
    out["peak_rss_mib"] = peak_rss_mib()
    ru = resource.getrusage(resource.RUSAGE_SELF)
    out["proc_cpu_s"] = ru.ru_utime + ru.ru_stime      # the whole process (imports and loading included)
    out["load1"] = os.getloadavg()[0]                   # machine load: wall times stretch when it passes the cores
    return out


def run_child(args, size: str, stage: str) -> dict:
    """Run one stage in a fresh process under an RSS watchdog."""
    cmd = [sys.executable, __file__, "--_stage", stage, "--size", size, "--data_dir", args.data_dir,
           "--knn_backend", args.knn_backend, "--batch", str(args.batch), "--steps", str(args.steps),
           "--eval_users", str(args.eval_users), "--recall_rows", str(args.recall_rows),
           "--image_dim", str(args.image_dim), "--eval_model", args.eval_model,
           "--faiss_nprobe", str(args.faiss_nprobe), "--faiss_nlist", str(args.faiss_nlist),
           "--faiss_train_per_list", str(args.faiss_train_per_list)]
    limit = args.max_rss_gib * 2 ** 30
    t0 = time.time()
    # the child's stderr goes to a file (a pipe read only at the end could fill and block a long
    # stage); `tail -f` it to follow a long stage's progress lines
    Path(args.data_dir).mkdir(parents=True, exist_ok=True)
    log = Path(args.data_dir) / f"scale_bench_{size}_{stage}.log"
    err = open(log, "w")
    # glibc raises its mmap threshold up to 32 MiB after freeing a large block; the evaluator's
    # score chunks (8 users x 1M items = 32,000,000 bytes) then come from the heap, which
    # fragments: the 1M eval stage grew past 18 GiB (~60 MB/s). A fixed 4 MiB threshold keeps
    # them mmapped (returned to the OS on free): flat 5.0 GiB. Set here unless already set.
    env = dict(os.environ)
    env.setdefault("MALLOC_MMAP_THRESHOLD_", str(4 * 2 ** 20))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
    killed = False
    peak_seen = 0
    last_note = t0
    while proc.poll() is None:
        try:
            with open(f"/proc/{proc.pid}/status") as fh:
                rss = next(int(l.split()[1]) * 1024 for l in fh if l.startswith("VmRSS:"))
            peak_seen = max(peak_seen, rss)
            if time.time() - last_note > 30:         # an RSS trace in the stage log (where a stage grows)
                last_note = time.time()
                print(f"watchdog: {last_note - t0:.0f} s, RSS {rss / 2 ** 20:.0f} MiB", file=err, flush=True)
            if rss > limit:
                proc.kill()
                killed = True
        except (FileNotFoundError, StopIteration, ProcessLookupError):
            pass
        time.sleep(0.2)
    stdout, _ = proc.communicate()
    err.close()
    stderr = log.read_text()
    if killed or proc.returncode != 0:
        done = [dict(json.loads(l), status="ok") for l in stderr.splitlines() if l.startswith('{"size"')]
        why = f"KILLED: RSS passed {args.max_rss_gib} GiB" if killed else \
            f"FAILED rc {proc.returncode}: {stderr.strip()[-400:]}"
        return done + [{"size": size, "stage": stage, "status": why, "seconds": time.time() - t0,
                        "peak_rss_mib": peak_seen / 2 ** 20}]
    res = json.loads(stdout.strip().splitlines()[-1])
    res = res if isinstance(res, list) else [res]
    for r in res:
        r["status"] = "ok"
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["100k", "300k"], choices=sorted(SIZES))
    ap.add_argument("--stages", nargs="+", default=["generate", "load", "negsample", "knn", "lightgcn", "eval",
                                                    "checkpoint"], choices=STAGES)
    ap.add_argument("--data_dir", default="/tmp/mmrec_scale", help="where the synthetic datasets are written")
    ap.add_argument("--knn_backend", default="faiss", choices=["auto", "exact", "faiss"])
    ap.add_argument("--faiss_nprobe", type=int, default=0, help="knn stage, faiss IVF nprobe (0: graphs.FAISS_DEFAULTS)")
    ap.add_argument("--faiss_nlist", type=int, default=0, help="knn stage, faiss IVF lists (0: default min(4 sqrt n, n/39))")
    ap.add_argument("--faiss_train_per_list", type=int, default=0,
                    help="knn stage, k-means training rows per list (0: graphs.FAISS_DEFAULTS)")
    ap.add_argument("--recall_rows", type=int, default=1000, help="items whose exact neighbours are the recall reference")
    ap.add_argument("--batch", type=int, default=2048, help="LightGCN training batch size")
    ap.add_argument("--steps", type=int, default=20, help="LightGCN steps to time (0: one full epoch)")
    ap.add_argument("--eval_users", type=int, default=0, help="valid users to rank (0: all)")
    ap.add_argument("--eval_model", default="lightgcn", choices=["lightgcn", "random"],
                    help="eval stage scores: an untrained LightGCN (graph built) or random 64-d embeddings")
    ap.add_argument("--image_dim", type=int, default=0, help="image features to generate (0: none; 4096 x 1M is 16 GiB)")
    ap.add_argument("--max_rss_gib", type=float, default=7.5, help="kill a stage whose RSS passes this")
    ap.add_argument("--json", default=None, help="also write all results to this file")
    ap.add_argument("--_stage", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--size", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._stage:
        args.stage = args._stage
        print(json.dumps(run_pipeline(args) if args.stage == "pipeline" else run_stage(args)))
        return
    import torch
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; "
          f"RSS limit per stage {args.max_rss_gib} GiB")
    print("| size | stage | seconds | peak RSS MiB | status | notes |")
    print("|---|---|---|---|---|---|")
    results = []
    for size in args.sizes:
        for stage in args.stages:
            for r in run_child(args, size, stage):
                results.append(r)
                extra = {k: v for k, v in r.items()
                         if k not in ("size", "stage", "seconds", "peak_rss_mib", "status", "note")}
                note = r.get("note", "")
                if isinstance(note, dict):
                    note = ", ".join(f"{k} {note[k]}" for k in ("n_train", "n_valid", "n_test", "max_user_len",
                                                                "max_item_count", "dedupe_rounds") if k in note)
                extra_s = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in extra.items())
                print(f"| {size} | {r['stage']} | {r['seconds']:.1f} | {r['peak_rss_mib']:.0f} | {r['status']} | "
                      f"{note} {extra_s} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
