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

    python3 benches/pruning.py CHUNK_DIR --clusters K [--temperature T] [--min-membership M]
        [--iterations N] [--max-tokens N]
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("chunks")
    ap.add_argument("--clusters", type=int, required=True)
    ap.add_argument("--temperature", type=float, default=0.03)
    ap.add_argument("--min-membership", type=float, default=0.01)
    ap.add_argument("--iterations", type=int, default=6)
    ap.add_argument("--max-tokens", type=int, default=60000)
    a = ap.parse_args()
    x = tokens(a.chunks, a.max_tokens)
    c = kmeans_pp(x, a.clusters, np.random.default_rng(0))
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
