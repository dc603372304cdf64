//! Chunks from safetensors files (docs/formats.md "Input chunks"), as PyTorch and
//! `safetensors.numpy` write them: `activations` `[B, S, D]` or `[T, D]` in bfloat16, float16,
//! float32 or float64 (another name: `chunk::set_activations_key`), optional `attention_mask` and
//! `token_ids`. The file is memory-mapped and its header checked by the `safetensors` crate
//! (offsets inside the file, sizes matching shapes) before any tensor is read.

use crate::chunk::{activations_key, Activations, Chunk};
use crate::error::{Error, Result};
use crate::memory::read_values_at;
use half::{bf16, f16};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use std::fs::File;
use std::path::Path;

/// The tensor read as activations when no other name is set.
pub const DEFAULT_KEY: &str = "activations";

/// The memory map of a safetensors file and its parsed header.
struct Mapped {
    map: memmap2::Mmap,
}

impl Mapped {
    fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is read-only; a file changed under it by another process can give
        // wrong numbers (as any reader would see), not unsafety in our code, since every read
        // goes through bounds-checked slices of the map.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        Ok(Mapped { map })
    }

    fn tensors(&self, path: &Path) -> Result<SafeTensors<'_>> {
        SafeTensors::deserialize(&self.map).map_err(|e| Error::bad_chunk(path, "(header)", format!("not a readable safetensors file: {e}")))
    }
}

const FLOATS: [Dtype; 4] = [Dtype::BF16, Dtype::F16, Dtype::F32, Dtype::F64];

/// The name of the activations tensor of `st`: the key set, else `activations`, else the only
/// float tensor of rank 2 or 3.
fn choose_key(st: &SafeTensors, path: &Path) -> Result<String> {
    let names = st.names();
    if let Some(key) = activations_key() {
        return if names.contains(&key.as_str()) {
            Ok(key)
        } else {
            Err(Error::bad_chunk(path, &key, format!("missing (the file holds {})", list(&names))))
        };
    }
    if names.contains(&DEFAULT_KEY) {
        return Ok(DEFAULT_KEY.to_string());
    }
    let mut floats: Vec<&str> = names
        .iter()
        .filter(|n| st.tensor(n).is_ok_and(|t| FLOATS.contains(&t.dtype()) && (2..=3).contains(&t.shape().len())))
        .copied()
        .collect();
    floats.sort(); // the header's order is not kept: messages list names sorted
    match floats[..] {
        [one] => Ok(one.to_string()),
        [] => Err(Error::bad_chunk(path, DEFAULT_KEY, format!("missing, and no other float tensor of rank 2 or 3 (the file holds {})", list(&names)))),
        _ => Err(Error::bad_chunk(path, DEFAULT_KEY, format!("missing, and several float tensors could be the activations ({}); choose one with --key NAME (activationsKey)", floats.join(", ")))),
    }
}

fn list(names: &[&str]) -> String {
    if names.is_empty() {
        return "no tensors".into();
    }
    let mut sorted = names.to_vec();
    sorted.sort();
    sorted.join(", ")
}

/// `(B, S, D)` from the header alone.
pub fn safetensors_chunk_shape(path: &Path) -> Result<(usize, usize, usize)> {
    let mapped = Mapped::open(path)?;
    let st = mapped.tensors(path)?;
    let key = choose_key(&st, path)?;
    let t = st.tensor(&key).map_err(|e| Error::bad_chunk(path, &key, e.to_string()))?;
    layout(path, &key, t.shape())
}

fn layout(path: &Path, key: &str, shape: &[usize]) -> Result<(usize, usize, usize)> {
    let (b, s, d) = match shape {
        [b, s, d] => (*b, *s, *d),
        [t, d] => (1, *t, *d),
        _ => return Err(Error::bad_chunk(path, key, format!("has rank {} (shape {shape:?}); expected [B, S, D] or [T, D]", shape.len()))),
    };
    if d == 0 {
        return Err(Error::bad_chunk(path, key, "has D = 0 (no features)"));
    }
    Ok((b, s, d))
}

/// Reads and checks one safetensors chunk.
pub fn read_safetensors_chunk(path: &Path) -> Result<Chunk> {
    let mapped = Mapped::open(path)?;
    let st = mapped.tensors(path)?;
    let key = choose_key(&st, path)?;
    let view = st.tensor(&key).map_err(|e| Error::bad_chunk(path, &key, e.to_string()))?;
    let (batch, seq_len, d_model) = layout(path, &key, view.shape())?;
    let rank3 = view.shape().len() == 3;
    crate::memory::check_array_bytes(path, &key, view.data().len() as u64)?;
    let activations = match view.dtype() {
        Dtype::BF16 => Activations::BF16(elements(&view, bf16::from_le_bytes)),
        Dtype::F16 => Activations::F16(elements(&view, f16::from_le_bytes)),
        Dtype::F32 => Activations::F32(elements(&view, f32::from_le_bytes)),
        Dtype::F64 => Activations::F64(elements(&view, f64::from_le_bytes)),
        other => return Err(Error::bad_chunk(path, &key, format!("has dtype {other:?}; expected BF16, F16, F32 or F64"))),
    };
    let (attention_mask, token_ids) = per_token_arrays(&st, path, &key, batch, seq_len, rank3)?;
    Chunk { source: path.display().to_string(), batch, first_row: 0, file_batch: batch, seq_len, d_model, activations, attention_mask, token_ids }.finished()
}

/// Reads a safetensors chunk in blocks of whole sequences of at most `block_bytes` of
/// activations (at least one sequence), so a file larger than memory is never held whole: the
/// header is checked through a memory map, the mask and ids are read whole (they are small), and
/// each block's activations are read from the file when the block is asked for.
pub fn safetensors_blocks(path: &Path, block_bytes: usize) -> Result<Box<dyn Iterator<Item = Result<Chunk>> + Send>> {
    let mapped = Mapped::open(path)?;
    let st = mapped.tensors(path)?;
    let key = choose_key(&st, path)?;
    let view = st.tensor(&key).map_err(|e| Error::bad_chunk(path, &key, e.to_string()))?;
    let (batch, seq_len, d_model) = layout(path, &key, view.shape())?;
    let dtype = view.dtype();
    let elem = match dtype {
        Dtype::BF16 | Dtype::F16 => 2,
        Dtype::F32 => 4,
        Dtype::F64 => 8,
        other => return Err(Error::bad_chunk(path, &key, format!("has dtype {other:?}; expected BF16, F16, F32 or F64"))),
    };
    // The whole chunk read once, without its activations, gives the checked mask and ids.
    let (attention_mask, token_ids) = per_token_arrays(&st, path, &key, batch, seq_len, view.shape().len() == 3)?;
    let (header_len, metadata) = SafeTensors::read_metadata(&mapped.map).map_err(|e| Error::bad_chunk(path, "(header)", format!("not a readable safetensors file: {e}")))?;
    let start = 8 + header_len + metadata.info(&key).expect("the tensor exists").data_offsets.0;
    drop(st);
    drop(mapped);
    if batch == 0 {
        let path = path.to_path_buf();
        return Ok(Box::new(std::iter::once_with(move || read_safetensors_chunk(&path))));
    }
    let row_bytes = seq_len * d_model * elem;
    let rows_per_block = (block_bytes / row_bytes.max(1)).max(1);
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let source = path.to_path_buf();
    Ok(Box::new((0..batch).step_by(rows_per_block).map(move |first_row| {
        let rows = rows_per_block.min(batch - first_row);
        let n = rows * seq_len * d_model;
        // Straight from the file into the typed array (safetensors is little-endian, as is every
        // platform we build for): one copy, no per-value decoding.
        let bad = |e: std::io::Error| Error::bad_chunk(&source, &key, format!("cannot read sequences {first_row}..{}: {e}", first_row + rows));
        let at = (start + first_row * row_bytes) as u64;
        let activations = match dtype {
            Dtype::BF16 => Activations::BF16(read_values_at(&file, at, n).map_err(bad)?),
            Dtype::F16 => Activations::F16(read_values_at(&file, at, n).map_err(bad)?),
            Dtype::F32 => Activations::F32(read_values_at(&file, at, n).map_err(bad)?),
            _ => Activations::F64(read_values_at(&file, at, n).map_err(bad)?),
        };
        let tokens = first_row * seq_len..(first_row + rows) * seq_len;
        Chunk {
            source: source.display().to_string(),
            batch: rows,
            first_row,
            file_batch: batch,
            seq_len,
            d_model,
            activations,
            attention_mask: attention_mask.as_ref().map(|m| m[tokens.clone()].to_vec()),
            token_ids: token_ids.as_ref().map(|ids| ids[tokens].to_vec()),
        }
        .finished()
    })))
}

/// The attention mask and token ids of a safetensors chunk, checked against `[B, S]`.
#[allow(clippy::type_complexity)]
fn per_token_arrays(st: &SafeTensors, path: &Path, key: &str, batch: usize, seq_len: usize, rank3: bool) -> Result<(Option<Vec<u8>>, Option<Vec<i64>>)> {
    let per_token = |name: &str| -> Result<Option<TensorView<'_>>> {
        let Ok(t) = st.tensor(name) else { return Ok(None) };
        let shape_ok = t.shape() == [batch, seq_len] || (!rank3 && t.shape() == [seq_len]);
        if !shape_ok {
            return Err(Error::bad_chunk(path, name, format!("has shape {:?}; expected [B, S] = [{batch}, {seq_len}] to match {key}", t.shape())));
        }
        Ok(Some(t))
    };
    let attention_mask = match per_token("attention_mask")? {
        None => None,
        Some(t) => Some(match t.dtype() {
            Dtype::BOOL | Dtype::U8 | Dtype::I8 => t.data().iter().map(|&b| u8::from(b != 0)).collect(),
            Dtype::I16 | Dtype::U16 => nonzero(t.data(), 2),
            Dtype::I32 | Dtype::U32 => nonzero(t.data(), 4),
            Dtype::I64 | Dtype::U64 => nonzero(t.data(), 8),
            other => return Err(Error::bad_chunk(path, "attention_mask", format!("has dtype {other:?}; expected BOOL or an integer type"))),
        }),
    };
    let token_ids = match per_token("token_ids")? {
        None => None,
        Some(t) => Some(match t.dtype() {
            Dtype::I32 => elements(&t, i32::from_le_bytes).into_iter().map(i64::from).collect(),
            Dtype::I64 => elements(&t, i64::from_le_bytes),
            Dtype::U16 => elements(&t, u16::from_le_bytes).into_iter().map(i64::from).collect(),
            Dtype::U32 => elements(&t, u32::from_le_bytes).into_iter().map(i64::from).collect(),
            other => return Err(Error::bad_chunk(path, "token_ids", format!("has dtype {other:?}; expected I32, I64, U16 or U32"))),
        }),
    };
    Ok((attention_mask, token_ids))
}

// safetensors data is little-endian: `read_values_at` reads it as is.
const _: () = assert!(cfg!(target_endian = "little"), "safetensors data is little-endian");

fn decode<T, const N: usize>(bytes: &[u8], from_le: fn([u8; N]) -> T) -> Vec<T> {
    bytes.chunks_exact(N).map(|c| from_le(c.try_into().expect("exact chunks"))).collect()
}

/// A tensor's little-endian elements (safetensors stores little-endian, possibly unaligned).
fn elements<T, const N: usize>(view: &TensorView, from_le: fn([u8; N]) -> T) -> Vec<T> {
    decode(view.data(), from_le)
}

fn nonzero(data: &[u8], width: usize) -> Vec<u8> {
    data.chunks_exact(width).map(|c| u8::from(c.iter().any(|&b| b != 0))).collect()
}
