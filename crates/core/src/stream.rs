//! Streaming over chunk files: the read-ahead visitor, chunk names, progress reports and the
//! reservoir slot that samples a stream. Shared by the fit, transform and analysis.

use crate::error::{Error, Result};
use crate::chunk::{Activations, Chunk};
use crate::sources::{blocks, BLOCK_BYTES};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Instant;

/// Which part of a fit is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Sampling tokens for k-means++.
    Init,
    /// An iteration's pass.
    Iterate,
    /// The final pass that writes outputs.
    Output,
    /// A pass of `analysis::analyze_chunks`.
    Analyze,
}

/// Reported after every chunk.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    pub phase: Phase,
    /// 1-based iteration (0 outside iterations).
    pub iteration: usize,
    pub n_iterations: usize,
    /// 1-based chunk just finished.
    pub chunk: usize,
    pub n_chunks: usize,
    /// Real tokens processed so far in this pass.
    pub tokens_done: u64,
    pub tokens_per_s: f64,
}

#[allow(clippy::too_many_arguments)]
pub fn report(progress: &mut dyn FnMut(&Progress), phase: Phase, iteration: usize, n_iterations: usize, i: usize, n_chunks: usize, tokens_done: u64, started: Instant) {
    progress(&Progress {
        phase,
        iteration,
        n_iterations,
        chunk: i + 1,
        n_chunks,
        tokens_done,
        tokens_per_s: tokens_done as f64 / started.elapsed().as_secs_f64().max(1e-9),
    });
}

/// File names of the chunks; output files are named after them, so they must be distinct.
pub fn chunk_names(chunks: &[PathBuf]) -> Result<Vec<String>> {
    if chunks.is_empty() {
        return Err(Error::invalid_input("chunks", "no chunk files were given"));
    }
    let (mut outputs, mut files) = (HashSet::new(), HashSet::new());
    chunks
        .iter()
        .map(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let output = crate::memberships_file::file_name_for(&name);
            if !outputs.insert(output.clone()) {
                return Err(Error::invalid_input(
                    &p.display().to_string(),
                    format!("another chunk also writes {output}; output files are named after chunks, so their names (without .npz) must differ"),
                ));
            }
            // The same file under two names (a link) would be counted twice.
            if let Ok(real) = p.canonicalize() {
                if !files.insert(real.clone()) {
                    return Err(Error::invalid_input(&p.display().to_string(), format!("is the same file as another chunk ({})", real.display())));
                }
            }
            Ok(name)
        })
        .collect()
}

/// Visits every chunk in order while the next one is read and decoded on another thread. At most
/// two chunks are alive: the one being visited and the one waiting to be handed over. A large
/// safetensors file comes as several blocks (`sources::blocks`), each visited with its file's
/// index. A chunk the visitor hands back has its activations buffer read into again for a later
/// one (`memory::array_to_fill`); one it keeps is its own. `spares` are such buffers to start
/// with, and hold the last ones when the pass is over, for the next pass.
pub fn stream_chunks(paths: &[PathBuf], d_model: usize, spares: &mut Vec<Activations>, mut visit: impl FnMut(usize, Chunk) -> Result<Option<Chunk>>) -> Result<()> {
    let handed = std::mem::take(spares);
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Chunk>>(0);
        let (spare_tx, spare_rx) = std::sync::mpsc::channel::<Activations>();
        let reader = scope.spawn(move || {
            handed.into_iter().for_each(crate::memory::offer_spare);
            let block_bytes = crate::memory::max_chunk_bytes().map_or(BLOCK_BYTES, |(limit, _)| BLOCK_BYTES.min(limit as usize));
            'files: for path in paths {
                let mut blocks = match blocks(path, block_bytes) {
                    Ok(blocks) => blocks,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        break;
                    }
                };
                loop {
                    spare_rx.try_iter().for_each(crate::memory::offer_spare);
                    let Some(chunk) = blocks.next() else { break };
                    let chunk = chunk.and_then(|c| c.check_d_model(d_model).map(|()| c));
                    let failed = chunk.is_err();
                    if tx.send(chunk).is_err() || failed {
                        break 'files; // the visitor stopped, or this chunk was bad
                    }
                }
            }
            // The last chunks come back after the last read: their buffers go to the next pass.
            drop(tx);
            spare_rx.iter().for_each(crate::memory::offer_spare);
            crate::memory::take_spares()
        });
        // Blocks of one file share its index: a file's last block has first_row + batch = file_batch.
        let visited = (|| {
            let mut i = 0;
            for chunk in rx.iter() {
                let chunk = chunk?;
                let last = chunk.first_row + chunk.batch >= chunk.file_batch;
                if let Some(done) = visit(i, chunk)? {
                    let _ = spare_tx.send(done.activations);
                }
                i += usize::from(last);
            }
            Ok(())
        })();
        (drop(rx), drop(spare_tx));
        *spares = reader.join().unwrap_or_default();
        visited
    })
}

/// `stream_chunks` for a visitor that keeps no chunk, in one pass.
pub fn visit_chunks(paths: &[PathBuf], d_model: usize, mut visit: impl FnMut(usize, &Chunk) -> Result<()>) -> Result<()> {
    stream_chunks(paths, d_model, &mut Vec::new(), |i, chunk| visit(i, &chunk).map(|()| Some(chunk)))
}

/// Algorithm R: where the `seen`-th item (0-based) of a stream goes in a uniform sample of at most
/// `capacity` items: the next free slot while there is one, then a random slot or nowhere.
pub fn reservoir_slot(rng: &mut ChaCha8Rng, seen: u64, capacity: usize) -> Option<usize> {
    if (seen as usize) < capacity {
        Some(seen as usize)
    } else {
        let j = rng.random_range(0..=seen);
        (j < capacity as u64).then_some(j as usize)
    }
}

