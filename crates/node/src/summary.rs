//! What a fitted or loaded model knows besides its centers, as JS objects.

use napi_derive::napi;
use soft_cluster_core::Model;

/// One iteration of a fit (docs/algorithm.md "History").
#[napi(object)]
pub struct HistoryEntry {
    /// 1-based.
    pub iteration: u32,
    /// `mean_x sum_k p_k cos(x, C_k)` under the centers the pass started with.
    pub objective: f64,
    /// `max_k (1 - C_old_k . C_new_k)`.
    pub max_shift: f64,
    /// `m_k` of the pass.
    pub mass: Vec<f64>,
    /// Empty clusters and twins moved to a token in the update.
    pub reseeds: u32,
    /// Center pairs above cosine 0.99 after the update, before reseeding.
    pub twins: u32,
    /// Real tokens skipped in the pass because their vector is all zeros.
    pub skipped: f64,
    pub seconds: f64,
    /// Where the pass read its chunks: `host cache, N bytes`, or `files (why)`.
    pub data: String,
}

impl From<&soft_cluster_core::HistoryEntry> for HistoryEntry {
    fn from(h: &soft_cluster_core::HistoryEntry) -> Self {
        HistoryEntry {
            iteration: h.iteration as u32,
            objective: h.objective,
            max_shift: h.max_shift,
            mass: h.mass.clone(),
            reseeds: h.reseeds as u32,
            twins: h.twins as u32,
            skipped: h.skipped as f64,
            seconds: h.seconds,
            data: h.data.clone(),
        }
    }
}

/// A token that belongs to a cluster most, with its context (docs/algorithm.md "Exemplars").
#[napi(object)]
pub struct Exemplar {
    /// The token's membership in the cluster.
    pub value: f64,
    /// Index into `chunks`.
    pub chunk: u32,
    pub batch: u32,
    pub position: u32,
    /// Token ids of positions `position - w ... position + w` (-1 outside the sequence, at
    /// padding, or when the chunk has no token ids).
    pub tokens: Vec<i64>,
    /// This cluster's membership at those positions.
    pub context_memberships: Vec<f64>,
}

/// A float32 as the number its shortest decimal spelling denotes (what it printed as in JSON).
fn f32_number(v: f32) -> f64 {
    v.to_string().parse().unwrap_or(f64::from(v))
}

impl From<&soft_cluster_core::exemplars::Exemplar> for Exemplar {
    fn from(e: &soft_cluster_core::exemplars::Exemplar) -> Self {
        Exemplar {
            value: f32_number(e.value),
            chunk: e.chunk as u32,
            batch: e.batch as u32,
            position: e.position as u32,
            tokens: e.tokens.clone(),
            context_memberships: e.context_memberships.iter().copied().map(f32_number).collect(),
        }
    }
}

/// What a fitted (or loaded) model knows besides its centers.
#[napi(object)]
pub struct ModelSummary {
    /// `m_k` of the output pass.
    pub cluster_mass: Vec<f64>,
    /// Tokens whose largest membership is k, in the output pass.
    pub cluster_count: Vec<f64>,
    /// Per cluster, best first.
    pub exemplars: Vec<Vec<Exemplar>>,
    pub history: Vec<HistoryEntry>,
    /// Chunk file names, in run order.
    pub chunks: Vec<String>,
    /// Where the fit ran, and why there, e.g. `cpu (auto: no usable GPU: ...)` (stored in the
    /// model file). Absent for a model given `initialCenters` and never fitted.
    pub device: Option<String>,
    /// What the fit found wrong with its result (collapse, twins), one line each
    /// (docs/algorithm.md "Collapse warning"); empty when all is well.
    pub warnings: Vec<String>,
    /// Whether the model keeps the sums an update, merge or split needs (`format_version` 2).
    pub has_statistics: bool,
    /// Merges, splits, updates and refits since the fit, in order.
    pub operations: Vec<OperationInfo>,
    /// `[cluster][bin]`: examples across the range of memberships (bin `b` of 10 holds
    /// `b / 10 <= p < (b + 1) / 10`), highest first; empty for models written before them.
    pub quantiles: Vec<Vec<Vec<Exemplar>>>,
}

/// An operation on a fitted model (docs/formats.md "Model file", metadata `operations`).
#[napi(object)]
pub struct OperationInfo {
    /// `merge`, `split`, `update` or `refit` (an update with decay 0).
    pub op: String,
    /// The clusters it acted on, as numbered before it.
    pub clusters: Vec<u32>,
    /// `mapping[old] = new` cluster id.
    pub mapping: Vec<u32>,
    /// K after it.
    pub n_clusters: u32,
    /// Chunk files an update added.
    pub chunks: Vec<String>,
    /// Passes over the data run after it.
    pub iterations: u32,
}

impl From<&soft_cluster_core::model::Operation> for OperationInfo {
    fn from(o: &soft_cluster_core::model::Operation) -> Self {
        OperationInfo {
            op: o.op.clone(),
            clusters: o.clusters.iter().map(|&c| c as u32).collect(),
            mapping: o.mapping.iter().map(|&c| c as u32).collect(),
            n_clusters: o.n_clusters as u32,
            chunks: o.chunks.clone(),
            iterations: o.iterations as u32,
        }
    }
}

impl ModelSummary {
    pub fn new(m: &Model) -> Self {
        ModelSummary {
            cluster_mass: m.cluster_mass.clone(),
            cluster_count: m.cluster_count.iter().map(|&c| c as f64).collect(),
            exemplars: m.exemplars.iter().map(|list| list.iter().map(Exemplar::from).collect()).collect(),
            history: m.history.iter().map(HistoryEntry::from).collect(),
            chunks: m.chunks.clone(),
            device: m.device.clone(),
            warnings: m.warnings.clone(),
            has_statistics: m.stats.is_some(),
            operations: m.operations.iter().map(OperationInfo::from).collect(),
            quantiles: m.quantiles.iter().map(|bins| bins.iter().map(|list| list.iter().map(Exemplar::from).collect()).collect()).collect(),
        }
    }
}
