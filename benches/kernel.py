"""Kernel benchmark driver: writes the data, runs the Rust kernel bench and the same math in
numpy (OpenBLAS) on it in the same run, and writes the table into benches/RESULTS.md.

    python3 benches/kernel.py [--tokens N] [--dim D] [--clusters 16,256,1024]

Run through `npm run bench:kernel` (benches/kernel.sh makes the virtual environment)."""
import argparse, json, os, platform, re, subprocess, sys, time
import numpy as np
from results_md import replace_block
from fit import memberships_from_sims

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TEMPERATURE, MIN_MEMBERSHIP = 0.1, 0.01
REPEATS = 5


def best_of(f):
    f()
    best = float("inf")
    for _ in range(REPEATS):
        t = time.perf_counter(); f(); best = min(best, time.perf_counter() - t)
    return best


def memberships(x, c):
    """The membership formula (docs/algorithm.md "Memberships") in numpy, the way a user would write it (the softmax step is fit.py's)."""
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    return xn, memberships_from_sims(xn @ c.T, TEMPERATURE, MIN_MEMBERSHIP)


def sparse_memberships(x, c):
    _, p = memberships(x, c)
    rows, cols = np.nonzero(p)
    return rows, cols, p[rows, cols]


def fit_pass(x, c):
    xn, p = memberships(x, c)
    return p.T @ xn, p.sum(axis=0)


def planted(n, d, k, rng):
    """Tokens near planted directions with norms over two orders of magnitude."""
    truth = rng.standard_normal((64, d)).astype(np.float32)
    labels = rng.integers(0, 64, n)
    x = truth[labels] + 0.8 * rng.standard_normal((n, d)).astype(np.float32)
    x *= (10 ** rng.uniform(-1, 1, n)).astype(np.float32)[:, None]
    return x.astype(np.float32)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--clusters", default="16,256,1024")
    ap.add_argument("--results", default=os.path.join(HERE, "RESULTS.md"))
    args = ap.parse_args()
    ks = [int(k) for k in args.clusters.split(",")]
    data = os.path.join(HERE, "data", "kernel")
    os.makedirs(data, exist_ok=True)
    rng = np.random.default_rng(0)
    x = planted(args.tokens, args.dim, 64, rng)
    np.save(os.path.join(data, "x.npy"), x)
    centers = {}
    for k in ks:
        c = x[rng.choice(len(x), k, replace=False)]
        centers[k] = (c / np.linalg.norm(c, axis=1, keepdims=True)).astype(np.float32)
        np.save(os.path.join(data, f"centers_{k}.npy"), centers[k])

    subprocess.run(["cargo", "build", "--release", "--bench", "kernel", "-p", "soft-cluster-core"], cwd=ROOT, check=True)
    out = subprocess.run(["cargo", "bench", "-q", "-p", "soft-cluster-core", "--bench", "kernel", "--", data, *map(str, ks)],
                         cwd=ROOT, check=True, capture_output=True, text=True).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]

    n, d = x.shape
    big = np.ones((2048, 2048), np.float32)
    secs = best_of(lambda: big @ big)
    rows.append({"impl": "numpy", "op": "sgemm_peak", "n": 2048, "seconds": secs, "gflops": 2 * 2048 ** 3 / secs / 1e9})
    for k in ks:
        for op, f, gemms in [("memberships", sparse_memberships, 1), ("fit_pass", fit_pass, 2)]:
            secs = best_of(lambda: f(x, centers[k]))
            rows.append({"impl": "numpy", "op": op, "n": n, "d": d, "k": k, "seconds": secs,
                         "tokens_per_s": n / secs, "gflops": gemms * 2 * n * k * d / secs / 1e9})
    with open(os.path.join(HERE, "kernel-results.json"), "w") as fh:
        json.dump(rows, fh, indent=1)
    write_table(rows, ks, n, d, args.results)


def write_table(rows, ks, n, d, results_path):
    peak = max(r["gflops"] for r in rows if r["op"] == "sgemm_peak")
    peaks = ", ".join(f"{r['impl']} {r['gflops']:.1f}" for r in rows if r["op"] == "sgemm_peak")
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    lines = [
        "<!-- kernel:start -->",
        "## Kernel (issue 2): memberships and fit pass, CPU",
        "",
        f"Machine: {cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}; numpy {np.__version__} "
        f"(OpenBLAS). Data: N = {n} tokens, D = {d}, temperature {TEMPERATURE}, "
        f"minMembership {MIN_MEMBERSHIP}; best of {REPEATS}. SGEMM peak (2048^3, all cores): {peaks} GFLOP/s; "
        f"the larger, {peak:.1f}, is the reference. `memberships` = normalize + similarities + fused softmax + "
        "sparse output (1 GEMM); `fit_pass` = memberships + `S = P^T X` and `m`. GFLOP/s counts the dense "
        "work (2 N K D per GEMM); `fit_pass` sums `S` over the nonzero memberships only when they are "
        "sparse (fewer than 1 in 8), so its effective rate can exceed the SGEMM peak.",
        "",
        "| op | K | rust (gemm) tok/s | GFLOP/s | % peak | rust (matrixmultiply) tok/s | numpy tok/s | GFLOP/s | rust / numpy |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    get = lambda impl, op, k: next(r for r in rows if r["impl"] == impl and r["op"] == op and r.get("k") == k)
    for op in ["memberships", "fit_pass"]:
        for k in ks:
            g, m, nump = get("rust-gemm", op, k), get("rust-matrixmultiply", op, k), get("numpy", op, k)
            best = max(g, m, key=lambda r: r["tokens_per_s"])
            lines.append(f"| {op} | {k} | {g['tokens_per_s']:,.0f} | {g['gflops']:.1f} | {100 * g['gflops'] / peak:.0f}% | "
                         f"{m['tokens_per_s']:,.0f} | {nump['tokens_per_s']:,.0f} | {nump['gflops']:.1f} | "
                         f"{best['tokens_per_s'] / nump['tokens_per_s']:.2f}x |")
    lines += ["", f"Command: `npm run bench:kernel` (raw figures: `benches/kernel-results.json`).", "<!-- kernel:end -->"]
    replace_block(results_path, "kernel", "\n".join(lines))


if __name__ == "__main__":
    main()
