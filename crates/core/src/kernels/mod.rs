//! The membership step (docs/algorithm.md "Memberships") and what a pass accumulates, behind one
//! `Backend` trait that the CPU and CUDA implement, so orchestration never asks which device it
//! runs on. `backend_for` is the one place that maps a config's `Device` to a backend.

pub mod cpu;
pub mod cuda;
pub mod byte_rows;
pub mod multi;
mod widen;

use crate::config::{ClusteringConfig, Device, Precision};
use crate::error::{Error, Result};
use crate::chunk::{ActivationsRef, Chunk};
use crate::pass::PassStats;
use half::{bf16, f16};
use rayon::prelude::*;

/// Unit-length cluster directions, row-major `[K, D]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Centers {
    pub k: usize,
    pub d: usize,
    pub data: Vec<f32>,
}

impl Centers {
    /// Normalizes each row (docs/algorithm.md "Init": `initialCenters` are normalized on entry).
    /// A zero, NaN or infinite row has no direction and is refused.
    pub fn from_rows(k: usize, d: usize, mut data: Vec<f32>) -> Result<Self> {
        if k == 0 || d == 0 || data.len() != k * d {
            return Err(Error::invalid_input(
                "initialCenters",
                format!("holds {} values; expected nClusters * dModel = {k} * {d} = {}", data.len(), k * d),
            ));
        }
        for (i, row) in data.chunks_exact_mut(d).enumerate() {
            let norm = row.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>().sqrt();
            if !(norm.is_finite() && norm > 0.0) {
                return Err(Error::invalid_input(
                    "initialCenters",
                    format!("row {i} has no direction (zero, NaN or infinite values)"),
                ));
            }
            row.iter_mut().for_each(|x| *x = (f64::from(*x) / norm) as f32);
        }
        Ok(Centers { k, d, data })
    }

    /// Centers read back from a file: checked like `from_rows`, but rows that are already unit
    /// length keep their exact bits (normalizing again can move the last bit, and a resumed or
    /// reloaded model must be the one that was saved).
    pub fn from_saved(k: usize, d: usize, data: Vec<f32>) -> Result<Self> {
        let unit = d > 0
            && data.len() == k * d
            && data.chunks_exact(d).all(|r| (r.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt() - 1.0).abs() < 1e-5);
        if unit && k > 0 { Ok(Centers { k, d, data }) } else { Centers::from_rows(k, d, data) }
    }

    pub fn row(&self, k: usize) -> &[f32] {
        &self.data[k * self.d..(k + 1) * self.d]
    }
}

/// The two numbers of the membership formula besides the centers.
#[derive(Debug, Clone, Copy)]
pub struct MembershipParams {
    pub temperature: f64,
    pub min_membership: f64,
}

impl TryFrom<&ClusteringConfig> for MembershipParams {
    type Error = Error;
    /// Fails only for `temperature: "auto"` before a fit has chosen the number.
    fn try_from(config: &ClusteringConfig) -> Result<Self> {
        Ok(MembershipParams { temperature: config.temperature.value()?, min_membership: config.min_membership })
    }
}

/// A set of token vectors `[n_tokens, D]` (flattened `[B, S, D]`) with their optional mask.
#[derive(Debug, Clone, Copy)]
pub struct Tokens<'a> {
    /// Names the data in errors: a file path, or "activations" for arrays handed in by callers.
    pub source: &'a str,
    /// Position of this chunk in the run (0 for a lone array); exemplar and reseed locations use it.
    pub chunk_index: usize,
    /// Index of the first sequence in its chunk file (a block of a large file starts later):
    /// locations and error messages count from the file's start.
    pub first_row: usize,
    pub activations: ActivationsRef<'a>,
    pub seq_len: usize,
    pub d: usize,
    /// `[n_tokens]`, nonzero = real token.
    pub mask: Option<&'a [u8]>,
}

impl<'a> Tokens<'a> {
    pub fn from_chunk(chunk: &'a Chunk, chunk_index: usize) -> Self {
        Tokens {
            source: &chunk.source,
            chunk_index,
            first_row: chunk.first_row,
            activations: chunk.activations.as_ref(),
            seq_len: chunk.seq_len,
            d: chunk.d_model,
            mask: chunk.attention_mask.as_deref(),
        }
    }

    pub fn n_tokens(&self) -> usize {
        self.activations.len() / self.d
    }
}

/// The real, non-zero tokens of a `Tokens`, in order, with their inverse norms.
/// Membership rows, dense or sparse, are numbered as these rows.
#[derive(Debug, Clone, Default)]
pub struct PreparedRows {
    /// Flattened token index (`batch * seq_len + position`) of each row.
    pub token: Vec<u32>,
    /// `1 / |a|` for each row (float64: the tiny-temperature path recomputes cosines exactly).
    pub inv_norm: Vec<f64>,
    /// Real tokens whose vector is all zeros (no direction: no row, counted).
    pub skipped: u64,
}

impl PreparedRows {
    pub fn len(&self) -> usize {
        self.token.len()
    }

    pub fn is_empty(&self) -> bool {
        self.token.is_empty()
    }
}

/// Element types activations may be stored in.
pub(crate) trait Element: Copy + Send + Sync + 'static {
    fn to_f64(self) -> f64;
    /// Writes `src` into `dst` in float64 (exact).
    fn widen_f64(src: &[Self], dst: &mut [f64]) {
        dst.iter_mut().zip(src).for_each(|(d, &s)| *d = s.to_f64());
    }
    /// Writes `src * scale` into `dst` as float32.
    fn scale_into(src: &[Self], scale: f64, dst: &mut [f32]);
}

impl Element for f32 {
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
    fn scale_into(src: &[f32], scale: f64, dst: &mut [f32]) {
        let narrow = scale as f32;
        if narrow.is_normal() {
            dst.iter_mut().zip(src).for_each(|(d, &s)| *d = s * narrow);
        } else {
            // The scale of a row of subnormals (or of huge values) is beyond float32's range:
            // multiply in float64 and narrow the unit-scale result.
            dst.iter_mut().zip(src).for_each(|(d, &s)| *d = (f64::from(s) * scale) as f32);
        }
    }
}

impl Element for f64 {
    fn to_f64(self) -> f64 {
        self
    }
    fn scale_into(src: &[f64], scale: f64, dst: &mut [f32]) {
        dst.iter_mut().zip(src).for_each(|(d, &s)| *d = (s * scale) as f32);
    }
}

impl Element for bf16 {
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
    fn widen_f64(src: &[bf16], dst: &mut [f64]) {
        // The `half` crate's slice conversion (F16C where the CPU has it), not a call per value.
        half::slice::HalfFloatSliceExt::convert_to_f64_slice(src, dst);
    }
    fn scale_into(src: &[bf16], scale: f64, dst: &mut [f32]) {
        widen::bf16_scaled(src, scale as f32, dst);
    }
}

impl Element for f16 {
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
    fn widen_f64(src: &[f16], dst: &mut [f64]) {
        // The `half` crate's slice conversion (F16C where the CPU has it), not a call per value.
        half::slice::HalfFloatSliceExt::convert_to_f64_slice(src, dst);
    }
    fn scale_into(src: &[f16], scale: f64, dst: &mut [f32]) {
        widen::f16_scaled(src, scale as f32, dst);
    }
}

/// Tokens per parallel task of `prepare_rows` (large enough to amortize scheduling).
const PREPARE_GROUP: usize = 4096;

/// Finds the real tokens, checks them for NaN/Inf (docs/formats.md "Input chunks"), computes their norms in float64
/// and counts the all-zero ones as skipped.
pub fn prepare_rows(tokens: &Tokens) -> Result<PreparedRows> {
    match tokens.activations {
        ActivationsRef::BF16(a) => prepare_typed(tokens, a),
        ActivationsRef::F16(a) => prepare_typed(tokens, a),
        ActivationsRef::F32(a) => prepare_typed(tokens, a),
        ActivationsRef::F64(a) => prepare_typed(tokens, a),
    }
}

fn prepare_typed<T: Element>(tokens: &Tokens, data: &[T]) -> Result<PreparedRows> {
    let d = tokens.d;
    let n = tokens.n_tokens();
    let groups: Vec<Result<PreparedRows, usize>> = (0..n.div_ceil(PREPARE_GROUP))
        .into_par_iter()
        .map(|g| {
            let mut part = PreparedRows::default();
            let mut scratch = Vec::with_capacity(d);
            for t in g * PREPARE_GROUP..((g + 1) * PREPARE_GROUP).min(n) {
                if tokens.mask.is_some_and(|m| m[t] == 0) {
                    continue;
                }
                let row = &data[t * d..(t + 1) * d];
                let norm = row_norm(row, &mut scratch).ok_or(t)?;
                if norm == 0.0 {
                    part.skipped += 1;
                } else {
                    part.token.push(t as u32);
                    part.inv_norm.push(1.0 / norm);
                }
            }
            Ok(part)
        })
        .collect();
    let mut rows = PreparedRows::default();
    for g in groups {
        let g = g.map_err(|t| Error::NonFinite {
            source_name: tokens.source.to_string(),
            batch: tokens.first_row + t / tokens.seq_len.max(1),
            position: t % tokens.seq_len.max(1),
        })?;
        rows.token.extend(g.token);
        rows.inv_norm.extend(g.inv_norm);
        rows.skipped += g.skipped;
    }
    Ok(rows)
}

/// Euclidean norm, `None` if the row holds NaN or Inf. Squares are summed in float64 over a
/// float32 copy (float16 rows are widened with F16C where the CPU has it). float64 rows beyond
/// float32's range, huge or tiny, are measured in float64 with rescaling instead.
fn row_norm<T: Element>(row: &[T], scratch: &mut Vec<f32>) -> Option<f64> {
    scratch.resize(row.len(), 0.0);
    T::scale_into(row, 1.0, scratch);
    let mut lanes = [0f64; 4];
    let mut chunks = scratch.chunks_exact(4);
    for c in &mut chunks {
        for l in 0..4 {
            lanes[l] += f64::from(c[l]) * f64::from(c[l]);
        }
    }
    let sum: f64 = lanes.iter().sum::<f64>() + chunks.remainder().iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>();
    if sum.is_finite() && sum > 0.0 {
        return Some(sum.sqrt()); // a finite sum means every element was finite
    }
    // Zero, NaN/Inf, or float64 values beyond float32's range either way: decide in float64.
    if row.iter().any(|&x| !x.to_f64().is_finite()) {
        return None;
    }
    let max = row.iter().fold(0.0f64, |m, &x| m.max(x.to_f64().abs()));
    if max == 0.0 {
        return Some(0.0);
    }
    Some(max * row.iter().map(|&x| (x.to_f64() / max).powi(2)).sum::<f64>().sqrt())
}

/// Memberships in compressed-row form: row `r` owns `cluster[offset[r]..offset[r + 1]]`
/// (ascending) and the matching `value`s.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SparseRows {
    pub offset: Vec<usize>,
    pub cluster: Vec<u32>,
    pub value: Vec<f32>,
}

impl SparseRows {
    pub fn row(&self, r: usize) -> (&[u32], &[f32]) {
        let span = self.offset[r]..self.offset[r + 1];
        (&self.cluster[span.clone()], &self.value[span])
    }

    pub fn nnz(&self) -> usize {
        self.value.len()
    }
}

/// What a caller wants from one membership pass over a set of tokens.
#[derive(Debug, Clone, Copy, Default)]
pub struct Want {
    /// Dense `[rows, K]` memberships (only for callers that asked for them: it is `N x K`).
    pub dense: bool,
    /// Sparse memberships (the nonzero entries).
    pub sparse: bool,
    /// The pass's statistics: `m`, objective, hard counts, reseed candidates.
    pub stats: bool,
    /// With `stats`, also `S = P^T X` (a `K x D` product: only the iterations need it; the output
    /// pass and the analysis leave it out, and `PassStats::s` stays empty).
    pub sums: bool,
}

#[derive(Debug, Clone, Default)]
pub struct PassOutput {
    pub rows: PreparedRows,
    pub dense: Option<Vec<f32>>,
    pub sparse: Option<SparseRows>,
    pub stats: Option<PassStats>,
}

/// A device that computes memberships and pass statistics. `fit` and `transform` only see this.
pub trait Backend: Send + Sync {
    /// Human-readable device name ("cpu", "cuda:0").
    fn name(&self) -> String;

    /// The membership formula for every real token of `tokens`, plus what `want` asks for.
    fn run(&self, centers: &Centers, tokens: &Tokens, params: MembershipParams, want: Want) -> Result<PassOutput>;

    /// Opens a streaming pass over several `run`s whose statistics (with `S` when `sums`) the
    /// pass owns until `Pass::finish`: a GPU keeps `S` and `m` on the device instead of sending
    /// `K x D` values back for every chunk. The default keeps them on the host.
    fn begin_pass(&self, k: usize, d: usize, sums: bool) -> Box<dyn Pass + '_> {
        Box::new(HostPass { backend: self, sums, stats: PassStats::sized(k, d, sums) })
    }

    /// Cosines `[n, t]` (row-major) between unit rows `rows` `[n, d]` and unit rows `others`
    /// `[t, d]`: what init (k-means++ and the warm-up on the sample) computes with.
    fn cosines(&self, rows: &[f32], others: &[f32], d: usize) -> Result<Vec<f32>>;

    /// Bytes of host memory a fit needs on this backend for `K x D` centers and sums, besides the
    /// chunks and the init sample (the memory check refuses a fit that cannot have them).
    fn host_bytes_for_pass(&self, k: usize, d: usize) -> f64;
}

/// One streaming pass on one device: it owns the pass's statistics, so a fit merges one way,
/// through `PassStats::merge`, whatever the device.
pub trait Pass: Send {
    /// `Backend::run` within the pass: the run's statistics go into the pass (the returned
    /// `PassOutput::stats` is `None`); `want.stats` and `want.sums` are the pass's.
    fn run(&mut self, centers: &Centers, tokens: &Tokens, params: MembershipParams, want: Want) -> Result<PassOutput>;

    /// Real, non-zero tokens seen so far (for progress reports).
    fn n_rows(&self) -> u64;

    /// The statistics of every run, merged in run order.
    fn finish(self: Box<Self>) -> Result<PassStats>;
}

/// A pass whose statistics live on the host: each run's are merged as they come.
struct HostPass<'a, B: Backend + ?Sized> {
    backend: &'a B,
    sums: bool,
    stats: PassStats,
}

impl<B: Backend + ?Sized> Pass for HostPass<'_, B> {
    fn run(&mut self, centers: &Centers, tokens: &Tokens, params: MembershipParams, want: Want) -> Result<PassOutput> {
        let mut out = self.backend.run(centers, tokens, params, Want { stats: true, sums: self.sums, ..want })?;
        self.stats.merge(out.stats.take().expect("stats were asked for"));
        Ok(out)
    }

    fn n_rows(&self) -> u64 {
        self.stats.n_rows
    }

    fn finish(self: Box<Self>) -> Result<PassStats> {
        Ok(self.stats)
    }
}

/// Bytes of the cosine block `for_each_cosine_row` holds at a time.
pub const COSINE_BLOCK_BYTES: usize = 64 << 20;

/// Calls `visit(i, cosines of row i with every row of others)` for each unit row of `rows`
/// (`[n, d]`), in order, computing `Backend::cosines` a block of rows at a time so that at most
/// `COSINE_BLOCK_BYTES` of cosines exist whatever `n` and the number of `others`.
pub fn for_each_cosine_row(backend: &dyn Backend, rows: &[f32], others: &[f32], d: usize, mut visit: impl FnMut(usize, &[f32])) -> Result<()> {
    let t = (others.len() / d.max(1)).max(1);
    // A multiple of the host GEMM's own block, so every row is computed as in one call.
    let block = (COSINE_BLOCK_BYTES / (4 * t) / 1024 * 1024).max(1024);
    for (b, rows) in rows.chunks(block * d).enumerate() {
        let cosines = backend.cosines(rows, others, d)?;
        for (i, row) in cosines.chunks_exact(t).enumerate() {
            visit(b * block + i, row);
        }
    }
    Ok(())
}

/// Writes token `token` of `tokens`, scaled by `inv_norm`, into `out` as float32.
pub fn unit_row(tokens: &Tokens, token: usize, inv_norm: f64, out: &mut [f32]) {
    let span = token * tokens.d..(token + 1) * tokens.d;
    match tokens.activations {
        ActivationsRef::BF16(a) => Element::scale_into(&a[span], inv_norm, out),
        ActivationsRef::F16(a) => Element::scale_into(&a[span], inv_norm, out),
        ActivationsRef::F32(a) => Element::scale_into(&a[span], inv_norm, out),
        ActivationsRef::F64(a) => Element::scale_into(&a[span], inv_norm, out),
    }
}

/// A backend and why it was chosen (`auto` says why it fell back to the CPU).
pub struct Chosen {
    pub backend: Box<dyn Backend>,
    /// One line: "cuda:0 (NVIDIA H100 ...)", "cpu (asked for)", "cpu (auto: no usable GPU: ...)".
    pub reason: String,
}

/// The backend for a config's `device` and `precision`: `auto` is the first GPU when the CUDA
/// libraries and a device are usable, else the CPU; `cuda:N` without a usable GPU is an
/// `ERR_DEVICE` error saying why.
pub fn backend_for(config: &ClusteringConfig) -> Result<Box<dyn Backend>> {
    choose_backend(config).map(|c| c.backend)
}

/// `backend_for`, with the reason for the choice.
pub fn choose_backend(config: &ClusteringConfig) -> Result<Chosen> {
    let precision = match config.precision {
        Precision::Float32 => cuda::MatmulPrecision::Float32,
        Precision::Tf32 => cuda::MatmulPrecision::Tf32,
    };
    let gpus = |ordinals: &[usize]| -> Result<Chosen> {
        let devices = ordinals.iter().map(|&o| cuda::CudaBackend::new(o, precision)).collect::<Result<Vec<_>>>()?;
        let names: Vec<String> = devices.iter().map(|g| format!("{} ({})", g.name(), g.device_name())).collect();
        let backend = multi::MultiBackend::new(devices.into_iter().map(|g| Box::new(g) as Box<dyn Backend>).collect());
        Ok(Chosen { reason: format!("{} devices: {}", backend.devices(), names.join(", ")), backend: Box::new(backend) })
    };
    Ok(match &config.device {
        Device::CudaAll => gpus(&(0..cuda::device_count()?).collect::<Vec<_>>())?,
        Device::CudaList(ordinals) => gpus(ordinals)?,
        Device::Cpu => Chosen { backend: Box::new(cpu::CpuBackend::default()), reason: "cpu (asked for)".into() },
        Device::Auto => match cuda::CudaBackend::new(0, precision) {
            Ok(gpu) => Chosen { reason: format!("{} (auto: {})", gpu.name(), gpu.device_name()), backend: Box::new(gpu) },
            Err(e) => Chosen { backend: Box::new(cpu::CpuBackend::default()), reason: format!("cpu (auto: no usable GPU: {e})") },
        },
        &Device::Cuda(ordinal) => {
            let gpu = cuda::CudaBackend::new(ordinal, precision)?;
            Chosen { reason: format!("{} ({})", gpu.name(), gpu.device_name()), backend: Box::new(gpu) }
        }
    })
}

/// Checks that `tokens` and `centers` agree before any backend touches them.
pub(crate) fn check_shapes(centers: &Centers, tokens: &Tokens) -> Result<()> {
    if tokens.d != centers.d {
        return Err(Error::BadChunk {
            file: tokens.source.to_string(),
            array: "activations".into(),
            problem: format!("D = {} but the model's dModel is {}", tokens.d, centers.d),
        });
    }
    let len = tokens.activations.len();
    if len % tokens.d != 0 {
        return Err(Error::invalid_input(tokens.source, format!("length {len} is not a multiple of dModel = {}", tokens.d)));
    }
    if let Some(mask) = tokens.mask {
        if mask.len() != len / tokens.d {
            return Err(Error::invalid_input(
                "attentionMask",
                format!("has {} entries but there are {} tokens", mask.len(), len / tokens.d),
            ));
        }
    }
    if len / tokens.d > u32::MAX as usize {
        return Err(Error::invalid_input(tokens.source, "more than 2^32 tokens in one chunk; split it"));
    }
    Ok(())
}

impl PassOutput {
    /// Memberships of groups of clusters (`group_of[cluster]`, `groups` of them): each row's
    /// memberships summed per group, sparse rows sorted by group (`level` of a transform, the
    /// cut of the tree). Statistics are left out.
    pub fn grouped(self, group_of: &[usize], groups: usize) -> PassOutput {
        let k = group_of.len();
        let dense = self.dense.map(|d| {
            let mut out = vec![0f32; self.rows.len() * groups];
            for (r, row) in d.chunks_exact(k.max(1)).enumerate() {
                row.iter().enumerate().for_each(|(c, &v)| out[r * groups + group_of[c]] += v);
            }
            out
        });
        let sparse = self.sparse.map(|sp| {
            let mut out = SparseRows { offset: vec![0], ..Default::default() };
            let mut acc: Vec<(u32, f32)> = Vec::new();
            for r in 0..self.rows.len() {
                let (clusters, values) = sp.row(r);
                acc.clear();
                acc.extend(clusters.iter().zip(values).map(|(&c, &v)| (group_of[c as usize] as u32, v)));
                acc.sort_by_key(|&(g, _)| g);
                let start = out.cluster.len();
                for &(g, v) in acc.iter() {
                    if out.cluster.len() > start && out.cluster.last() == Some(&g) {
                        *out.value.last_mut().unwrap() += v;
                    } else {
                        out.cluster.push(g);
                        out.value.push(v);
                    }
                }
                out.offset.push(out.cluster.len());
            }
            out
        });
        PassOutput { rows: self.rows, dense, sparse, stats: None }
    }

    /// Hard labels: for each row, the cluster of its largest membership (the lowest id on
    /// ties). Thresholding always keeps that entry, so the sparse rows hold it.
    pub fn hard_labels(&self) -> Vec<u32> {
        let Some(sparse) = &self.sparse else { return Vec::new() };
        (0..self.rows.len())
            .map(|r| {
                let (clusters, values) = sparse.row(r);
                clusters.iter().zip(values).fold((u32::MAX, f32::NEG_INFINITY), |best, (&c, &v)| if v > best.1 || (v == best.1 && c < best.0) { (c, v) } else { best }).0
            })
            .collect()
    }

    /// Nonzero memberships as flattened `(batch, position, cluster)` triplets, sorted in that
    /// order (docs/formats.md "Memberships file"), for tokens laid out `seq_len` to a sequence.
    pub fn coo_indices(&self, seq_len: usize) -> Vec<i64> {
        let Some(sparse) = &self.sparse else { return Vec::new() };
        let seq_len = seq_len.max(1);
        let mut out = Vec::with_capacity(sparse.nnz() * 3);
        for (r, &t) in self.rows.token.iter().enumerate() {
            let (batch, position) = (t as usize / seq_len, t as usize % seq_len);
            for &c in sparse.row(r).0 {
                out.extend([batch as i64, position as i64, i64::from(c)]);
            }
        }
        out
    }
}
