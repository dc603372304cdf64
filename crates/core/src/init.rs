//! Init of a fit (docs/algorithm.md "Init"): a seeded uniform sample of real tokens, spherical
//! k-means++ over it. Its products go through the backend.

use crate::config::ClusteringConfig;
use crate::error::{Error, Result};
use crate::kernels::{prepare_rows, unit_row, Backend, Centers, Tokens};
use crate::stream::{report, reservoir_slot, stream_chunks, Phase, Progress};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::PathBuf;
use std::time::Instant;

/// Tokens sampled for k-means++: enough per cluster, small enough to stay in cache.
pub fn sample_size(k: usize) -> usize {
    (8 * k).clamp(4096, 32768).max(k)
}

/// Spherical k-means++ (distance `1 - cos`) over a seeded uniform sample of real tokens.
pub fn kmeans_plus_plus(config: &ClusteringConfig, chunks: &[PathBuf], backend: &dyn Backend, progress: &mut dyn FnMut(&Progress)) -> Result<Centers> {
    let (k, d) = (config.n_clusters, config.d_model);
    let capacity = sample_size(k);
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let mut sample: Vec<f32> = Vec::with_capacity(capacity * d);
    let mut seen: u64 = 0;
    let started = Instant::now();
    // Reservoir sampling (algorithm R) over every real, non-zero token of every chunk.
    stream_chunks(chunks, d, |i, chunk| {
        let tokens = Tokens::from_chunk(&chunk, i);
        let rows = prepare_rows(&tokens)?;
        for (&t, &inv) in rows.token.iter().zip(&rows.inv_norm) {
            let slot = reservoir_slot(&mut rng, seen, capacity);
            if slot == Some(sample.len() / d) {
                sample.resize(sample.len() + d, 0.0);
            }
            if let Some(slot) = slot {
                unit_row(&tokens, t as usize, inv, &mut sample[slot * d..(slot + 1) * d]);
            }
            seen += 1;
        }
        report(progress, Phase::Init, 0, config.n_iterations, i, chunks.len(), seen, started);
        Ok(())
    })?;
    let n = sample.len() / d;
    if n < k {
        return Err(Error::invalid_input(
            "chunks",
            format!("hold {n} real, non-zero tokens, fewer than nClusters = {k}"),
        ));
    }
    let row = |i: usize| &sample[i * d..(i + 1) * d];
    // Cosines of every sampled token to each of `candidates`, `[n, t]`.
    let cosines_to = |candidates: &[usize]| -> Result<Vec<f32>> {
        let matrix: Vec<f32> = candidates.iter().flat_map(|&c| row(c).iter().copied()).collect();
        backend.cosines(&sample, &matrix, d)
    };
    // `gap[i]` = 1 - max cos(x_i, chosen): the squared chord distance / 2, what k-means++ samples by.
    let mut chosen = vec![rng.random_range(0..n)];
    let mut gap: Vec<f32> = cosines_to(&chosen)?.iter().map(|&c| (1.0 - c).max(0.0)).collect();
    // Greedy k-means++ (as scikit-learn does): draw a few candidates, keep the one that lowers the
    // total gap most. Plain k-means++ too often puts two centers in one planted cluster.
    let trials = 2 + (k as f64).ln().floor() as usize;
    while chosen.len() < k {
        let total: f64 = gap.iter().map(|&g| f64::from(g)).sum();
        let candidates: Vec<usize> = (0..trials)
            .map(|_| {
                if total <= 0.0 {
                    return rng.random_range(0..n); // every token sits on a chosen center
                }
                let target = rng.random::<f64>() * total;
                let mut acc = 0.0;
                gap.iter().position(|&g| {
                    acc += f64::from(g);
                    acc > target
                }).unwrap_or(n - 1)
            })
            .collect();
        let cosines = cosines_to(&candidates)?;
        let (gap_ref, cos_ref) = (&gap, &cosines);
        let gap_with = |c: usize| (0..n).map(move |i| gap_ref[i].min((1.0 - cos_ref[i * trials + c]).max(0.0)));
        let (best, _) = (0..trials)
            .map(|c| (c, gap_with(c).map(f64::from).sum::<f64>()))
            .fold((0, f64::INFINITY), |b, x| if x.1 < b.1 { x } else { b });
        gap = gap_with(best).collect();
        chosen.push(candidates[best]);
    }
    let data = chosen.iter().flat_map(|&i| sample[i * d..(i + 1) * d].iter().copied()).collect();
    Centers::from_rows(k, d, data)
}
