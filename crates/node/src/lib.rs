//! Node.js binding of soft-cluster: typed arrays in and out, heavy work on the libuv pool,
//! core errors turned into JS errors with a `code`. No logic of its own: it calls the core.

use napi::bindgen_prelude::*;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::{Env, Task};
use napi_derive::napi;
use soft_cluster_core::analysis::{analyze, analyze_chunks, AnalyzeOptions};
use soft_cluster_core::fit::{fit_chunks, FitRequest};
use soft_cluster_core::kernels::backend_for;
use soft_cluster_core::transform::{layout_of, transform, transform_chunks};
use soft_cluster_core::{ActivationsRef, Centers, Chunk, ClusteringConfig, Model, PassOutput, Tokens};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// The one conversion of core errors: a JS `Error` whose `code` is the core's stable code.
fn js_error(env: &Env, err: soft_cluster_core::Error) -> Error {
    let build = || -> Result<Error> {
        let mut obj = env.create_error(Error::new(Status::GenericFailure, err.to_string()))?;
        obj.set_named_property("code", err.code())?;
        Ok(Error::from(obj.to_unknown()))
    };
    build().unwrap_or_else(|e| e)
}

/// A chunk as JS sees it: activations widened to float32, shape `[B, S, D]`.
#[napi(object)]
pub struct ChunkData {
    pub activations: Float32Array,
    pub shape: Vec<u32>,
    /// numpy name of the stored dtype (`float16`, `float32`, `float64`).
    pub dtype: String,
    /// `[B * S]`, 1 = real token; absent when the chunk has no mask.
    pub attention_mask: Option<Uint8Array>,
    /// `[B * S]`; absent when the chunk has no token ids.
    pub token_ids: Option<BigInt64Array>,
}

impl From<Chunk> for ChunkData {
    fn from(c: Chunk) -> Self {
        ChunkData {
            activations: Float32Array::new(c.activations.to_f32()),
            shape: vec![c.batch as u32, c.seq_len as u32, c.d_model as u32],
            dtype: c.activations.dtype().to_string(),
            attention_mask: c.attention_mask.map(Uint8Array::new),
            token_ids: c.token_ids.map(BigInt64Array::new),
        }
    }
}

/// Reads one chunk file (docs/formats.md "Input chunks") on the calling thread.
#[napi]
pub fn read_chunk(env: Env, path: String) -> Result<ChunkData> {
    soft_cluster_core::read_chunk(&PathBuf::from(path)).map(ChunkData::from).map_err(|e| js_error(&env, e))
}

pub struct ReadChunkTask {
    path: PathBuf,
}

impl Task for ReadChunkTask {
    type Output = std::result::Result<Chunk, soft_cluster_core::Error>;
    type JsValue = ChunkData;

    fn compute(&mut self) -> Result<Self::Output> {
        Ok(soft_cluster_core::read_chunk(&self.path))
    }

    fn resolve(&mut self, env: Env, output: Self::Output) -> Result<ChunkData> {
        output.map(ChunkData::from).map_err(|e| js_error(&env, e))
    }
}

/// Reads one chunk file on the libuv thread pool.
#[napi(ts_return_type = "Promise<ChunkData>")]
pub fn read_chunk_async(path: String) -> AsyncTask<ReadChunkTask> {
    AsyncTask::new(ReadChunkTask { path: PathBuf::from(path) })
}

/// `[B, S, D]` of a chunk, from its header alone (no data is read).
#[napi]
pub fn chunk_shape(env: Env, path: String) -> Result<Vec<u32>> {
    let (b, s, d) = soft_cluster_core::npz::chunk_shape(&PathBuf::from(path)).map_err(|e| js_error(&env, e))?;
    Ok(vec![b as u32, s as u32, d as u32])
}

/// A float `.npy` array (e.g. initial centers), as float32.
#[napi(object)]
pub struct NpyArray {
    pub shape: Vec<u32>,
    pub data: Float32Array,
}

/// Reads a float16/32/64 `.npy` file as float32.
#[napi]
pub fn read_npy(env: Env, path: String) -> Result<NpyArray> {
    let (shape, data) = soft_cluster_core::npz::read_npy_f32(&PathBuf::from(path)).map_err(|e| js_error(&env, e))?;
    Ok(NpyArray { shape: shape.into_iter().map(|s| s as u32).collect(), data: Float32Array::new(data) })
}

/// A per-chunk memberships file (docs/formats.md "Memberships file") read back.
#[napi(object)]
pub struct MembershipsFile {
    /// `[nnz, 3]`: (batch, position, cluster).
    pub indices: BigInt64Array,
    pub values: Float32Array,
    pub total_sequences: Option<f64>,
    pub sequence_length: Option<f64>,
    /// The metadata JSON string, if present.
    pub metadata: Option<String>,
}

/// Reads a `.memberships.npz` written by `fitChunks`.
#[napi]
pub fn read_memberships(env: Env, path: String) -> Result<MembershipsFile> {
    let m = soft_cluster_core::memberships_file::read(&PathBuf::from(path)).map_err(|e| js_error(&env, e))?;
    Ok(MembershipsFile {
        indices: BigInt64Array::new(m.indices),
        values: Float32Array::new(m.values),
        total_sequences: m.total_sequences.map(|v| v as f64),
        sequence_length: m.sequence_length.map(|v| v as f64),
        metadata: m.metadata,
    })
}

/// Validates a config (JSON of `ClusteringConfig`) and returns it with the defaults filled in.
#[napi]
pub fn resolve_config(env: Env, config_json: String) -> Result<String> {
    let value: serde_json::Value = serde_json::from_str(&config_json)
        .map_err(|e| Error::new(Status::InvalidArg, format!("config is not valid JSON: {e}")))?;
    let config = ClusteringConfig::from_json(&value).map_err(|e| js_error(&env, e))?;
    Ok(config.to_json().to_string())
}

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
    pub n_rows: u32,
    pub n_clusters: u32,
    /// Real tokens skipped because their vector is all zeros.
    pub skipped: u32,
}

fn transform_output(out: PassOutput, seq_len: usize, k: usize) -> TransformOutput {
    let indices = out.coo_indices(seq_len).into_iter().map(|v| v as i32).collect();
    let sparse = out.sparse.unwrap_or_default();
    TransformOutput {
        n_rows: out.rows.len() as u32,
        n_clusters: k as u32,
        skipped: out.rows.skipped as u32,
        memberships: out.dense.map(Float32Array::new),
        row_tokens: Uint32Array::new(out.rows.token),
        indices: Int32Array::new(indices),
        values: Float32Array::new(sparse.value),
    }
}

/// What a `NativeModel` holds between calls. Shared with its running tasks.
struct State {
    /// The fitted or loaded model; `None` until there are centers.
    model: Option<Arc<Model>>,
    /// Centers from `initialCenters`, the start of the next fit.
    initial: Option<Centers>,
    fitting: bool,
}

/// A clustering model: config, centers and, once fitted, statistics, exemplars and history.
#[napi]
pub struct NativeModel {
    config: ClusteringConfig,
    state: Arc<Mutex<State>>,
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    // A panic while locked can only come from a bug; the state itself stays consistent.
    state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn core_error(what: &str, problem: &str) -> soft_cluster_core::Error {
    soft_cluster_core::Error::InvalidInput { what: what.into(), problem: problem.into() }
}

#[napi]
impl NativeModel {
    /// `configJson` is validated (defaults filled in); `initialCenters`, if given, must hold
    /// `nClusters * dModel` values and is normalized row by row.
    #[napi(constructor)]
    pub fn new(env: Env, config_json: String, initial_centers: Option<Float32Array>) -> Result<Self> {
        let value: serde_json::Value = serde_json::from_str(&config_json)
            .map_err(|e| Error::new(Status::InvalidArg, format!("config is not valid JSON: {e}")))?;
        let config = ClusteringConfig::from_json(&value).map_err(|e| js_error(&env, e))?;
        let initial = initial_centers
            .map(|c| Centers::from_rows(config.n_clusters, config.d_model, c.to_vec()))
            .transpose()
            .map_err(|e| js_error(&env, e))?;
        let model = initial.clone().map(|c| Arc::new(Model::new(config.clone(), c)));
        Ok(NativeModel { config, state: Arc::new(Mutex::new(State { model, initial, fitting: false })) })
    }

    fn from_model(model: Model) -> Self {
        NativeModel { config: model.config.clone(), state: Arc::new(Mutex::new(State { model: Some(Arc::new(model)), initial: None, fitting: false })) }
    }

    /// The full config as JSON.
    #[napi(getter)]
    pub fn config_json(&self) -> String {
        self.config.to_json().to_string()
    }

    /// A copy of the centers `[K * D]`, or null before the model has any.
    #[napi(getter)]
    pub fn centers(&self) -> Option<Float32Array> {
        lock(&self.state).model.as_ref().map(|m| Float32Array::new(m.centers.data.clone()))
    }

    /// Cluster mass, counts, exemplars, history and chunk names as JSON (null before any centers).
    #[napi]
    pub fn summary_json(&self) -> Option<String> {
        lock(&self.state).model.as_ref().map(|m| {
            serde_json::json!({
                "clusterMass": m.cluster_mass,
                "clusterCount": m.cluster_count,
                "exemplars": m.exemplars,
                "history": m.history,
                "chunks": m.chunks,
            })
            .to_string()
        })
    }

    fn model_or_error(&self, env: &Env) -> Result<Arc<Model>> {
        let state = lock(&self.state);
        if state.fitting {
            return Err(js_error(env, core_error("model", "is being fitted; wait for fitChunks to finish")));
        }
        state.model.clone().ok_or_else(|| js_error(env, core_error("model", "has no centers yet: fit it, load one, or pass initialCenters")))
    }

    /// Memberships of `activations` (`shape` `[B, S, D]` or `[T, D]`) on the calling thread.
    /// The typed arrays are read in place, without a copy.
    #[napi]
    pub fn transform(
        &self,
        env: Env,
        activations: Float32ArraySlice,
        shape: Vec<f64>,
        attention_mask: Option<Uint8ArraySlice>,
        dense: bool,
    ) -> Result<TransformOutput> {
        let model = self.model_or_error(&env)?;
        run_transform(&model, &activations, &shape, attention_mask.as_deref(), dense).map_err(|e| js_error(&env, e))
    }

    /// The same as `transform`, on the libuv thread pool (the arrays are kept alive, not copied).
    #[napi(ts_return_type = "Promise<TransformOutput>")]
    pub fn transform_async(
        &self,
        env: Env,
        activations: Float32Array,
        shape: Vec<f64>,
        attention_mask: Option<Uint8Array>,
        dense: bool,
    ) -> Result<AsyncTask<TransformTask>> {
        let model = self.model_or_error(&env)?;
        Ok(AsyncTask::new(TransformTask { model, activations, shape, attention_mask, dense }))
    }

    /// Quality metrics of a batch of tokens (the core's `Analysis` as JSON).
    #[napi]
    pub fn analyze_json(
        &self,
        env: Env,
        activations: Float32ArraySlice,
        shape: Vec<f64>,
        attention_mask: Option<Uint8ArraySlice>,
        token_ids: Option<BigInt64ArraySlice>,
        options: Option<AnalyzeParams>,
    ) -> Result<String> {
        let model = self.model_or_error(&env)?;
        let run = || -> soft_cluster_core::Result<String> {
            let (_, seq_len, d) = layout_of(&shape, activations.len(), model.config.d_model)?;
            let tokens = Tokens { source: "activations", chunk_index: 0, activations: ActivationsRef::F32(&activations), seq_len, d, mask: attention_mask.as_deref() };
            let backend = backend_for(&model.config)?;
            let analysis = analyze(backend.as_ref(), &model.config, &model.centers, &tokens, token_ids.as_deref(), analyze_options(options.as_ref()))?;
            Ok(serde_json::to_string(&analysis).expect("analysis serializes"))
        };
        run().map_err(|e| js_error(&env, e))
    }

    /// Quality metrics over chunk files, streamed off the JS thread; resolves with the JSON.
    #[napi(ts_return_type = "Promise<string>")]
    pub fn analyze_chunks(
        &self,
        env: Env,
        chunk_paths: Vec<String>,
        options: Option<AnalyzeParams>,
        #[napi(ts_arg_type = "((progress: FitProgress) => void) | undefined | null")] on_progress: Option<ProgressCallback>,
    ) -> Result<AsyncTask<AnalyzeChunksTask>> {
        let model = self.model_or_error(&env)?;
        Ok(AsyncTask::new(AnalyzeChunksTask {
            model,
            chunks: chunk_paths.into_iter().map(PathBuf::from).collect(),
            options: analyze_options(options.as_ref()),
            on_progress,
        }))
    }

    /// Streams over the chunk files, fits, writes the outputs into `outputDir` (docs/algorithm.md "Fitting" and docs/formats.md "Memberships file") and
    /// keeps the fitted model. Runs on the libuv pool; `onProgress` is called after every chunk.
    #[napi(ts_return_type = "Promise<string>")]
    pub fn fit_chunks(
        &self,
        env: Env,
        chunk_paths: Vec<String>,
        output_dir: String,
        #[napi(ts_arg_type = "((progress: FitProgress) => void) | undefined | null")] on_progress: Option<ProgressCallback>,
        resume: Option<bool>,
    ) -> Result<AsyncTask<FitTask>> {
        let initial = {
            let mut state = lock(&self.state);
            if state.fitting {
                return Err(js_error(&env, core_error("fitChunks", "a fit is already running on this model; wait for it or use another instance")));
            }
            state.fitting = true;
            state.initial.clone()
        };
        Ok(AsyncTask::new(FitTask {
            config: self.config.clone(),
            initial,
            chunks: chunk_paths.into_iter().map(PathBuf::from).collect(),
            output_dir: PathBuf::from(output_dir),
            on_progress,
            resume: resume.unwrap_or(false),
            state: self.state.clone(),
        }))
    }

    /// Writes `<outputDir>/<chunk>.memberships.npz` for every chunk under this model's centers,
    /// off the JS thread. Resolves with the number of token rows written.
    #[napi(ts_return_type = "Promise<number>")]
    pub fn transform_chunks(
        &self,
        env: Env,
        chunk_paths: Vec<String>,
        output_dir: String,
        #[napi(ts_arg_type = "((progress: FitProgress) => void) | undefined | null")] on_progress: Option<ProgressCallback>,
    ) -> Result<AsyncTask<TransformChunksTask>> {
        let model = self.model_or_error(&env)?;
        Ok(AsyncTask::new(TransformChunksTask {
            model,
            chunks: chunk_paths.into_iter().map(PathBuf::from).collect(),
            output_dir: PathBuf::from(output_dir),
            on_progress,
        }))
    }

    /// Writes the model file (docs/formats.md "Model file") atomically, off the JS thread.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn save(&self, env: Env, path: String) -> Result<AsyncTask<SaveTask>> {
        let model = self.model_or_error(&env)?;
        Ok(AsyncTask::new(SaveTask { model, path: PathBuf::from(path) }))
    }

    /// Reads a model file, off the JS thread.
    #[napi(ts_return_type = "Promise<NativeModel>")]
    pub fn load(path: String) -> AsyncTask<LoadTask> {
        AsyncTask::new(LoadTask { path: PathBuf::from(path) })
    }
}

fn run_transform(model: &Model, activations: &[f32], shape: &[f64], mask: Option<&[u8]>, dense: bool) -> soft_cluster_core::Result<TransformOutput> {
    let (_, seq_len, d) = layout_of(shape, activations.len(), model.config.d_model)?;
    let tokens = Tokens { source: "activations", chunk_index: 0, activations: ActivationsRef::F32(activations), seq_len, d, mask };
    let backend = backend_for(&model.config)?;
    let out = transform(backend.as_ref(), &model.config, &model.centers, &tokens, dense)?;
    Ok(transform_output(out, seq_len, model.centers.k))
}

pub struct TransformTask {
    model: Arc<Model>,
    activations: Float32Array,
    shape: Vec<f64>,
    attention_mask: Option<Uint8Array>,
    dense: bool,
}

impl Task for TransformTask {
    type Output = soft_cluster_core::Result<TransformOutput>;
    type JsValue = TransformOutput;

    fn compute(&mut self) -> Result<Self::Output> {
        Ok(run_transform(&self.model, &self.activations, &self.shape, self.attention_mask.as_deref(), self.dense))
    }

    fn resolve(&mut self, env: Env, output: Self::Output) -> Result<TransformOutput> {
        output.map_err(|e| js_error(&env, e))
    }
}

/// Reported after every chunk of a fit.
#[napi(object)]
pub struct FitProgress {
    /// `init` (sampling for k-means++), `iterate` or `output`.
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

pub struct FitTask {
    config: ClusteringConfig,
    initial: Option<Centers>,
    chunks: Vec<PathBuf>,
    output_dir: PathBuf,
    on_progress: Option<ProgressCallback>,
    resume: bool,
    state: Arc<Mutex<State>>,
}

impl Task for FitTask {
    type Output = soft_cluster_core::Result<Model>;
    type JsValue = String;

    fn compute(&mut self) -> Result<Self::Output> {
        let request = FitRequest { config: &self.config, initial_centers: self.initial.clone(), chunks: &self.chunks, output_dir: &self.output_dir, resume: self.resume };
        let mut report = progress_reporter(self.on_progress.as_ref());
        Ok(backend_for(&self.config).and_then(|backend| fit_chunks(request, backend.as_ref(), &mut report)))
    }

    /// Resolves with the history as JSON; the fitted model replaces the instance's.
    fn resolve(&mut self, env: Env, output: Self::Output) -> Result<String> {
        let mut state = lock(&self.state);
        state.fitting = false;
        let model = output.map_err(|e| js_error(&env, e))?;
        let history = serde_json::to_string(&model.history).expect("history serializes");
        state.model = Some(Arc::new(model));
        Ok(history)
    }

    fn reject(&mut self, _env: Env, err: Error) -> Result<Self::JsValue> {
        lock(&self.state).fitting = false;
        Err(err)
    }
}

/// Forwards core progress reports to a JS callback, if there is one.
fn progress_reporter(callback: Option<&ProgressCallback>) -> impl FnMut(&soft_cluster_core::stream::Progress) + '_ {
    move |p| {
        if let Some(f) = callback {
            let phase = serde_json::to_value(p.phase).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
            f.call(
                FitProgress {
                    phase,
                    iteration: p.iteration as u32,
                    n_iterations: p.n_iterations as u32,
                    chunk: p.chunk as u32,
                    n_chunks: p.n_chunks as u32,
                    tokens_done: p.tokens_done as f64,
                    tokens_per_s: p.tokens_per_s,
                },
                ThreadsafeFunctionCallMode::NonBlocking,
            );
        }
    }
}

pub struct TransformChunksTask {
    model: Arc<Model>,
    chunks: Vec<PathBuf>,
    output_dir: PathBuf,
    on_progress: Option<ProgressCallback>,
}

impl Task for TransformChunksTask {
    type Output = soft_cluster_core::Result<u64>;
    type JsValue = f64;

    fn compute(&mut self) -> Result<Self::Output> {
        let mut report = progress_reporter(self.on_progress.as_ref());
        Ok(backend_for(&self.model.config).and_then(|backend| transform_chunks(&self.model, &self.chunks, &self.output_dir, backend.as_ref(), &mut report)))
    }

    fn resolve(&mut self, env: Env, output: Self::Output) -> Result<f64> {
        output.map(|rows| rows as f64).map_err(|e| js_error(&env, e))
    }
}

/// Options of the metrics; absent fields take the core's defaults.
#[napi(object)]
pub struct AnalyzeParams {
    /// Token ids listed per cluster (10).
    pub top_tokens: Option<u32>,
    /// Bins of each cluster's membership histogram (10).
    pub histogram_bins: Option<u32>,
    /// Most tokens in the silhouette's sample (2000).
    pub silhouette_sample: Option<u32>,
    /// Seed of the silhouette's sample (0).
    pub seed: Option<u32>,
}

fn analyze_options(params: Option<&AnalyzeParams>) -> AnalyzeOptions {
    let d = AnalyzeOptions::default();
    let Some(p) = params else { return d };
    AnalyzeOptions {
        top_tokens: p.top_tokens.map_or(d.top_tokens, |v| v as usize),
        histogram_bins: p.histogram_bins.map_or(d.histogram_bins, |v| v as usize),
        silhouette_sample: p.silhouette_sample.map_or(d.silhouette_sample, |v| v as usize),
        seed: p.seed.map_or(d.seed, u64::from),
    }
}

pub struct AnalyzeChunksTask {
    model: Arc<Model>,
    chunks: Vec<PathBuf>,
    options: AnalyzeOptions,
    on_progress: Option<ProgressCallback>,
}

impl Task for AnalyzeChunksTask {
    type Output = soft_cluster_core::Result<String>;
    type JsValue = String;

    fn compute(&mut self) -> Result<Self::Output> {
        let mut report = progress_reporter(self.on_progress.as_ref());
        Ok(backend_for(&self.model.config)
            .and_then(|backend| analyze_chunks(&self.model, &self.chunks, backend.as_ref(), self.options, &mut report))
            .map(|analysis| serde_json::to_string(&analysis).expect("analysis serializes")))
    }

    fn resolve(&mut self, env: Env, output: Self::Output) -> Result<String> {
        output.map_err(|e| js_error(&env, e))
    }
}

pub struct SaveTask {
    model: Arc<Model>,
    path: PathBuf,
}

impl Task for SaveTask {
    type Output = soft_cluster_core::Result<()>;
    type JsValue = ();

    fn compute(&mut self) -> Result<Self::Output> {
        Ok(self.model.save(&self.path))
    }

    fn resolve(&mut self, env: Env, output: Self::Output) -> Result<()> {
        output.map_err(|e| js_error(&env, e))
    }
}

pub struct LoadTask {
    path: PathBuf,
}

impl Task for LoadTask {
    type Output = soft_cluster_core::Result<Model>;
    type JsValue = NativeModel;

    fn compute(&mut self) -> Result<Self::Output> {
        Ok(Model::load(&self.path))
    }

    fn resolve(&mut self, env: Env, output: Self::Output) -> Result<NativeModel> {
        output.map(NativeModel::from_model).map_err(|e| js_error(&env, e))
    }
}
