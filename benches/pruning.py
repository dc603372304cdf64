"""How much exact pruning could save (issue 15, item 4), measured before building it.

Soft spherical k-means in float64 numpy (docs/algorithm.md: p = softmax(cos / T), entries below
minMembership dropped), from a k-means++ start; after each iteration, for every (token, cluster)
pair: can the next pass prove, from the old cosines and the centers' shifts alone, that the
membership stays below minMembership? With d_k = |C_k' - C_k| = sqrt(2 (1 - C_k . C_k')),
cos(x, C_k') <= cos(x, C_k) + d_k and the denominator is at least exp((cos(x, C_b) - d_b) / T)
for the old best b, so

    p_k' <= exp(((s_k + d_k) - (s_b - d_b)) / T) < minMembership   =>   skip (x, k).

Reported per iteration: the share of pairs that bound skips (the exp and normalization work), and
the share of (block of 1024 tokens, cluster) tiles where it skips every token (what a blocked GEMM
could leave out).

With `--tiles R` it estimates instead what a pass could really leave out of its GEMM: tokens
sorted once by their cluster after the first pass (file order has no skippable tiles), tiles of R
sorted tokens, and for each tile one bound carried from pass to pass, H >= max over its tokens of
cos(x, C_k) - (the token's best cosine), refreshed where the tile was computed and grown by the
shifts (H + d_k + the largest d_b of its tokens' best clusters) where it was skipped. A tile is
skipped when H + d_k + that d_b < -gap, gap = T ln(1 / minMembership), or 14 T (the float64
window of tiny temperatures) with --window.

    python3 benches/pruning.py CHUNK_DIR --clusters K [--temperature T] [--min-membership M]
        [--iterations N] [--max-tokens N] [--tiles R [--window]]
"""
import argparse, glob, os
import numpy as np


def tokens(chunk_dir, limit):
    rows = []
    for f in sorted(glob.glob(os.path.join(chunk_dir, "*.npz"))):
        with np.load(f) as z:
            a = z["activations"].astype(np.float64)
            m = z["attention_mask"].astype(bool) if "attention_mask" in z.files else np.ones(a.shape[:2], bool)
        x = a[m]
        n = np.linalg.norm(x, axis=1)
        rows.append(x[n > 0] / n[n > 0, None])
    x = np.concatenate(rows)
    return x[:limit]


def kmeans_pp(x, k, rng):
    chosen = [rng.integers(len(x))]
    gap = 1 - x @ x[chosen[0]]
    for _ in range(1, k):
        p = np.maximum(gap, 0)
        i = rng.choice(len(x), p=p / p.sum()) if p.sum() > 0 else rng.integers(len(x))
        chosen.append(i)
        gap = np.minimum(gap, 1 - x @ x[i])
    return x[chosen].copy()


def memberships(s, t, m):
    z = (s - s.max(1, keepdims=True)) / t
    p = np.exp(z)
    p /= p.sum(1, keepdims=True)
    keep = (p >= m) | (p == p.max(1, keepdims=True))
    p = np.where(keep, p, 0)
    return p / p.sum(1, keepdims=True)


def carried_tiles(x, c, t, m, iterations, rows, window):
    """The share of (tile, cluster) GEMM tiles skipped at each pass after the first (see the top)."""
    gap = max(-t * np.log(m), 14 * t if window else 0.0) + 1e-5
    s = x @ c.T
    b = s.argmax(1)
    order = np.argsort(b, kind="stable")
    x, s, b = x[order], s[order], b[order]
    best = s.max(1)
    tiles = range(0, len(x), rows)
    bound = np.stack([(s[i:i + rows] - best[i:i + rows, None]).max(0) for i in tiles])
    print(f"{len(x)} tokens, K = {len(c)}, T = {t}, tiles of {rows} sorted tokens, gap {gap:.4f}")
    print("pass | tiles skipped")
    shares = []
    for it in range(2, iterations + 2):
        new = memberships(s, t, m).T @ x
        new /= np.linalg.norm(new, axis=1, keepdims=True)
        d = np.sqrt(np.maximum(2 * (1 - np.sum(c * new, 1)), 0))
        grown = bound + d[None, :] + np.array([d[b[i:i + rows]].max() for i in tiles])[:, None]
        skip = grown < -gap
        s = x @ new.T
        best, b = s.max(1), s.argmax(1)
        for j, i in enumerate(tiles):   # the bound must hold: nothing skipped comes within gap of its best
            assert (s[i:i + rows][:, skip[j]] < best[i:i + rows, None] - gap + 1e-9).all(), "bound violated"
        fresh = np.stack([(s[i:i + rows] - best[i:i + rows, None]).max(0) for i in tiles])
        bound = np.where(skip, grown, fresh)
        shares.append(skip.mean())
        print(f"{it} | {skip.mean():.3f}")
        c = new
    print(f"mean over passes 2-{iterations + 1}: {np.mean(shares):.3f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("chunks")
    ap.add_argument("--clusters", type=int, required=True)
    ap.add_argument("--temperature", type=float, default=0.03)
    ap.add_argument("--min-membership", type=float, default=0.01)
    ap.add_argument("--iterations", type=int, default=6)
    ap.add_argument("--max-tokens", type=int, default=60000)
    ap.add_argument("--tiles", type=int, help="rows per tile of cluster-sorted tokens, bounds carried per tile")
    ap.add_argument("--window", action="store_true", help="with --tiles: skip only beyond the float64 window (14 T)")
    a = ap.parse_args()
    x = tokens(a.chunks, a.max_tokens)
    c = kmeans_pp(x, a.clusters, np.random.default_rng(0))
    if a.tiles:
        return carried_tiles(x, c, a.temperature, a.min_membership, a.iterations, a.tiles, a.window)
    t, m, block = a.temperature, a.min_membership, 1024
    print(f"{len(x)} tokens, D = {x.shape[1]}, K = {a.clusters}, T = {t}, minMembership = {m}")
    print("iter | max shift 1 - cos | pairs skippable | (1024-token block, cluster) tiles skippable | nonzero share")
    s = x @ c.T
    for it in range(1, a.iterations + 1):
        p = memberships(s, t, m)
        new = p.T @ x
        new /= np.linalg.norm(new, axis=1, keepdims=True)
        d = np.sqrt(np.maximum(2 * (1 - np.sum(c * new, 1)), 0))
        b = s.argmax(1)
        lower = s[np.arange(len(x)), b] - d[b]
        skip = (s + d[None, :] - lower[:, None]) / t < np.log(m)
        skip[np.arange(len(x)), b] = False
        tiles = [skip[i:i + block].all(0) for i in range(0, len(x), block)]
        s_new = x @ new.T
        nonzero = (memberships(s_new, t, m) > 0).mean()
        # The bound must hold: nothing it skips may carry a membership next pass.
        assert not (skip & (memberships(s_new, t, m) > 0)).any(), "bound violated"
        print(f"{it} | {float((1 - np.sum(c * new, 1)).max()):.2e} | {skip.mean():.3f} | {np.mean(tiles):.3f} | {nonzero:.4f}")
        c, s = new, s_new


if __name__ == "__main__":
    main()
