//! Splitting a cluster (docs/algorithm.md "Split"): the cluster's member tokens (every token with
//! a nonzero membership in it, weighted by that membership; a seeded weighted sample of at most
//! `SPLIT_SAMPLE` when there are more) are clustered by a weighted spherical k-means into `parts`
//! directions with a deterministic start; the first replaces the cluster's center, the others are
//! appended as clusters K, K + 1, ...; then passes over the chunks re-estimate every center.

use crate::cache::{self, ChunkCache};
use crate::error::{Error, Result};
use crate::kernels::{unit_row, Backend, Centers, MembershipParams, Tokens, Want};
use crate::model::{Model, Operation, SufficientStats};
use crate::stream::Progress;
use crate::update::{check_chunks_d, passes};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::PathBuf;

/// Most member tokens a split clusters (a weighted reservoir sample beyond it).
pub const SPLIT_SAMPLE: usize = 65536;
/// Iterations of the weighted spherical k-means on the members (it stops when nothing moves).
const SPLIT_ITERATIONS: usize = 50;

pub struct SplitRequest<'a> {
    pub model: &'a Model,
    pub cluster: usize,
    pub parts: usize,
    pub chunks: &'a [PathBuf],
    /// Passes over the chunks after the split (then the output pass, which leaves the sums).
    pub iterations: usize,
}

/// The member tokens of `cluster`: unit vectors `[n, D]` and their memberships.
fn members(model: &Model, cluster: usize, chunks: &[PathBuf], backend: &dyn Backend) -> Result<(Vec<f32>, Vec<f64>)> {
    let d = model.centers.d;
    let params = MembershipParams::try_from(&model.config)?;
    let mut rng = ChaCha8Rng::seed_from_u64(model.config.seed);
    // Weighted reservoir (Efraimidis-Spirakis): keep the SPLIT_SAMPLE largest keys u^(1/w).
    let mut kept: Vec<(f64, Vec<f32>, f64)> = Vec::new();
    let mut cache = ChunkCache::new(crate::config::CacheSetting::Off, cache::estimated_bytes(chunks)?);
    cache.stream(chunks, d, |i, chunk| {
        let tokens = Tokens::from_chunk(chunk, i);
        let out = backend.run(&model.centers, &tokens, params, Want { sparse: true, ..Want::default() })?;
        let rows = &out.rows;
        let sparse = out.sparse.unwrap_or_default();
        for r in 0..out.rows.len() {
            let (clusters, values) = sparse.row(r);
            let Some(j) = clusters.iter().position(|&c| c as usize == cluster) else { continue };
            let w = f64::from(values[j]);
            let key = rng.random::<f64>().powf(1.0 / w);
            if kept.len() >= SPLIT_SAMPLE && key <= kept[0].0 {
                continue;
            }
            let mut v = vec![0f32; d];
            unit_row(&tokens, rows.token[r] as usize, rows.inv_norm[r], &mut v);
            let at = kept.partition_point(|e| e.0 < key);
            kept.insert(at, (key, v, w));
            if kept.len() > SPLIT_SAMPLE {
                kept.remove(0);
            }
        }
        Ok(())
    })?;
    Ok((kept.iter().flat_map(|e| e.1.iter().copied()).collect(), kept.iter().map(|e| e.2).collect()))
}

/// Weighted spherical k-means of unit rows into `parts` directions. Start: the heaviest row,
/// then repeatedly the row with the largest `w (1 - max cos to the chosen)` (ties: the earliest).
fn weighted_kmeans(x: &[f32], w: &[f64], d: usize, parts: usize) -> Vec<f32> {
    let n = w.len();
    let row = |i: usize| &x[i * d..(i + 1) * d];
    let cos = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(&p, &q)| f64::from(p) * f64::from(q)).sum::<f64>();
    let heaviest = (0..n).fold(0, |b, i| if w[i] > w[b] { i } else { b });
    let mut chosen = vec![heaviest];
    let mut best: Vec<f64> = (0..n).map(|i| cos(row(i), row(heaviest))).collect();
    while chosen.len() < parts {
        let next = (0..n).fold(0, |b, i| if w[i] * (1.0 - best[i]) > w[b] * (1.0 - best[b]) { i } else { b });
        chosen.push(next);
        (0..n).for_each(|i| best[i] = best[i].max(cos(row(i), row(next))));
    }
    let mut centers: Vec<f32> = chosen.iter().flat_map(|&i| row(i).iter().copied()).collect();
    let mut owner = vec![usize::MAX; n];
    for _ in 0..SPLIT_ITERATIONS {
        let assigned: Vec<usize> = (0..n)
            .map(|i| (0..parts).fold(0, |b, p| if cos(row(i), &centers[p * d..(p + 1) * d]) > cos(row(i), &centers[b * d..(b + 1) * d]) { p } else { b }))
            .collect();
        if assigned == owner {
            break;
        }
        owner = assigned;
        let mut sums = vec![0f64; parts * d];
        for i in 0..n {
            sums[owner[i] * d..(owner[i] + 1) * d].iter_mut().zip(row(i)).for_each(|(s, &v)| *s += w[i] * f64::from(v));
        }
        for p in 0..parts {
            let s = &sums[p * d..(p + 1) * d];
            let norm = s.iter().map(|v| v * v).sum::<f64>().sqrt();
            if norm > 0.0 {
                centers[p * d..(p + 1) * d].iter_mut().zip(s).for_each(|(c, v)| *c = (v / norm) as f32);
            }
        }
    }
    centers
}

/// The model with `cluster` split into `parts`, re-estimated by `iterations` passes over `chunks`
/// (the model then describes those chunks: memberships files are not written here).
pub fn split(request: SplitRequest, backend: &dyn Backend, progress: &mut dyn FnMut(&Progress)) -> Result<Model> {
    let SplitRequest { model, cluster, parts, chunks, iterations } = request;
    let (k, d) = (model.centers.k, model.centers.d);
    if cluster >= k {
        return Err(Error::invalid_input("cluster", format!("{cluster} is not a cluster id (the model has {k}: 0 to {})", k - 1)));
    }
    if parts < 2 {
        return Err(Error::invalid_input("into", format!("a split needs at least 2 parts, got {parts}")));
    }
    check_chunks_d(chunks, d)?;
    let (x, w) = members(model, cluster, chunks, backend)?;
    if w.len() < parts {
        return Err(Error::invalid_input("into", format!("cluster {cluster} has {} member tokens in these chunks, fewer than the {parts} parts asked for", w.len())));
    }
    let sub = weighted_kmeans(&x, &w, d, parts);
    let new_k = k + parts - 1;
    let mut data = model.centers.data.clone();
    data[cluster * d..(cluster + 1) * d].copy_from_slice(&sub[..d]);
    data.extend_from_slice(&sub[d..]);
    let mut config = model.config.clone();
    config.n_clusters = new_k;
    let mut start = Model::new(config, Centers { k: new_k, d, data });
    start.history = model.history.clone();
    start.operations = model.operations.clone();
    start.device = model.device.clone();
    // The passes replace these sums (decay 0): the old ones belong to the K clusters before.
    start.stats = Some(SufficientStats { s: vec![0.0; new_k * d], m: vec![0.0; new_k], tokens: 0 });
    let mut out = passes(&start, chunks, iterations, 0.0, None, backend, progress)?;
    let ran = out.history.len() - model.history.len();
    out.operations.push(Operation { op: "split".into(), clusters: vec![cluster], mapping: (0..k).collect(), n_clusters: new_k, chunks: Vec::new(), iterations: ran });
    Ok(out)
}
