//! Memberships of new data under fixed centers (the `transform` of README "Use it from TypeScript").

use crate::config::ClusteringConfig;
use crate::error::{Error, Result};
use crate::kernels::{Backend, Centers, MembershipParams, PassOutput, Tokens, Want};
use crate::memberships_file;
use crate::model::Model;
use crate::run_folder::{RunFolder, RunKind, RunOptions};
use crate::stream::{chunk_names, report, visit_chunks, Phase, Progress};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// `(batch, seq_len, d)` of a caller's `shape` (`[B, S, D]` or `[T, D]`) for an array of `len`
/// values, checked: whole non-negative dimensions whose product is `len`, and `D = d_model`.
pub fn layout_of(shape: Option<&[f64]>, len: usize, d_model: usize) -> Result<(usize, usize, usize)> {
    let Some(shape) = shape else {
        // No shape: `[T, D]` rows of the model's D.
        if d_model == 0 || len % d_model != 0 {
            return Err(Error::invalid_input("activations", format!("has {len} values, not a whole number of rows of dModel = {d_model}; give shape [B, S, D] or [T, D]")));
        }
        return Ok((1, len / d_model, d_model));
    };
    let shown = show_shape(shape);
    let dims: Vec<usize> = shape
        .iter()
        .map(|&v| {
            if v >= 0.0 && v.fract() == 0.0 && v <= u32::MAX as f64 {
                Ok(v as usize)
            } else {
                Err(Error::invalid_input("shape", format!("dimensions must be non-negative integers, got {shown}")))
            }
        })
        .collect::<Result<_>>()?;
    let (batch, seq_len, d) = match dims[..] {
        [b, s, d] => (b, s, d),
        [t, d] => (1, t, d),
        _ => return Err(Error::invalid_input("shape", format!("must be [B, S, D] or [T, D], got {shown}"))),
    };
    if d != d_model {
        return Err(Error::invalid_input("shape", format!("D = {d} but the model's dModel is {d_model}")));
    }
    if batch.checked_mul(seq_len).and_then(|n| n.checked_mul(d)) != Some(len) {
        return Err(Error::invalid_input("activations", format!("has {len} values but shape {shown} needs {}", batch as u128 * seq_len as u128 * d as u128)));
    }
    Ok((batch, seq_len, d))
}

/// `[16, 64, 384]`: a shape as the user wrote it (JS numbers arrive as floats).
fn show_shape(shape: &[f64]) -> String {
    let dims: Vec<String> = shape.iter().map(|&v| if v.fract() == 0.0 && v.abs() < 1e15 { format!("{}", v as i64) } else { format!("{v}") }).collect();
    format!("[{}]", dims.join(", "))
}

/// Memberships of every real token of `tokens`; `dense` adds the `[rows, K]` matrix.
pub fn transform(backend: &dyn Backend, config: &ClusteringConfig, centers: &Centers, tokens: &Tokens, dense: bool) -> Result<PassOutput> {
    backend.run(centers, tokens, MembershipParams::try_from(config)?, Want { dense, sparse: true, ..Want::default() })
}

/// Where `transform_chunks` writes and what it may replace there.
pub struct TransformRequest<'a> {
    pub chunks: &'a [PathBuf],
    pub output_dir: &'a Path,
    /// The model's file, if it came from one: an input, never replaced.
    pub model_file: Option<&'a Path>,
    /// Replace another run's outputs in `output_dir` once this run is complete.
    pub overwrite: bool,
    /// Memberships of the `level` groups of the tree's cut instead of the clusters.
    pub level: Option<usize>,
}

/// Writes `<output_dir>/<chunk stem>.memberships.npz` for every chunk under a fitted model's
/// centers: the output pass of a fit, on new data (`soft-cluster transform`).
pub fn transform_chunks(model: &Model, request: TransformRequest, backend: &dyn Backend, progress: &mut dyn FnMut(&Progress)) -> Result<u64> {
    let TransformRequest { chunks, output_dir, model_file, overwrite, level } = request;
    let names = chunk_names(chunks)?;
    let groups = level.map(|n| model.groups(n).map(|g| (g, n))).transpose()?;
    let n_columns = groups.as_ref().map_or(model.config.n_clusters, |g| g.1);
    let params = MembershipParams::try_from(&model.config)?;
    let inputs: Vec<PathBuf> = chunks.iter().cloned().chain(model_file.map(Path::to_path_buf)).collect();
    let mut folder = RunFolder::open(output_dir, RunKind::Transform, &inputs, RunOptions { resume: false, overwrite })?;
    let started = Instant::now();
    let mut rows = 0u64;
    let mut memberships = memberships_file::FileMemberships::default();
    visit_chunks(chunks, model.config.d_model, |i, chunk| {
        let out = backend.run(&model.centers, &Tokens::from_chunk(&chunk, i), params, Want { sparse: true, ..Want::default() })?;
        let out = match &groups {
            Some((group_of, n)) => out.grouped(group_of, *n),
            None => out,
        };
        if memberships.add(&chunk, &out) {
            memberships.write(&folder.staged(&memberships_file::file_name_for(&names[i])), &names[i], &chunk, n_columns)?;
        }
        rows += out.rows.len() as u64;
        report(progress, Phase::Output, 0, model.config.n_iterations, i, chunks.len(), rows, started);
        Ok(())
    })?;
    folder.commit(chunks)?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_are_checked() {
        assert_eq!(layout_of(Some(&[2.0, 3.0, 4.0]), 24, 4).unwrap(), (2, 3, 4));
        assert_eq!(layout_of(Some(&[6.0, 4.0]), 24, 4).unwrap(), (1, 6, 4));
        assert_eq!(layout_of(None, 24, 4).unwrap(), (1, 6, 4));
        assert!(layout_of(None, 23, 4).unwrap_err().to_string().contains("23 values, not a whole number of rows of dModel = 4"));
        let msg = |s: &[f64], len, d| layout_of(Some(s), len, d).unwrap_err().to_string();
        assert!(msg(&[2.0, -3.0, 4.0], 24, 4).contains("non-negative integers"));
        assert!(msg(&[2.0, 1.5, 4.0], 24, 4).contains("non-negative integers"));
        assert!(msg(&[24.0], 24, 4).contains("must be [B, S, D] or [T, D]"));
        assert!(msg(&[2.0, 3.0, 4.0], 23, 4).contains("has 23 values but shape [2, 3, 4] needs 24"));
        assert!(msg(&[2.0, 1.5, 4.0], 24, 4).contains("got [2, 1.5, 4]"));
        assert!(msg(&[2.0, 3.0, 4.0], 24, 5).contains("D = 4 but the model's dModel is 5"));
    }
}
