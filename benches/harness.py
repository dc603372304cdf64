"""Benchmark harness: our fit (`fit-bench`) against peers on the same data in the same run -- the
same soft algorithm in numpy, FAISS k-means, scikit-learn MiniBatchKMeans and the npm packages
ml-kmeans and skmeans -- with speed, memory and quality against the planted truth.

    python3 benches/harness.py run [--quick] [--tokens N] [--dim 768[,4096]] [--clusters 64,256,1024]
        [--iterations 5] [--dtype float16|float32] [--chunks DIR] [--seed 0] [--temperature 0.1]
        [--min-membership 0.01] [--max-rows R] [--timeout S] [--bin FILE]
    python3 benches/harness.py faiss   --chunks DIR --clusters K --iterations N --seed S --out DIR
    python3 benches/harness.py sklearn --chunks DIR --clusters K --iterations N --seed S --out DIR

Run through `npm run bench` (benches/harness.sh makes the virtual environment). Writes
benches/harness-results.json, the `harness` block of benches/RESULTS.md and
benches/harness-throughput.svg. Data and fits go under benches/data/harness and
benches/out/harness (both git-ignored).

Every peer runs in a process of its own, started by a small stdlib-only "spawner" process that
the driver starts first: on Linux a child's ru_maxrss also counts the RSS of the process it was
forked from, so a driver holding the tokens would inflate every peer's peak.
"""
import argparse, importlib.metadata, json, os, re, shutil, subprocess, sys, time
import numpy as np
from results_md import replace_block

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import fit  # noqa: E402  (benches/fit.py: generator, chunk loading, the numpy soft fit)
from spawner import PeerFailed, Spawner, drive_and_record, json_line  # noqa: E402

DEFAULT_TOKENS, QUICK_TOKENS = 81920, 8192          # tokens per data set, padding included
DEFAULT_ROWS, QUICK_ROWS = 20000, 2000              # rows given to the npm peers
DEFAULT_TIMEOUT, QUICK_TIMEOUT = 600, 60            # seconds per peer process (then: "could not run")
SKLEARN_BATCH = 4096
PEERS = ["ours", "numpy soft", "faiss", "sklearn", "ml-kmeans", "skmeans"]
LABEL = {"ours": "ours (fit-bench)", "numpy soft": "numpy soft (fit.py)", "faiss": "FAISS Kmeans (spherical)",
         "sklearn": "sklearn MiniBatchKMeans", "ml-kmeans": "ml-kmeans (npm)", "skmeans": "skmeans (npm)"}
OUT = os.path.join(HERE, "out", "harness")
DATA = os.path.join(HERE, "data", "harness")


# ---------------------------------------------------------------------------------------------
# reading what the peers wrote

def read_safetensors(path, name):
    """One float32 tensor of a .safetensors file (8-byte LE header length, JSON header, data)."""
    with open(path, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(n))
        meta = header[name]
        if meta["dtype"] != "F32":
            raise PeerFailed(f"{path}: tensor {name} is {meta['dtype']}, not F32")
        start, end = meta["data_offsets"]
        fh.seek(8 + n + start)
        return np.frombuffer(fh.read(end - start), "<f4").reshape(meta["shape"]).copy()


def hard_labels(out_dir, files, positions):
    """Argmax of the memberships files of a fit (one per chunk) for every real token, in
    real-token order (chunk, batch, position); -1 where a token has no membership."""
    labels = []
    for f, (b, s) in zip(files, positions):
        path = os.path.join(out_dir, os.path.basename(f)[:-len(".npz")] + ".memberships.npz")
        with np.load(path) as z:
            idx, val = z["indices"].astype(np.int64), z["values"].astype(np.float32)
        lab = np.full(len(b), -1, np.int64)
        if len(val) and len(b):
            stride = int(max(s.max(), idx[:, 1].max())) + 1
            key = idx[:, 0] * stride + idx[:, 1]
            order = np.lexsort((-val, key))                  # by token, largest membership first
            keys, first = np.unique(key[order], return_index=True)
            best = idx[order[first], 2]
            want = b.astype(np.int64) * stride + s
            pos = np.minimum(np.searchsorted(keys, want), len(keys) - 1)
            found = keys[pos] == want
            lab[found] = best[pos[found]]
        labels.append(lab)
    return np.concatenate(labels) if labels else np.zeros(0, np.int64)


def load_tokens(chunk_dir):
    """All real, non-zero tokens of the chunk files, unit length (float32 [n, D]), and the
    (batch, position) arrays of each chunk."""
    xs, positions = [], []
    for f in fit.chunk_files(chunk_dir):
        x, b, s = fit.load_real(f)
        xs.append(x)
        positions.append((b, s))
    return np.concatenate(xs), positions


# ---------------------------------------------------------------------------------------------
# quality

def unit_rows(c):
    c = np.asarray(c, np.float32)
    n = np.linalg.norm(c, axis=1, keepdims=True)
    return np.where(n > 0, c / np.where(n > 0, n, 1), 0).astype(np.float32)


def soft_objective(x, c, temperature, min_membership, block=8192):
    """mean_x sum_k p_k cos(x, C_k), p = our memberships (same T, M), C = unit rows of c."""
    total = 0.0
    for i in range(0, len(x), block):
        sims = x[i:i + block] @ c.T
        p = fit.memberships_from_sims(sims, temperature, min_membership)
        total += float((p * sims).sum(dtype=np.float64))
    return total / len(x)


def quality(ctx, centers, labels, label_index):
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
    c = unit_rows(centers)
    q = {"soft_objective": soft_objective(ctx["x"], c, ctx["temperature"], ctx["min_membership"])}
    truth = ctx["truth"]
    if truth is None:
        return q
    true = truth["labels"] if label_index is None else truth["labels"][label_index]
    labels = np.asarray(labels, np.int64)
    ok = labels >= 0
    q.update(labeled_tokens=int(ok.sum()), unlabeled_tokens=int((~ok).sum()),
             ari=float(adjusted_rand_score(true[ok], labels[ok])),
             nmi=float(normalized_mutual_info_score(true[ok], labels[ok])))
    best = (truth["directions"] @ c.T).max(axis=1)
    q.update(best_match_cos_mean=float(best.mean()), best_match_cos_min=float(best.min()))
    return q


# ---------------------------------------------------------------------------------------------
# the peers (each returns rows: dicts with figures, plus `centers`, `labels`, `label_index`)

def fresh(path):
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


def run_ours(ctx, k):
    if ctx["binary_error"]:
        raise PeerFailed(ctx["binary_error"])
    out = fresh(os.path.join(ctx["out"], f"ours-k{k}"))
    res = ctx["spawner"].run(f"d{ctx['dim']}-ours-k{k}", [
        ctx["binary"], "--chunks", ctx["chunk_dir"], "--seed", ctx["seed"], "--clusters", k,
        "--iterations", ctx["iterations"], "--temperature", ctx["temperature"],
        "--min-membership", ctx["min_membership"], "--out", out], ctx["timeout"])
    js = json_line(res, "fit-bench")
    return [{"peer": "ours", "iterations": js["iterations"], "iteration_seconds": js["iteration_seconds"],
             "tokens_per_iter": js["tokens"], "end_to_end_s": res["wall_s"], "peak_rss_mib": res["peak_rss_mib"],
             "raw": js, "note": "k-means++ init (its own), all real tokens each pass",
             "centers": read_safetensors(os.path.join(out, "model.safetensors"), "centers"),
             "labels": hard_labels(out, ctx["files"], ctx["positions"]), "label_index": None}]


def run_numpy(ctx, k):
    out = fresh(os.path.join(ctx["out"], f"numpy-k{k}"))
    init = os.path.join(ctx["out"], f"init_k{k}.npy")
    try:   # K random real tokens, seeded, as fit.py does
        fit.write_init(ctx["chunk_dir"], k, init, ctx["seed"] + k, tokens=ctx["x"])
    except SystemExit as e:
        raise PeerFailed(str(e))
    res = ctx["spawner"].run(f"d{ctx['dim']}-numpy-k{k}", [
        sys.executable, os.path.join(HERE, "fit.py"), "numpy-fit", "--chunks", ctx["chunk_dir"], "--init", init,
        "--clusters", k, "--iterations", ctx["iterations"], "--temperature", ctx["temperature"],
        "--min-membership", ctx["min_membership"], "--out", out], ctx["timeout"])
    js = json_line(res, "fit.py numpy-fit")
    per = js.get("iteration_seconds")
    if not per:   # an older fit.py: the output pass counted as one more pass
        per = [js["seconds"] / (js["iterations"] + 1)] * js["iterations"]
    return [{"peer": "numpy soft", "iterations": js["iterations"], "iteration_seconds": per,
             "tokens_per_iter": js["tokens"], "end_to_end_s": res["wall_s"], "peak_rss_mib": res["peak_rss_mib"],
             "raw": js, "note": "init: K random real tokens",
             "centers": np.load(os.path.join(out, "centers.npy")),
             "labels": hard_labels(out, ctx["files"], ctx["positions"]), "label_index": None}]


def run_python_peer(ctx, k, peer):
    out = fresh(os.path.join(ctx["out"], f"{peer}-k{k}"))
    res = ctx["spawner"].run(f"d{ctx['dim']}-{peer}-k{k}", [
        sys.executable, os.path.abspath(__file__), peer, "--chunks", ctx["chunk_dir"], "--clusters", k,
        "--iterations", ctx["iterations"], "--seed", ctx["seed"], "--out", out], ctx["timeout"])
    js = json_line(res, f"harness.py {peer}")
    return [{"peer": peer, "iterations": js["iterations"], "iteration_seconds": js["iteration_seconds"],
             "tokens_per_iter": js["points_per_iteration"], "end_to_end_s": res["wall_s"],
             "peak_rss_mib": res["peak_rss_mib"], "raw": js, "note": js.get("note", ""),
             "centers": np.load(os.path.join(out, "centers.npy")), "labels": np.load(os.path.join(out, "labels.npy")),
             "label_index": None}]


def run_js(ctx, k, name):
    """One npm peer: `node benches/js_peers.mjs --peers NAME` in a process of its own (so its
    peak RSS is its own) on the seeded sample of real tokens."""
    script = os.path.join(HERE, "js_peers.mjs")
    if not os.path.exists(script):
        raise PeerFailed("benches/js_peers.mjs not found")
    node = shutil.which("node")
    if not node:
        raise PeerFailed("node not found on PATH")
    data, idx = ctx["js_sample"]()
    res = ctx["spawner"].run(f"d{ctx['dim']}-{name}-k{k}", [
        node, script, "--data", data, "--shape", f"{len(idx)},{ctx['dim']}", "--clusters", k,
        "--iterations", ctx["iterations"], "--seed", ctx["seed"], "--max-rows", len(idx), "--peers", name],
        ctx["timeout"])
    js = json_line(res, "js_peers.mjs")
    p = next((p for p in js.get("peers", []) if p.get("impl") == name), None)
    if p is None:
        raise PeerFailed(f"js_peers.mjs reported no result for {name}")
    if "error" in p:
        raise PeerFailed(f"js_peers.mjs: {p['error']}")
    try:
        labels = np.asarray(p["labels"], np.int64)
        n = len(labels)                  # it uses the first rows of the file
        spi = p.get("seconds_per_iteration") or p["seconds"] / max(p["iterations"], 1)
        return [{"peer": name, "iterations": p["iterations"], "iteration_seconds": [spi] * max(int(p["iterations"]), 1),
                 "tokens_per_iter": p.get("rows", n), "end_to_end_s": res["wall_s"], "peak_rss_mib": res["peak_rss_mib"],
                 "raw": {key: v for key, v in p.items() if key not in ("labels", "centers")},
                 "note": f"sample of {n:,} real tokens",
                 "centers": np.asarray(p["centers"], np.float32), "labels": labels, "label_index": idx[:n]}]
    except (KeyError, TypeError, ValueError) as e:
        raise PeerFailed(f"js_peers.mjs output unreadable: {type(e).__name__}: {e}")


RUNNERS = [("ours", run_ours), ("numpy soft", run_numpy),
           ("faiss", lambda c, k: run_python_peer(c, k, "faiss")),
           ("sklearn", lambda c, k: run_python_peer(c, k, "sklearn")),
           ("ml-kmeans", lambda c, k: run_js(c, k, "ml-kmeans")),
           ("skmeans", lambda c, k: run_js(c, k, "skmeans"))]


def figures(row, k, dim, peak):
    spi = float(np.mean(row["iteration_seconds"]))
    n, it = row["tokens_per_iter"], row["iterations"]
    row.update(s_per_iter=spi, tok_s_iter=n / spi, tok_s_e2e=n * it / row["end_to_end_s"],
               gflops=2 * n * k * dim / spi / 1e9)
    row["pct_sgemm_peak"] = 100 * row["gflops"] / peak


# ---------------------------------------------------------------------------------------------
# the subcommands the driver runs for FAISS and scikit-learn

def faiss_main(args):
    import faiss
    t0 = time.perf_counter()
    x, _ = load_tokens(args.chunks)
    load_s = time.perf_counter() - t0
    km = faiss.Kmeans(x.shape[1], args.clusters, niter=args.iterations, spherical=True, seed=args.seed, verbose=False)
    t = time.perf_counter()
    km.train(x)
    train_s = time.perf_counter() - t
    cumulative = [st["time"] for st in getattr(km, "iteration_stats", [])]
    if len(cumulative) == args.iterations:   # seconds since train began, after each iteration
        per = list(np.diff([0.0] + cumulative))
        timing = "iteration_stats"
    else:
        per, timing = [train_s / args.iterations] * args.iterations, "train seconds / iterations"
    t = time.perf_counter()
    _, labels = km.index.search(x, 1)
    search_s = time.perf_counter() - t
    points = min(len(x), args.clusters * km.cp.max_points_per_centroid)
    os.makedirs(args.out, exist_ok=True)
    np.save(os.path.join(args.out, "centers.npy"), km.centroids.astype(np.float32))
    np.save(os.path.join(args.out, "labels.npy"), labels[:, 0].astype(np.int64))
    note = "random init; " + (f"trains on a subsample of {points:,} of {len(x):,} tokens (max_points_per_centroid "
                              f"{km.cp.max_points_per_centroid}, default)" if points < len(x) else "trains on all tokens")
    print(json.dumps({"impl": "faiss", "iterations": args.iterations, "iteration_seconds": per, "timing": timing,
                      "points_per_iteration": points, "tokens": len(x), "load_seconds": load_s,
                      "train_seconds": train_s, "label_seconds": search_s, "note": note,
                      "max_points_per_centroid": km.cp.max_points_per_centroid}), flush=True)


def sklearn_main(args):
    from sklearn.cluster import MiniBatchKMeans, kmeans_plusplus
    t0 = time.perf_counter()
    x, _ = load_tokens(args.chunks)
    load_s = time.perf_counter() - t0
    init_s = [0.0]

    def timed_kmeans_plus_plus(X, n_clusters, random_state):
        # What init="k-means++" runs (greedy k-means++ on the init_size sample), timed apart.
        t = time.perf_counter()
        centers, _ = kmeans_plusplus(X, n_clusters, random_state=random_state)
        init_s[0] += time.perf_counter() - t
        return centers

    km = MiniBatchKMeans(n_clusters=args.clusters, max_iter=args.iterations, batch_size=SKLEARN_BATCH, n_init=1,
                         random_state=args.seed, init=timed_kmeans_plus_plus, compute_labels=False)
    t = time.perf_counter()
    km.fit(x)
    fit_s = time.perf_counter() - t
    t = time.perf_counter()
    labels = km.predict(x)
    predict_s = time.perf_counter() - t
    batch = min(SKLEARN_BATCH, len(x))                 # as MiniBatchKMeans caps it
    epochs = km.n_steps_ * batch / len(x)              # passes over the data actually made
    per_epoch = (fit_s - init_s[0]) / epochs
    os.makedirs(args.out, exist_ok=True)
    np.save(os.path.join(args.out, "centers.npy"), km.cluster_centers_.astype(np.float32))
    np.save(os.path.join(args.out, "labels.npy"), labels.astype(np.int64))
    note = (f"Euclidean k-means++ init on {min(len(x), 3 * SKLEARN_BATCH):,} tokens; {km.n_steps_} mini-batches of "
            f"{batch} = {epochs:.2f} epochs")
    print(json.dumps({"impl": "sklearn", "iterations": epochs, "iteration_seconds": [per_epoch],
                      "points_per_iteration": len(x), "tokens": len(x), "n_steps": int(km.n_steps_),
                      "n_iter": int(km.n_iter_), "load_seconds": load_s, "init_seconds": init_s[0],
                      "fit_seconds": fit_s, "label_seconds": predict_s, "note": note}), flush=True)


# ---------------------------------------------------------------------------------------------
# run (the driver)

def sgemm_peak():
    big = np.ones((2048, 2048), np.float32)
    big @ big
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        big @ big
        best = min(best, time.perf_counter() - t)
    return 2 * 2048 ** 3 / best / 1e9


def versions():
    v = {"python": sys.version.split()[0], "numpy": np.__version__}
    for name, dist in [("faiss", "faiss-cpu"), ("sklearn", "scikit-learn"), ("matplotlib", "matplotlib")]:
        try:
            v[name] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            v[name] = None
    for name, cmd in [("node", ["node", "--version"]), ("rustc", ["rustc", "--version"])]:
        try:
            v[name] = subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            v[name] = None
    for name in ("ml-kmeans", "skmeans"):
        try:
            v[name] = json.load(open(os.path.join(ROOT, "node_modules", name, "package.json")))["version"]
        except (OSError, ValueError, KeyError):
            v[name] = None
    return v


def chunk_shape(tokens):
    batch, seq = (16, 512) if tokens >= 8 * 16 * 512 else (8, 256)
    return dict(chunks=max(1, round(tokens / (batch * seq))), batch=batch, seq=seq)


def build(args):
    """(binary, error): builds fit-bench (incremental) unless --bin names one."""
    if args.bin:
        return args.bin, None if os.path.exists(args.bin) else f"{args.bin} not found"
    cmd = ["cargo", "build", "--release", "-p", "soft-cluster-core", "--bin", "fit-bench"]
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    try:
        rc = subprocess.run(cmd, cwd=ROOT, stdout=sys.stderr).returncode
    except OSError as e:
        return None, f"cargo build could not start: {e}"
    binary = os.path.join(ROOT, "target", "release", "fit-bench")
    return (binary, None) if rc == 0 else (None, f"cargo build failed (exit {rc})")


def run(args):
    results = drive_and_record(drive, args, os.path.join(OUT, "logs"), os.path.join(HERE, "harness-results.json"))
    write_chart(results, os.path.join(HERE, "harness-throughput.svg"))
    write_block(results, args.results)
    print(f"harness: {results['wall_seconds']:.0f} s in all", file=sys.stderr)


def drive(args, spawner):
    ks = [int(k) for k in args.clusters.split(",")]
    tokens = args.tokens or (QUICK_TOKENS if args.quick else DEFAULT_TOKENS)
    rows_js = args.max_rows or (QUICK_ROWS if args.quick else DEFAULT_ROWS)
    timeout = args.timeout or (QUICK_TIMEOUT if args.quick else DEFAULT_TIMEOUT)
    command = "npm run bench" + (" -- " + " ".join(sys.argv[2:]) if sys.argv[2:] else "")
    t = time.perf_counter()
    binary, binary_error = build(args)
    build_s = time.perf_counter() - t
    load = os.getloadavg()
    peak = sgemm_peak()
    print(f"SGEMM peak (numpy, 2048^3, best of 3): {peak:.1f} GFLOP/s", file=sys.stderr, flush=True)
    results = {"machine": dict(fit.machine(), load_average_at_start=load[0]), "versions": versions(), "command": command,
               "settings": {"temperature": args.temperature, "min_membership": args.min_membership, "seed": args.seed,
                            "iterations": args.iterations, "clusters": ks, "quick": args.quick,
                            "js_rows": rows_js, "timeout_s": timeout, "sklearn_batch": SKLEARN_BATCH},
               "sgemm_peak_gflops": peak, "build_seconds": build_s, "build_error": binary_error, "datasets": []}
    if args.chunks:
        first = fit.chunk_files(args.chunks)
        with np.load(first[0]) as z:
            dim = int(z["activations"].shape[-1])
        sets = [dict(dim=dim, chunk_dir=os.path.abspath(args.chunks), truth=None,
                     description=f"{len(first)} chunk files from `{args.chunks}` (user data: no planted truth)")]
    else:
        sets = []
        for dim in [int(d) for d in str(args.dim).split(",")]:
            shape = chunk_shape(tokens)
            name = f"d{dim}-{shape['chunks']}x{shape['batch']}x{shape['seq']}-{args.dtype}-s{args.seed}"
            chunk_dir, _ = fit.ensure_data(os.path.join(DATA, name), **shape, dim=dim, dtype=args.dtype, seed=args.seed)
            with np.load(fit.truth_file(os.path.join(DATA, name))) as z:
                truth = {key: z[key] for key in z.files}
            sets.append(dict(dim=dim, chunk_dir=chunk_dir, truth=truth, shape=shape, data_dir=os.path.join(DATA, name),
                             description=f"{shape['chunks']} chunks of [{shape['batch']}, {shape['seq']}, {dim}] {args.dtype} "
                                         f"({shape['chunks'] * shape['batch'] * shape['seq']:,} tokens with padding), "
                                         f"right-padded, {fit.N_TRUE} planted directions of Zipf-like sizes, cosine to "
                                         f"the direction U(0.5, 0.8), norms 10^U(-1, 1), 2 all-zero tokens per chunk"))

    for s in sets:
        dim = s["dim"]
        x, positions = load_tokens(s["chunk_dir"])
        if s["truth"] is not None and len(s["truth"]["labels"]) != len(x):
            raise SystemExit(f"truth has {len(s['truth']['labels'])} labels, chunks {len(x)} real tokens")
        print(f"D = {dim}: {len(x):,} real tokens", file=sys.stderr, flush=True)
        data_dir = s.get("data_dir") or os.path.join(DATA, f"user-d{dim}")
        sample = {}

        def js_sample(x=x, data_dir=data_dir, sample=sample):
            if not sample:   # a seeded sample of real tokens, raw LE float32 rows
                os.makedirs(data_dir, exist_ok=True)
                idx = np.sort(np.random.default_rng([args.seed, rows_js]).choice(len(x), min(rows_js, len(x)), replace=False))
                path = os.path.join(data_dir, f"sample-{len(idx)}-s{args.seed}.f32")
                x[idx].astype("<f4").tofile(path)
                sample.update(path=path, idx=idx)
            return sample["path"], sample["idx"]

        ctx = dict(dim=dim, chunk_dir=s["chunk_dir"], files=fit.chunk_files(s["chunk_dir"]), positions=positions, x=x,
                   truth=s["truth"], seed=args.seed, iterations=args.iterations, temperature=args.temperature,
                   min_membership=args.min_membership, timeout=timeout, spawner=spawner, binary=binary,
                   binary_error=binary_error, out=fresh(os.path.join(OUT, f"d{dim}")), js_sample=js_sample)
        rows, timed_out = [], {}
        for k in sorted(ks):
            for name, runner in RUNNERS:
                try:
                    if name in timed_out:   # its time only grows with K: don't wait for it again
                        raise PeerFailed(f"not run: timed out at K = {timed_out[name]} (--timeout {timeout:g} s)")
                    got = runner(ctx, k)
                except PeerFailed as e:
                    got = [{"peer": name, "failed": str(e)}]
                    if e.timed_out:
                        timed_out[name] = k
                except Exception as e:   # a harness bug in one peer must not end the run
                    got = [{"peer": name, "failed": f"harness error: {type(e).__name__}: {e}"}]
                for row in got:
                    row.update(k=k, dim=dim)
                    if "failed" not in row:
                        try:
                            centers, labels, index = row.pop("centers"), row.pop("labels"), row.pop("label_index")
                            figures(row, k, dim, peak)
                            row["quality"] = quality(ctx, centers, labels, index)
                        except Exception as e:
                            row = {"peer": row["peer"], "k": k, "dim": dim,
                                   "failed": f"harness error scoring it: {type(e).__name__}: {e}"}
                    else:
                        print(f"  {row['peer']} K={k}: could not run: {row['failed']}", file=sys.stderr, flush=True)
                    rows.append(row)
            ours = next((r for r in rows if r["peer"] == "ours" and r["k"] == k and "failed" not in r), None)
            for r in rows:
                if r["k"] == k and "failed" not in r:
                    r["ours_speedup"] = r["s_per_iter"] / ours["s_per_iter"] if ours else None
        s_out = {key: v for key, v in s.items() if key not in ("truth", "data_dir")}
        s_out.update(real_tokens=len(x), rows=rows)
        if sample:
            s_out["js_sample_rows"] = len(sample["idx"])
        results["datasets"].append(s_out)
        del x, positions, ctx
    return results


# ---------------------------------------------------------------------------------------------
# outputs

def fmt(v, spec, na="n/a"):
    return na if v is None else format(v, spec)


def write_block(r, results_path):
    m, v, st = r["machine"], r["versions"], r["settings"]
    lines = [
        "<!-- harness:start -->",
        "## Harness: ours against numpy, FAISS, scikit-learn and npm peers, CPU",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['os']}. Versions: numpy {v['numpy']} (OpenBLAS), "
        f"faiss-cpu {v['faiss']}, scikit-learn {v['sklearn']}, node {v['node']}, ml-kmeans {v['ml-kmeans']}, "
        f"skmeans {v['skmeans']}, {v['rustc']}. SGEMM peak (numpy, 2048^3, best of 3, same run): "
        f"{r['sgemm_peak_gflops']:.1f} GFLOP/s. Load average: {m['load_average_at_start']:.1f} at the start, "
        f"{m['load_average_at_end']:.1f} at the end (other work on the machine slows every peer).",
        "",
        f"Settings: {st['iterations']} iterations, temperature {st['temperature']}, minMembership "
        f"{st['min_membership']}, seed {st['seed']}; every peer in its own process on the same data.",
        "",
        "- **ours**: `target/release/fit-bench` (k-means++ init, N passes over the chunk files, then the output "
        "pass writing memberships); hard labels = argmax of its memberships files.",
        "- **numpy soft**: `fit.py numpy-fit`, the same soft algorithm in numpy, from K random real tokens.",
        "- **FAISS**: `faiss.Kmeans(d, K, niter=N, spherical=True)` on the unit real tokens; by default FAISS "
        "trains on at most 256 x K points (`max_points_per_centroid`, kept), so at small K it iterates over a "
        "subsample (tokens/iter); labels = `index.search` over all tokens.",
        f"- **sklearn**: `MiniBatchKMeans(K, max_iter=N, batch_size={st['sklearn_batch']}, n_init=1)` on the unit "
        "real tokens (Euclidean, k-means++ init timed apart); an iteration = one epoch of mini-batches (it may stop "
        "early); centers normalized for scoring.",
        f"- **ml-kmeans / skmeans** (npm): `node benches/js_peers.mjs --peers NAME`, one process each, on a seeded "
        f"sample of at most {st['js_rows']:,} unit real tokens (plain JS arrays of doubles; squared Euclidean).",
        "",
        "s/iter = mean wall seconds of one iteration (init and output excluded); tok/s (iter) = tokens/iter / "
        "s/iter; end-to-end s = the peer's whole process (start, reading the chunks -- npm: "
        "the sample file --, init, iterations, labels/output); GFLOP/s = 2 x tokens/iter x K x D / s/iter (the similarity GEMM only; "
        "the soft fits also form P^T X); peak MiB = the process's max RSS. "
        "ARI / NMI: hard labels against the planted directions, on the tokens the peer labeled; best-match cos: "
        "over the 64 true directions, the max cosine to any center (mean / min); soft objective: mean_x sum_k p_k "
        "cos(x, C_k) with our memberships (same T, M) from each peer's centers, on all real tokens. "
        "ours / peer = the peer's s/iter / ours (per iteration, whatever tokens/iter each processes). "
        "iters = iterations run (sklearn: epochs of mini-batches; npm peers stop at an exact fixed point).",
    ]
    for d in r["datasets"]:
        lines += ["", f"### D = {d['dim']}", "",
                  f"Data: {d['description']}; {d['real_tokens']:,} real tokens per pass"
                  + (f"; npm sample: {d['js_sample_rows']:,} of them." if d.get("js_sample_rows") else "."), "",
                  "| peer | K | iters | tokens/iter | s/iter | tok/s (iter) | end-to-end s | tok/s (e2e) | GFLOP/s | % SGEMM peak "
                  "| peak MiB | ARI | NMI | best-match cos mean / min | soft objective | ours / peer |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        ks = sorted({row["k"] for row in d["rows"]})
        for peer in PEERS + sorted({row["peer"] for row in d["rows"]} - set(PEERS)):
            for k in ks:
                row = next((x for x in d["rows"] if x["peer"] == peer and x["k"] == k and "failed" not in x), None)
                if row is None:
                    continue
                q = row["quality"]
                bm = "n/a" if "best_match_cos_mean" not in q else f"{q['best_match_cos_mean']:.3f} / {q['best_match_cos_min']:.3f}"
                lines.append(
                    f"| {LABEL.get(peer, peer)} | {k} | {row['iterations']:.3g} | {row['tokens_per_iter']:,} | {row['s_per_iter']:.3f} | "
                    f"{row['tok_s_iter']:,.0f} | {row['end_to_end_s']:.2f} | {row['tok_s_e2e']:,.0f} | {row['gflops']:.1f} | "
                    f"{row['pct_sgemm_peak']:.0f}% | {row['peak_rss_mib']:,.0f} | {fmt(q.get('ari'), '.3f')} | "
                    f"{fmt(q.get('nmi'), '.3f')} | {bm} | {q['soft_objective']:.4f} | "
                    f"{fmt(row.get('ours_speedup'), '.2f')}{'x' if row.get('ours_speedup') is not None else ''} |")
        failed = {}
        for row in d["rows"]:
            if "failed" in row:
                failed.setdefault((row["peer"], row["failed"]), []).append(row["k"])
        if failed:
            lines += ["", "Could not run:"]
            for (peer, why), ks_failed in failed.items():
                lines.append(f"- {LABEL.get(peer, peer)} (K = {', '.join(map(str, ks_failed))}): {why}")
    lines += ["", f"Command: `{r['command']}` ({r['wall_seconds']:.0f} s in all, {r['build_seconds']:.0f} s of it building "
                  "fit-bench; raw figures: "
                  "`benches/harness-results.json`, chart: `benches/harness-throughput.svg`).",
              "<!-- harness:end -->"]
    replace_block(results_path, "harness", "\n".join(lines))


def write_chart(r, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        print(f"no chart: {e}", file=sys.stderr)
        return
    sets = r["datasets"]
    fig, axes = plt.subplots(1, len(sets), figsize=(6.5 * len(sets), 4.5), squeeze=False)
    for ax, d in zip(axes[0], sets):
        peers = [p for p in PEERS if any(x["peer"] == p for x in d["rows"])]
        peers += sorted({x["peer"] for x in d["rows"]} - set(peers))
        for peer in peers:
            pts = sorted((x["k"], x["tok_s_iter"]) for x in d["rows"] if x["peer"] == peer and "failed" not in x)
            if pts:
                color = f"C{PEERS.index(peer)}" if peer in PEERS else None
                ax.plot(*zip(*pts), marker="o", label=LABEL.get(peer, peer), color=color)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ks = sorted({x["k"] for x in d["rows"]})
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_xlabel("K (clusters)")
        ax.set_ylabel("tokens/s per iteration")
        ax.set_title(f"D = {d['dim']}, {d['real_tokens']:,} real tokens")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Throughput per iteration ({r['machine']['cpu']}, {r['machine']['cores']} cores)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)   # the format follows the extension (.svg)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="the benchmark driver")
    r.add_argument("--quick", action="store_true",
                   help=f"{QUICK_TOKENS:,} tokens, {QUICK_ROWS:,} npm rows, {QUICK_TIMEOUT} s per peer process")
    r.add_argument("--tokens", type=int, help=f"tokens per data set, padding included (default {DEFAULT_TOKENS:,})")
    r.add_argument("--dim", default="768", help="D, or several: 768,4096")
    r.add_argument("--clusters", default="64,256,1024")
    r.add_argument("--iterations", type=int, default=5)
    r.add_argument("--dtype", choices=["float16", "float32"], default="float16")
    r.add_argument("--chunks", help="a folder of the user's chunk files instead of generated data (no truth)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--temperature", type=float, default=fit.TEMPERATURE)
    r.add_argument("--min-membership", type=float, default=fit.MIN_MEMBERSHIP)
    r.add_argument("--max-rows", type=int, help=f"rows for the npm peers (default {DEFAULT_ROWS:,})")
    r.add_argument("--timeout", type=float, help=f"seconds per peer process (default {DEFAULT_TIMEOUT})")
    r.add_argument("--bin", help="a fit-bench binary to use as is (default: build target/release/fit-bench)")
    r.add_argument("--results", default=os.path.join(HERE, "RESULTS.md"))
    for name in ("faiss", "sklearn"):
        p = sub.add_parser(name, help=f"one {name} fit (run by the driver)")
        p.add_argument("--chunks", required=True)
        p.add_argument("--clusters", type=int, required=True)
        p.add_argument("--iterations", type=int, required=True)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--out", required=True)
    args = ap.parse_args()
    {"run": run, "faiss": faiss_main, "sklearn": sklearn_main}[args.cmd](args)


if __name__ == "__main__":
    main()
