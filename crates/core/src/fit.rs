//! `fitChunks` (docs/algorithm.md "Fitting"): init, streaming passes that sum `S` and `m` over
//! every chunk, center updates with reseeding, then the output pass that writes the per-chunk
//! memberships, fills the exemplar heaps and saves the model. The next chunk is read on another
//! thread while the current one is computed: memory stays at about two chunks.

use crate::checkpoint::{Checkpoint, ChunkFingerprint};
use crate::config::ClusteringConfig;
use crate::error::{Error, Result};
use crate::exemplars::{self, ExemplarHeaps};
use crate::config::{CacheSetting, Temperature};
use crate::init::{sample_size, start, suggested_temperature};
use crate::kernels::{for_each_cosine_row, Backend, Centers, MembershipParams, Tokens, Want, COSINE_BLOCK_BYTES};
use crate::memberships_file;
use crate::memory::available_memory;
use crate::model::{HistoryEntry, Model, SufficientStats, STORED_TREE_MAX_K};
use crate::run_folder::{RunFolder, RunKind, RunOptions};
use crate::pass::PassStats;
use crate::quantiles::QuantileSample;
use crate::ranks::{agree, align_with_rank0, all_reduce_stats, gather_exemplars, Collective, Share};
use crate::cache::{self, ChunkCache};
use crate::stream::{chunk_names, report, Phase, Progress};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Memberships smaller than this (in tokens' worth) leave a cluster empty.
const EMPTY_MASS: f64 = 1e-6;

/// Two centers closer than this cosine are twins: one cluster's worth of tokens split in two
/// (docs/algorithm.md "Twins").
pub const TWIN_COSINE: f64 = 0.99;

/// A fit whose final mean normalized partition entropy is at least this is collapsed: tokens
/// belong to nearly every cluster alike.
pub const COLLAPSED_ENTROPY: f64 = 0.9;

pub struct FitRequest<'a> {
    pub config: &'a ClusteringConfig,
    /// Start here instead of k-means++ (already normalized).
    pub initial_centers: Option<Centers>,
    pub chunks: &'a [PathBuf],
    pub output_dir: &'a Path,
    /// Continue from `<output_dir>/checkpoint.safetensors` if there is one (same config and
    /// unchanged chunk files required); otherwise start from the beginning.
    pub resume: bool,
    /// Replace another run's outputs in `output_dir` once this fit is complete (otherwise a folder
    /// holding them is refused: docs/formats.md "Output folder").
    pub overwrite: bool,
    /// Where the fit runs and why (`kernels::Chosen::reason`), recorded in the model;
    /// `None` records the backend's name.
    pub device: Option<&'a str>,
    /// The processes of the run (`ranks::OneProcess` for one; docs/scaling.md "Many servers"):
    /// each reads its share of the chunks and writes their memberships files, rank 0 writes the
    /// model and the checkpoint, and every rank returns the same model.
    pub ranks: &'a dyn Collective,
}

/// Runs a whole fit and writes its outputs; returns the fitted model (also saved as
/// `<output_dir>/model.safetensors`).
pub fn fit_chunks(request: FitRequest, backend: &dyn Backend, progress: &mut dyn FnMut(&Progress)) -> Result<Model> {
    let FitRequest { config, initial_centers, chunks, output_dir, resume, overwrite, device, ranks: comm } = request;
    let device = device.map_or_else(|| backend.name(), String::from);
    let device = if comm.size() > 1 { format!("{device}, on each of {} ranks", comm.size()) } else { device };
    let checked = (|| {
        config.validate()?;
        let names = chunk_names(chunks)?;
        check_memory(config, backend)?;
        let fingerprints = chunks.iter().map(|p| ChunkFingerprint::of(p)).collect::<Result<Vec<_>>>()?;
        Ok((names, fingerprints, Share::of(chunks, comm)?))
    })();
    let (names, fingerprints, share) = agree(comm, checked)?;
    // Rank 0 holds the folder; the other ranks write into its staging area.
    let opened = if comm.rank() == 0 { RunFolder::open(output_dir, RunKind::Fit, chunks, RunOptions { resume, overwrite }).map(Some) } else { Ok(None) };
    let opened = agree(comm, opened)?;
    let staging = comm.broadcast(opened.as_ref().map(|f| f.staging_name().into_bytes()).unwrap_or_default())?;
    let folder = match opened {
        Some(folder) => Ok(folder),
        None => RunFolder::join(output_dir, RunKind::Fit, &String::from_utf8_lossy(&staging)),
    };
    let mut folder = agree(comm, folder)?;
    let model = fit_into(config, initial_centers, &share, &names, &fingerprints, &mut folder, resume, device, backend, comm, progress);
    let committed = model.and_then(|model| {
        if comm.rank() == 0 {
            // Every rank's memberships files are in the staging area by now.
            names.iter().for_each(|n| {
                folder.staged(&memberships_file::file_name_for(n));
            });
            folder.commit(chunks)?;
            // The model is in place; the checkpoint has done its job.
            match std::fs::remove_file(Checkpoint::path_in(output_dir)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io(&Checkpoint::path_in(output_dir), e)),
                _ => {}
            }
        }
        Ok(model)
    });
    // Rank 0's last steps can fail after the others are done: they wait for its word here.
    match agree(comm, committed)? {
        Some(model) => Ok(model),
        None => Model::load(&output_dir.join("model.safetensors")),
    }
}

/// `fit_chunks` once its inputs are checked and the output folder is held: writes the outputs
/// into the folder's staging area; returns the model on rank 0 (the only rank that writes it).
#[allow(clippy::too_many_arguments)]
fn fit_into(config: &ClusteringConfig, initial_centers: Option<Centers>, share: &Share, names: &[String], fingerprints: &[ChunkFingerprint], folder: &mut RunFolder, resume: bool, device: String, backend: &dyn Backend, comm: &dyn Collective, progress: &mut dyn FnMut(&Progress)) -> Result<Option<Model>> {
    let output_dir = &folder.dir().to_path_buf();
    let root = comm.rank() == 0;
    let opened = (|| Ok((if resume { Checkpoint::load(output_dir)? } else { None }, cache::estimated_bytes(&share.paths)?)))();
    let (checkpoint, estimated) = agree(comm, opened)?;
    // Ranks on one machine share its memory: `auto` gives each its part.
    let setting = match (config.cache, comm.on_this_machine()) {
        (CacheSetting::Auto, n) if n > 1 => CacheSetting::Bytes(cache::auto_budget() / n as u64),
        (setting, _) => setting,
    };
    let mut cache = ChunkCache::new(setting, estimated);
    // `config` with the temperature as a number (chosen at init when it is `auto`).
    let (config, mut centers, mut history, mut iterations_done, auto_temperature) = match checkpoint {
        Some(cp) => {
            let resumed = match (config.temperature, &cp.config.temperature_rule) {
                (Temperature::Auto, Some(rule)) => ClusteringConfig { temperature: cp.config.temperature, temperature_rule: Some(rule.clone()), ..config.clone() },
                _ => config.clone(),
            };
            agree(comm, cp.check_matches(&resumed, fingerprints))?;
            (resumed, cp.centers, cp.history, cp.iterations_done, None)
        }
        None => {
            let start = start(config, initial_centers, share, &mut cache, backend, comm, progress)?;
            let resolved = ClusteringConfig { temperature: Temperature::Fixed(start.temperature), temperature_rule: start.temperature_rule, ..config.clone() };
            (resolved, start.centers, Vec::new(), false, start.auto_temperature)
        }
    };
    let config = &config;

    let mut iteration = history.len();
    while !iterations_done && iteration < config.n_iterations {
        iteration += 1;
        let (next, entry) = iterate(config, &centers, share, &mut cache, backend, comm, (iteration, iteration, config.n_iterations), None, progress)?;
        let max_shift = entry.max_shift;
        history.push(entry);
        centers = next;
        iterations_done = max_shift < config.tol || iteration == config.n_iterations;
        let written = if root { Checkpoint::write(output_dir, config, &centers, &history, fingerprints, iterations_done) } else { Ok(()) };
        agree(comm, written)?;
    }

    // The output pass: memberships files, exemplars, per-cluster statistics.
    let candidates = (ExemplarHeaps::new(config.n_clusters, config.n_exemplars), QuantileSample::new(config.n_clusters, config.quantile_bins, config.quantile_examples, config.seed));
    let local_names: Vec<String> = share.ids.iter().map(|&i| names[i].clone()).collect();
    let out = output_pass(config, &centers, share, &local_names, candidates, &mut cache, Some(folder), backend, comm, progress)?;
    let (stats, entropy) = (out.stats, out.entropy);
    // Whether the fit collapsed is rank 0's to say (twins come from a GEMM, here a K x K one);
    // then every rank takes part in the suggestion.
    let twins = if root { twin_pairs(&centers, backend).map(|p| p.len()) } else { Ok(0) };
    let collapsed = root && (entropy >= COLLAPSED_ENTROPY || twins.as_ref().is_ok_and(|&t| t > 0));
    let collapsed = comm.broadcast(vec![u8::from(collapsed)])?.first() == Some(&1);
    let suggestion = match (collapsed, &config.temperature_rule) {
        (false, _) => String::new(),
        (true, Some(_)) => "it was chosen by \"auto\"; try more nIterations or fewer clusters".to_string(),
        // Best effort: the suggestion must not fail a fit whose outputs are written.
        (true, None) => match auto_temperature.map_or_else(|| suggested_temperature(config, share, &mut cache, backend, comm), Ok) {
            Ok(t) => format!("temperature \"auto\" would choose {t:.3} for this data"),
            Err(e) => format!("rerun with temperature \"auto\" (its value could not be computed here: {e})"),
        },
    };
    if !root {
        return Ok(None);
    }
    let warnings = if collapsed { vec![collapse_message(config, twins?, entropy, &suggestion)?] } else { Vec::new() };

    let model = Model {
        config: config.clone(),
        centers,
        cluster_mass: stats.mass.clone(),
        cluster_count: stats.hard_count,
        exemplars: out.exemplars.into_sorted(),
        quantiles: out.quantiles.into_bins(),
        history,
        chunks: names.to_vec(),
        warnings,
        device: Some(device),
        stats: Some(SufficientStats { s: stats.s, m: stats.mass, tokens: stats.n_rows }),
        linkage: None,
        operations: Vec::new(),
    }
    .with_hierarchy()?;
    model.save(&folder.staged("model.safetensors"))?;
    Ok(Some(model))
}

/// `old * decay + new`, element by element; `new` alone without old sums, so that a pass with
/// nothing carried over gives the same bits as a fit's.
pub(crate) fn with_prior(prior: Option<(&[f64], f64)>, new: &[f64]) -> Vec<f64> {
    match prior {
        Some((old, decay)) => old.iter().zip(new).map(|(a, b)| a * decay + b).collect(),
        None => new.to_vec(),
    }
}

/// One iteration (docs/algorithm.md "Iterations"): a pass over this rank's chunks under
/// `centers`, its sums added over the ranks and to `prior` (an update's stored sums and their
/// decay; none in a fit), the center update with reseeding (rank 0's centers go to every rank),
/// and the history entry. `numbers` = (history number, step, steps).
#[allow(clippy::too_many_arguments)]
pub(crate) fn iterate(config: &ClusteringConfig, centers: &Centers, share: &Share, cache: &mut ChunkCache, backend: &dyn Backend, comm: &dyn Collective, numbers: (usize, usize, usize), prior: Option<(&SufficientStats, f64)>, progress: &mut dyn FnMut(&Progress)) -> Result<(Centers, HistoryEntry)> {
    let (number, step, steps) = numbers;
    let params = MembershipParams::try_from(config)?;
    let started = Instant::now();
    let data = match comm.size() {
        1 => cache.describe(),
        n => format!("{} (rank 0 of {n}, its share)", cache.describe()),
    };
    let local = (|| {
        let mut pass = backend.begin_pass(config.n_clusters, config.d_model, true);
        cache.stream(&share.paths, config.d_model, |i, chunk| {
            pass.run(centers, &Tokens::from_chunk(chunk, share.ids[i]), params, Want::default())?;
            report(progress, Phase::Iterate, step, steps, i, share.paths.len(), pass.n_rows(), started);
            Ok(())
        })?;
        pass.finish()
    })();
    let mut stats = agree(comm, local)?;
    all_reduce_stats(&mut stats, comm)?;
    if stats.n_rows == 0 {
        return Err(Error::invalid_input("chunks", "hold no real, non-zero tokens to cluster"));
    }
    let (objective, skipped) = (stats.objective(), stats.skipped);
    if let Some((old, decay)) = prior {
        stats.s = with_prior(Some((&old.s, decay)), &stats.s);
        stats.mass = with_prior(Some((&old.m, decay)), &stats.mass);
    }
    let (mut next, reseeds, twins) = updated_centers(centers, &stats, backend)?;
    // Every rank updated from the same sums; a GEMM (twins) that rounds differently on another
    // machine must still not let the ranks drift apart.
    align_with_rank0(comm, &mut next.data)?;
    let max_shift = (0..centers.k)
        .map(|c| 1.0 - centers.row(c).iter().zip(next.row(c)).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum::<f64>())
        .fold(0.0, f64::max);
    let entry = HistoryEntry { iteration: number, objective, max_shift, mass: stats.mass, reseeds, twins, skipped, seconds: started.elapsed().as_secs_f64(), data };
    Ok((next, entry))
}

/// The collapse warning (docs/algorithm.md "Collapse warning") of a model whose output pass
/// left `entropy`: none unless twin centers remain or the entropy is near 1; `suggestion` says
/// what to try, and is asked for only then.
pub(crate) fn collapse_warning(config: &ClusteringConfig, centers: &Centers, entropy: f64, backend: &dyn Backend, suggestion: impl FnOnce(&ClusteringConfig) -> String) -> Result<Vec<String>> {
    let twins = twin_pairs(centers, backend)?.len();
    if twins == 0 && entropy < COLLAPSED_ENTROPY {
        return Ok(Vec::new());
    }
    Ok(vec![collapse_message(config, twins, entropy, &suggestion(config))?])
}

/// The text of the collapse warning.
fn collapse_message(config: &ClusteringConfig, twins: usize, entropy: f64, suggestion: &str) -> Result<String> {
    let t = MembershipParams::try_from(config)?.temperature;
    Ok(format!(
        "the fit ended collapsed at temperature {t}: {twins} twin center pairs above cosine {TWIN_COSINE}, partition entropy {entropy:.3} (1 = every token in every cluster alike); {suggestion}"
    ))
}

/// What the output pass learns besides the memberships files it writes.
pub(crate) struct OutputPass {
    /// The pass's sums and counts under the final centers (`S` included: the model keeps it).
    pub stats: PassStats,
    pub exemplars: ExemplarHeaps,
    pub quantiles: QuantileSample,
    /// Mean normalized partition entropy of the tokens.
    pub entropy: f64,
}

/// The output pass (docs/algorithm.md "Output pass"): one more pass under `centers` over this
/// rank's chunks (`names`: theirs) that writes each one's memberships file into the folder's
/// staging area (when there is a folder) and offers every token to the exemplar heaps and the
/// quantile sample (chunks numbered by `share.ids` in their locations). The sums and counts are
/// added over the ranks; rank 0 gets every rank's exemplars.
#[allow(clippy::too_many_arguments)]
pub(crate) fn output_pass(config: &ClusteringConfig, centers: &Centers, share: &Share, names: &[String], candidates: (ExemplarHeaps, QuantileSample), cache: &mut ChunkCache, mut folder: Option<&mut RunFolder>, backend: &dyn Backend, comm: &dyn Collective, progress: &mut dyn FnMut(&Progress)) -> Result<OutputPass> {
    let started = Instant::now();
    let (mut heaps, mut quantiles) = candidates;
    let params = MembershipParams::try_from(config)?;
    let mut entropy_sum = 0f64;
    let local = (|| {
        let mut pass = backend.begin_pass(config.n_clusters, config.d_model, true);
        let mut memberships = memberships_file::FileMemberships::default();
        cache.stream(&share.paths, config.d_model, |i, chunk| {
            let (id, w) = (share.ids[i], config.context_window);
            let out = pass.run(centers, &Tokens::from_chunk(chunk, id), params, Want { sparse: true, ..Want::default() })?;
            entropy_sum += out.sparse.as_ref().map_or(0.0, |s| s.value.iter().filter(|&&p| p > 0.0).map(|&p| -f64::from(p) * f64::from(p).ln()).sum());
            exemplars::collect(&mut heaps, chunk, id, &out, w, config.distinct_contexts);
            quantiles.collect(chunk, id, &out, w);
            if let Some(folder) = folder.as_deref_mut() {
                if memberships.add(chunk, &out) {
                    memberships.write(&folder.staged(&memberships_file::file_name_for(&names[i])), &names[i], chunk, config.n_clusters)?;
                }
            }
            report(progress, Phase::Output, 0, config.n_iterations, i, share.paths.len(), pass.n_rows(), started);
            Ok(())
        })?;
        pass.finish()
    })();
    let mut stats = agree(comm, local)?;
    all_reduce_stats(&mut stats, comm)?;
    let mut entropy_sum = [entropy_sum];
    comm.all_reduce_sum(&mut entropy_sum)?;
    let entropy_sum = entropy_sum[0];
    gather_exemplars(&mut heaps, &mut quantiles, comm)?;
    let entropy = if config.n_clusters > 1 && stats.n_rows > 0 { entropy_sum / stats.n_rows as f64 / (config.n_clusters as f64).ln() } else { 0.0 };
    Ok(OutputPass { stats, exemplars: heaps, quantiles, entropy })
}

/// Refuses, before any work, a fit whose sums, init sample and cosine blocks would not fit in
/// memory.
fn check_memory(config: &ClusteringConfig, backend: &dyn Backend) -> Result<()> {
    let (k, d) = (config.n_clusters, config.d_model);
    // Exemplars: the heaps, then the model's [K, E, 2w+1] token ids (8 bytes) and context
    // memberships (4 bytes), each entry with its bookkeeping; counted in f64 so that absurd
    // nExemplars or contextWindow values are refused here instead of aborting an allocation.
    let (e, w) = (config.n_exemplars as f64, 2.0 * config.context_window as f64 + 1.0);
    let quantiles = config.quantile_bins as f64 * config.quantile_examples as f64;
    let exemplars = 2.0 * k as f64 * (e + quantiles) * (w * 12.0 + 64.0) + 24.0 * k as f64 * config.quantile_bins as f64;
    // The tree stored with the model: a K x K float32 distance matrix while it is built.
    let tree = if k <= STORED_TREE_MAX_K { 4.0 * (k as f64).powi(2) } else { 0.0 };
    let needed = backend.host_bytes_for_pass(k, d) + sample_size(k) as f64 * d as f64 * 4.0 + COSINE_BLOCK_BYTES as f64 + 1024.0 * k as f64 * 4.0 + exemplars + tree;
    if let Some(available) = available_memory() {
        if needed > available as f64 {
            return Err(Error::TooLarge {
                what: format!("nClusters x dModel = {k} x {d} with nExemplars = {} and contextWindow = {}", config.n_exemplars, config.context_window),
                needed_gib: needed / (1u64 << 30) as f64,
                available_gib: available as f64 / (1u64 << 30) as f64,
            });
        }
    }
    Ok(())
}

/// Pairs `(a, b)`, `a < b`, of centers closer than `TWIN_COSINE`.
fn twin_pairs(centers: &Centers, backend: &dyn Backend) -> Result<Vec<(usize, usize)>> {
    let mut pairs = Vec::new();
    for_each_cosine_row(backend, &centers.data, &centers.data, centers.d, |a, row| {
        pairs.extend(row.iter().enumerate().skip(a + 1).filter(|&(_, &c)| f64::from(c) > TWIN_COSINE).map(|(b, _)| (a, b)));
    })?;
    Ok(pairs)
}

/// `C_k = S_k / |S_k|`. A cluster left empty, and the later center of each twin pair (unless
/// most centers are twins: a temperature that collapses everything, where reseeding cannot
/// help and the fit warns instead), moves to the next token of the pass with the lowest
/// best-cosine (docs/algorithm.md "Empty clusters and twins"). Returns the new centers, the
/// number of reseeds and the number of twin pairs found.
pub(crate) fn updated_centers(old: &Centers, stats: &PassStats, backend: &dyn Backend) -> Result<(Centers, usize, usize)> {
    let (k, d) = (old.k, old.d);
    let mut data = Vec::with_capacity(k * d);
    let mut empty = vec![false; k];
    for c in 0..k {
        let s = &stats.s[c * d..(c + 1) * d];
        let norm = s.iter().map(|v| v * v).sum::<f64>().sqrt();
        if stats.mass[c] > EMPTY_MASS && norm > EMPTY_MASS {
            data.extend(s.iter().map(|v| (v / norm) as f32));
        } else {
            data.extend_from_slice(old.row(c));
            empty[c] = true;
        }
    }
    let mut next = Centers { k, d, data };
    // Pairs of new centers: a cluster left empty still holds its old row and is not one.
    let pairs: Vec<(usize, usize)> = twin_pairs(&next, backend)?.into_iter().filter(|&(a, b)| !empty[a] && !empty[b]).collect();
    let mut twin = vec![false; k];
    for &(a, b) in &pairs {
        if !twin[a] {
            twin[b] = true;
        }
    }
    let collapsed = 2 * twin.iter().filter(|&&t| t).count() > k;
    let mut candidates = stats.farthest.iter();
    let mut reseeds = 0;
    for c in 0..k {
        if empty[c] || (twin[c] && !collapsed) {
            if let Some(token) = candidates.next() {
                next.data[c * d..(c + 1) * d].copy_from_slice(&token.vector);
                reseeds += 1;
            }
        }
    }
    Ok((next, reseeds, pairs.len()))
}

