//! `NativeModel`: a config, centers and, once fitted or loaded, what the model knows; its
//! methods call the core on the calling thread or as a `Work` on the libuv pool.

use crate::analysis::{self, AnalyzeParams, ClusterAnalysis};
use crate::config::{core_config, ConfigArg, ResolvedConfig};
use crate::errors::{invalid_input, js_error};
use crate::summary::{HistoryEntry, ModelSummary};
use crate::tasks::Work;
use napi::bindgen_prelude::*;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::Env;
use napi_derive::napi;
use soft_cluster_core::analysis::{analyze, analyze_chunks};
use soft_cluster_core::fit::{fit_chunks, FitRequest};
use soft_cluster_core::kernels::{backend_for, choose_backend};
use soft_cluster_core::transform::{layout_of, transform, transform_chunks, TransformRequest};
use soft_cluster_core::{ActivationsRef, Centers, ClusteringConfig, Model, PassOutput, Tokens};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

/// Held by the fit under way when this process is one rank of several.
static MPI_FIT: Mutex<()> = Mutex::new(());

/// Memberships of a batch of tokens (docs/algorithm.md "Memberships"), in dense and sparse form.
#[napi(object)]
pub struct TransformOutput {
    /// Dense `[nRows, K]` memberships, one row per real, non-zero token (absent if not asked for).
    pub memberships: Option<Float32Array>,
    /// Flattened token index (`batch * S + position`) of each row.
    pub row_tokens: Uint32Array,
    /// Nonzero memberships as `[nnz, 3]` (batch, position, cluster), sorted.
    pub indices: Int32Array,
    pub values: Float32Array,
    /// Hard labels: the cluster of each row's largest membership (the lowest id on ties).
    pub labels: Int32Array,
    pub n_rows: u32,
    pub n_clusters: u32,
    /// Real tokens skipped because their vector is all zeros.
    pub skipped: u32,
}

impl TransformOutput {
    fn new(out: PassOutput, seq_len: usize, k: usize) -> Self {
        let indices = out.coo_indices(seq_len).into_iter().map(|v| v as i32).collect();
        let labels = out.hard_labels().into_iter().map(|c| c as i32).collect();
        let sparse = out.sparse.unwrap_or_default();
        TransformOutput {
            n_rows: out.rows.len() as u32,
            n_clusters: k as u32,
            skipped: out.rows.skipped as u32,
            memberships: out.dense.map(Float32Array::new),
            row_tokens: Uint32Array::new(out.rows.token),
            indices: Int32Array::new(indices),
            values: Float32Array::new(sparse.value),
            labels: Int32Array::new(labels),
        }
    }
}

/// The tree over a model's clusters (docs/algorithm.md "Hierarchy"), in scipy's terms.
#[napi(object)]
pub struct Hierarchy {
    /// `[K - 1]` rows `[a, b, distance, clusters]` (scipy's linkage layout; ids >= K name the
    /// group made by row `id - K`).
    pub linkage: Vec<Vec<f64>>,
    /// The clusters as a dendrogram draws its leaves, left to right.
    pub order: Vec<u32>,
    /// Per linkage row, the x of the four corners of its U (leaf `i` of `order` at `10 i + 5`).
    pub icoord: Vec<Vec<f64>>,
    /// Per linkage row, the heights of those corners (0 at a leaf).
    pub dcoord: Vec<Vec<f64>>,
}

/// Reported after every chunk of a fit, transform or analysis.
#[napi(object)]
pub struct FitProgress {
    /// `init` (sampling for k-means++), `iterate`, `output` or `analyze`.
    pub phase: String,
    pub iteration: u32,
    pub n_iterations: u32,
    /// 1-based chunk just finished.
    pub chunk: u32,
    pub n_chunks: u32,
    pub tokens_done: f64,
    pub tokens_per_s: f64,
}

type ProgressCallback = ThreadsafeFunction<FitProgress, (), FitProgress, Status, false, true>;

/// Forwards core progress reports to a JS callback, if there is one.
fn progress_reporter(callback: Option<ProgressCallback>) -> impl FnMut(&soft_cluster_core::stream::Progress) {
    move |p| {
        if let Some(f) = &callback {
            let phase = serde_json::to_value(p.phase).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
            let progress = FitProgress {
                phase,
                iteration: p.iteration as u32,
                n_iterations: p.n_iterations as u32,
                chunk: p.chunk as u32,
                n_chunks: p.n_chunks as u32,
                tokens_done: p.tokens_done as f64,
                tokens_per_s: p.tokens_per_s,
            };
            f.call(progress, ThreadsafeFunctionCallMode::NonBlocking);
        }
    }
}

/// What a `NativeModel` holds between calls. Shared with its running work.
struct State {
    /// The fitted or loaded model; `None` until there are centers.
    model: Option<Arc<Model>>,
    /// Centers from `initialCenters`, the start of the next fit.
    initial: Option<Centers>,
    fitting: bool,
    /// The file the model was loaded from, saved to, or fitted into: an input that a
    /// `transformChunks` never replaces.
    file: Option<PathBuf>,
}

fn lock<T>(state: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while locked can only come from a bug; the state itself stays consistent.
    state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Clears `fitting` when the fit's work ends, however it ends.
struct Fitting(Arc<Mutex<State>>);

impl Drop for Fitting {
    fn drop(&mut self) {
        lock(&self.0).fitting = false;
    }
}

/// A clustering model: config, centers and, once fitted, statistics, exemplars and history.
#[napi]
pub struct NativeModel {
    config: ClusteringConfig,
    state: Arc<Mutex<State>>,
}

#[napi]
impl NativeModel {
    /// `config` is validated (defaults filled in); `initialCenters`, if given, must hold
    /// `nClusters * dModel` values and is normalized row by row.
    #[napi(constructor)]
    pub fn new(env: Env, #[napi(ts_arg_type = "ClusteringConfig")] config: ConfigArg, initial_centers: Option<Float32Array>) -> Result<Self> {
        let config = core_config(&env, config)?;
        let initial = initial_centers
            .map(|c| Centers::from_rows(config.n_clusters, config.d_model, c.to_vec()))
            .transpose()
            .map_err(|e| js_error(&env, e))?;
        let model = initial.clone().map(|c| Arc::new(Model::new(config.clone(), c)));
        Ok(NativeModel { config, state: Arc::new(Mutex::new(State { model, initial, fitting: false, file: None })) })
    }

    /// A model made by an operation, not yet saved anywhere.
    fn from_unsaved(model: Model) -> Self {
        let config = model.config.clone();
        let state = State { model: Some(Arc::new(model)), initial: None, fitting: false, file: None };
        NativeModel { config, state: Arc::new(Mutex::new(state)) }
    }

    fn from_model(model: Model, file: PathBuf) -> Self {
        let config = model.config.clone();
        let state = State { model: Some(Arc::new(model)), initial: None, fitting: false, file: Some(file) };
        NativeModel { config, state: Arc::new(Mutex::new(state)) }
    }

    /// The config with every default filled in: the fitted or loaded model's (with the
    /// temperature a fit chose for `"auto"`), else the one this instance was made with.
    #[napi(getter)]
    pub fn config(&self) -> ResolvedConfig {
        match &lock(&self.state).model {
            Some(m) => ResolvedConfig::from(&m.config),
            None => ResolvedConfig::from(&self.config),
        }
    }

    /// A copy of the centers `[K * D]`, or null before the model has any.
    #[napi(getter)]
    pub fn centers(&self) -> Option<Float32Array> {
        lock(&self.state).model.as_ref().map(|m| Float32Array::new(m.centers.data.clone()))
    }

    /// Cluster mass, counts, exemplars, history, chunk names and the device of the last fit
    /// (null before there are centers).
    #[napi]
    pub fn summary(&self) -> Option<ModelSummary> {
        let state = lock(&self.state);
        state.model.as_ref().map(|m| ModelSummary::new(m))
    }

    fn model_or_error(&self, env: &Env) -> Result<Arc<Model>> {
        let state = lock(&self.state);
        if state.fitting {
            return Err(js_error(env, invalid_input("model", "is being fitted; wait for fitChunks to finish")));
        }
        state.model.clone().ok_or_else(|| js_error(env, invalid_input("model", "has no centers yet: fit it, load one, or pass initialCenters")))
    }

    /// Memberships of `activations` (`shape` `[B, S, D]` or `[T, D]`) on the calling thread.
    /// The typed arrays are read in place, without a copy.
    #[napi]
    pub fn transform(
        &self,
        env: Env,
        activations: Float32ArraySlice,
        shape: Option<Vec<f64>>,
        attention_mask: Option<Uint8ArraySlice>,
        dense: bool,
        level: Option<u32>,
    ) -> Result<TransformOutput> {
        let model = self.model_or_error(&env)?;
        run_transform(&model, &activations, shape.as_deref(), attention_mask.as_deref(), dense, level).map_err(|e| js_error(&env, e))
    }

    /// The same as `transform`, on the libuv thread pool. The arrays are copied here, on the JS
    /// thread, before the work starts: the caller may reuse, change or detach its buffers as soon
    /// as the call returns, without touching the result.
    #[napi(ts_return_type = "Promise<TransformOutput>")]
    pub fn transform_async(
        &self,
        env: Env,
        activations: Float32Array,
        shape: Option<Vec<f64>>,
        attention_mask: Option<Uint8Array>,
        dense: bool,
        level: Option<u32>,
    ) -> Result<AsyncTask<Work<TransformOutput>>> {
        let model = self.model_or_error(&env)?;
        let (activations, attention_mask) = (activations.to_vec(), attention_mask.map(|m| m.to_vec()));
        Ok(Work::new(move || run_transform(&model, &activations, shape.as_deref(), attention_mask.as_deref(), dense, level)))
    }

    /// Quality metrics of a batch of tokens, on the calling thread.
    #[napi]
    pub fn analyze(
        &self,
        env: Env,
        activations: Float32ArraySlice,
        shape: Option<Vec<f64>>,
        attention_mask: Option<Uint8ArraySlice>,
        token_ids: Option<Int32ArraySlice>,
        options: Option<AnalyzeParams>,
    ) -> Result<ClusterAnalysis> {
        let model = self.model_or_error(&env)?;
        let token_ids: Option<Vec<i64>> = token_ids.map(|ids| ids.iter().map(|&v| i64::from(v)).collect());
        let run = || -> soft_cluster_core::Result<ClusterAnalysis> {
            let (_, seq_len, d) = layout_of(shape.as_deref(), activations.len(), model.config.d_model)?;
            let tokens = Tokens { source: "activations", chunk_index: 0, first_row: 0, activations: ActivationsRef::F32(&activations), seq_len, d, mask: attention_mask.as_deref() };
            let backend = backend_for(&model.config)?;
            let analysis = analyze(backend.as_ref(), &model.config, &model.centers, &tokens, token_ids.as_deref(), analysis::options(options.as_ref()))?;
            Ok(analysis.into())
        };
        run().map_err(|e| js_error(&env, e))
    }

    /// Quality metrics over chunk files, streamed on the libuv thread pool.
    #[napi(ts_return_type = "Promise<ClusterAnalysis>")]
    pub fn analyze_chunks(
        &self,
        env: Env,
        chunk_paths: Vec<String>,
        options: Option<AnalyzeParams>,
        #[napi(ts_arg_type = "((progress: FitProgress) => void) | undefined | null")] on_progress: Option<ProgressCallback>,
    ) -> Result<AsyncTask<Work<ClusterAnalysis>>> {
        let model = self.model_or_error(&env)?;
        let chunks: Vec<PathBuf> = chunk_paths.into_iter().map(PathBuf::from).collect();
        let options = analysis::options(options.as_ref());
        Ok(Work::new(move || {
            let backend = backend_for(&model.config)?;
            analyze_chunks(&model, &chunks, backend.as_ref(), options, &mut progress_reporter(on_progress)).map(ClusterAnalysis::from)
        }))
    }

    /// Streams over the chunk files, fits on the device `choose_backend` picks, writes the outputs
    /// into `outputDir` (docs/algorithm.md "Fitting" and docs/formats.md "Memberships file") and
    /// keeps the fitted model. Runs on the libuv pool; `onProgress` is called after every chunk.
    /// Resolves with the history; `summary().device` says where it ran and why.
    #[napi(ts_return_type = "Promise<Array<HistoryEntry>>")]
    pub fn fit_chunks(
        &self,
        env: Env,
        chunk_paths: Vec<String>,
        output_dir: String,
        #[napi(ts_arg_type = "((progress: FitProgress) => void) | undefined | null")] on_progress: Option<ProgressCallback>,
        resume: Option<bool>,
        overwrite: Option<bool>,
    ) -> Result<AsyncTask<Work<Vec<HistoryEntry>>>> {
        let initial = {
            let mut state = lock(&self.state);
            if state.fitting {
                return Err(js_error(&env, invalid_input("fitChunks", "a fit is already running on this model; wait for it or use another instance")));
            }
            state.fitting = true;
            state.initial.clone()
        };
        let fitting = Fitting(self.state.clone());
        let config = self.config.clone();
        let chunks: Vec<PathBuf> = chunk_paths.into_iter().map(PathBuf::from).collect();
        let output_dir = PathBuf::from(output_dir);
        let (resume, overwrite) = (resume.unwrap_or(false), overwrite.unwrap_or(false));
        Ok(Work::new(move || {
            let world = soft_cluster_core::world::processes()?;
            // Ranks make their collective calls in one order: one fit at a time per process.
            let _one_fit = (world.size() > 1).then(|| lock(&MPI_FIT));
            let chosen = choose_backend(&config)?;
            let request = FitRequest { config: &config, initial_centers: initial, chunks: &chunks, output_dir: &output_dir, resume, overwrite, device: Some(&chosen.reason), ranks: world };
            let model = fit_chunks(request, chosen.backend.as_ref(), &mut progress_reporter(on_progress))?;
            let history = model.history.iter().map(HistoryEntry::from).collect();
            let mut state = lock(&fitting.0);
            state.model = Some(Arc::new(model));
            state.file = Some(output_dir.join("model.safetensors"));
            Ok(history)
        }))
    }

    /// Writes `<outputDir>/<chunk>.memberships.npz` for every chunk under this model's centers,
    /// on the libuv pool. Resolves with the number of token rows written.
    #[napi(ts_return_type = "Promise<number>")]
    pub fn transform_chunks(
        &self,
        env: Env,
        chunk_paths: Vec<String>,
        output_dir: String,
        #[napi(ts_arg_type = "((progress: FitProgress) => void) | undefined | null")] on_progress: Option<ProgressCallback>,
        overwrite: Option<bool>,
        level: Option<u32>,
    ) -> Result<AsyncTask<Work<f64>>> {
        let model = self.model_or_error(&env)?;
        let model_file = lock(&self.state).file.clone();
        let chunks: Vec<PathBuf> = chunk_paths.into_iter().map(PathBuf::from).collect();
        let output_dir = PathBuf::from(output_dir);
        Ok(Work::new(move || {
            let backend = backend_for(&model.config)?;
            let request = TransformRequest { chunks: &chunks, output_dir: &output_dir, model_file: model_file.as_deref(), overwrite: overwrite.unwrap_or(false), level: level.map(|l| l as usize) };
            transform_chunks(&model, request, backend.as_ref(), &mut progress_reporter(on_progress)).map(|rows| rows as f64)
        }))
    }

    /// The tree over the clusters (docs/algorithm.md "Hierarchy") and its dendrogram.
    #[napi]
    pub fn hierarchy(&self, env: Env) -> Result<Hierarchy> {
        let model = self.model_or_error(&env)?;
        let linkage = model.hierarchy().map_err(|e| js_error(&env, e))?;
        let tree = soft_cluster_core::hierarchy::dendrogram(&linkage, model.centers.k);
        Ok(Hierarchy {
            linkage: linkage.iter().map(|r| r.to_vec()).collect(),
            order: tree.order.iter().map(|&c| c as u32).collect(),
            icoord: tree.icoord.iter().map(|r| r.to_vec()).collect(),
            dcoord: tree.dcoord.iter().map(|r| r.to_vec()).collect(),
        })
    }

    /// A new model with `clusters` merged into one (docs/algorithm.md "Merge"); with chunks,
    /// `iterations` passes over them follow (decay 0: the model then describes those chunks).
    #[napi(ts_return_type = "Promise<NativeModel>")]
    pub fn merge(
        &self,
        env: Env,
        clusters: Vec<u32>,
        chunk_paths: Option<Vec<String>>,
        iterations: Option<u32>,
        #[napi(ts_arg_type = "((progress: FitProgress) => void) | undefined | null")] on_progress: Option<ProgressCallback>,
    ) -> Result<AsyncTask<Work<NativeModel>>> {
        let model = self.model_or_error(&env)?;
        let clusters: Vec<usize> = clusters.into_iter().map(|c| c as usize).collect();
        Ok(Work::new(move || {
            let chunks: Option<Vec<PathBuf>> = chunk_paths.map(|p| p.into_iter().map(PathBuf::from).collect());
            let chosen = choose_backend(&model.config)?;
            let passes = iterations.map_or(soft_cluster_core::update::DEFAULT_PASSES, |n| n as usize);
            let mut merged = soft_cluster_core::merge::merge_with_passes(&model, &clusters, chunks.as_deref().map(|c| (c, passes)), chosen.backend.as_ref(), &mut progress_reporter(on_progress))?;
            if chunks.is_some() {
                merged.device = Some(chosen.reason);
            }
            Ok(NativeModel::from_unsaved(merged.with_hierarchy()?))
        }))
    }

    /// A new model with `cluster` split into `parts` by its member tokens in the chunks, then
    /// `iterations` passes over them (docs/algorithm.md "Split").
    #[napi(ts_return_type = "Promise<NativeModel>")]
    pub fn split(
        &self,
        env: Env,
        cluster: u32,
        parts: u32,
        chunk_paths: Vec<String>,
        iterations: Option<u32>,
        #[napi(ts_arg_type = "((progress: FitProgress) => void) | undefined | null")] on_progress: Option<ProgressCallback>,
    ) -> Result<AsyncTask<Work<NativeModel>>> {
        let model = self.model_or_error(&env)?;
        let chunks: Vec<PathBuf> = chunk_paths.into_iter().map(PathBuf::from).collect();
        Ok(Work::new(move || {
            let chosen = choose_backend(&model.config)?;
            let request = soft_cluster_core::split::SplitRequest { model: &model, cluster: cluster as usize, parts: parts as usize, chunks: &chunks, iterations: iterations.map_or(soft_cluster_core::update::DEFAULT_PASSES, |n| n as usize) };
            let mut out = soft_cluster_core::split::split(request, chosen.backend.as_ref(), &mut progress_reporter(on_progress))?;
            out.device = Some(chosen.reason);
            Ok(NativeModel::from_unsaved(out))
        }))
    }

    /// Folds new chunks into this model (docs/algorithm.md "Update"): `iterations` passes whose
    /// sums are added to the stored ones scaled by `decay`, then the output pass, which writes the
    /// new chunks' memberships files and `model.safetensors` into `outputDir`. This model becomes
    /// the updated one; resolves with its whole history.
    #[napi(ts_return_type = "Promise<Array<HistoryEntry>>")]
    #[allow(clippy::too_many_arguments)]
    pub fn partial_fit(
        &self,
        env: Env,
        chunk_paths: Vec<String>,
        output_dir: String,
        iterations: Option<u32>,
        decay: Option<f64>,
        overwrite: Option<bool>,
        #[napi(ts_arg_type = "((progress: FitProgress) => void) | undefined | null")] on_progress: Option<ProgressCallback>,
    ) -> Result<AsyncTask<Work<Vec<HistoryEntry>>>> {
        let model = self.model_or_error(&env)?;
        {
            let mut state = lock(&self.state);
            state.fitting = true;
        }
        let fitting = Fitting(self.state.clone());
        let model_file = lock(&self.state).file.clone();
        let chunks: Vec<PathBuf> = chunk_paths.into_iter().map(PathBuf::from).collect();
        let output_dir = PathBuf::from(output_dir);
        Ok(Work::new(move || {
            let chosen = choose_backend(&model.config)?;
            let request = soft_cluster_core::update::UpdateRequest {
                model: &model,
                model_file: model_file.as_deref(),
                chunks: &chunks,
                output_dir: &output_dir,
                iterations: iterations.map_or(soft_cluster_core::update::DEFAULT_PASSES, |n| n as usize),
                decay: decay.unwrap_or(1.0),
                overwrite: overwrite.unwrap_or(false),
                device: Some(&chosen.reason),
            };
            let updated = soft_cluster_core::update::update(request, chosen.backend.as_ref(), &mut progress_reporter(on_progress))?;
            let history = updated.history.iter().map(HistoryEntry::from).collect();
            let mut state = lock(&fitting.0);
            state.model = Some(Arc::new(updated));
            state.file = Some(output_dir.join("model.safetensors"));
            Ok(history)
        }))
    }

    /// Writes the model file (docs/formats.md "Model file") atomically, on the libuv pool.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn save(&self, env: Env, path: String) -> Result<AsyncTask<Work<()>>> {
        let model = self.model_or_error(&env)?;
        let state = self.state.clone();
        Ok(Work::new(move || {
            let path = PathBuf::from(path);
            model.save(&path)?;
            lock(&state).file = Some(path);
            Ok(())
        }))
    }

    /// Reads a model file, on the libuv pool.
    #[napi(ts_return_type = "Promise<NativeModel>")]
    pub fn load(path: String) -> AsyncTask<Work<NativeModel>> {
        Work::new(move || {
            let path = PathBuf::from(path);
            Model::load(&path).map(|m| NativeModel::from_model(m, path))
        })
    }
}

fn run_transform(model: &Model, activations: &[f32], shape: Option<&[f64]>, mask: Option<&[u8]>, dense: bool, level: Option<u32>) -> soft_cluster_core::Result<TransformOutput> {
    let (_, seq_len, d) = layout_of(shape, activations.len(), model.config.d_model)?;
    let groups = level.map(|n| model.groups(n as usize).map(|g| (g, n as usize))).transpose()?;
    let tokens = Tokens { source: "activations", chunk_index: 0, first_row: 0, activations: ActivationsRef::F32(activations), seq_len, d, mask };
    let backend = backend_for(&model.config)?;
    let out = transform(backend.as_ref(), &model.config, &model.centers, &tokens, dense)?;
    Ok(match groups {
        Some((group_of, n)) => TransformOutput::new(out.grouped(&group_of, n), seq_len, n),
        None => TransformOutput::new(out, seq_len, model.centers.k),
    })
}
