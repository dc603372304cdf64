//! What this machine's memory allows: the available memory, and the largest array a chunk may
//! decode to (docs/formats.md "Limits"), so that a small hostile file cannot exhaust the machine.

use crate::chunk::{Activations, StoredDtype};
use crate::error::{Error, Result};
use std::cell::RefCell;
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
/// back to the default (half the available memory: with one reading thread two chunks are alive;
/// `stream::read_ahead` starts more only where their buffers fit a quarter of it).
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

/// A zeroed array of `n` values for data about to be written into it: zeroed through the
/// allocator (fresh pages from the OS are already zero, so no memset pass), and on Linux backed
/// by transparent huge pages where the system allows them on request, as numpy does for its
/// arrays: filling 256 MiB then takes 128 page faults instead of 65536, which is most of the
/// difference between a plain `read` into the array and numpy's `np.load`.
pub(crate) fn large_array<T: bytemuck::Pod>(n: usize) -> Vec<T> {
    let values: Vec<T> = bytemuck::allocation::zeroed_vec(n);
    advise_huge_pages(values.as_ptr() as usize, std::mem::size_of_val(values.as_slice()));
    values
}

thread_local! {
    /// Activation buffers of chunks already visited, handed back to the thread that reads the
    /// next ones (`stream::stream_chunks`).
    static SPARE: RefCell<Vec<Activations>> = const { RefCell::new(Vec::new()) };
}

/// Spare buffers a reading thread keeps: it has at most two chunks of its own alive at once
/// (the one it reads, the one the visitor has).
const SPARES: usize = 2;

/// Keeps the buffer of `activations` for a later `array_to_fill` of its dtype on this thread,
/// in place of the oldest spare when two are kept.
pub(crate) fn offer_spare(activations: Activations) {
    SPARE.with(|s| {
        let mut spare = s.borrow_mut();
        if spare.len() == SPARES {
            spare.remove(0);
        }
        spare.push(activations);
    });
}

/// This thread's spare buffers, taken.
pub(crate) fn take_spares() -> Vec<Activations> {
    SPARE.with(|s| std::mem::take(&mut *s.borrow_mut()))
}

/// An array of `n` values that the caller overwrites entirely: the smallest spare buffer of this
/// thread that is large enough (its old values are still in it), else `large_array`. Streaming
/// reuses two buffers for every chunk of a pass: a fresh allocation per chunk made every chunk
/// fault its pages in again, and left glibc's per-thread arenas holding freed chunks, so peak
/// memory grew with the number of chunks (benches/RESULTS.md, "Memory over 40 chunks").
pub(crate) fn array_to_fill<T: StoredDtype>(n: usize) -> Vec<T> {
    let reused = SPARE.with(|s| {
        let mut spare = s.borrow_mut();
        let mut found: Option<Vec<T>> = None;
        for activations in std::mem::take(&mut *spare) {
            match T::unwrap(activations) {
                Ok(values) if values.capacity() >= n && found.as_ref().is_none_or(|f| values.capacity() < f.capacity()) => {
                    if let Some(larger) = found.replace(values) {
                        spare.push(T::wrap(larger));
                    }
                }
                Ok(values) => spare.push(T::wrap(values)),
                Err(other) => spare.push(other),
            }
        }
        found
    });
    match reused {
        Some(mut values) => {
            values.resize(n, T::zeroed());
            values
        }
        None => large_array(n),
    }
}

#[cfg(target_os = "linux")]
fn advise_huge_pages(start: usize, len: usize) {
    const HUGE: usize = 2 << 20;
    let (first, end) = (start.next_multiple_of(HUGE), start + len);
    if end > first + HUGE {
        let len = (end - first) / HUGE * HUGE;
        // SAFETY: advice on pages inside our own allocation; it changes no contents, and a
        // refusal (THP off, old kernel) only leaves the normal pages.
        unsafe { libc::madvise(first as *mut libc::c_void, len, libc::MADV_HUGEPAGE) };
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages(_start: usize, _len: usize) {}

/// Bytes per piece when a large array is filled on several threads: enough to amortize a task,
/// small enough to spread 256 MiB over every core.
const PIECE_BYTES: usize = 8 << 20;

/// `n` plain values at byte `offset` of `file`, in this machine's byte order, read straight into
/// their array (one copy, no per-value decoding); a large array is read in pieces on several
/// threads, since a single reader is bound by one core's page faults and copies from the page
/// cache.
pub(crate) fn read_values_at<T: StoredDtype>(file: &std::fs::File, offset: u64, n: usize) -> std::io::Result<Vec<T>> {
    let mut values: Vec<T> = array_to_fill(n);
    let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut values);
    #[cfg(unix)]
    {
        use rayon::prelude::*;
        use std::os::unix::fs::FileExt;
        bytes.par_chunks_mut(PIECE_BYTES).enumerate().try_for_each(|(i, piece)| file.read_exact_at(piece, offset + (i * PIECE_BYTES) as u64))?;
    }
    #[cfg(not(unix))]
    {
        use std::io::{Read, Seek};
        let mut file = file;
        file.seek(std::io::SeekFrom::Start(offset))?;
        file.read_exact(bytes)?;
    }
    Ok(values)
}

/// `dst.copy_from_slice(src)`, on several threads when it is large (see `read_values_at`).
pub(crate) fn copy_values<T: Copy + Send + Sync>(dst: &mut [T], src: &[T]) {
    use rayon::prelude::*;
    let piece = (PIECE_BYTES / std::mem::size_of::<T>().max(1)).max(1);
    dst.par_chunks_mut(piece).zip(src.par_chunks(piece)).for_each(|(d, s)| d.copy_from_slice(s));
}

#[cfg(test)]
mod spare_tests {
    use super::*;

    #[test]
    fn the_newest_two_spares_are_kept_and_the_smallest_that_fits_is_taken() {
        let buffer = |n: usize| Activations::F32(Vec::with_capacity(n));
        let capacity = |a: &Activations| match a {
            Activations::F32(v) => v.capacity(),
            _ => 0,
        };
        for n in [10, 100, 50] {
            offer_spare(buffer(n));
        }
        let v: Vec<f32> = array_to_fill(20);
        assert_eq!((v.len(), v.capacity()), (20, 50));
        // No float16 spare: a fresh array, the float32 one stays.
        let h: Vec<half::f16> = array_to_fill(5);
        assert_eq!(h.len(), 5);
        assert_eq!(take_spares().iter().map(capacity).collect::<Vec<_>>(), vec![100]);
    }
}
