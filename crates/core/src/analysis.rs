//! Quality metrics of a clustering under fixed centers, over one batch of tokens
//! (`analyzeSequentialClusters` of README "Use it from TypeScript") or streamed over chunk files (`soft-cluster analyze`).
//!
//! Notation: the `N` tokens are the real, non-zero tokens (each has a membership row); `x` is a
//! token scaled to unit length, `C_k` the unit centers, `p_k(x)` the memberships of docs/algorithm.md "Memberships" (after
//! the threshold, so most are 0), `cos(x, C_k) = x . C_k`, `K` the number of clusters.
//! Per cluster `k`:
//! - `mass = sum_x p_k(x)`; `hard_count` = tokens whose largest membership is `k` (as the model's
//!   `cluster_count`);
//! - `mean_cosine = sum_x p_k(x) cos(x, C_k) / mass` (0 when the mass is 0);
//! - `max_membership = max_x p_k(x)`; `mean_membership` = mean of `p_k(x)` over the tokens where it
//!   is nonzero (0 when there are none); `nonzero_fraction` = the share of the `N` tokens where it is;
//! - `histogram[b]` = how many nonzero `p_k(x)` fall in `[b / bins, (b + 1) / bins)` (the last bin
//!   includes 1);
//! - `top_tokens`: token ids by `sum p_k(x)` over their occurrences, largest first (ties: smaller id);
//! - `lift_tokens`: token ids special to the cluster rather than frequent everywhere. With `w_k(t)`
//!   the cluster's summed membership over the occurrences of token `t`, `n(t)` its occurrences among
//!   the `N` tokens (counted in the same pass) and `E_k(t) = n(t) mass_k / N` the weight `t` would
//!   have if it were spread over the clusters like every token,
//!   `lift_k(t) = (w_k(t) + a) / (E_k(t) + a)` with the smoothing `a = lift_smoothing` (default 1,
//!   one pseudo-occurrence): a token seen once scores at most about 2, so rare tokens do not crowd
//!   out frequent ones that land mostly here. Tokens with `lift > 1` only, highest first (ties:
//!   larger weight, then smaller id), at most `top_tokens`;
//! - `nearest_center` = `argmax_{j != k} cos(C_k, C_j)` (ties: smaller j) and that cosine;
//!   `nearest_centers`: the `NEAREST_CENTERS` other centers with the largest cosine, in that order.
//!
//! Overall:
//! - normalized partition entropy `= mean_x (-sum_k p_k ln p_k) / ln K` (0 when `K = 1`): 0 for hard
//!   memberships, 1 when every token is spread evenly over all clusters;
//! - partition coefficient `= mean_x sum_k p_k^2`: 1 for hard memberships, `1 / K` at the most spread;
//! - `mean_nonzero_per_token` = nonzero memberships / `N`;
//! - spherical Xie-Beni `= sum_x sum_k p_k^2 (1 - cos(x, C_k)) / (N * min_{j != l} (1 - cos(C_j, C_l)))`:
//!   compactness over separation, lower is better; `None` when `K = 1` or two centers coincide;
//! - cosine silhouette on a seeded sample: a uniform sample of at most `silhouette_sample` tokens
//!   (reservoir sampling, seeded by `seed`, over the tokens in stream order), each hard-assigned to
//!   the argmax of its memberships (ties: smaller k), with the distance `1 - cos`. For a sampled `i`
//!   in cluster `A`: `a(i)` = mean distance to the other sampled tokens of `A`, `b(i)` = the smallest
//!   mean distance to the sampled tokens of another cluster, `s(i) = (b - a) / max(a, b)` (0 when `i`
//!   is alone in `A`, or `max(a, b) = 0`); the silhouette is the mean of `s(i)`. `None` when the
//!   sample holds fewer than two clusters.
//!
//! And for the report: `center_similarity[j][l] = cos(C_j, C_l)` (only up to
//! `SIMILARITY_MAX_K` clusters: the matrix is `8 K^2` bytes) and `center_map`, the centers'
//! coordinates on the first two principal components of the (mean-centered) centers.
//! The cosines between centers come from one float32 GEMM in blocks of rows (`CenterGeometry`),
//! so K = 16384 costs seconds and `O(K)` memory beyond the block.

use crate::config::ClusteringConfig;
use crate::error::{Error, Result};
use crate::stream::{report, reservoir_slot, visit_chunks, Phase, Progress};
use crate::kernels::{unit_row, Backend, Centers, MembershipParams, Tokens, Want};
use crate::model::Model;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

/// What `analyze` computes beyond the fixed metrics.
#[derive(Debug, Clone, Copy)]
pub struct AnalyzeOptions {
    /// Token ids listed per cluster.
    pub top_tokens: usize,
    /// Bins of the membership histograms, over `(0, 1]`.
    pub histogram_bins: usize,
    /// Most tokens in the silhouette's sample.
    pub silhouette_sample: usize,
    /// Seed of the silhouette's sample.
    pub seed: u64,
    /// `a` of `lift_k(t)` (module documentation): pseudo-occurrences added to the observed and
    /// expected weight of a token.
    pub lift_smoothing: f64,
}

impl Default for AnalyzeOptions {
    fn default() -> Self {
        AnalyzeOptions { top_tokens: 10, histogram_bins: 10, silhouette_sample: 2000, seed: 0, lift_smoothing: 1.0 }
    }
}

impl AnalyzeOptions {
    /// Refuses options no metric can use.
    pub fn validate(&self) -> Result<()> {
        if !(self.lift_smoothing.is_finite() && self.lift_smoothing >= 0.0) {
            return Err(Error::invalid_input("liftSmoothing", format!("must be a finite number >= 0, got {}", self.lift_smoothing)));
        }
        Ok(())
    }
}

/// A token id special to a cluster: `lift_k(t)` of the module documentation.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenLift {
    pub token_id: i64,
    pub lift: f64,
    /// `w_k(t)`: the cluster's summed membership over the token's occurrences.
    pub weight: f64,
    /// `n(t)`: the token's occurrences among all the tokens analyzed.
    pub count: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenWeight {
    pub token_id: i64,
    /// Sum of this cluster's memberships over the occurrences of the token.
    pub weight: f64,
}

/// Per-cluster metrics (see the module documentation for their definitions).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStats {
    pub cluster: usize,
    pub mass: f64,
    pub hard_count: u64,
    pub mean_cosine: f64,
    pub max_membership: f64,
    pub mean_membership: f64,
    pub nonzero_fraction: f64,
    pub histogram: Vec<u64>,
    pub top_tokens: Vec<TokenWeight>,
    pub lift_tokens: Vec<TokenLift>,
    pub nearest_center: Option<usize>,
    pub nearest_center_cosine: Option<f64>,
    /// `(cluster, cosine)` of the closest other centers, closest first (ties: smaller id).
    pub nearest_centers: Vec<(usize, f64)>,
}

/// Other centers listed per cluster in `nearest_centers`.
pub const NEAREST_CENTERS: usize = 10;

/// Largest `K` whose full `center_similarity` matrix an analysis returns (8 MiB of float64).
pub const SIMILARITY_MAX_K: usize = 1024;

/// Metrics of the whole partition (see the module documentation).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Overall {
    pub n_tokens: u64,
    /// Real tokens without a direction (all zeros), which have no memberships.
    pub skipped: u64,
    pub partition_entropy: f64,
    pub partition_coefficient: f64,
    pub mean_nonzero_per_token: f64,
    pub xie_beni: Option<f64>,
    pub silhouette: Option<f64>,
    /// Tokens in the silhouette's sample.
    pub silhouette_sample: usize,
    /// Center pairs above cosine `fit::TWIN_COSINE`: centers collapsed onto one another.
    pub twins: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Analysis {
    pub n_clusters: usize,
    pub overall: Overall,
    pub clusters: Vec<ClusterStats>,
    /// `cos(C_j, C_l)`, `[K][K]`; empty above `SIMILARITY_MAX_K` clusters.
    pub center_similarity: Vec<Vec<f64>>,
    /// Each center's coordinates on the first two principal components of the centers.
    pub center_map: Vec<[f64; 2]>,
    /// Share of the centers' variance along each of the two components.
    pub center_map_variance: [f64; 2],
}

/// Accumulates the metrics over batches of tokens; `finish` turns the sums into an `Analysis`.
pub struct Analyzer<'a> {
    config: &'a ClusteringConfig,
    centers: &'a Centers,
    options: AnalyzeOptions,
    n_tokens: u64,
    skipped: u64,
    nnz: u64,
    entropy: f64,
    coefficient: f64,
    xie_beni: f64,
    mass: Vec<f64>,
    hard_count: Vec<u64>,
    weighted_cos: Vec<f64>,
    max: Vec<f64>,
    nonzero: Vec<u64>,
    histogram: Vec<Vec<u64>>,
    weights: Vec<HashMap<i64, f64>>,
    /// `n(t)`: occurrences of each token id among the tokens with memberships.
    token_counts: HashMap<i64, u64>,
    rng: ChaCha8Rng,
    /// Unit vectors of the silhouette sample, `[n, D]`, and their hard clusters.
    sample: Vec<f32>,
    sample_label: Vec<u32>,
}

impl<'a> Analyzer<'a> {
    pub fn new(config: &'a ClusteringConfig, centers: &'a Centers, options: AnalyzeOptions) -> Self {
        let k = centers.k;
        Analyzer {
            config,
            centers,
            options,
            n_tokens: 0,
            skipped: 0,
            nnz: 0,
            entropy: 0.0,
            coefficient: 0.0,
            xie_beni: 0.0,
            mass: vec![0.0; k],
            hard_count: vec![0; k],
            weighted_cos: vec![0.0; k],
            max: vec![0.0; k],
            nonzero: vec![0; k],
            histogram: vec![vec![0; options.histogram_bins.max(1)]; k],
            weights: vec![HashMap::new(); k],
            token_counts: HashMap::new(),
            rng: ChaCha8Rng::seed_from_u64(options.seed),
            sample: Vec::new(),
            sample_label: Vec::new(),
        }
    }

    /// Adds a batch of tokens; `token_ids`, if given, has one id per token (`B * S`).
    pub fn add(&mut self, backend: &dyn Backend, tokens: &Tokens, token_ids: Option<&[i64]>) -> Result<()> {
        if let Some(ids) = token_ids {
            if ids.len() != tokens.n_tokens() {
                return Err(Error::invalid_input("tokenIds", format!("has {} entries but there are {} tokens", ids.len(), tokens.n_tokens())));
            }
        }
        let out = backend.run(self.centers, tokens, MembershipParams::try_from(self.config)?, Want { sparse: true, stats: true, ..Want::default() })?;
        let stats = out.stats.expect("stats were asked for");
        let sparse = out.sparse.expect("sparse was asked for");
        self.skipped += out.rows.skipped;
        self.nnz += sparse.nnz() as u64;
        for (c, &h) in stats.hard_count.iter().enumerate() {
            self.hard_count[c] += h;
        }
        let (d, bins) = (self.centers.d, self.options.histogram_bins.max(1));
        let mut x = vec![0f32; d];
        for (r, (&t, &inv)) in out.rows.token.iter().zip(&out.rows.inv_norm).enumerate() {
            unit_row(tokens, t as usize, inv, &mut x);
            let (clusters, values) = sparse.row(r);
            if let Some(ids) = token_ids {
                *self.token_counts.entry(ids[t as usize]).or_default() += 1;
            }
            let mut argmax = (0usize, f32::NEG_INFINITY);
            for (&c, &p) in clusters.iter().zip(values) {
                let (c, p64) = (c as usize, f64::from(p));
                let cos: f64 = x.iter().zip(self.centers.row(c)).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum();
                if p > argmax.1 || (p == argmax.1 && c < argmax.0) {
                    argmax = (c, p);
                }
                if p64 > 0.0 {
                    self.entropy -= p64 * p64.ln();
                    self.nonzero[c] += 1;
                    self.histogram[c][((p64 * bins as f64) as usize).min(bins - 1)] += 1;
                }
                self.coefficient += p64 * p64;
                self.xie_beni += p64 * p64 * (1.0 - cos);
                self.mass[c] += p64;
                self.weighted_cos[c] += p64 * cos;
                self.max[c] = self.max[c].max(p64);
                if let Some(ids) = token_ids {
                    *self.weights[c].entry(ids[t as usize]).or_default() += p64;
                }
            }
            if let Some(slot) = reservoir_slot(&mut self.rng, self.n_tokens, self.options.silhouette_sample) {
                if slot == self.sample_label.len() {
                    self.sample.resize(self.sample.len() + d, 0.0);
                    self.sample_label.push(0);
                }
                self.sample[slot * d..(slot + 1) * d].copy_from_slice(&x);
                self.sample_label[slot] = argmax.0 as u32;
            }
            self.n_tokens += 1;
        }
        Ok(())
    }

    pub fn finish(self) -> Analysis {
        let (k, n) = (self.centers.k, self.n_tokens);
        let per_token = |v: f64| if n > 0 { v / n as f64 } else { 0.0 };
        let geometry = CenterGeometry::of(self.centers, NEAREST_CENTERS, k <= SIMILARITY_MAX_K);
        let min_separation = 1.0 - geometry.max_cosine;
        let xie_beni = (k > 1 && min_separation > 0.0 && n > 0).then(|| self.xie_beni / (n as f64 * min_separation));
        let (center_map, center_map_variance) = center_map(self.centers);
        let clusters = (0..k)
            .map(|c| {
                let mut top_tokens: Vec<TokenWeight> = self.weights[c].iter().map(|(&token_id, &weight)| TokenWeight { token_id, weight }).collect();
                top_tokens.sort_by(|a, b| b.weight.total_cmp(&a.weight).then(a.token_id.cmp(&b.token_id)));
                top_tokens.truncate(self.options.top_tokens);
                let lift_tokens = lift_tokens(&self.weights[c], &self.token_counts, self.mass[c], n, self.options);
                let nearest_centers = geometry.nearest[c].clone();
                let mass = self.mass[c];
                ClusterStats {
                    cluster: c,
                    mass,
                    hard_count: self.hard_count[c],
                    mean_cosine: if mass > 0.0 { self.weighted_cos[c] / mass } else { 0.0 },
                    max_membership: self.max[c],
                    mean_membership: if self.nonzero[c] > 0 { mass / self.nonzero[c] as f64 } else { 0.0 },
                    nonzero_fraction: per_token(self.nonzero[c] as f64),
                    histogram: self.histogram[c].clone(),
                    top_tokens,
                    lift_tokens,
                    nearest_center: nearest_centers.first().map(|n| n.0),
                    nearest_center_cosine: nearest_centers.first().map(|n| n.1),
                    nearest_centers,
                }
            })
            .collect();
        Analysis {
            n_clusters: k,
            overall: Overall {
                n_tokens: n,
                skipped: self.skipped,
                partition_entropy: if k > 1 { per_token(self.entropy) / (k as f64).ln() } else { 0.0 },
                partition_coefficient: per_token(self.coefficient),
                mean_nonzero_per_token: per_token(self.nnz as f64),
                xie_beni,
                silhouette: silhouette(&self.sample, &self.sample_label, self.centers.d, k),
                silhouette_sample: self.sample_label.len(),
                twins: geometry.twins,
            },
            clusters,
            center_similarity: geometry.similarity,
            center_map,
            center_map_variance,
        }
    }
}

/// The `lift_tokens` of one cluster from its token weights (module documentation).
fn lift_tokens(weights: &HashMap<i64, f64>, counts: &HashMap<i64, u64>, mass: f64, n: u64, options: AnalyzeOptions) -> Vec<TokenLift> {
    let a = options.lift_smoothing;
    let share = if n > 0 { mass / n as f64 } else { 0.0 };
    let mut lifts: Vec<TokenLift> = weights
        .iter()
        .map(|(&token_id, &weight)| {
            let count = counts.get(&token_id).copied().unwrap_or(0);
            TokenLift { token_id, lift: (weight + a) / (count as f64 * share + a), weight, count }
        })
        .filter(|t| t.lift > 1.0)
        .collect();
    lifts.sort_by(|x, y| y.lift.total_cmp(&x.lift).then(y.weight.total_cmp(&x.weight)).then(x.token_id.cmp(&y.token_id)));
    lifts.truncate(options.top_tokens);
    lifts
}

/// The metrics of one batch of tokens (`analyzeSequentialClusters`).
pub fn analyze(backend: &dyn Backend, config: &ClusteringConfig, centers: &Centers, tokens: &Tokens, token_ids: Option<&[i64]>, options: AnalyzeOptions) -> Result<Analysis> {
    options.validate()?;
    let mut analyzer = Analyzer::new(config, centers, options);
    analyzer.add(backend, tokens, token_ids)?;
    Ok(analyzer.finish())
}

/// The metrics of a model over chunk files, streamed one chunk at a time (`soft-cluster analyze`).
pub fn analyze_chunks(model: &Model, chunks: &[PathBuf], backend: &dyn Backend, options: AnalyzeOptions, progress: &mut dyn FnMut(&Progress)) -> Result<Analysis> {
    if chunks.is_empty() {
        return Err(Error::invalid_input("chunks", "no chunk files were given"));
    }
    options.validate()?;
    let mut analyzer = Analyzer::new(&model.config, &model.centers, options);
    let started = Instant::now();
    visit_chunks(chunks, model.config.d_model, |i, chunk| {
        analyzer.add(backend, &Tokens::from_chunk(&chunk, i), chunk.token_ids.as_deref())?;
        report(progress, Phase::Analyze, 0, model.config.n_iterations, i, chunks.len(), analyzer.n_tokens, started);
        Ok(())
    })?;
    Ok(analyzer.finish())
}

/// What the metrics need from the cosines between centers, in one pass over them.
pub struct CenterGeometry {
    /// Per cluster, the closest other centers, closest first (ties: smaller id).
    pub nearest: Vec<Vec<(usize, f64)>>,
    /// Pairs above `fit::TWIN_COSINE`.
    pub twins: usize,
    /// The largest cosine between two different centers (`-inf` when `K = 1`).
    pub max_cosine: f64,
    /// The whole matrix, when asked for; else empty.
    pub similarity: Vec<Vec<f64>>,
}

impl CenterGeometry {
    /// Cosines by a float32 GEMM of `ROWS` centers against all at a time: `O(K^2 D)` work in
    /// blocks, `O(K * ROWS)` memory beyond the results.
    pub fn of(centers: &Centers, nearest: usize, whole: bool) -> Self {
        const ROWS: usize = 1024;
        let (k, d) = (centers.k, centers.d);
        let mut geometry = CenterGeometry { nearest: Vec::with_capacity(k), twins: 0, max_cosine: f64::NEG_INFINITY, similarity: Vec::new() };
        for first in (0..k).step_by(ROWS) {
            let n = ROWS.min(k - first);
            let block = crate::kernels::cpu::cosines_on_host(crate::kernels::cpu::GemmCrate::default(), &centers.data[first * d..(first + n) * d], &centers.data, d);
            for (i, row) in block.chunks_exact(k).enumerate() {
                let c = first + i;
                let mut best: Vec<(usize, f64)> = Vec::with_capacity(nearest + 1);
                for (j, &cos) in row.iter().enumerate().filter(|&(j, _)| j != c) {
                    let cos = f64::from(cos);
                    geometry.max_cosine = geometry.max_cosine.max(cos);
                    if j > c && cos > crate::fit::TWIN_COSINE {
                        geometry.twins += 1;
                    }
                    // Kept sorted by cosine, then id; a later id with an equal cosine goes after.
                    if best.len() < nearest || best.last().is_some_and(|&(_, b)| cos > b) {
                        let at = best.partition_point(|&(_, b)| b >= cos);
                        best.insert(at, (j, cos));
                        best.truncate(nearest);
                    }
                }
                geometry.nearest.push(best);
                if whole {
                    geometry.similarity.push(row.iter().map(|&v| f64::from(v)).collect());
                }
            }
        }
        geometry
    }
}

/// Coordinates of the centers on the first two principal components of the mean-centered centers,
/// and the share of the variance along each. The components come from power iteration on the
/// `K x K` Gram matrix `X X^T` (deflated after the first), applied as `X (X^T v)` without forming
/// it: `O(K D)` per step. Each is signed so its largest coordinate is positive.
pub fn center_map(centers: &Centers) -> (Vec<[f64; 2]>, [f64; 2]) {
    let (k, d) = (centers.k, centers.d);
    let mean: Vec<f64> = (0..d).map(|j| (0..k).map(|c| f64::from(centers.row(c)[j])).sum::<f64>() / k as f64).collect();
    let x: Vec<f64> = (0..k).flat_map(|c| centers.row(c).iter().zip(&mean).map(|(&v, m)| f64::from(v) - m).collect::<Vec<_>>()).collect();
    let trace: f64 = x.iter().map(|v| v * v).sum();
    let mut found: Vec<(f64, Vec<f64>)> = Vec::new();
    let gram_times = |v: &[f64], found: &[(f64, Vec<f64>)]| -> Vec<f64> {
        let mut xt_v = vec![0f64; d];
        for (row, &vi) in x.chunks_exact(d).zip(v) {
            xt_v.iter_mut().zip(row).for_each(|(a, &r)| *a += r * vi);
        }
        let mut w: Vec<f64> = x.chunks_exact(d).map(|row| row.iter().zip(&xt_v).map(|(a, b)| a * b).sum()).collect();
        for (lambda, u) in found {
            let along: f64 = u.iter().zip(v).map(|(a, b)| a * b).sum::<f64>() * lambda;
            w.iter_mut().zip(u).for_each(|(a, &b)| *a -= along * b);
        }
        w
    };
    let mut coords = vec![[0.0; 2]; k];
    let mut variance = [0.0; 2];
    for axis in 0..2 {
        // Irregular start vectors, a different one per axis: when the top eigenvalue is repeated,
        // the first axis's start vector has nothing left after deflation.
        let mut v: Vec<f64> = (0..k).map(|i| 1.0 + ((i as f64 + 1.0) * (2.0 + axis as f64)).sqrt().fract()).collect();
        let mut lambda = 0.0;
        for _ in 0..1000 {
            let w = gram_times(&v, &found);
            let norm = w.iter().map(|x| x * x).sum::<f64>().sqrt();
            if norm <= 1e-12 * trace.max(1e-300) {
                lambda = 0.0;
                break;
            }
            let next: Vec<f64> = w.iter().map(|x| x / norm).collect();
            let change: f64 = next.iter().zip(&v).map(|(a, b)| (a - b).abs()).sum();
            v = next;
            lambda = norm;
            if change < 1e-12 {
                break;
            }
        }
        if lambda == 0.0 {
            break;
        }
        let biggest = v.iter().copied().fold(0.0f64, |m, x| if x.abs() > m.abs() { x } else { m });
        let sign = if biggest < 0.0 { -1.0 } else { 1.0 };
        for i in 0..k {
            coords[i][axis] = sign * v[i] * lambda.sqrt();
        }
        variance[axis] = if trace > 0.0 { lambda / trace } else { 0.0 };
        found.push((lambda, v));
    }
    (coords, variance)
}

/// Mean cosine silhouette of unit vectors `sample` (`[n, d]`) with hard `labels` (see the module
/// documentation); `None` with fewer than two clusters present.
pub fn silhouette(sample: &[f32], labels: &[u32], d: usize, k: usize) -> Option<f64> {
    let n = labels.len();
    let mut size = vec![0usize; k];
    labels.iter().for_each(|&l| size[l as usize] += 1);
    if size.iter().filter(|&&s| s > 0).count() < 2 {
        return None;
    }
    // Gram matrix of the sample, one SGEMM: g = S S^T.
    let mut gram = vec![0f32; n * n];
    // SAFETY: the pointers cover n x d (sample, read as S and as S^T) and n x n (gram) elements.
    unsafe {
        matrixmultiply::sgemm(n, d, n, 1.0, sample.as_ptr(), d as isize, 1, sample.as_ptr(), 1, d as isize, 0.0, gram.as_mut_ptr(), n as isize, 1);
    }
    let mut total = 0.0;
    let mut sums = vec![0f64; k];
    for i in 0..n {
        sums.iter_mut().for_each(|s| *s = 0.0);
        for j in (0..n).filter(|&j| j != i) {
            sums[labels[j] as usize] += 1.0 - f64::from(gram[i * n + j]);
        }
        let own = labels[i] as usize;
        if size[own] < 2 {
            continue; // s(i) = 0
        }
        let a = sums[own] / (size[own] - 1) as f64;
        let b = (0..k).filter(|&c| c != own && size[c] > 0).map(|c| sums[c] / size[c] as f64).fold(f64::INFINITY, f64::min);
        let m = a.max(b);
        if m > 0.0 {
            total += (b - a) / m;
        }
    }
    Some(total / n as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::cpu::CpuBackend;
    use crate::config::Temperature;
    use crate::chunk::ActivationsRef;
    use rand::Rng;

    #[test]
    fn statistics_match_a_hand_computation() {
        // Three tokens on two axis centers, hard memberships (tiny temperature).
        let acts = vec![2.0f32, 0.0, 1.0, 1.0, 0.0, 3.0];
        let ids = vec![7i64, 7, 9];
        let centers = Centers::from_rows(2, 2, vec![1.0, 0.0, 0.0, 1.0]).unwrap();
        let mut config = ClusteringConfig::new(2, 2);
        config.temperature = Temperature::Fixed(0.05);
        config.min_membership = 0.001;
        let tokens = Tokens { source: "activations", chunk_index: 0, first_row: 0, activations: ActivationsRef::F32(&acts), seq_len: 3, d: 2, mask: None };
        let options = AnalyzeOptions { top_tokens: 5, ..AnalyzeOptions::default() };
        let a = analyze(&CpuBackend::default(), &config, &centers, &tokens, Some(&ids), options).unwrap();
        let stats = &a.clusters;
        // Token (1,1) splits evenly (both cosines 0.707): p = 0.5 each.
        assert!((stats[0].mass - 1.5).abs() < 1e-6 && (stats[1].mass - 1.5).abs() < 1e-6);
        assert_eq!((stats[0].hard_count, stats[1].hard_count), (2, 1));
        let h = std::f64::consts::FRAC_1_SQRT_2;
        assert!((stats[0].mean_cosine - (1.0 + 0.5 * h) / 1.5).abs() < 1e-6);
        assert_eq!(stats[0].top_tokens, vec![TokenWeight { token_id: 7, weight: stats[0].top_tokens[0].weight }]);
        assert!((stats[0].top_tokens[0].weight - 1.5).abs() < 1e-6);
        assert_eq!(stats[1].top_tokens.iter().map(|t| t.token_id).collect::<Vec<_>>(), vec![9, 7]);
        assert_eq!(stats[0].histogram[5] + stats[0].histogram[9], 2);
        // Lift (a = 1, N = 3): token 9 is all cluster 1's, token 7 is cluster 0's; 7 is below 1 in cluster 1.
        assert_eq!(stats[1].lift_tokens, vec![TokenLift { token_id: 9, lift: stats[1].lift_tokens[0].lift, weight: stats[1].lift_tokens[0].weight, count: 1 }]);
        assert!((stats[1].lift_tokens[0].lift - 2.0 / 1.5).abs() < 1e-6);
        assert_eq!((stats[0].lift_tokens[0].token_id, stats[0].lift_tokens[0].count), (7, 2));
        assert!((stats[0].lift_tokens[0].lift - 2.5 / 2.0).abs() < 1e-6 && stats[0].lift_tokens.len() == 1);
        assert!((a.overall.partition_entropy - (2f64.ln() / 3.0) / 2f64.ln()).abs() < 1e-6);
        assert!((a.overall.partition_coefficient - (2.0 + 0.5) / 3.0).abs() < 1e-6);
        assert_eq!(a.clusters[0].nearest_center, Some(1));
        let err = analyze(&CpuBackend::default(), &config, &centers, &tokens, Some(&ids[..2]), options).unwrap_err();
        assert!(err.to_string().contains("tokenIds: has 2 entries but there are 3 tokens"));
    }

    /// Every metric by the plain formulas, in float64, from dense memberships.
    fn naive(acts: &[f32], mask: &[u8], ids: &[i64], d: usize, centers: &Centers, config: &ClusteringConfig, bins: usize, top: usize) -> Analysis {
        let k = centers.k;
        let mut xs: Vec<Vec<f64>> = Vec::new();
        let mut row_ids = Vec::new();
        for t in 0..mask.len() {
            let a: Vec<f64> = acts[t * d..(t + 1) * d].iter().map(|&v| f64::from(v)).collect();
            let norm = a.iter().map(|v| v * v).sum::<f64>().sqrt();
            if mask[t] != 0 && norm > 0.0 {
                xs.push(a.iter().map(|v| v / norm).collect());
                row_ids.push(ids[t]);
            }
        }
        let cosine = |x: &[f64], c: usize| x.iter().zip(centers.row(c)).map(|(a, &b)| a * f64::from(b)).sum::<f64>();
        let ps: Vec<Vec<f64>> = xs
            .iter()
            .map(|x| {
                let s: Vec<f64> = (0..k).map(|c| cosine(x, c) / config.temperature.value().unwrap()).collect();
                let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|v| (v - max).exp()).collect();
                let sum: f64 = e.iter().sum();
                let am = (0..k).fold(0, |b, c| if s[c] > s[b] { c } else { b });
                let kept: Vec<f64> = e.iter().enumerate().map(|(c, v)| if v / sum < config.min_membership && c != am { 0.0 } else { v / sum }).collect();
                let t: f64 = kept.iter().sum();
                kept.iter().map(|v| v / t).collect()
            })
            .collect();
        let n = xs.len() as f64;
        let sim = |j: usize, l: usize| centers.row(j).iter().zip(centers.row(l)).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum::<f64>();
        let mut clusters = Vec::new();
        for c in 0..k {
            let col: Vec<f64> = ps.iter().map(|p| p[c]).collect();
            let mass: f64 = col.iter().sum();
            let nz: Vec<f64> = col.iter().copied().filter(|&p| p > 0.0).collect();
            let mut hist = vec![0u64; bins];
            nz.iter().for_each(|&p| hist[((p * bins as f64) as usize).min(bins - 1)] += 1);
            let mut w: HashMap<i64, f64> = HashMap::new();
            for (r, p) in col.iter().enumerate() {
                if *p > 0.0 {
                    *w.entry(row_ids[r]).or_default() += p;
                }
            }
            let top_weights = w.clone();
            let mut top_tokens: Vec<TokenWeight> = w.into_iter().map(|(token_id, weight)| TokenWeight { token_id, weight }).collect();
            top_tokens.sort_by(|a, b| b.weight.total_cmp(&a.weight).then(a.token_id.cmp(&b.token_id)));
            top_tokens.truncate(top);
            let count = |t: i64| row_ids.iter().filter(|&&r| r == t).count() as u64;
            let mut lift_tokens: Vec<TokenLift> = top_weights
                .into_iter()
                .map(|(token_id, weight)| TokenLift { token_id, lift: (weight + 1.0) / (count(token_id) as f64 * mass / n + 1.0), weight, count: count(token_id) })
                .filter(|t| t.lift > 1.0)
                .collect();
            lift_tokens.sort_by(|a, b| b.lift.total_cmp(&a.lift).then(b.weight.total_cmp(&a.weight)).then(a.token_id.cmp(&b.token_id)));
            lift_tokens.truncate(top);
            let others: Vec<usize> = (0..k).filter(|&j| j != c).collect();
            let nearest = others.iter().copied().reduce(|b, j| if sim(c, j) > sim(c, b) { j } else { b });
            clusters.push(ClusterStats {
                cluster: c,
                mass,
                hard_count: ps.iter().filter(|p| (0..k).fold(0, |b, j| if p[j] > p[b] { j } else { b }) == c).count() as u64,
                mean_cosine: col.iter().zip(&xs).map(|(p, x)| p * cosine(x, c)).sum::<f64>() / mass,
                max_membership: col.iter().copied().fold(0.0, f64::max),
                mean_membership: nz.iter().sum::<f64>() / nz.len() as f64,
                nonzero_fraction: nz.len() as f64 / n,
                histogram: hist,
                top_tokens,
                lift_tokens,
                nearest_center: nearest,
                nearest_center_cosine: nearest.map(|j| sim(c, j)),
                nearest_centers: naive_nearest(centers, c),
            });
        }
        let min_sep = (0..k).flat_map(|j| (0..k).filter(move |&l| l != j).map(move |l| (j, l))).map(|(j, l)| 1.0 - sim(j, l)).fold(f64::INFINITY, f64::min);
        let xb: f64 = ps.iter().zip(&xs).map(|(p, x)| (0..k).map(|c| p[c] * p[c] * (1.0 - cosine(x, c))).sum::<f64>()).sum();
        // Silhouette over every token (the sample holds them all when it is big enough).
        let labels: Vec<usize> = ps.iter().map(|p| (0..k).fold(0, |b, j| if p[j] > p[b] { j } else { b })).collect();
        let dist = |i: usize, j: usize| 1.0 - xs[i].iter().zip(&xs[j]).map(|(a, b)| a * b).sum::<f64>();
        let mut s_total = 0.0;
        for i in 0..xs.len() {
            let mean_to = |c: usize| {
                let js: Vec<usize> = (0..xs.len()).filter(|&j| j != i && labels[j] == c).collect();
                (!js.is_empty()).then(|| js.iter().map(|&j| dist(i, j)).sum::<f64>() / js.len() as f64)
            };
            let Some(a) = mean_to(labels[i]) else { continue };
            let b = (0..k).filter(|&c| c != labels[i]).filter_map(mean_to).fold(f64::INFINITY, f64::min);
            s_total += (b - a) / a.max(b);
        }
        Analysis {
            n_clusters: k,
            overall: Overall {
                n_tokens: xs.len() as u64,
                skipped: 0,
                partition_entropy: ps.iter().map(|p| -p.iter().filter(|&&v| v > 0.0).map(|v| v * v.ln()).sum::<f64>()).sum::<f64>() / n / (k as f64).ln(),
                partition_coefficient: ps.iter().map(|p| p.iter().map(|v| v * v).sum::<f64>()).sum::<f64>() / n,
                mean_nonzero_per_token: ps.iter().map(|p| p.iter().filter(|&&v| v > 0.0).count()).sum::<usize>() as f64 / n,
                xie_beni: Some(xb / (n * min_sep)),
                silhouette: Some(s_total / n),
                silhouette_sample: xs.len(),
                twins: (0..k).map(|j| (j + 1..k).filter(|&l| sim(j, l) > 0.99).count()).sum(),
            },
            clusters,
            center_similarity: (0..k).map(|j| (0..k).map(|l| sim(j, l)).collect()).collect(),
            center_map: Vec::new(),
            center_map_variance: [0.0; 2],
        }
    }

    fn dot64(a: &[f32], b: &[f32]) -> f64 {
        a.iter().zip(b).map(|(&x, &y)| f64::from(x) * f64::from(y)).sum()
    }

    /// The closest other centers by the plain float64 formula, closest first (ties: smaller id).
    fn naive_nearest(centers: &Centers, c: usize) -> Vec<(usize, f64)> {
        let mut all: Vec<(usize, f64)> = (0..centers.k).filter(|&j| j != c).map(|j| (j, dot64(centers.row(c), centers.row(j)))).collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        all.truncate(NEAREST_CENTERS);
        all
    }

    #[test]
    fn center_geometry_scales_past_the_whole_matrix() {
        // More clusters than SIMILARITY_MAX_K, three planted twin pairs.
        let (k, d) = (SIMILARITY_MAX_K + 76, 16);
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut rows: Vec<f32> = (0..k * d).map(|_| rng.random_range(-1.0..1.0)).collect();
        for (a, b) in [(3, 900), (17, 1090), (500, 501)] {
            let src: Vec<f32> = rows[a * d..(a + 1) * d].iter().map(|v| v + 0.001).collect();
            rows[b * d..(b + 1) * d].copy_from_slice(&src);
        }
        let centers = Centers::from_rows(k, d, rows).unwrap();
        let g = CenterGeometry::of(&centers, NEAREST_CENTERS, false);
        assert!(g.similarity.is_empty());
        assert_eq!(g.twins, 3);
        assert_eq!(g.nearest[900][0].0, 3);
        for c in (0..k).step_by(97) {
            let want = naive_nearest(&centers, c);
            assert_eq!(g.nearest[c].iter().map(|n| n.0).collect::<Vec<_>>(), want.iter().map(|n| n.0).collect::<Vec<_>>(), "cluster {c}");
            g.nearest[c].iter().zip(&want).for_each(|(a, b)| close(a.1, b.1, "cosine"));
        }
        let max = (0..k).flat_map(|j| naive_nearest(&centers, j).first().map(|n| n.1)).fold(f64::NEG_INFINITY, f64::max);
        close(g.max_cosine, max, "largest cosine");
        // The map of many centers is their projection: distances within the plane never exceed
        // the true ones, and the two components hold the variance they claim.
        let (map, variance) = center_map(&centers);
        assert!(variance[0] >= variance[1] && variance[1] > 0.0 && variance[0] + variance[1] < 1.0);
        let proj_var: f64 = map.iter().map(|p| p[0] * p[0] + p[1] * p[1]).sum();
        let mean: Vec<f64> = (0..d).map(|j| (0..k).map(|c| f64::from(centers.row(c)[j])).sum::<f64>() / k as f64).collect();
        let total: f64 = (0..k).map(|c| centers.row(c).iter().zip(&mean).map(|(&v, m)| (f64::from(v) - m).powi(2)).sum::<f64>()).sum();
        close(proj_var / total, variance[0] + variance[1], "projected variance");
    }

    fn close(a: f64, b: f64, what: &str) {
        assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{what}: {a} vs {b}");
    }

    #[test]
    fn every_metric_matches_a_naive_computation_on_random_data() {
        for seed in 0..4u64 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let (b, s, d, k) = (3, 20, 8, 4);
            let acts: Vec<f32> = (0..b * s * d).map(|_| rng.random_range(-1.0..1.0)).collect();
            let mask: Vec<u8> = (0..b * s).map(|t| u8::from(t % 7 != 3)).collect();
            let ids: Vec<i64> = (0..b * s).map(|_| rng.random_range(0..12)).collect();
            let centers = Centers::from_rows(k, d, (0..k * d).map(|_| rng.random_range(-1.0..1.0)).collect()).unwrap();
            let mut config = ClusteringConfig::new(k, d);
            config.temperature = Temperature::Fixed(0.2);
            config.min_membership = 0.05;
            let tokens = Tokens { source: "activations", chunk_index: 0, first_row: 0, activations: ActivationsRef::F32(&acts), seq_len: s, d, mask: Some(&mask) };
            let options = AnalyzeOptions { top_tokens: 5, histogram_bins: 7, silhouette_sample: 1000, seed, ..AnalyzeOptions::default() };
            let got = analyze(&CpuBackend::default(), &config, &centers, &tokens, Some(&ids), options).unwrap();
            let want = naive(&acts, &mask, &ids, d, &centers, &config, 7, 5);
            let (g, w) = (&got.overall, &want.overall);
            assert_eq!((g.n_tokens, g.silhouette_sample, g.twins), (w.n_tokens, w.silhouette_sample, w.twins));
            close(g.partition_entropy, w.partition_entropy, "partition entropy");
            close(g.partition_coefficient, w.partition_coefficient, "partition coefficient");
            close(g.mean_nonzero_per_token, w.mean_nonzero_per_token, "nonzero per token");
            close(g.xie_beni.unwrap(), w.xie_beni.unwrap(), "Xie-Beni");
            close(g.silhouette.unwrap(), w.silhouette.unwrap(), "silhouette");
            for (gc, wc) in got.clusters.iter().zip(&want.clusters) {
                assert_eq!((gc.hard_count, &gc.histogram, gc.nearest_center), (wc.hard_count, &wc.histogram, wc.nearest_center), "cluster {}", gc.cluster);
                for (a, b, what) in [
                    (gc.mass, wc.mass, "mass"),
                    (gc.mean_cosine, wc.mean_cosine, "mean cosine"),
                    (gc.max_membership, wc.max_membership, "max"),
                    (gc.mean_membership, wc.mean_membership, "mean"),
                    (gc.nonzero_fraction, wc.nonzero_fraction, "nonzero fraction"),
                    (gc.nearest_center_cosine.unwrap(), wc.nearest_center_cosine.unwrap(), "nearest center"),
                ] {
                    close(a, b, what);
                }
                assert_eq!(gc.top_tokens.iter().map(|t| t.token_id).collect::<Vec<_>>(), wc.top_tokens.iter().map(|t| t.token_id).collect::<Vec<_>>());
                assert_eq!(gc.nearest_centers.iter().map(|n| n.0).collect::<Vec<_>>(), wc.nearest_centers.iter().map(|n| n.0).collect::<Vec<_>>());
                assert_eq!(gc.nearest_centers.len(), k - 1);
                gc.top_tokens.iter().zip(&wc.top_tokens).for_each(|(a, b)| close(a.weight, b.weight, "top token weight"));
                let lifts = |c: &ClusterStats| c.lift_tokens.iter().map(|t| (t.token_id, t.count)).collect::<Vec<_>>();
                assert_eq!(lifts(gc), lifts(wc), "lift tokens of cluster {}", gc.cluster);
                assert!(!wc.lift_tokens.is_empty());
                gc.lift_tokens.iter().zip(&wc.lift_tokens).for_each(|(a, b)| close(a.lift, b.lift, "lift"));
            }
            for (gr, wr) in got.center_similarity.iter().zip(&want.center_similarity) {
                gr.iter().zip(wr).for_each(|(a, b)| close(*a, *b, "center similarity"));
            }
        }
    }

    #[test]
    fn twins_are_the_center_pairs_above_cosine_0_99() {
        let d = 3;
        // Centers 0 and 2 at cosine 0.995, 1 apart; 3 at cosine 0.98 of 0 (not a twin).
        let (c, s) = (0.995f32, (1.0f32 - 0.995 * 0.995).sqrt());
        let (c3, s3) = (0.98f32, (1.0f32 - 0.98 * 0.98).sqrt());
        let rows = vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0, c, 0.0, s, c3, 0.0, -s3];
        let centers = Centers::from_rows(4, d, rows).unwrap();
        let config = ClusteringConfig { temperature: Temperature::Fixed(0.1), ..ClusteringConfig::new(4, d) };
        let acts = [1.0f32, 0.2, 0.1, 0.1, 1.0, 0.0];
        let tokens = Tokens { source: "a", chunk_index: 0, first_row: 0, activations: ActivationsRef::F32(&acts), seq_len: 2, d, mask: None };
        let a = analyze(&CpuBackend::default(), &config, &centers, &tokens, None, AnalyzeOptions::default()).unwrap();
        assert_eq!(a.overall.twins, 1);
    }

    #[test]
    fn silhouette_sample_is_bounded_seeded_and_streaming() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let (s, d, k) = (500, 6, 3);
        let acts: Vec<f32> = (0..s * d).map(|_| rng.random_range(-1.0..1.0)).collect();
        let centers = Centers::from_rows(k, d, (0..k * d).map(|_| rng.random_range(-1.0..1.0)).collect()).unwrap();
        let config = ClusteringConfig { temperature: Temperature::Fixed(1.0), ..ClusteringConfig::new(k, d) };
        let options = AnalyzeOptions { silhouette_sample: 100, ..AnalyzeOptions::default() };
        let whole = Tokens { source: "a", chunk_index: 0, first_row: 0, activations: ActivationsRef::F32(&acts), seq_len: s, d, mask: None };
        let one = analyze(&CpuBackend::default(), &config, &centers, &whole, None, options).unwrap();
        assert_eq!(one.overall.silhouette_sample, 100);
        // The same tokens in two batches: the same sample, so the same silhouette.
        let mut two = Analyzer::new(&config, &centers, options);
        for half in acts.chunks(s / 2 * d) {
            let t = Tokens { source: "a", chunk_index: 0, first_row: 0, activations: ActivationsRef::F32(half), seq_len: s / 2, d, mask: None };
            two.add(&CpuBackend::default(), &t, None).unwrap();
        }
        let two = two.finish();
        assert_eq!(one.overall.silhouette, two.overall.silhouette);
        close(one.overall.partition_entropy, two.overall.partition_entropy, "entropy");
        let other = analyze(&CpuBackend::default(), &config, &centers, &whole, None, AnalyzeOptions { seed: 1, ..options }).unwrap();
        assert_ne!(one.overall.silhouette, other.overall.silhouette);
    }

    #[test]
    fn center_map_recovers_a_planar_layout() {
        // Four centers in a plane of R^3, offset along z: the map is that square, up to rotation.
        let h = std::f32::consts::FRAC_1_SQRT_2;
        let rows = vec![h, 0.0, h, -h, 0.0, h, 0.0, h, h, 0.0, -h, h];
        let centers = Centers::from_rows(4, 3, rows).unwrap();
        let (map, variance) = center_map(&centers);
        close(variance[0] + variance[1], 1.0, "variance");
        let dist2 = |a: [f64; 2], b: [f64; 2]| (a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2);
        let sim = CenterGeometry::of(&centers, NEAREST_CENTERS, true).similarity;
        for i in 0..4 {
            for j in 0..4 {
                // Squared Euclidean distance between unit centers: 2 - 2 cos.
                close(dist2(map[i], map[j]), 2.0 - 2.0 * sim[i][j], "distance");
            }
        }
        let single = Centers::from_rows(1, 3, vec![1.0, 0.0, 0.0]).unwrap();
        assert_eq!(center_map(&single), (vec![[0.0, 0.0]], [0.0, 0.0]));
    }
}
