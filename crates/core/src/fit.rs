//! `fitChunks` (docs/algorithm.md "Fitting"): init, streaming passes that sum `S` and `m` over
//! every chunk, center updates with reseeding, then the output pass that writes the per-chunk
//! memberships, fills the exemplar heaps and saves the model. The next chunk is read on another
//! thread while the current one is computed: memory stays at about two chunks.

use crate::checkpoint::{Checkpoint, ChunkFingerprint};
use crate::config::ClusteringConfig;
use crate::error::{Error, Result};
use crate::exemplars::{self, ExemplarHeaps};
use crate::init::{kmeans_plus_plus, sample_size};
use crate::kernels::{Backend, Centers, MembershipParams, Tokens, Want};
use crate::memberships_file;
use crate::model::{HistoryEntry, Model};
use crate::output::remove_stale_temporaries;
use crate::pass::PassStats;
use crate::stream::{chunk_names, report, stream_chunks, Phase, Progress};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Memberships smaller than this (in tokens' worth) leave a cluster empty.
const EMPTY_MASS: f64 = 1e-6;

pub struct FitRequest<'a> {
    pub config: &'a ClusteringConfig,
    /// Start here instead of k-means++ (already normalized).
    pub initial_centers: Option<Centers>,
    pub chunks: &'a [PathBuf],
    pub output_dir: &'a Path,
    /// Continue from `<output_dir>/checkpoint.safetensors` if there is one (same config and
    /// unchanged chunk files required); otherwise start from the beginning.
    pub resume: bool,
}

/// Runs a whole fit and writes its outputs; returns the fitted model (also saved as
/// `<output_dir>/model.safetensors`).
pub fn fit_chunks(request: FitRequest, backend: &dyn Backend, progress: &mut dyn FnMut(&Progress)) -> Result<Model> {
    let FitRequest { config, initial_centers, chunks, output_dir, resume } = request;
    config.validate()?;
    let names = chunk_names(chunks)?;
    check_memory(config, backend)?;
    let fingerprints = chunks.iter().map(|p| ChunkFingerprint::of(p)).collect::<Result<Vec<_>>>()?;
    std::fs::create_dir_all(output_dir).map_err(|e| Error::io(output_dir, e))?;
    remove_stale_temporaries(output_dir);

    let checkpoint = if resume { Checkpoint::load(output_dir)? } else { None };
    let (mut centers, mut history, mut iterations_done) = match checkpoint {
        Some(cp) => {
            cp.check_matches(config, &fingerprints)?;
            (cp.centers, cp.history, cp.iterations_done)
        }
        None => {
            let centers = match initial_centers {
                Some(c) => c,
                None => kmeans_plus_plus(config, chunks, backend, progress)?,
            };
            (centers, Vec::new(), false)
        }
    };

    let params = MembershipParams::try_from(config)?;
    let mut iteration = history.len();
    while !iterations_done && iteration < config.n_iterations {
        iteration += 1;
        let started = Instant::now();
        let mut pass = backend.begin_pass(config.n_clusters, config.d_model, true);
        stream_chunks(chunks, config.d_model, |i, chunk| {
            pass.run(&centers, &Tokens::from_chunk(&chunk, i), params, Want::default())?;
            report(progress, Phase::Iterate, iteration, config.n_iterations, i, chunks.len(), pass.n_rows(), started);
            Ok(())
        })?;
        let stats = pass.finish()?;
        if stats.n_rows == 0 {
            return Err(Error::invalid_input("chunks", "hold no real, non-zero tokens to cluster"));
        }
        let (next, reseeds) = updated_centers(&centers, &stats);
        let max_shift = (0..centers.k)
            .map(|c| 1.0 - centers.row(c).iter().zip(next.row(c)).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum::<f64>())
            .fold(0.0, f64::max);
        history.push(HistoryEntry {
            iteration,
            objective: stats.objective(),
            max_shift,
            mass: stats.mass.clone(),
            reseeds,
            skipped: stats.skipped,
            seconds: started.elapsed().as_secs_f64(),
        });
        centers = next;
        iterations_done = max_shift < config.tol || iteration == config.n_iterations;
        Checkpoint::write(output_dir, config, &centers, &history, &fingerprints, iterations_done)?;
    }

    // The output pass: memberships files, exemplars, per-cluster statistics.
    let started = Instant::now();
    let mut heaps = ExemplarHeaps::new(config.n_clusters, config.n_exemplars);
    let mut pass = backend.begin_pass(config.n_clusters, config.d_model, false);
    stream_chunks(chunks, config.d_model, |i, chunk| {
        let out = pass.run(&centers, &Tokens::from_chunk(&chunk, i), params, Want { sparse: true, ..Want::default() })?;
        exemplars::collect(&mut heaps, &chunk, i, &out, config.context_window);
        memberships_file::write_for_chunk(output_dir, &names[i], &chunk, &out, config.n_clusters)?;
        report(progress, Phase::Output, 0, config.n_iterations, i, chunks.len(), pass.n_rows(), started);
        Ok(())
    })?;
    let stats = pass.finish()?;

    let model = Model {
        config: config.clone(),
        centers,
        cluster_mass: stats.mass,
        cluster_count: stats.hard_count,
        exemplars: heaps.into_sorted(),
        history,
        chunks: names,
    };
    model.save(&output_dir.join("model.safetensors"))?;
    // The model is the final state; the checkpoint has done its job.
    match std::fs::remove_file(Checkpoint::path_in(output_dir)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io(&Checkpoint::path_in(output_dir), e)),
        _ => {}
    }
    Ok(model)
}

/// Refuses, before any work, a fit whose sums and init sample would not fit in memory.
fn check_memory(config: &ClusteringConfig, backend: &dyn Backend) -> Result<()> {
    let (k, d) = (config.n_clusters, config.d_model);
    let needed = backend.host_bytes_for_pass(k, d) + sample_size(k) as f64 * d as f64 * 4.0;
    if let Some(available) = available_memory() {
        if needed > available as f64 {
            return Err(Error::TooLarge {
                what: format!("nClusters x dModel = {k} x {d}"),
                needed_gib: needed / (1u64 << 30) as f64,
                available_gib: available as f64 / (1u64 << 30) as f64,
            });
        }
    }
    Ok(())
}

/// `MemAvailable` on Linux; `None` (no check) where it cannot be read.
fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// `C_k = S_k / |S_k|`; a cluster left empty moves to the next token of the pass with the lowest
/// best-cosine (docs/algorithm.md "Empty clusters"). Returns the new centers and the number of reseeds.
fn updated_centers(old: &Centers, stats: &PassStats) -> (Centers, usize) {
    let (k, d) = (old.k, old.d);
    let mut data = Vec::with_capacity(k * d);
    let mut candidates = stats.farthest.iter();
    let mut reseeds = 0;
    for c in 0..k {
        let s = &stats.s[c * d..(c + 1) * d];
        let norm = s.iter().map(|v| v * v).sum::<f64>().sqrt();
        if stats.mass[c] > EMPTY_MASS && norm > EMPTY_MASS {
            data.extend(s.iter().map(|v| (v / norm) as f32));
        } else if let Some(token) = candidates.next() {
            data.extend_from_slice(&token.vector);
            reseeds += 1;
        } else {
            data.extend_from_slice(old.row(c));
        }
    }
    (Centers { k, d, data }, reseeds)
}

