//! The activation cache (docs/scaling.md "Activation cache"): the first pass over the chunks
//! keeps every decoded block in host memory when they all fit the budget, and later passes (the
//! other iterations, the output pass) visit them there instead of reading and decoding the files
//! again. The blocks are the very values a pass from the files would see, in the same order, so a
//! fit gives the same bits with the cache and without it. When the chunks do not fit, nothing is
//! kept (the estimate from the chunk headers says so before the first pass; a dtype that takes
//! more room than estimated drops what was kept as soon as the budget is passed) and every pass
//! streams the files as before: memory stays bounded by the budget plus the streamed blocks (one
//! per reading thread and the one visited), whose buffers every pass reuses.

use crate::chunk::{Activations, Chunk};
use crate::error::Result;
use crate::stream::{read_ahead, stream_chunks_with};
use crate::config::CacheSetting;
use std::path::PathBuf;

/// The budget of `CacheSetting::Auto`: half the memory available when the fit starts (the other half is left
/// to the streamed blocks, the model, the pass's sums and the rest of the machine); none where the
/// available memory cannot be read.
pub fn auto_budget() -> u64 {
    crate::memory::available_memory().map_or(0, |a| a / 2)
}

enum State {
    /// The next pass streams the files and keeps their blocks.
    Filling,
    /// Every block is kept: passes visit them.
    Complete,
    /// The chunks do not fit: every pass streams the files.
    Streaming,
}

/// Where a fit's passes find their chunks.
pub struct ChunkCache {
    budget: u64,
    state: State,
    blocks: Vec<(usize, Chunk)>,
    bytes: u64,
    /// Buffers of streamed blocks, read into again by the next pass (`stream_chunks_with`).
    spares: Vec<Activations>,
    /// Reading threads of a streamed pass (`stream::read_ahead`, from the headers once).
    readers: Option<usize>,
}

impl ChunkCache {
    /// A cache for `paths` under `setting`; `estimated_bytes` is what their activations take at
    /// the least (from the headers), which decides at once when they cannot fit.
    pub fn new(setting: CacheSetting, estimated_bytes: u64) -> Self {
        let budget = match setting {
            CacheSetting::Auto => auto_budget(),
            CacheSetting::Off => 0,
            CacheSetting::Bytes(n) => n,
        };
        let state = if estimated_bytes <= budget { State::Filling } else { State::Streaming };
        ChunkCache { budget, state, blocks: Vec::new(), bytes: 0, spares: Vec::new(), readers: None }
    }

    /// Visits every block of `paths` in order, from memory when the cache holds them all, else
    /// from the files (keeping them while they fit, on the first pass).
    pub fn stream(&mut self, paths: &[PathBuf], d_model: usize, mut visit: impl FnMut(usize, &Chunk) -> Result<()>) -> Result<()> {
        if let State::Complete = self.state {
            return self.blocks.iter().try_for_each(|(i, chunk)| visit(*i, chunk));
        }
        let readers = *self.readers.get_or_insert_with(|| read_ahead(paths));
        stream_chunks_with(readers, paths, d_model, &mut self.spares, |i, chunk| {
            visit(i, &chunk)?;
            if let State::Filling = self.state {
                self.bytes += chunk_bytes(&chunk);
                if self.bytes <= self.budget {
                    self.blocks.push((i, chunk));
                    return Ok(None);
                }
                (self.state, self.blocks, self.bytes) = (State::Streaming, Vec::new(), 0);
            }
            Ok(Some(chunk))
        })?;
        if let State::Filling = self.state {
            self.state = State::Complete;
        }
        Ok(())
    }

    /// Where the passes after the first find their data, for the fit's report: `host cache, N
    /// bytes` or `files`.
    pub fn describe(&self) -> String {
        match self.state {
            State::Complete => format!("host cache, {} bytes", self.bytes),
            State::Filling if self.budget > 0 => format!("files (the host cache of {} bytes fills on the first pass)", self.budget),
            _ if self.budget == 0 => "files (cache off)".to_string(),
            _ => format!("files (the chunks take more than the {}-byte host cache)", self.budget),
        }
    }
}

/// Host bytes a decoded block holds: activations, mask and token ids.
fn chunk_bytes(chunk: &Chunk) -> u64 {
    let activations = chunk.activations.len() * chunk.activations.element_bytes();
    let mask = chunk.attention_mask.as_ref().map_or(0, Vec::len);
    let ids = chunk.token_ids.as_ref().map_or(0, |v| v.len() * 8);
    (activations + mask + ids) as u64
}

/// The least bytes the activations of `paths` take once decoded (2 bytes a value: float16 and
/// bfloat16 are kept as they are), from the chunk headers.
pub fn estimated_bytes(paths: &[PathBuf]) -> Result<u64> {
    paths.iter().try_fold(0u64, |sum, path| {
        let (b, s, d) = crate::sources::chunk_shape(path)?;
        Ok(sum.saturating_add((b as u64).saturating_mul(s as u64).saturating_mul(d as u64).saturating_mul(2)))
    })
}
