//! Quality metrics (the core's `analysis::Analysis`, crates/core/src/analysis.rs defines each
//! metric) as JS objects, and the options that tune them.

use napi_derive::napi;
use soft_cluster_core::analysis::{self, AnalyzeOptions};

/// Options of the metrics; absent fields take the core's defaults.
#[napi(object)]
pub struct AnalyzeParams {
    /// How many token ids to list per cluster (default 10).
    pub top_tokens: Option<u32>,
    /// Bins of each cluster's membership histogram over (0, 1] (default 10).
    pub histogram_bins: Option<u32>,
    /// Most tokens in the silhouette's seeded sample (default 2000).
    pub silhouette_sample: Option<u32>,
    /// Seed of that sample (default 0).
    pub seed: Option<u32>,
    /// Pseudo-occurrences `a` of the lift `(w + a) / (E + a)` (default 1; README "Quality metrics").
    pub lift_smoothing: Option<f64>,
}

/// The core's options: `params`' fields where given, the defaults elsewhere.
pub fn options(params: Option<&AnalyzeParams>) -> AnalyzeOptions {
    {
        let d = AnalyzeOptions::default();
        let Some(p) = params else { return d };
        AnalyzeOptions {
            top_tokens: p.top_tokens.map_or(d.top_tokens, |v| v as usize),
            histogram_bins: p.histogram_bins.map_or(d.histogram_bins, |v| v as usize),
            silhouette_sample: p.silhouette_sample.map_or(d.silhouette_sample, |v| v as usize),
            seed: p.seed.map_or(d.seed, u64::from),
            lift_smoothing: p.lift_smoothing.map_or(d.lift_smoothing, |v| v),
        }
    }
}

/// A token id and its summed membership in a cluster.
#[napi(object)]
pub struct TokenWeight {
    pub token_id: i64,
    /// Sum of the cluster's memberships over the occurrences of the token.
    pub weight: f64,
}

/// A token id special to a cluster: its lift `(w + a) / (E + a)`, with `E` the weight it would
/// have if it were spread over the clusters like every token.
#[napi(object)]
pub struct TokenLift {
    pub token_id: i64,
    pub lift: f64,
    /// Sum of the cluster's memberships over the occurrences of the token.
    pub weight: f64,
    /// Occurrences of the token among all the tokens analyzed.
    pub count: f64,
}

/// Per-cluster metrics.
#[napi(object, use_nullable = true)]
pub struct ClusterStats {
    pub cluster: u32,
    /// `sum_x p_k(x)`.
    pub mass: f64,
    /// Tokens whose largest membership is this cluster.
    pub hard_count: f64,
    /// Membership-weighted mean cosine between the tokens and the center.
    pub mean_cosine: f64,
    /// Largest membership of any token.
    pub max_membership: f64,
    /// Mean membership over the tokens where it is nonzero.
    pub mean_membership: f64,
    /// Share of the tokens with a nonzero membership.
    pub nonzero_fraction: f64,
    /// Nonzero memberships per bin of (0, 1] (`histogramBins` equal bins; the last includes 1).
    pub histogram: Vec<f64>,
    /// Token ids with the largest summed membership, largest first.
    pub top_tokens: Vec<TokenWeight>,
    /// Token ids special to the cluster (lift above 1), highest lift first.
    pub lift_tokens: Vec<TokenLift>,
    /// The most similar other center (null when K = 1).
    pub nearest_center: Option<u32>,
    /// Its cosine (null when K = 1).
    pub nearest_center_cosine: Option<f64>,
    /// The 10 closest other centers, closest first.
    pub nearest_centers: Vec<NearCenter>,
}

/// Another center and its cosine to this one.
#[napi(object)]
pub struct NearCenter {
    pub cluster: u32,
    pub cosine: f64,
}

/// Metrics of the whole partition.
#[napi(object, use_nullable = true)]
pub struct OverallStats {
    pub n_tokens: f64,
    /// Real tokens without a direction (all zeros), which have no memberships.
    pub skipped: f64,
    /// mean_x (-sum_k p_k ln p_k) / ln K: 0 = hard memberships, 1 = spread evenly.
    pub partition_entropy: f64,
    /// mean_x sum_k p_k^2: 1 = hard, 1/K = spread evenly.
    pub partition_coefficient: f64,
    pub mean_nonzero_per_token: f64,
    /// sum_x sum_k p_k^2 (1 - cos(x, C_k)) / (N min_{j != l} (1 - cos(C_j, C_l))); lower is better.
    pub xie_beni: Option<f64>,
    /// Mean cosine silhouette of a seeded sample, hard assignment = argmax membership.
    pub silhouette: Option<f64>,
    /// Tokens in the silhouette's sample.
    pub silhouette_sample: u32,
    /// Center pairs above cosine 0.99: centers collapsed onto one another (docs/algorithm.md
    /// "Empty clusters and twins").
    pub twins: u32,
}

/// Everything `analyze` computes (the core's `Analysis`).
#[napi(object)]
pub struct ClusterAnalysis {
    pub n_clusters: u32,
    pub overall: OverallStats,
    pub clusters: Vec<ClusterStats>,
    /// cos(C_j, C_l), `[K][K]`; empty above 1024 clusters (each cluster's `nearestCenters` remain).
    pub center_similarity: Vec<Vec<f64>>,
    /// Each center on the first two principal components of the centers.
    #[napi(ts_type = "Array<[number, number]>")]
    pub center_map: Vec<Vec<f64>>,
    /// Share of the centers' variance along those two components.
    #[napi(ts_type = "[number, number]")]
    pub center_map_variance: Vec<f64>,
}

impl From<analysis::Analysis> for ClusterAnalysis {
    fn from(a: analysis::Analysis) -> Self {
        let o = a.overall;
        ClusterAnalysis {
            n_clusters: a.n_clusters as u32,
            overall: OverallStats {
                n_tokens: o.n_tokens as f64,
                skipped: o.skipped as f64,
                partition_entropy: o.partition_entropy,
                partition_coefficient: o.partition_coefficient,
                mean_nonzero_per_token: o.mean_nonzero_per_token,
                xie_beni: o.xie_beni,
                silhouette: o.silhouette,
                silhouette_sample: o.silhouette_sample as u32,
                twins: o.twins as u32,
            },
            clusters: a.clusters.into_iter().map(ClusterStats::from).collect(),
            center_similarity: a.center_similarity,
            center_map: a.center_map.into_iter().map(Vec::from).collect(),
            center_map_variance: a.center_map_variance.to_vec(),
        }
    }
}

impl From<analysis::ClusterStats> for ClusterStats {
    fn from(s: analysis::ClusterStats) -> Self {
        ClusterStats {
            cluster: s.cluster as u32,
            mass: s.mass,
            hard_count: s.hard_count as f64,
            mean_cosine: s.mean_cosine,
            max_membership: s.max_membership,
            mean_membership: s.mean_membership,
            nonzero_fraction: s.nonzero_fraction,
            histogram: s.histogram.into_iter().map(|c| c as f64).collect(),
            top_tokens: s.top_tokens.into_iter().map(|t| TokenWeight { token_id: t.token_id, weight: t.weight }).collect(),
            lift_tokens: s.lift_tokens.into_iter().map(|t| TokenLift { token_id: t.token_id, lift: t.lift, weight: t.weight, count: t.count as f64 }).collect(),
            nearest_center: s.nearest_center.map(|c| c as u32),
            nearest_center_cosine: s.nearest_center_cosine,
            nearest_centers: s.nearest_centers.into_iter().map(|(cluster, cosine)| NearCenter { cluster: cluster as u32, cosine }).collect(),
        }
    }
}
