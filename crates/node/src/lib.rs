//! Node.js binding of soft-cluster: typed arrays in and out, heavy work on the libuv pool,
//! core errors turned into JS errors with a `code`. No logic of its own: it calls the core.

use napi::bindgen_prelude::*;
use napi::{Env, Task};
use napi_derive::napi;
use soft_cluster_core::kernels::cpu::CpuBackend;
use soft_cluster_core::transform::{layout_of, transform};
use soft_cluster_core::{ActivationsRef, Centers, Chunk, ClusteringConfig, PassOutput, Tokens};
use std::path::PathBuf;

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

/// Reads one chunk file (SPEC 1) on the calling thread.
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

/// Validates a config (JSON of `ClusteringConfig`) and returns it with the defaults filled in.
#[napi]
pub fn resolve_config(env: Env, config_json: String) -> Result<String> {
    let value: serde_json::Value = serde_json::from_str(&config_json)
        .map_err(|e| Error::new(Status::InvalidArg, format!("config is not valid JSON: {e}")))?;
    let config = ClusteringConfig::from_json(&value).map_err(|e| js_error(&env, e))?;
    Ok(config.to_json().to_string())
}

/// Memberships of a batch of tokens (SPEC 2), in dense and sparse form.
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

/// Centers plus config: what `transform` needs. Fitting is added on top of this.
#[napi]
pub struct NativeModel {
    config: ClusteringConfig,
    centers: Option<Centers>,
}

#[napi]
impl NativeModel {
    /// `configJson` is validated (defaults filled in); `initialCenters`, if given, must hold
    /// `nClusters * dModel` values and is normalized row by row.
    #[napi(constructor)]
    pub fn new(env: Env, config_json: String, initial_centers: Option<Float32Array>) -> Result<Self> {
        let config: ClusteringConfig = serde_json::from_str(&resolve_config(env, config_json)?)
            .map_err(|e| Error::new(Status::InvalidArg, e.to_string()))?;
        let centers = initial_centers
            .map(|c| Centers::from_rows(config.n_clusters, config.d_model, c.to_vec()))
            .transpose()
            .map_err(|e| js_error(&env, e))?;
        Ok(NativeModel { config, centers })
    }

    /// The full config as JSON.
    #[napi(getter)]
    pub fn config_json(&self) -> String {
        self.config.to_json().to_string()
    }

    /// A copy of the centers `[K * D]`, or null before the model has any.
    #[napi(getter)]
    pub fn centers(&self) -> Option<Float32Array> {
        self.centers.as_ref().map(|c| Float32Array::new(c.data.clone()))
    }

    fn centers_or_error(&self, env: &Env) -> Result<&Centers> {
        self.centers.as_ref().ok_or_else(|| {
            js_error(env, soft_cluster_core::Error::InvalidInput {
                what: "model".into(),
                problem: "has no centers yet: fit it, load one, or pass initialCenters".into(),
            })
        })
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
        let centers = self.centers_or_error(&env)?;
        run_transform(&self.config, centers, &activations, &shape, attention_mask.as_deref(), dense).map_err(|e| js_error(&env, e))
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
        let centers = self.centers_or_error(&env)?.clone();
        Ok(AsyncTask::new(TransformTask { config: self.config.clone(), centers, activations, shape, attention_mask, dense }))
    }
}

fn run_transform(
    config: &ClusteringConfig,
    centers: &Centers,
    activations: &[f32],
    shape: &[f64],
    mask: Option<&[u8]>,
    dense: bool,
) -> soft_cluster_core::Result<TransformOutput> {
    let (_, seq_len, d) = layout_of(shape, activations.len(), config.d_model)?;
    let tokens = Tokens { source: "activations", chunk_index: 0, activations: ActivationsRef::F32(activations), seq_len, d, mask };
    let out = transform(&CpuBackend::default(), config, centers, &tokens, dense)?;
    Ok(transform_output(out, seq_len, centers.k))
}

pub struct TransformTask {
    config: ClusteringConfig,
    centers: Centers,
    activations: Float32Array,
    shape: Vec<f64>,
    attention_mask: Option<Uint8Array>,
    dense: bool,
}

impl Task for TransformTask {
    type Output = soft_cluster_core::Result<TransformOutput>;
    type JsValue = TransformOutput;

    fn compute(&mut self) -> Result<Self::Output> {
        Ok(run_transform(&self.config, &self.centers, &self.activations, &self.shape, self.attention_mask.as_deref(), self.dense))
    }

    fn resolve(&mut self, env: Env, output: Self::Output) -> Result<TransformOutput> {
        output.map_err(|e| js_error(&env, e))
    }
}
