"""Fit benchmark: a whole streaming fit (iterations + output pass) over chunk files on disk, the
Rust `fit-bench` binary against the same algorithm in plain numpy, with peak memory of each.

    python3 benches/fit.py run [--quick]                  # the driver: data, both fits, RESULTS.md
    python3 benches/fit.py generate --dir DIR --chunks N --batch B --seq S --dim D --dtype float16 --seed X
    python3 benches/fit.py numpy-fit --chunks DIR --init FILE --clusters K --iterations N \\
        --temperature T --min-membership M --out DIR
        (also writes DIR/centers.npy, and `iteration_seconds` and `output_seconds` in its JSON line)

Run through `npm run bench:fit` (benches/fit.sh makes the virtual environment).

Contract of `target/release/fit-bench` (what `run` calls; same arguments as `numpy-fit`):
    fit-bench --chunks DIR --init FILE --clusters K --iterations N --temperature T
              --min-membership M --out DIR
  - DIR holds the chunk files `chunk_0000.npz`, ... (every `*.npz` in it, in name order);
  - FILE is a float32 [K, D] `.npy` of unit-length initial centers;
  - N full passes over all chunks (no early stop), then one output pass with the final centers
    writing, per chunk, `OUT/<chunk file name>` (an `.npz` with `indices` [nnz, 3] =
    (batch, position, cluster) and `values` float32 [nnz]); OUT exists (made empty by the driver);
  - stdout: one JSON line {"impl": "rust-cpu", "seconds", "iterations", "tokens", "tokens_per_s"}
    with `tokens` = real, non-zero tokens per pass, tokens_per_s = tokens * (N + 1) / seconds.
"""
import argparse, glob, json, os, platform, re, shutil, subprocess, sys, time
import numpy as np
from results_md import replace_block
from spawner import Spawner, json_line

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TEMPERATURE, MIN_MEMBERSHIP = 0.1, 0.01
N_TRUE = 64          # planted directions
AGREE_TOL = 1e-3     # max |dp| between the two implementations before a row is flagged
MEMORY_GOAL = 1.2    # 40-chunk peak / 4-chunk peak
MEMORY_CACHE_BUDGET = 16 << 20   # bytes of activation cache in the memory check: less than 4 chunks


# ---------------------------------------------------------------------------------------------
# generate

def generate(dirname, chunks, batch, seq, dim, dtype, seed, zero_tokens=2, truth_path=None):
    """Planted chunks: N_TRUE unit directions with Zipf-like weights; each real token is its
    direction plus Gaussian noise (cosine to the direction ~ U(0.5, 0.8)), times a norm
    10**U(-1, 1). A few real tokens per chunk are all-zero (they must be skipped). Padded
    positions (right padding, lengths U[S/4, S]) hold large finite garbage (must be ignored).
    Chunk i depends only on (seed, i): the first n chunks of a larger set are the same files.

    The planted truth goes to `truth_path` (default: `<dirname>-truth.npz`, beside the folder,
    since every `.npz` in it is a chunk): `labels` int64 [n] = the direction of each clustered
    token (real and non-zero) in chunk, batch, position order (the order of `load_real`),
    `directions` float32 [N_TRUE, D], and `chunk_tokens` int64 [chunks]."""
    os.makedirs(dirname, exist_ok=True)
    truth = np.random.default_rng(seed).standard_normal((N_TRUE, dim))
    truth = (truth / np.linalg.norm(truth, axis=1, keepdims=True)).astype(np.float32)
    weights = 1.0 / np.arange(1, N_TRUE + 1)
    weights /= weights.sum()
    real_total = 0
    true_labels, chunk_tokens = [], []
    for i in range(chunks):
        rng = np.random.default_rng([seed, i])
        lengths = rng.integers(seq // 4, seq + 1, batch)
        mask = np.arange(seq)[None, :] < lengths[:, None]
        labels = rng.choice(N_TRUE, (batch, seq), p=weights)
        cos = rng.uniform(0.5, 0.8, (batch, seq, 1)).astype(np.float32)
        sigma = np.sqrt((1.0 / cos ** 2 - 1.0) / dim)       # |noise| ~ sigma sqrt(D) = tan(angle)
        acts = rng.standard_normal((batch, seq, dim), dtype=np.float32)
        acts *= sigma
        acts += truth[labels]
        acts *= (10 ** rng.uniform(-1, 1, (batch, seq, 1))).astype(np.float32)
        pad = ~mask
        acts[pad] = rng.uniform(-1000, 1000, (int(pad.sum()), dim)).astype(np.float32)
        real = np.argwhere(mask)
        kept = mask.copy()
        for b, s in real[rng.choice(len(real), min(zero_tokens, len(real)), replace=False)]:
            acts[b, s] = 0
            kept[b, s] = False
        real_total += int(mask.sum()) - min(zero_tokens, len(real))   # clustered tokens
        true_labels.append(labels[kept])                               # row-major = np.nonzero order
        chunk_tokens.append(int(kept.sum()))
        token_ids = rng.integers(0, 50257, (batch, seq), dtype=np.int32)
        np.savez(os.path.join(dirname, f"chunk_{i:04d}.npz"), activations=acts.astype(dtype),
                 attention_mask=mask, token_ids=token_ids)
    np.savez(truth_path or os.path.normpath(dirname) + "-truth.npz",
             labels=np.concatenate(true_labels).astype(np.int64), directions=truth,
             chunk_tokens=np.array(chunk_tokens, np.int64))
    return real_total


# ---------------------------------------------------------------------------------------------
# numpy-fit

def chunk_files(dirname):
    files = sorted(glob.glob(os.path.join(dirname, "*.npz")))
    if not files:
        sys.exit(f"no .npz chunks in {dirname}")
    return files


def load_real(path):
    """Unit-length real, non-zero tokens of one chunk (float32 [n, D]) and their (batch, position)."""
    with np.load(path) as z:
        a = z["activations"]
        mask = z["attention_mask"].astype(bool) if "attention_mask" in z.files else np.ones(a.shape[:2], bool)
    b, s = np.nonzero(mask)
    x = a[b, s].astype(np.float32)
    norms = np.linalg.norm(x, axis=1)
    nz = norms > 0                      # all-zero real tokens have no direction: skipped
    return x[nz] / norms[nz, None], b[nz], s[nz]


def memberships(x, c, temperature, min_membership):
    return memberships_from_sims(x @ c.T, temperature, min_membership)


def memberships_from_sims(sims, temperature, min_membership):
    """Soft memberships from the cosines x.C_k (float32 [n, K]); `sims` is not modified."""
    s = sims / np.float32(temperature)
    s -= s.max(axis=1, keepdims=True)
    p = np.exp(s)
    p /= p.sum(axis=1, keepdims=True)
    keep = p >= min_membership
    keep[np.arange(len(p)), p.argmax(axis=1)] = True
    p *= keep
    p /= p.sum(axis=1, keepdims=True)
    return p


def numpy_fit(args):
    t0 = time.perf_counter()
    files = chunk_files(args.chunks)
    c = np.load(args.init).astype(np.float32)
    if c.shape[0] != args.clusters:
        sys.exit(f"{args.init}: {c.shape[0]} centers, --clusters {args.clusters}")
    tokens = 0
    iteration_seconds = []
    for it in range(args.iterations):
        started = time.perf_counter()
        S = np.zeros_like(c)
        m = np.zeros(len(c), np.float32)
        tokens = 0
        for f in files:
            x, _, _ = load_real(f)
            p = memberships(x, c, args.temperature, args.min_membership)
            S += p.T @ x
            m += p.sum(axis=0)
            tokens += len(x)
        norms = np.linalg.norm(S, axis=1)
        # An empty cluster (S_k = 0: no token kept a membership in it) keeps its old center.
        live = norms > 0
        c[live] = S[live] / norms[live, None]
        iteration_seconds.append(time.perf_counter() - started)
    started = time.perf_counter()
    os.makedirs(args.out, exist_ok=True)
    np.save(os.path.join(args.out, "centers.npy"), c)   # the final centers (float32 [K, D])
    out_tokens = 0
    for f in files:
        x, b, s = load_real(f)
        p = memberships(x, c, args.temperature, args.min_membership)
        rows, cols = np.nonzero(p)
        indices = np.stack([b[rows], s[rows], cols], axis=1).astype(np.int64)
        name = os.path.basename(f)[:-len(".npz")] + ".memberships.npz"  # the naming of docs/formats.md "Memberships file", as ours
        np.savez_compressed(os.path.join(args.out, name), indices=indices,
                            values=p[rows, cols].astype(np.float32))
        out_tokens += len(x)
    secs = time.perf_counter() - t0
    tokens = tokens or out_tokens
    print(json.dumps({"impl": "numpy", "seconds": secs, "iterations": args.iterations, "tokens": tokens,
                      "tokens_per_s": tokens * (args.iterations + 1) / secs,
                      "iteration_seconds": iteration_seconds,
                      "output_seconds": time.perf_counter() - started}), flush=True)


# ---------------------------------------------------------------------------------------------
# run (the driver)

def truth_file(dirname):
    """Where `ensure_data` keeps the planted truth of DIR's chunks (see `generate`)."""
    return os.path.join(dirname, "truth.npz")


def ensure_data(dirname, chunks, batch, seq, dim, dtype, seed):
    """Generates the chunks unless DIR already holds exactly these (meta.json beside them);
    DIR/chunks holds the chunk files, DIR/truth.npz the planted truth."""
    meta = {"chunks": chunks, "batch": batch, "seq": seq, "dim": dim, "dtype": dtype, "seed": seed, "version": 1}
    meta_path = os.path.join(dirname, "meta.json")
    chunk_dir = os.path.join(dirname, "chunks")
    try:
        old = json.load(open(meta_path))
        if ({k: old.get(k) for k in meta} == meta and len(glob.glob(os.path.join(chunk_dir, "*.npz"))) == chunks
                and os.path.exists(truth_file(dirname))):
            return chunk_dir, old["real_tokens"]
    except (OSError, ValueError, KeyError):
        pass
    shutil.rmtree(dirname, ignore_errors=True)
    print(f"generating {chunks} chunks [{batch}, {seq}, {dim}] {dtype} into {chunk_dir}", file=sys.stderr)
    meta["real_tokens"] = generate(chunk_dir, chunks, batch, seq, dim, dtype, seed, truth_path=truth_file(dirname))
    json.dump(meta, open(meta_path, "w"))
    return chunk_dir, meta["real_tokens"]


def write_init(chunk_dir, k, path, seed, tokens=None):
    """K distinct random real, non-zero tokens of the first chunk (or of `tokens`, unit rows
    [n, D], when given), normalized (float32 [K, D])."""
    x = load_real(chunk_files(chunk_dir)[0])[0] if tokens is None else tokens
    if len(x) < k:
        sys.exit(f"{'first chunk' if tokens is None else 'tokens'} has {len(x)} real tokens, fewer than K = {k}")
    c = x[np.random.default_rng(seed).choice(len(x), k, replace=False)]
    np.save(path, (c / np.linalg.norm(c, axis=1, keepdims=True)).astype(np.float32))
    return path


_SPAWNER = None


def spawner():
    """The spawner process, started on first use (call it early, while the driver is small)."""
    global _SPAWNER
    if _SPAWNER is None:
        _SPAWNER = Spawner(os.path.join(HERE, "out", "fit", "logs"))
    return _SPAWNER


def measured(cmd):
    """Runs cmd; returns its last JSON stdout line with peak_rss_mib. The command starts from the
    small spawner process (spawner.py): a child forked from this (large) driver would count the
    driver's pages in its own peak RSS."""
    res = spawner().run(os.path.basename(str(cmd[0])) + f"-{time.monotonic_ns()}", cmd, timeout=3600)
    row = json_line(res, cmd[0])
    row["peak_rss_mib"] = res["peak_rss_mib"]
    return row


def fit_args(chunk_dir, init, k, iterations, out):
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    return ["--chunks", chunk_dir, "--init", init, "--clusters", k, "--iterations", iterations,
            "--temperature", TEMPERATURE, "--min-membership", MIN_MEMBERSHIP, "--out", out]


def dense(path, batch, seq, k):
    with np.load(path) as z:
        idx, val = z["indices"].astype(np.int64), z["values"].astype(np.float32)
    p = np.zeros((batch, seq, k), np.float32)
    p[idx[:, 0], idx[:, 1], idx[:, 2]] = val
    return p


def max_abs_dp(out_a, out_b, name, batch, seq, k):
    """Max |p_rust - p_numpy| over the dense memberships of one chunk, over the tokens whose set
    of kept clusters is the same on both sides, and the number of tokens where it is not (a
    membership at the minMembership threshold kept by one, dropped by the other, after five
    iterations of float32 sums summed in different orders). None if a file is missing."""
    pa, pb = os.path.join(out_a, name), os.path.join(out_b, name)
    if not (os.path.exists(pa) and os.path.exists(pb)):
        return None
    a, b = dense(pa, batch, seq, k), dense(pb, batch, seq, k)
    same = ((a > 0) == (b > 0)).all(axis=-1)
    flips = int((~same).sum())
    return float(np.abs(a[same] - b[same]).max()) if same.any() else 0.0, flips


def run(args):
    spawner()  # before any data is loaded
    if args.quick:
        shape, iterations, mem_shape = dict(chunks=4, batch=8, seq=256), 3, dict(batch=8, seq=256)
    else:
        shape, iterations, mem_shape = dict(chunks=8, batch=16, seq=512), 5, dict(batch=16, seq=512)
    dim, dtype, seed = 768, "float16", 0
    ks = [int(k) for k in args.clusters.split(",")]
    binary = args.bin or os.path.join(ROOT, "target", "release", "fit-bench")
    if not args.bin:  # always rebuild (incremental): a stale binary would measure old code
        subprocess.run(["cargo", "build", "--release", "-p", "soft-cluster-core", "--bin", "fit-bench"], cwd=ROOT, check=True)
    data, out = os.path.join(HERE, "data", "fit"), os.path.join(HERE, "out", "fit")
    tag = "quick" if args.quick else "full"

    main_dir, real_tokens = ensure_data(os.path.join(data, f"main-{tag}"), **shape, dim=dim, dtype=dtype, seed=seed)
    first = os.path.basename(chunk_files(main_dir)[0])[:-len(".npz")] + ".memberships.npz"
    results = {"machine": machine(), "numpy": np.__version__, "temperature": TEMPERATURE,
               "min_membership": MIN_MEMBERSHIP, "iterations": iterations,
               "data": dict(shape, dim=dim, dtype=dtype, seed=seed, real_tokens=real_tokens), "fits": []}
    for k in ks:
        init = write_init(main_dir, k, os.path.join(data, f"main-{tag}", f"init_centers_{k}.npy"), seed + k)
        rust_out, numpy_out = os.path.join(out, f"rust-k{k}"), os.path.join(out, f"numpy-k{k}")
        rust = measured([binary, *fit_args(main_dir, init, k, iterations, rust_out)])
        nump = measured([sys.executable, os.path.abspath(__file__), "numpy-fit",
                         *fit_args(main_dir, init, k, iterations, numpy_out)])
        dp, flips = max_abs_dp(rust_out, numpy_out, first, shape["batch"], shape["seq"], k) or (None, None)
        results["fits"].append({"k": k, "rust": rust, "numpy": nump,
                                "ratio": rust["tokens_per_s"] / nump["tokens_per_s"],
                                "max_abs_dp": dp, "threshold_flips": flips, "agree": dp is not None and dp <= AGREE_TOL,
                                "tokens_match": rust.get("tokens") == nump.get("tokens")})

    # Memory: peak RSS must not grow with the number of chunks (40 vs 4, K = 64, 1 iteration) when
    # the chunks do not fit the activation cache's budget (here 16 MB, less than 4 chunks: every
    # pass streams the files; with room, the cache would hold them all, by design).
    mem_dir, _ = ensure_data(os.path.join(data, f"mem40-{tag}"), chunks=40, **mem_shape, dim=dim, dtype=dtype, seed=seed + 1)
    few_dir = os.path.join(data, f"mem40-{tag}", "first4")
    shutil.rmtree(few_dir, ignore_errors=True)
    os.makedirs(few_dir)
    for f in chunk_files(mem_dir)[:4]:
        dst = os.path.join(few_dir, os.path.basename(f))
        try:
            os.link(f, dst)            # a hard link reads as a plain file; no second copy on disk
        except OSError:
            shutil.copyfile(f, dst)
    init = write_init(mem_dir, 64, os.path.join(data, f"mem40-{tag}", "init_centers_64.npy"), seed + 64)
    mem = {"k": 64, "iterations": 1, "shape": dict(mem_shape, dim=dim, dtype=dtype)}
    for n, d in [(4, few_dir), (40, mem_dir)]:
        mem[f"chunks_{n}"] = measured([binary, *fit_args(d, init, 64, 1, os.path.join(out, f"mem-{n}")), "--cache", str(MEMORY_CACHE_BUDGET)])
    mem["ratio"] = mem["chunks_40"]["peak_rss_mib"] / mem["chunks_4"]["peak_rss_mib"]
    mem["within_goal"] = mem["ratio"] <= MEMORY_GOAL
    results["memory"] = mem

    with open(os.path.join(HERE, "fit-results.json"), "w") as fh:
        json.dump(results, fh, indent=1)
    write_table(results, args.results, args.quick)


def machine():
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "os": f"{platform.system()} {platform.release()}"}


def write_table(r, results_path, quick):
    d, m = r["data"], r["machine"]
    mem = r["memory"]
    lines = [
        "<!-- fit:start -->",
        "## Fit: streaming fit over chunk files, CPU",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['os']}; numpy {r['numpy']} (OpenBLAS). "
        f"Data{' (--quick)' if quick else ''}: {d['chunks']} chunks of [{d['batch']}, {d['seq']}, {d['dim']}] "
        f"{d['dtype']}, right-padded, {d['real_tokens']:,} real tokens per pass (64 planted directions, "
        f"norms over two orders of magnitude); temperature {r['temperature']}, minMembership "
        f"{r['min_membership']}, {r['iterations']} iterations + the output pass, same initial centers. "
        "tok/s = tokens x (iterations + 1) / wall seconds of the whole process (reading, fitting, "
        "writing compressed memberships); peak = the process's maximum RSS. max |dp| = largest "
        f"difference of the dense memberships of the first chunk where both keep the same clusters "
        f"(flagged above {AGREE_TOL:g}).",
        "",
        "| K | rust tok/s | numpy tok/s | rust / numpy | rust peak MiB | numpy peak MiB | max \\|dp\\| |",
        "|---|---|---|---|---|---|---|",
    ]
    for f in r["fits"]:
        dp = f["max_abs_dp"]
        dp_s = "missing output" if dp is None else f"{dp:.2e}" + ("" if f["agree"] else " **FLAG**")
        if f.get("threshold_flips"):
            dp_s += f" ({f['threshold_flips']} tokens with a membership at the threshold kept on one side only)"
        if not f["tokens_match"]:
            dp_s += f" (tokens differ: {f['rust'].get('tokens')} vs {f['numpy'].get('tokens')})"
        lines.append(f"| {f['k']} | {f['rust']['tokens_per_s']:,.0f} | {f['numpy']['tokens_per_s']:,.0f} | "
                     f"{f['ratio']:.2f}x | {f['rust']['peak_rss_mib']:,.0f} | {f['numpy']['peak_rss_mib']:,.0f} | {dp_s} |")
    s = mem["shape"]
    lines += [
        "",
        f"Memory (rust, K = {mem['k']}, {mem['iterations']} iteration, chunks of [{s['batch']}, {s['seq']}, {s['dim']}] "
        f"{s['dtype']}, `--cache {MEMORY_CACHE_BUDGET}`: the chunks do not fit the cache): peak RSS {mem['chunks_4']['peak_rss_mib']:,.0f} MiB over 4 chunks, "
        f"{mem['chunks_40']['peak_rss_mib']:,.0f} MiB over 40 chunks, ratio {mem['ratio']:.2f} "
        f"(goal <= {MEMORY_GOAL}: {'met' if mem['within_goal'] else '**NOT MET**'}).",
        "",
        f"Command: `npm run bench:fit{' -- --quick' if quick else ''}` (raw figures: `benches/fit-results.json`).",
        "<!-- fit:end -->",
    ]
    replace_block(results_path, "fit", "\n".join(lines))


# ---------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="write planted chunk files")
    g.add_argument("--dir", required=True)
    g.add_argument("--chunks", type=int, required=True)
    g.add_argument("--batch", type=int, required=True)
    g.add_argument("--seq", type=int, required=True)
    g.add_argument("--dim", type=int, required=True)
    g.add_argument("--dtype", choices=["float16", "float32"], default="float16")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--zero-tokens", type=int, default=2, help="all-zero real tokens per chunk")
    g.add_argument("--truth", help="where to write the planted truth (default: DIR-truth.npz)")
    f = sub.add_parser("numpy-fit", help="the fit in plain numpy")
    f.add_argument("--chunks", required=True)
    f.add_argument("--init", required=True)
    f.add_argument("--clusters", type=int, required=True)
    f.add_argument("--iterations", type=int, required=True)
    f.add_argument("--temperature", type=float, default=TEMPERATURE)
    f.add_argument("--min-membership", type=float, default=MIN_MEMBERSHIP)
    f.add_argument("--out", required=True)
    r = sub.add_parser("run", help="the benchmark driver")
    r.add_argument("--quick", action="store_true", help="smaller data and 3 iterations")
    r.add_argument("--clusters", default="64,1024")
    r.add_argument("--bin", help="fit-bench binary (default: target/release/fit-bench, built if missing)")
    r.add_argument("--results", default=os.path.join(HERE, "RESULTS.md"))
    args = ap.parse_args()
    if args.cmd == "generate":
        n = generate(args.dir, args.chunks, args.batch, args.seq, args.dim, args.dtype, args.seed, args.zero_tokens, args.truth)
        print(json.dumps({"dir": args.dir, "chunks": args.chunks, "real_tokens": n}))
    elif args.cmd == "numpy-fit":
        numpy_fit(args)
    else:
        run(args)


if __name__ == "__main__":
    main()
