"""The design document's algorithm in PyTorch (the code soft-cluster replaces), and the data for
benches/gpu-check.sh. Runs on the device machine, whose image has torch and numpy.

    gpu_torch.py gen DIR --dim D --chunks C --batch B --seq S --clusters K   chunks + init centers
    gpu_torch.py fit DIR --clusters K --iterations I --out OUT [--tf32] [--skip-output]
    gpu_torch.py fused --rows N --clusters K --dim D [--tf32]                   one step, device time

Each prints one JSON line. `fit` follows the design document: for every iteration, every chunk is
loaded with numpy, moved to the GPU, normalized, given memberships (similarities / T, softmax,
values below minMembership zeroed, rows renormalized) and summed into S = P^T X; the centers are
S's rows normalized. A last pass writes each chunk's nonzero memberships (np.savez_compressed),
as soft-cluster's output pass does.
"""
import argparse, json, os, sys, time
import numpy as np


def gen(a):
    rng = np.random.default_rng(0)
    os.makedirs(a.dir, exist_ok=True)
    dirs = rng.standard_normal((a.clusters, a.dim)).astype(np.float32)
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    for c in range(a.chunks):
        labels = rng.integers(0, a.clusters, size=(a.batch, a.seq))
        acts = dirs[labels] * 3.0 + rng.standard_normal((a.batch, a.seq, a.dim), dtype=np.float32) / np.sqrt(a.dim) * 2.0
        acts *= rng.uniform(0.5, 20.0, size=(a.batch, a.seq, 1)).astype(np.float32)
        mask = np.ones((a.batch, a.seq), dtype=bool)
        lengths = rng.integers(a.seq // 2, a.seq + 1, size=a.batch)
        for b, n in enumerate(lengths):
            mask[b, n:] = False
        acts[~mask] = 0
        ids = rng.integers(0, 30000, size=(a.batch, a.seq)).astype(np.int64)
        np.savez(os.path.join(a.dir, f"chunk_{c:03d}.npz"), activations=acts.astype(np.float16), attention_mask=mask, token_ids=ids)
    init = rng.standard_normal((a.clusters, a.dim)).astype(np.float32)
    init /= np.linalg.norm(init, axis=1, keepdims=True)
    np.save(os.path.join(a.dir, "init.npy"), init)
    print(json.dumps({"generated": a.chunks, "tokens_per_chunk": a.batch * a.seq, "dim": a.dim}))


def memberships(F, torch, x, centers, t, min_m):
    sim = torch.mm(x, centers.t()) / t
    p = torch.softmax(sim, dim=-1)
    p[p < min_m] = 0
    return p / p.sum(dim=1, keepdim=True)


def fit(a):
    import torch
    import torch.nn.functional as F
    torch.backends.cuda.matmul.allow_tf32 = a.tf32
    paths = sorted(os.path.join(a.dir, f) for f in os.listdir(a.dir) if f.endswith(".npz"))
    os.makedirs(a.out, exist_ok=True)
    dev = torch.device("cuda")
    torch.zeros(1, device=dev)  # context creation outside the timing, as soft-cluster's is not timed either
    start = time.perf_counter()
    centers = F.normalize(torch.from_numpy(np.load(os.path.join(a.dir, "init.npy"))).to(dev), dim=1)

    def load(path):
        z = np.load(path)
        acts, mask = z["activations"], z["attention_mask"]
        b, s, d = acts.shape
        x = torch.from_numpy(acts).to(dev).float().reshape(-1, d)
        keep = torch.from_numpy(mask).to(dev).reshape(-1)
        return F.normalize(x[keep], dim=1), keep, (b, s)

    per_iter = []
    for _ in range(a.iterations):
        t0 = time.perf_counter()
        s = torch.zeros_like(centers)
        for path in paths:
            x, _, _ = load(path)
            p = memberships(F, torch, x, centers, a.temperature, a.min_membership)
            s += torch.mm(p.t(), x)
        centers = F.normalize(s, dim=1)
        torch.cuda.synchronize()
        per_iter.append(time.perf_counter() - t0)
    iterations_done = time.perf_counter()
    for path in ([] if a.skip_output else paths):
        x, keep, (b, s_len) = load(path)
        p = memberships(F, torch, x, centers, a.temperature, a.min_membership)
        rows, clusters = torch.nonzero(p, as_tuple=True)
        token = torch.nonzero(keep, as_tuple=True)[0][rows]
        indices = torch.stack([token // s_len, token % s_len, clusters], dim=1).cpu().numpy()
        values = p[rows, clusters].cpu().numpy()
        name = os.path.basename(path)[:-4] + ".memberships.npz"
        np.savez_compressed(os.path.join(a.out, name), indices=indices, values=values)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    print(json.dumps({"impl": "pytorch", "tf32": a.tf32, "seconds": seconds, "iteration_seconds": per_iter,
                      "output_seconds": None if a.skip_output else time.perf_counter() - iterations_done}))


def fused(a):
    import torch
    import torch.nn.functional as F
    torch.backends.cuda.matmul.allow_tf32 = a.tf32
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    raw = torch.randn(a.rows, a.dim, device=dev, generator=g).half()
    centers = F.normalize(torch.randn(a.clusters, a.dim, device=dev, generator=g), dim=1)
    inv = 1.0 / raw.float().norm(dim=1)

    def step():
        x = raw.float() * inv[:, None]
        p = memberships(F, torch, x, centers, a.temperature, a.min_membership)
        m = p.sum(dim=0)
        s = torch.mm(p.t(), x)
        return m, s

    times = []
    for rep in range(a.reps + 3):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        step()
        e1.record()
        torch.cuda.synchronize()
        if rep >= 3:
            times.append(e0.elapsed_time(e1))
    ms = float(np.median(times))
    flops = 4.0 * a.rows * a.clusters * a.dim
    print(json.dumps({"impl": "pytorch", "precision": "tf32" if a.tf32 else "float32", "rows": a.rows, "k": a.clusters, "d": a.dim,
                      "median_ms": ms, "matmul_tflops": flops / (ms * 1e-3) / 1e12}))


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gen")
    g.add_argument("dir"); g.add_argument("--dim", type=int, required=True); g.add_argument("--chunks", type=int, default=4)
    g.add_argument("--batch", type=int, default=64); g.add_argument("--seq", type=int, default=256); g.add_argument("--clusters", type=int, required=True)
    f = sub.add_parser("fit")
    f.add_argument("dir"); f.add_argument("--clusters", type=int, required=True); f.add_argument("--iterations", type=int, default=3)
    f.add_argument("--out", required=True); f.add_argument("--tf32", action="store_true")
    f.add_argument("--skip-output", action="store_true", help="iterations only (no output pass)")
    f.add_argument("--temperature", type=float, default=0.1); f.add_argument("--min-membership", type=float, default=0.01)
    u = sub.add_parser("fused")
    u.add_argument("--rows", type=int, default=16384); u.add_argument("--clusters", type=int, required=True); u.add_argument("--dim", type=int, required=True)
    u.add_argument("--tf32", action="store_true"); u.add_argument("--reps", type=int, default=20)
    u.add_argument("--temperature", type=float, default=0.1); u.add_argument("--min-membership", type=float, default=0.01)
    a = ap.parse_args()
    {"gen": gen, "fit": fit, "fused": fused}[a.cmd](a)


if __name__ == "__main__":
    main()
