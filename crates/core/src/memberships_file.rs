//! The per-chunk memberships file (docs/formats.md "Memberships file"): its name, its metadata,
//! writing it (deflated, atomically) and reading it back.

use crate::error::{Error, Result};
use crate::kernels::PassOutput;
use crate::chunk::Chunk;
use crate::npz::{read_member, Elements, NpyArray};
use crate::output::write_atomically;
use crate::sources::CHUNK_EXTENSIONS;
use ndarray::{arr0, Array1, Array2};
use ndarray_npy::npy::header::Header;
use ndarray_npy::WriteNpyExt;
use py_literal::Value as PyValue;
use std::fs::File;
use std::io::{BufReader, Read, Seek, Write};
use std::path::{Path, PathBuf};

/// Version written in each file's metadata.
pub const FORMAT_VERSION: u32 = 1;

/// `<chunk file name without its extension>.memberships.npz` (`.npz`, `.safetensors`, `.npy`, `.arrow`;
/// any other name whole): the one place that names it.
pub fn file_name_for(chunk_name: &str) -> String {
    let stem = CHUNK_EXTENSIONS.iter().find_map(|ext| chunk_name.strip_suffix(&format!(".{ext}"))).unwrap_or(chunk_name);
    format!("{stem}.memberships.npz")
}

/// `<output_dir>/file_name_for(chunk_name)`.
pub fn path_for(output_dir: &Path, chunk_name: &str) -> PathBuf {
    output_dir.join(file_name_for(chunk_name))
}

/// The memberships of one chunk file, gathered over its blocks (a large file is read in several,
/// `sources::blocks`) and written once the last block is in.
#[derive(Default)]
pub struct FileMemberships {
    indices: Vec<i64>,
    values: Vec<f32>,
    n_tokens: usize,
    skipped: u64,
}

impl FileMemberships {
    /// Adds a block's sparse output; returns whether it was the file's last block.
    pub fn add(&mut self, chunk: &Chunk, out: &PassOutput) -> bool {
        let first = self.indices.len();
        self.indices.extend(out.coo_indices(chunk.seq_len));
        // (batch, position, cluster) triplets: batches count from the file's start.
        self.indices[first..].iter_mut().step_by(3).for_each(|b| *b += chunk.first_row as i64);
        self.values.extend_from_slice(out.sparse.as_ref().map_or(&[][..], |s| &s.value));
        self.n_tokens += out.rows.len();
        self.skipped += out.rows.skipped;
        chunk.first_row + chunk.batch >= chunk.file_batch
    }

    /// Writes the memberships file of the chunk file named `name` (`chunk` is any of its blocks)
    /// to `path`, and starts over.
    pub fn write(&mut self, path: &Path, name: &str, chunk: &Chunk, n_clusters: usize) -> Result<()> {
        let done = std::mem::take(self);
        let metadata = serde_json::json!({
            "total_sequences": chunk.file_batch,
            "sequence_length": chunk.seq_len,
            "n_clusters": n_clusters,
            "source": name,
            "rows": [0, chunk.file_batch],
            "format_version": FORMAT_VERSION,
            "n_tokens": done.n_tokens,
            "skipped": done.skipped,
        });
        write(path, done.indices, done.values, chunk.file_batch, chunk.seq_len, &metadata)
    }
}

/// Bytes of a 0-d numpy unicode string (`<U{n}`, UTF-32LE) as a `.npy` file.
fn npy_unicode_scalar(text: &str) -> Vec<u8> {
    let chars: Vec<char> = text.chars().collect();
    let mut header = format!("{{'descr': '<U{}', 'fortran_order': False, 'shape': (), }}", chars.len().max(1));
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    out.extend(chars.iter().flat_map(|&c| (c as u32).to_le_bytes()));
    if chars.is_empty() {
        out.extend([0u8; 4]);
    }
    out
}

fn npy<A: WriteNpyExt>(array: &A) -> Vec<u8> {
    let mut bytes = Vec::new();
    array.write_npy(&mut bytes).expect("writing to memory cannot fail");
    bytes
}

/// The memberships file: `indices` int64 `[nnz, 3]`, `values` float32,
/// `total_sequences`, `sequence_length` and a JSON `metadata` string. Deflated, written atomically.
pub fn write(path: &Path, indices: Vec<i64>, values: Vec<f32>, batch: usize, seq_len: usize, metadata: &serde_json::Value) -> Result<()> {
    let nnz = values.len();
    let indices = Array2::from_shape_vec((nnz, 3), indices).expect("three indices per value");
    let members: Vec<(&str, Vec<u8>)> = vec![
        ("indices.npy", npy(&indices)),
        ("values.npy", npy(&Array1::from_vec(values))),
        ("total_sequences.npy", npy(&arr0(batch as i64))),
        ("sequence_length.npy", npy(&arr0(seq_len as i64))),
        ("metadata.npy", npy_unicode_scalar(&metadata.to_string())),
    ];
    let mut buffer = std::io::Cursor::new(Vec::new());
    {
        let mut zip = zip::ZipWriter::new(&mut buffer);
        for (name, bytes) in members {
            let options = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Deflated)
                .compression_level(Some(1)) // fast: the files are written on the hot path
                .large_file(bytes.len() as u64 >= u64::from(u32::MAX));
            zip.start_file(name, options).map_err(|e| Error::io(path, std::io::Error::other(e)))?;
            zip.write_all(&bytes).map_err(|e| Error::io(path, e))?;
        }
        zip.finish().map_err(|e| Error::io(path, std::io::Error::other(e)))?;
    }
    write_atomically(path, &buffer.into_inner())
}

/// A memberships file read back.
#[derive(Debug, Clone, PartialEq)]
pub struct MembershipsFile {
    /// `[nnz, 3]` flattened: (batch, position, cluster).
    pub indices: Vec<i64>,
    pub values: Vec<f32>,
    pub total_sequences: Option<i64>,
    pub sequence_length: Option<i64>,
    /// The `metadata` JSON string, if present.
    pub metadata: Option<String>,
}

/// Reads a `.memberships.npz` written by a fit (or any `.npz` with `indices` and `values`).
pub fn read(path: &Path) -> Result<MembershipsFile> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut zip = zip::ZipArchive::new(BufReader::new(file))
        .map_err(|e| Error::bad_chunk(path, "(archive)", format!("not a readable .npz (zip) file: {e}")))?;
    let required = |zip: &mut zip::ZipArchive<BufReader<File>>, name: &str| {
        read_member(zip, path, name)?.ok_or_else(|| Error::bad_chunk(path, name, "missing"))
    };
    let indices = match required(&mut zip, "indices")? {
        NpyArray { shape, elements: Elements::I64(v), .. } if shape.len() == 2 && shape[1] == 3 => v,
        a => return Err(Error::bad_chunk(path, "indices", format!("is {} {:?}; expected int64 [nnz, 3]", a.descr, a.shape))),
    };
    let values = match required(&mut zip, "values")? {
        NpyArray { shape, elements: Elements::F32(v), .. } if shape == [indices.len() / 3] => v,
        a => return Err(Error::bad_chunk(path, "values", format!("is {} {:?}; expected float32 [{}]", a.descr, a.shape, indices.len() / 3))),
    };
    let scalar = |zip: &mut zip::ZipArchive<BufReader<File>>, name: &str| -> Result<Option<i64>> {
        Ok(match read_member(zip, path, name)? {
            None => None,
            Some(NpyArray { elements: Elements::I64(v), .. }) if v.len() == 1 => Some(v[0]),
            Some(a) => return Err(Error::bad_chunk(path, name, format!("is {} {:?}; expected an int64 scalar", a.descr, a.shape))),
        })
    };
    let total_sequences = scalar(&mut zip, "total_sequences")?;
    let sequence_length = scalar(&mut zip, "sequence_length")?;
    let metadata = read_unicode_member(&mut zip, path, "metadata")?;
    Ok(MembershipsFile { indices, values, total_sequences, sequence_length, metadata })
}

/// Reads a 0-d `<U` string member (numpy stores it as UTF-32LE).
fn read_unicode_member<R: Read + Seek>(zip: &mut zip::ZipArchive<R>, path: &Path, name: &str) -> Result<Option<String>> {
    let Some(index) = zip.index_for_name(&format!("{name}.npy")).or_else(|| zip.index_for_name(name)) else {
        return Ok(None);
    };
    let bad = |problem: String| Error::bad_chunk(path, name, problem);
    let mut member = zip.by_index(index).map_err(|e| bad(format!("corrupt archive member: {e}")))?;
    let header = Header::from_reader(&mut member).map_err(|e| bad(format!("bad .npy header: {e}")))?;
    match &header.type_descriptor {
        PyValue::String(s) if s.starts_with("<U") && header.shape.is_empty() => {}
        other => return Err(bad(format!("has dtype {other} shape {:?}; expected a 0-d unicode string", header.shape))),
    }
    let mut raw = Vec::new();
    member.read_to_end(&mut raw).map_err(|e| bad(format!("cannot decode data: {e}")))?;
    let text: String = raw
        .chunks_exact(4)
        .map(|c| char::from_u32(u32::from_le_bytes([c[0], c[1], c[2], c[3]])).unwrap_or('\u{fffd}'))
        .collect();
    Ok(Some(text.trim_end_matches('\0').to_string()))
}
