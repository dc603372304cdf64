//! Writing outputs so that no final-named file is ever half-written: every file is written under
//! a temporary name in the same folder, flushed, then renamed into place.

use crate::error::{Error, Result};
use ndarray::{arr0, Array1, Array2};
use ndarray_npy::WriteNpyExt;
use std::io::Write;
use std::path::{Path, PathBuf};

fn temporary_name(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename).
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temporary_name(path);
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
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

/// The per-chunk memberships file of SPEC 4: `indices` int64 `[nnz, 3]`, `values` float32,
/// `total_sequences`, `sequence_length` and a JSON `metadata` string. Deflated, written atomically.
pub fn write_memberships(path: &Path, indices: Vec<i64>, values: Vec<f32>, batch: usize, seq_len: usize, metadata: &serde_json::Value) -> Result<()> {
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
