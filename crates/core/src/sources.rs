//! Which reader a chunk file needs (docs/formats.md "Input chunks"): `.npz` (`npz`),
//! `.safetensors` (`safetensors_chunk`), `.npy` (`npz::read_npy_chunk`), `.arrow`
//! (`arrow_chunk`: Hugging Face `datasets` shards), by extension, or by the
//! file's first bytes when the extension says nothing. Pickled files are refused, never loaded.

use crate::arrow_chunk::{arrow_blocks, arrow_chunk_shape, read_arrow_chunk};
use crate::chunk::Chunk;
use crate::error::{Error, Result};
use crate::npz::{npy_blocks, npy_chunk_shape, npz_chunk_shape, read_npy_chunk, read_npz_chunk};
use crate::safetensors_chunk::{read_safetensors_chunk, safetensors_blocks, safetensors_chunk_shape};
use std::io::Read;
use std::path::Path;

/// The formats a chunk may be stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Npz,
    Safetensors,
    Npy,
    Arrow,
}

/// Extensions of chunk files (what a folder of chunks is searched for).
pub const CHUNK_EXTENSIONS: &[&str] = &["npz", "safetensors", "npy", "arrow"];

/// Extensions of pickled files, refused with how to convert them.
const PICKLED: &[&str] = &["pt", "pth", "bin", "ckpt", "pkl", "pickle"];

pub fn format_of(path: &Path) -> Result<Format> {
    let ext = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    match ext.as_str() {
        "npz" => return Ok(Format::Npz),
        "safetensors" => return Ok(Format::Safetensors),
        "npy" => return Ok(Format::Npy),
        "arrow" => return Ok(Format::Arrow),
        e if PICKLED.contains(&e) => {
            return Err(Error::bad_chunk(
                path,
                "(file)",
                "is a pickled PyTorch or Python file, which soft-cluster never loads (unpickling can run code); convert it with `from safetensors.torch import save_file; save_file({'activations': t.contiguous()}, 'chunk.safetensors')`",
            ))
        }
        _ => {}
    }
    let mut head = [0u8; 9];
    let n = std::fs::File::open(path).and_then(|mut f| f.read(&mut head)).map_err(|e| Error::io(path, e))?;
    let head = &head[..n];
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        Ok(Format::Npz)
    } else if head.starts_with(b"\x93NUMPY") {
        Ok(Format::Npy)
    } else if head.starts_with(b"ARROW1") || head.starts_with(b"\xff\xff\xff\xff") {
        Ok(Format::Arrow)
    } else if n == 9 && head[8] == b'{' {
        Ok(Format::Safetensors)
    } else {
        Err(Error::bad_chunk(path, "(file)", "is not a chunk file: neither .npz, .safetensors, .npy nor .arrow (by extension or content)"))
    }
}

/// Reads and checks one chunk file, whatever its format.
pub fn read_chunk(path: &Path) -> Result<Chunk> {
    match format_of(path)? {
        Format::Npz => read_npz_chunk(path),
        Format::Safetensors => read_safetensors_chunk(path),
        Format::Npy => read_npy_chunk(path),
        Format::Arrow => read_arrow_chunk(path),
    }
}

/// Bytes of activations in one block of a large chunk file, unless the per-array limit
/// (`memory::max_chunk_bytes`) is lower.
pub const BLOCK_BYTES: usize = 256 << 20;

/// The chunk file in blocks of whole sequences, in order, of at most `block_bytes` of activations
/// (at least one sequence), so a file larger than memory is never read whole: a safetensors file,
/// an Arrow shard, or a `[B, S, D]` `.npy` in this machine's byte order and C order; an `.npz`
/// (compressed members cannot be entered midway) and any other `.npy` as one block. Each block is
/// a `Chunk` whose `first_row` and `file_batch` place it in its file.
pub fn blocks(path: &Path, block_bytes: usize) -> Result<Box<dyn Iterator<Item = Result<Chunk>> + Send>> {
    match format_of(path)? {
        Format::Safetensors => safetensors_blocks(path, block_bytes),
        Format::Npy => npy_blocks(path, block_bytes),
        Format::Arrow => arrow_blocks(path, block_bytes),
        Format::Npz => {
            let path = path.to_path_buf();
            Ok(Box::new(std::iter::once_with(move || read_chunk(&path))))
        }
    }
}

/// `(B, S, D)` of a chunk from its header alone, without reading the data.
pub fn chunk_shape(path: &Path) -> Result<(usize, usize, usize)> {
    let shape = match format_of(path)? {
        Format::Npz => npz_chunk_shape(path),
        Format::Safetensors => safetensors_chunk_shape(path),
        Format::Npy => npy_chunk_shape(path),
        Format::Arrow => arrow_chunk_shape(path),
    }?;
    if let Some(&big) = [shape.0, shape.1, shape.2].iter().find(|&&n| n > u32::MAX as usize) {
        return Err(Error::bad_chunk(path, "activations", format!("declares a dimension of {big}, more than 2^32 - 1")));
    }
    Ok(shape)
}
