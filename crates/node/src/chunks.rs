//! Files as JS reads them: input chunks, `.npy` arrays, memberships files and their names.

use crate::errors::{invalid_input, js_error};
use crate::tasks::Work;
use napi::bindgen_prelude::*;
use napi::Env;
use napi_derive::napi;
use soft_cluster_core::Chunk;
use std::path::{Path, PathBuf};

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
    pub token_ids: Option<Int32Array>,
}

/// Integers stored as int64 in files, as the `Int32Array` every result uses: token ids and
/// indices are far below 2^31; a value that is not is refused rather than wrapped.
fn int32s(values: Vec<i64>, what: &str) -> soft_cluster_core::Result<Int32Array> {
    let out: Vec<i32> = values
        .iter()
        .enumerate()
        .map(|(i, &v)| i32::try_from(v).map_err(|_| invalid_input(what, &format!("value {v} at {i} does not fit in an Int32Array"))))
        .collect::<soft_cluster_core::Result<_>>()?;
    Ok(Int32Array::new(out))
}

impl ChunkData {
    fn new(c: Chunk) -> soft_cluster_core::Result<Self> {
        let what = format!("{}: token_ids", c.source);
        Ok(ChunkData {
            activations: Float32Array::new(c.activations.to_f32()),
            shape: vec![c.batch as u32, c.seq_len as u32, c.d_model as u32],
            dtype: c.activations.dtype().to_string(),
            attention_mask: c.attention_mask.map(Uint8Array::new),
            token_ids: c.token_ids.map(|t| int32s(t, &what)).transpose()?,
        })
    }
}

/// Reads one chunk file (docs/formats.md "Input chunks") on the calling thread.
#[napi]
pub fn read_chunk(env: Env, path: String) -> Result<ChunkData> {
    soft_cluster_core::read_chunk(Path::new(&path)).and_then(ChunkData::new).map_err(|e| js_error(&env, e))
}

/// Reads one chunk file on the libuv thread pool.
#[napi(ts_return_type = "Promise<ChunkData>")]
pub fn read_chunk_async(path: String) -> AsyncTask<Work<ChunkData>> {
    Work::new(move || soft_cluster_core::read_chunk(Path::new(&path)).and_then(ChunkData::new))
}

/// `[B, S, D]` of a chunk, from its header alone (no data is read).
#[napi]
pub fn chunk_shape(env: Env, path: String) -> Result<Vec<u32>> {
    let (b, s, d) = soft_cluster_core::sources::chunk_shape(Path::new(&path)).map_err(|e| js_error(&env, e))?;
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
    let (shape, data) = soft_cluster_core::npz::read_npy_f32(Path::new(&path)).map_err(|e| js_error(&env, e))?;
    Ok(NpyArray { shape: shape.into_iter().map(|s| s as u32).collect(), data: Float32Array::new(data) })
}

/// A per-chunk memberships file (docs/formats.md "Memberships file") read back.
#[napi(object)]
pub struct MembershipsFile {
    /// `[nnz, 3]`: (batch, position, cluster).
    pub indices: Int32Array,
    pub values: Float32Array,
    pub total_sequences: Option<f64>,
    pub sequence_length: Option<f64>,
    /// The file's own metadata entry (a JSON string, docs/formats.md "Memberships file"), if present.
    pub metadata: Option<String>,
}

/// Reads a `.memberships.npz` written by `fitChunks` or `transformChunks`.
#[napi]
pub fn read_memberships(env: Env, path: String) -> Result<MembershipsFile> {
    let m = soft_cluster_core::memberships_file::read(Path::new(&path)).map_err(|e| js_error(&env, e))?;
    Ok(MembershipsFile {
        indices: int32s(m.indices, &format!("{path}: indices")).map_err(|e| js_error(&env, e))?,
        values: Float32Array::new(m.values),
        total_sequences: m.total_sequences.map(|v| v as f64),
        sequence_length: m.sequence_length.map(|v| v as f64),
        metadata: m.metadata,
    })
}

/// The memberships file a fit or transform writes into `outputDir` for the chunk at `chunkPath`:
/// `<outputDir>/<chunk file name without .npz>.memberships.npz`.
#[napi]
pub fn memberships_path_for(output_dir: String, chunk_path: String) -> String {
    let chunk = PathBuf::from(chunk_path);
    let name = chunk.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    soft_cluster_core::memberships_file::path_for(Path::new(&output_dir), &name).to_string_lossy().into_owned()
}

/// Sets, for the whole process, the most bytes one array of a chunk may decode to (a larger one
/// is refused before it is read); `null` restores the default, half the available memory
/// (docs/formats.md "Limits").
#[napi]
pub fn set_max_chunk_bytes(env: Env, bytes: Option<f64>) -> Result<()> {
    let limit = match bytes {
        None => None,
        Some(b) if b >= 1.0 && b.fract() == 0.0 && b <= 2f64.powi(63) => Some(b as u64),
        Some(b) => return Err(js_error(&env, crate::errors::invalid_input("maxChunkBytes", &format!("must be a whole number of bytes >= 1, got {b}")))),
    };
    soft_cluster_core::memory::set_max_chunk_bytes(limit);
    Ok(())
}

/// Extensions of the chunk files a folder is searched for (docs/formats.md "Input chunks").
#[napi]
pub fn chunk_extensions() -> Vec<String> {
    soft_cluster_core::sources::CHUNK_EXTENSIONS.iter().map(|e| e.to_string()).collect()
}

/// Sets, for the whole process, the name of the activations tensor (safetensors) or column
/// (Arrow) of chunks;
/// `null` restores the default (`activations`, or the file's only float tensor of rank 2 or 3).
#[napi]
pub fn set_activations_key(key: Option<String>) {
    soft_cluster_core::chunk::set_activations_key(key);
}
