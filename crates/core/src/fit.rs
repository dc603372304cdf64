//! `fitChunks` (SPEC 3): k-means++ init over a seeded sample, streaming passes that sum `S` and
//! `m` over every chunk, center updates with reseeding, then the output pass that writes the
//! per-chunk memberships, fills the exemplar heaps and saves the model. The next chunk is read
//! on another thread while the current one is computed: memory stays at about two chunks.

use crate::checkpoint::{Checkpoint, ChunkFingerprint};
use crate::config::ClusteringConfig;
use crate::error::{Error, Result};
use crate::exemplars::{Exemplar, ExemplarHeaps};
use crate::kernels::cpu::GemmCrate;
use crate::kernels::{prepare_rows, unit_row, Backend, Centers, PassOutput, Tokens, Want};
use crate::model::{HistoryEntry, Model};
use crate::npz::{read_chunk, Chunk};
use crate::output::write_memberships;
use crate::pass::PassStats;
use crate::transform::params_of;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::Serialize;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Which part of a fit is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Sampling tokens for k-means++.
    Init,
    /// An iteration's pass.
    Iterate,
    /// The final pass that writes outputs.
    Output,
    /// A pass of `analysis::analyze_chunks`.
    Analyze,
}

/// Reported after every chunk.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    pub phase: Phase,
    /// 1-based iteration (0 outside iterations).
    pub iteration: usize,
    pub n_iterations: usize,
    /// 1-based chunk just finished.
    pub chunk: usize,
    pub n_chunks: usize,
    /// Real tokens processed so far in this pass.
    pub tokens_done: u64,
    pub tokens_per_s: f64,
}

/// Memberships smaller than this (in tokens' worth) leave a cluster empty (SPEC 3.3).
const EMPTY_MASS: f64 = 1e-6;

/// Rows per GEMM call in k-means++ (the unit of its parallel work).
const INIT_BLOCK: usize = 1024;

/// Tokens sampled for k-means++: enough per cluster, small enough to stay in cache.
fn sample_size(k: usize) -> usize {
    (8 * k).clamp(4096, 32768).max(k)
}

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
    check_memory(config)?;
    let fingerprints = chunks.iter().map(|p| ChunkFingerprint::of(p)).collect::<Result<Vec<_>>>()?;
    std::fs::create_dir_all(output_dir).map_err(|e| Error::io(output_dir, e))?;
    remove_stale_temporaries(output_dir);
    let params = params_of(config);

    let checkpoint = if resume { Checkpoint::load(output_dir)? } else { None };
    let (mut centers, mut history, mut iterations_done) = match checkpoint {
        Some(cp) => {
            cp.check_matches(config, &fingerprints)?;
            (cp.centers, cp.history, cp.iterations_done)
        }
        None => {
            let centers = match initial_centers {
                Some(c) => c,
                None => kmeans_plus_plus(config, chunks, progress)?,
            };
            (centers, Vec::new(), false)
        }
    };

    let mut iteration = history.len();
    while !iterations_done && iteration < config.n_iterations {
        iteration += 1;
        let started = Instant::now();
        let mut stats = PassStats::new(config.n_clusters, config.d_model);
        backend.begin_pass();
        let streamed = stream_chunks(chunks, config.d_model, |i, chunk| {
            let out = backend.run(&centers, &Tokens::from_chunk(&chunk, i), params, Want { stats: true, sums: true, ..Want::default() })?;
            stats.merge(out.stats.expect("stats were asked for"));
            report(progress, Phase::Iterate, iteration, config, i, chunks.len(), stats.n_rows, started);
            Ok(())
        });
        let kept = backend.finish_pass(); // closed even when a chunk failed
        streamed?;
        if let Some((s, mass)) = kept? {
            stats.s.iter_mut().zip(&s).for_each(|(a, b)| *a += b);
            stats.mass.iter_mut().zip(&mass).for_each(|(a, b)| *a += b);
        }
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
    let mut stats = PassStats::without_sums(config.n_clusters, config.d_model);
    stream_chunks(chunks, config.d_model, |i, chunk| {
        let out = backend.run(&centers, &Tokens::from_chunk(&chunk, i), params, Want { sparse: true, stats: true, ..Want::default() })?;
        collect_exemplars(&mut heaps, &chunk, i, &out, config.context_window);
        write_chunk_memberships(output_dir, &names[i], &chunk, &out, config.n_clusters)?;
        stats.merge(out.stats.expect("stats were asked for"));
        report(progress, Phase::Output, 0, config, i, chunks.len(), stats.n_rows, started);
        Ok(())
    })?;

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

/// Removes temporary files that a killed run left behind (`.<name>.tmp-<pid>`): they were never
/// renamed into place, so nothing refers to them.
pub(crate) fn remove_stale_temporaries(output_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(output_dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && name.contains(".tmp-") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Refuses, before any work, a fit whose sums would not fit in memory: each thread keeps a
/// float32 `K x D` partial of `S` plus its blocks, and a pass merges them in float64.
fn check_memory(config: &ClusteringConfig) -> Result<()> {
    let (k, d) = (config.n_clusters as f64, config.d_model as f64);
    let threads = rayon::current_num_threads() as f64;
    let block = crate::kernels::cpu::BLOCK_ROWS as f64;
    let needed = k * d * (4.0 * threads + 8.0 * (threads + 3.0)) + threads * block * (k + d) * 4.0 + sample_size(config.n_clusters) as f64 * d * 4.0;
    if let Some(available) = available_memory() {
        if needed > available as f64 {
            return Err(Error::TooLarge {
                what: format!("nClusters x dModel = {} x {}", config.n_clusters, config.d_model),
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

/// Writes `<output_dir>/<chunk stem>.memberships.npz` (SPEC 4) from a pass's sparse output.
pub(crate) fn write_chunk_memberships(output_dir: &Path, name: &str, chunk: &Chunk, out: &PassOutput, n_clusters: usize) -> Result<()> {
    let stem = name.strip_suffix(".npz").unwrap_or(name);
    let metadata = serde_json::json!({
        "total_sequences": chunk.batch,
        "sequence_length": chunk.seq_len,
        "n_clusters": n_clusters,
        "source": name,
        "format_version": 1,
        "n_tokens": out.rows.len(),
        "skipped": out.rows.skipped,
    });
    let indices = out.coo_indices(chunk.seq_len);
    let values = out.sparse.as_ref().map(|s| s.value.clone()).unwrap_or_default();
    write_memberships(&output_dir.join(format!("{stem}.memberships.npz")), indices, values, chunk.batch, chunk.seq_len, &metadata)
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn report(progress: &mut dyn FnMut(&Progress), phase: Phase, iteration: usize, config: &ClusteringConfig, i: usize, n_chunks: usize, tokens_done: u64, started: Instant) {
    progress(&Progress {
        phase,
        iteration,
        n_iterations: config.n_iterations,
        chunk: i + 1,
        n_chunks,
        tokens_done,
        tokens_per_s: tokens_done as f64 / started.elapsed().as_secs_f64().max(1e-9),
    });
}

/// File names of the chunks; output files are named after them, so they must be distinct.
pub(crate) fn chunk_names(chunks: &[PathBuf]) -> Result<Vec<String>> {
    if chunks.is_empty() {
        return Err(Error::invalid_input("chunks", "no chunk files were given"));
    }
    let mut seen = HashSet::new();
    chunks
        .iter()
        .map(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if !seen.insert(name.clone()) {
                return Err(Error::invalid_input(
                    &p.display().to_string(),
                    format!("another chunk is also named {name:?}; output files are named after chunks, so names must differ"),
                ));
            }
            Ok(name)
        })
        .collect()
}

/// Visits every chunk in order while the next one is read and decoded on another thread. At most
/// two chunks are alive: the one being visited and the one waiting to be handed over.
pub fn stream_chunks(paths: &[PathBuf], d_model: usize, mut visit: impl FnMut(usize, Chunk) -> Result<()>) -> Result<()> {
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Chunk>>(0);
        scope.spawn(move || {
            for path in paths {
                let chunk = read_chunk(path).and_then(|c| c.check_d_model(d_model).map(|()| c));
                let failed = chunk.is_err();
                if tx.send(chunk).is_err() || failed {
                    break; // the visitor stopped, or this chunk was bad
                }
            }
        });
        for (i, chunk) in rx.iter().enumerate() {
            visit(i, chunk?)?;
        }
        Ok(())
    })
}

/// `C_k = S_k / |S_k|`; a cluster left empty moves to the next token of the pass with the lowest
/// best-cosine (SPEC 3.3). Returns the new centers and the number of reseeds.
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

/// Offers every nonzero membership of a chunk to the heaps, with its context when it is kept.
fn collect_exemplars(heaps: &mut ExemplarHeaps, chunk: &Chunk, chunk_index: usize, out: &PassOutput, w: usize) {
    let Some(sparse) = &out.sparse else { return };
    let seq = chunk.seq_len;
    let mut row_of = vec![u32::MAX; chunk.n_tokens()];
    for (r, &t) in out.rows.token.iter().enumerate() {
        row_of[t as usize] = r as u32;
    }
    let membership = |t: usize, cluster: u32| -> f32 {
        let r = row_of[t];
        if r == u32::MAX {
            return 0.0;
        }
        let (clusters, values) = sparse.row(r as usize);
        clusters.binary_search(&cluster).map_or(0.0, |i| values[i])
    };
    let is_real = |t: usize| chunk.attention_mask.as_ref().is_none_or(|m| m[t] != 0);
    for (r, &t) in out.rows.token.iter().enumerate() {
        let t = t as usize;
        let (batch, position) = (t / seq, t % seq);
        let (clusters, values) = sparse.row(r);
        for (&cluster, &value) in clusters.iter().zip(values) {
            if !heaps.would_accept(cluster as usize, value, (chunk_index, batch, position)) {
                continue;
            }
            let window = (position as isize - w as isize..=position as isize + w as isize).map(|p| {
                (p >= 0 && (p as usize) < seq).then(|| batch * seq + p as usize).filter(|&u| is_real(u))
            });
            let (tokens, context_memberships) = window
                .map(|u| match u {
                    Some(u) => (chunk.token_ids.as_ref().map_or(-1, |ids| ids[u]), membership(u, cluster)),
                    None => (-1, 0.0),
                })
                .unzip();
            heaps.offer(cluster as usize, Exemplar { value, chunk: chunk_index, batch, position, tokens, context_memberships });
        }
    }
}

/// Algorithm R: where the `seen`-th item (0-based) of a stream goes in a uniform sample of at most
/// `capacity` items: the next free slot while there is one, then a random slot or nowhere.
pub(crate) fn reservoir_slot(rng: &mut ChaCha8Rng, seen: u64, capacity: usize) -> Option<usize> {
    if (seen as usize) < capacity {
        Some(seen as usize)
    } else {
        let j = rng.random_range(0..=seen);
        (j < capacity as u64).then_some(j as usize)
    }
}

/// Spherical k-means++ (distance `1 - cos`) over a seeded uniform sample of real tokens.
fn kmeans_plus_plus(config: &ClusteringConfig, chunks: &[PathBuf], progress: &mut dyn FnMut(&Progress)) -> Result<Centers> {
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
        report(progress, Phase::Init, 0, config, i, chunks.len(), seen, started);
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
    // Cosines of every sampled token to each of `candidates`, `[n, t]`: one GEMM per block of rows.
    let cosines_to = |candidates: &[usize]| -> Vec<f32> {
        let t = candidates.len();
        let matrix: Vec<f32> = candidates.iter().flat_map(|&c| row(c).iter().copied()).collect();
        let mut out = vec![0f32; n * t];
        out.par_chunks_mut(INIT_BLOCK * t).zip(sample.par_chunks(INIT_BLOCK * d)).for_each(|(out, rows)| {
            GemmCrate::Gemm.multiply(rows.len() / d, d, t, rows, (d, 1), &matrix, (1, d), out, t, false);
        });
        out
    };
    // `gap[i]` = 1 - max cos(x_i, chosen): the squared chord distance / 2, what k-means++ samples by.
    let mut chosen = vec![rng.random_range(0..n)];
    let mut gap: Vec<f32> = cosines_to(&chosen).iter().map(|&c| (1.0 - c).max(0.0)).collect();
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
        let cosines = cosines_to(&candidates);
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
