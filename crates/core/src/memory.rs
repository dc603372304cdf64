//! What this machine's memory allows: the available memory, and the largest array a chunk may
//! decode to (docs/formats.md "Limits"), so that a small hostile file cannot exhaust the machine.

use crate::error::{Error, Result};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// `MemAvailable` on Linux; `None` (no check) where it cannot be read.
pub fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// 0 = the default; otherwise the limit set by `set_max_chunk_bytes`.
static MAX_CHUNK_BYTES: AtomicU64 = AtomicU64::new(0);

/// Sets, for the whole process, the most bytes one array of a chunk may decode to; `None` goes
/// back to the default (half the available memory: two chunks are alive while one is read ahead).
pub fn set_max_chunk_bytes(limit: Option<u64>) {
    MAX_CHUNK_BYTES.store(limit.unwrap_or(0).max(u64::from(limit.is_some())), Ordering::Relaxed);
}

/// The limit in force and where it comes from (for messages); `None` where there is none (the
/// default on a machine whose available memory cannot be read).
pub fn max_chunk_bytes() -> Option<(u64, &'static str)> {
    match MAX_CHUNK_BYTES.load(Ordering::Relaxed) {
        0 => available_memory().map(|a| (a / 2, "half the available memory; --max-chunk-bytes sets another")),
        set => Some((set, "--max-chunk-bytes")),
    }
}

/// Refuses, before it is read, an array `array` of the chunk at `path` that decodes to `size`
/// bytes, more than `max_chunk_bytes` allows.
pub fn check_array_bytes(path: &Path, array: &str, size: u64) -> Result<()> {
    match max_chunk_bytes() {
        Some((limit, why)) if size > limit => Err(Error::bad_chunk(path, array, format!("decodes to {size} bytes, more than the {limit} bytes one array may take here ({why})"))),
        _ => Ok(()),
    }
}

/// `n` plain values read from `reader` straight into their array, in this machine's byte order
/// (one copy, no per-value decoding).
pub(crate) fn read_values<T: bytemuck::Pod>(reader: &mut impl std::io::Read, n: usize) -> std::io::Result<Vec<T>> {
    let mut values = vec![T::zeroed(); n];
    reader.read_exact(bytemuck::cast_slice_mut(&mut values))?;
    Ok(values)
}
