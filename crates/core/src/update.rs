//! Incremental updates (docs/algorithm.md "Update"): a fitted model folds in new chunks without
//! starting over. Each pass sums `S` and `m` over the new chunks under the current centers and
//! adds them to the model's stored sums scaled by `decay`; the centers are `S / |S|` as in a fit
//! (with the same reseeding). The output pass writes the new chunks' memberships files, offers
//! their exemplars to the model's heaps and leaves the combined sums in the model.

use crate::cache::{self, ChunkCache};
use crate::error::{Error, Result};
use crate::exemplars::ExemplarHeaps;
use crate::fit::{collapse_warning, iterate, output_pass, with_prior};
use crate::kernels::Backend;
use crate::model::{Model, Operation, SufficientStats};
use crate::quantiles::QuantileSample;
use crate::ranks::{OneProcess, Share};
use crate::run_folder::{RunFolder, RunKind, RunOptions};
use crate::sources::chunk_shape;
use crate::stream::{chunk_names, Progress};
use std::path::{Path, PathBuf};

/// Passes over the data after an update, a split or a merge with chunks, unless given.
pub const DEFAULT_PASSES: usize = 3;

pub struct UpdateRequest<'a> {
    pub model: &'a Model,
    /// The file the model came from: an input, never replaced.
    pub model_file: Option<&'a Path>,
    pub chunks: &'a [PathBuf],
    pub output_dir: &'a Path,
    /// Passes over the new chunks before the output pass.
    pub iterations: usize,
    /// Weight of the stored sums, in [0, 1]: 1 = every token old and new weighs the same,
    /// 0 = only the new chunks count (passes from the model's centers).
    pub decay: f64,
    pub overwrite: bool,
    pub device: Option<&'a str>,
}

/// The model's sums, or why an update cannot run without them.
pub(crate) fn stored_stats(model: &Model) -> Result<&SufficientStats> {
    model.stats.as_ref().ok_or_else(|| {
        Error::invalid_input("model", "has no sufficient statistics (a format_version 1 file, or never fitted); fit it again with this version to update it")
    })
}

/// Checks every new chunk's D against the model's, naming the first that differs.
pub(crate) fn check_chunks_d(chunks: &[PathBuf], d: usize) -> Result<()> {
    for path in chunks {
        let (_, _, got) = chunk_shape(path)?;
        if got != d {
            return Err(Error::invalid_input(&path.display().to_string(), format!("has D = {got}, the model's dModel is {d}")));
        }
    }
    Ok(())
}

/// Runs the update and writes `<output_dir>/model.safetensors` and the new chunks' memberships
/// files; returns the updated model.
pub fn update(request: UpdateRequest, backend: &dyn Backend, progress: &mut dyn FnMut(&Progress)) -> Result<Model> {
    let UpdateRequest { model, model_file, chunks, output_dir, iterations, decay, overwrite, device } = request;
    check_decay(decay)?;
    stored_stats(model)?;
    chunk_names(chunks)?;
    check_chunks_d(chunks, model.config.d_model)?;
    let inputs: Vec<PathBuf> = chunks.iter().cloned().chain(model_file.map(Path::to_path_buf)).collect();
    let mut folder = RunFolder::open(output_dir, RunKind::Fit, &inputs, RunOptions { resume: false, overwrite })?;
    let mut updated = passes(model, chunks, iterations, decay, Some(&mut folder), backend, progress)?;
    updated.device = Some(device.map_or_else(|| backend.name(), String::from));
    let mut operation = Operation { op: "update".into(), clusters: Vec::new(), mapping: (0..model.centers.k).collect(), n_clusters: model.centers.k, chunks: chunk_names(chunks)?, iterations: updated.history.len() - model.history.len() };
    if decay == 0.0 {
        operation.op = "refit".into();
    }
    updated.operations.push(operation);
    updated.save(&folder.staged("model.safetensors"))?;
    folder.commit(chunks)?;
    Ok(updated)
}

fn check_decay(decay: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&decay) {
        return Err(Error::invalid_input("decay", format!("must be in [0, 1], got {decay}")));
    }
    Ok(())
}

/// Up to `iterations` passes over `chunks` from the model's centers, each adding the chunks'
/// sums to the stored ones scaled by `decay`, then the output pass (memberships files into
/// `folder` when given). With `decay` 0 the model then describes the new chunks only: its chunk
/// list, exemplars and counts are theirs, as a fit over them from these centers would leave them;
/// otherwise the chunks are appended and the old exemplars compete with the new tokens.
pub fn passes(model: &Model, chunks: &[PathBuf], iterations: usize, decay: f64, folder: Option<&mut RunFolder>, backend: &dyn Backend, progress: &mut dyn FnMut(&Progress)) -> Result<Model> {
    check_decay(decay)?;
    let old = stored_stats(model)?;
    let config = &model.config;
    let (k, d) = (config.n_clusters, config.d_model);
    let names = chunk_names(chunks)?;
    check_chunks_d(chunks, d)?;
    let mut cache = ChunkCache::new(config.cache, cache::estimated_bytes(chunks)?);
    let keep_old = decay > 0.0;
    let prior = keep_old.then_some((old, decay));
    let share = Share::all(chunks)?;
    let mut centers = model.centers.clone();
    let mut history = model.history.clone();
    let first = history.len();
    for step in 1..=iterations {
        let (next, entry) = iterate(config, &centers, &share, &mut cache, backend, &OneProcess, (first + step, step, iterations), prior, progress)?;
        let max_shift = entry.max_shift;
        history.push(entry);
        centers = next;
        if max_shift < config.tol {
            break;
        }
    }

    let mut heaps = ExemplarHeaps::new(k, config.n_exemplars);
    if keep_old {
        // Old exemplars compete with the new chunks' tokens by their stored values.
        for (c, list) in model.exemplars.iter().enumerate() {
            for e in list {
                heaps.offer(c, e.clone());
            }
        }
    }
    // Old quantile examples compete by their keys, as if the old chunks were passed again.
    let quantiles = if keep_old { QuantileSample::from_bins(config.quantile_examples, config.seed, &model.quantiles) } else { QuantileSample::new(k, config.quantile_bins, config.quantile_examples, config.seed) };
    // New chunks are numbered after the old ones in exemplar locations.
    let first_chunk = if keep_old { model.chunks.len() } else { 0 };
    let numbered = Share { ids: (first_chunk..first_chunk + chunks.len()).collect(), ..share };
    let out = output_pass(config, &centers, &numbered, &names, (heaps, quantiles), &mut cache, folder, backend, &OneProcess, progress)?;
    let stats = SufficientStats {
        s: with_prior(prior.map(|(o, dc)| (&o.s[..], dc)), &out.stats.s),
        m: with_prior(prior.map(|(o, dc)| (&o.m[..], dc)), &out.stats.mass),
        tokens: if keep_old { (old.tokens as f64 * decay).round() as u64 } else { 0 } + out.stats.n_rows,
    };
    let old_count = |c: usize| if keep_old { (model.cluster_count[c] as f64 * decay).round() as u64 } else { 0 };
    // Passes after a merge, split or update can collapse too: they warn as a fit does.
    let warnings = collapse_warning(config, &centers, out.entropy, backend, |_| "fit again with temperature \"auto\" or fewer clusters".to_string())?;
    Ok(Model {
        config: config.clone(),
        centers,
        cluster_mass: stats.m.clone(),
        cluster_count: out.stats.hard_count.iter().enumerate().map(|(c, &n)| old_count(c) + n).collect(),
        exemplars: out.exemplars.into_sorted(),
        quantiles: out.quantiles.into_bins(),
        history,
        chunks: if keep_old { model.chunks.iter().chain(&names).cloned().collect() } else { names },
        warnings,
        device: model.device.clone(),
        stats: Some(stats),
        linkage: None,
        operations: model.operations.clone(),
    }
    .with_hierarchy()?)
}
