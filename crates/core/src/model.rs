//! The model file (docs/formats.md "Model file"): one safetensors file with the centers, per-cluster statistics and
//! exemplars as tensors, and config / history / chunk list as string metadata.

use crate::config::ClusteringConfig;
use crate::error::{Error, Result};
use crate::exemplars::Exemplar;
use crate::hierarchy::{self, LinkageRow};
use crate::kernels::Centers;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

pub const FORMAT: &str = "soft-cluster-model";
/// 2 added the sufficient statistics (`stats_s`, `stats_m`, metadata `stats_tokens`), the tree
/// (`linkage`) and metadata `operations`; version-1 files still load, without them.
pub const FORMAT_VERSION: u32 = 2;
/// Largest K whose tree is computed and stored when a model is saved (`4 K^2` bytes of work).
pub const STORED_TREE_MAX_K: usize = 8192;

/// One iteration of a fit (docs/algorithm.md "History").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    /// 1-based.
    pub iteration: usize,
    /// `mean_x sum_k p_k cos(x, C_k)` under the centers the pass started with.
    pub objective: f64,
    /// `max_k (1 - C_old_k . C_new_k)`.
    pub max_shift: f64,
    /// `m_k` of the pass.
    pub mass: Vec<f64>,
    pub reseeds: usize,
    /// Center pairs above `fit::TWIN_COSINE` after the update, before they were reseeded
    /// (absent in files written before twins were counted).
    #[serde(default)]
    pub twins: usize,
    /// Real tokens skipped in the pass because their vector is all zeros.
    pub skipped: u64,
    pub seconds: f64,
    /// Where the pass read its chunks: `host cache, N bytes`, or `files (why)` (`cache::ChunkCache`;
    /// empty in files written before the cache).
    #[serde(default)]
    pub data: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    pub config: ClusteringConfig,
    pub centers: Centers,
    /// `m_k` of the output pass.
    pub cluster_mass: Vec<f64>,
    /// Tokens whose largest membership is k, in the output pass.
    pub cluster_count: Vec<u64>,
    /// Per cluster, best first, at most `nExemplars`.
    pub exemplars: Vec<Vec<Exemplar>>,
    pub history: Vec<HistoryEntry>,
    /// Chunk file names, in run order (exemplar locations index into this).
    pub chunks: Vec<String>,
    /// What the fit found wrong with its result (collapse, twins), one line each; saved as the
    /// metadata key `warnings` (JSON list) when there are any.
    pub warnings: Vec<String>,
    /// Where the fit ran and why (e.g. `cpu (auto: no usable GPU: ...)`); metadata key `device`.
    /// `None` for a model that was never fitted.
    pub device: Option<String>,
    /// What an update needs: the output pass's sums (`None` in version-1 files and for a model
    /// that was never fitted).
    pub stats: Option<SufficientStats>,
    /// The tree over the clusters (`hierarchy::linkage`), when it was computed.
    pub linkage: Option<Vec<LinkageRow>>,
    /// Merges, splits and updates applied since the fit, in order (metadata `operations`).
    pub operations: Vec<Operation>,
    /// `[cluster][bin]`: examples across the range of memberships (`quantiles`), highest
    /// membership first in each bin; empty lists in files written before them.
    pub quantiles: Vec<Vec<Vec<Exemplar>>>,
}

/// Lists of examples as the model file stores them: `count [n]`, `values [n, slots]`,
/// `locations [n, slots, 3]`, `tokens` and `context [n, slots, w]`; unused slots hold location
/// -1, value 0, token ids -1 and context 0.
struct PackedExamples {
    count: Vec<i64>,
    values: Vec<f32>,
    locations: Vec<i64>,
    tokens: Vec<i64>,
    context: Vec<f32>,
}

fn pack_examples<'a>(lists: impl ExactSizeIterator<Item = &'a Vec<Exemplar>>, slots: usize, w: usize) -> PackedExamples {
    let n = lists.len();
    let mut p = PackedExamples { count: vec![0; n], values: vec![0.0; n * slots], locations: vec![-1; n * slots * 3], tokens: vec![-1; n * slots * w], context: vec![0.0; n * slots * w] };
    for (l, list) in lists.enumerate() {
        p.count[l] = list.len().min(slots) as i64;
        for (i, ex) in list.iter().take(slots).enumerate() {
            let slot = l * slots + i;
            p.values[slot] = ex.value;
            p.locations[slot * 3..slot * 3 + 3].copy_from_slice(&[ex.chunk as i64, ex.batch as i64, ex.position as i64]);
            p.tokens[slot * w..(slot + 1) * w].copy_from_slice(&ex.tokens[..w]);
            p.context[slot * w..(slot + 1) * w].copy_from_slice(&ex.context_memberships[..w]);
        }
    }
    p
}

/// The lists `pack_examples` stored; `what` names the count tensor in errors.
fn unpack_examples(p: &PackedExamples, slots: usize, w: usize, what: &str) -> std::result::Result<Vec<Vec<Exemplar>>, String> {
    (0..p.count.len())
        .map(|l| {
            let n = usize::try_from(p.count[l]).ok().filter(|&n| n <= slots).ok_or_else(|| format!("{what}[{l}] = {} is out of range", p.count[l]))?;
            Ok((0..n)
                .map(|i| {
                    let slot = l * slots + i;
                    let loc = &p.locations[slot * 3..slot * 3 + 3];
                    Exemplar {
                        value: p.values[slot],
                        chunk: loc[0].max(0) as usize,
                        batch: loc[1].max(0) as usize,
                        position: loc[2].max(0) as usize,
                        tokens: p.tokens[slot * w..(slot + 1) * w].to_vec(),
                        context_memberships: p.context[slot * w..(slot + 1) * w].to_vec(),
                    }
                })
                .collect())
        })
        .collect()
}

/// The sums of a pass under the model's centers (docs/algorithm.md "Iterations"):
/// `S = sum_x p(x) x` (`[K, D]`) and `m = sum_x p(x)`, over `tokens` real tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct SufficientStats {
    pub s: Vec<f64>,
    pub m: Vec<f64>,
    pub tokens: u64,
}

/// An operation on a fitted model (docs/formats.md "Model file", metadata `operations`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    /// `merge`, `split` or `update`.
    pub op: String,
    /// The clusters it acted on, as numbered before it.
    pub clusters: Vec<usize>,
    /// The new id of each cluster as numbered before it (`mapping[old] = new`); a split cluster
    /// keeps its id for its first part, the other parts are appended.
    pub mapping: Vec<usize>,
    /// K after the operation.
    pub n_clusters: usize,
    /// Chunk files an update added (empty otherwise).
    #[serde(default)]
    pub chunks: Vec<String>,
    /// Passes over the data run after it.
    #[serde(default)]
    pub iterations: usize,
}

fn le_bytes<T: Copy, const N: usize>(values: &[T], to: fn(T) -> [u8; N]) -> Vec<u8> {
    values.iter().flat_map(|&v| to(v)).collect()
}

impl Model {
    /// A model with centers only (no statistics, exemplars or history yet).
    pub fn new(config: ClusteringConfig, centers: Centers) -> Self {
        let (k, bins) = (centers.k, config.quantile_bins.max(1));
        Model {
            config,
            centers,
            cluster_mass: vec![0.0; k],
            cluster_count: vec![0; k],
            exemplars: vec![Vec::new(); k],
            history: Vec::new(),
            chunks: Vec::new(),
            warnings: Vec::new(),
            device: None,
            stats: None,
            linkage: None,
            operations: Vec::new(),
            quantiles: vec![vec![Vec::new(); bins]; k],
        }
    }

    /// The tree over the clusters: the stored one, or computed now from the centers and masses.
    pub fn hierarchy(&self) -> Result<Vec<LinkageRow>> {
        match &self.linkage {
            Some(rows) => Ok(rows.clone()),
            None => hierarchy::linkage(&self.centers, &self.cluster_mass),
        }
    }

    /// The group of each cluster when the tree is cut into `level` groups (`hierarchy::cut`).
    pub fn groups(&self, level: usize) -> Result<Vec<usize>> {
        if level == 0 || level > self.centers.k {
            return Err(Error::invalid_input("level", format!("must be between 1 and the number of clusters ({}), got {level}", self.centers.k)));
        }
        hierarchy::cut(&self.hierarchy()?, self.centers.k, level)
    }

    /// Computes and keeps the tree, for K up to `STORED_TREE_MAX_K` (called before saving).
    pub fn with_hierarchy(mut self) -> Result<Self> {
        if self.linkage.is_none() && self.centers.k <= STORED_TREE_MAX_K {
            self.linkage = Some(hierarchy::linkage(&self.centers, &self.cluster_mass)?);
        }
        Ok(self)
    }

    /// The file's bytes. Deterministic: the same model gives the same bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let (k, d) = (self.centers.k, self.centers.d);
        let e = self.config.n_exemplars;
        let w = 2 * self.config.context_window + 1;
        let top = pack_examples(self.exemplars.iter(), e, w);
        let (bins, q) = (self.config.quantile_bins, self.config.quantile_examples);
        let quantiles = pack_examples(self.quantiles.iter().flatten().collect::<Vec<_>>().into_iter(), q, w);
        let counts: Vec<i64> = self.cluster_count.iter().map(|&c| c as i64).collect();
        let mut tensors: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)> = vec![
            ("centers", Dtype::F32, vec![k, d], le_bytes(&self.centers.data, f32::to_le_bytes)),
            ("cluster_mass", Dtype::F64, vec![k], le_bytes(&self.cluster_mass, f64::to_le_bytes)),
            ("cluster_count", Dtype::I64, vec![k], le_bytes(&counts, i64::to_le_bytes)),
            ("exemplar_count", Dtype::I64, vec![k], le_bytes(&top.count, i64::to_le_bytes)),
            ("exemplar_values", Dtype::F32, vec![k, e], le_bytes(&top.values, f32::to_le_bytes)),
            ("exemplar_locations", Dtype::I64, vec![k, e, 3], le_bytes(&top.locations, i64::to_le_bytes)),
            ("exemplar_tokens", Dtype::I64, vec![k, e, w], le_bytes(&top.tokens, i64::to_le_bytes)),
            ("exemplar_context_memberships", Dtype::F32, vec![k, e, w], le_bytes(&top.context, f32::to_le_bytes)),
        ];
        if self.quantiles.len() == k && self.quantiles.iter().flatten().any(|l| !l.is_empty()) {
            tensors.push(("quantile_count", Dtype::I64, vec![k, bins], le_bytes(&quantiles.count, i64::to_le_bytes)));
            tensors.push(("quantile_values", Dtype::F32, vec![k, bins, q], le_bytes(&quantiles.values, f32::to_le_bytes)));
            tensors.push(("quantile_locations", Dtype::I64, vec![k, bins, q, 3], le_bytes(&quantiles.locations, i64::to_le_bytes)));
            tensors.push(("quantile_tokens", Dtype::I64, vec![k, bins, q, w], le_bytes(&quantiles.tokens, i64::to_le_bytes)));
            tensors.push(("quantile_context_memberships", Dtype::F32, vec![k, bins, q, w], le_bytes(&quantiles.context, f32::to_le_bytes)));
        }
        if let Some(st) = &self.stats {
            tensors.push(("stats_s", Dtype::F64, vec![k, d], le_bytes(&st.s, f64::to_le_bytes)));
            tensors.push(("stats_m", Dtype::F64, vec![k], le_bytes(&st.m, f64::to_le_bytes)));
        }
        if let Some(rows) = self.linkage.as_ref().filter(|r| !r.is_empty()) {
            let flat: Vec<f64> = rows.iter().flatten().copied().collect();
            tensors.push(("linkage", Dtype::F64, vec![rows.len(), 4], le_bytes(&flat, f64::to_le_bytes)));
        }
        let views: Vec<(&str, TensorView)> = tensors
            .iter()
            .map(|(name, dtype, shape, bytes)| (*name, TensorView::new(*dtype, shape.clone(), bytes).expect("sizes match shapes")))
            .collect();
        let warnings = (!self.warnings.is_empty()).then(|| ("warnings", serde_json::to_string(&self.warnings).expect("strings serialize")));
        let metadata: HashMap<String, String> = [
            ("format", FORMAT.to_string()),
            ("format_version", FORMAT_VERSION.to_string()),
            ("config", self.config.to_json().to_string()),
            ("history", serde_json::to_string(&self.history).expect("history serializes")),
            ("chunks", serde_json::to_string(&self.chunks).expect("names serialize")),
        ]
        .into_iter()
        .chain(warnings)
        .chain(self.device.clone().map(|d| ("device", d)))
        .chain(self.stats.as_ref().map(|st| ("stats_tokens", st.tokens.to_string())))
        .chain((!self.operations.is_empty()).then(|| ("operations", serde_json::to_string(&self.operations).expect("operations serialize"))))
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let bytes = safetensors::serialize(views, Some(metadata))
            .map_err(|e| Error::BadModel { file: "(model)".into(), problem: format!("cannot serialize: {e}") })?;
        Ok(canonical_header(bytes))
    }

    /// Writes the file under a temporary name, then renames it into place.
    pub fn save(&self, path: &Path) -> Result<()> {
        self.check_finite().map_err(|problem| Error::BadModel { file: path.display().to_string(), problem: format!("not written: {problem}") })?;
        crate::output::write_atomically(path, &self.to_bytes()?)
    }

    /// A model with a NaN or infinite number would be refused on load: it is never written.
    fn check_finite(&self) -> std::result::Result<(), String> {
        fn first_bad(values: impl Iterator<Item = f64>) -> Option<usize> {
            values.enumerate().find(|(_, v)| !v.is_finite()).map(|(i, _)| i)
        }
        let checks: [(&str, Option<usize>); 7] = [
            ("centers", first_bad(self.centers.data.iter().map(|&v| f64::from(v)))),
            ("cluster_mass", first_bad(self.cluster_mass.iter().copied())),
            ("exemplar_values", first_bad(self.exemplars.iter().flatten().map(|e| f64::from(e.value)))),
            ("exemplar_context_memberships", first_bad(self.exemplars.iter().flatten().flat_map(|e| e.context_memberships.iter().map(|&v| f64::from(v))))),
            ("quantile_values", first_bad(self.quantiles.iter().flatten().flatten().map(|e| f64::from(e.value)))),
            ("history", first_bad(self.history.iter().flat_map(|h| [h.objective, h.max_shift]))),
            ("stats_s", first_bad(self.stats.iter().flat_map(|st| st.s.iter().chain(&st.m).copied()))),
        ];
        match checks.iter().find(|(_, at)| at.is_some()) {
            Some((name, Some(i))) => Err(format!("`{name}` holds a non-finite value (at flat index {i}); the fit went wrong, and this is a bug to report with its input")),
            _ => Ok(()),
        }
    }

    pub fn load(path: &Path) -> Result<Model> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Model::from_bytes(&bytes, &path.display().to_string())
    }

    /// Parses a model file; `source` names it in errors.
    pub fn from_bytes(bytes: &[u8], source: &str) -> Result<Model> {
        let bad = |problem: String| Error::BadModel { file: source.to_string(), problem };
        let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| bad(format!("not a safetensors file: {e}")))?;
        let meta = header.metadata().clone().unwrap_or_default();
        if meta.get("format").map(String::as_str) != Some(FORMAT) {
            return Err(bad(format!("not a soft-cluster model (metadata `format` is {:?})", meta.get("format"))));
        }
        let version: u32 = meta
            .get("format_version")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| bad("metadata `format_version` is missing or not a number".into()))?;
        if version > FORMAT_VERSION {
            return Err(bad(format!("format_version {version} is newer than this build reads ({FORMAT_VERSION}); upgrade soft-cluster")));
        }
        let field = |name: &str| meta.get(name).ok_or_else(|| bad(format!("metadata `{name}` is missing")));
        let config_json: serde_json::Value =
            serde_json::from_str(field("config")?).map_err(|e| bad(format!("metadata `config` is not JSON: {e}")))?;
        let config = ClusteringConfig::from_json(&config_json).map_err(|e| bad(format!("metadata `config`: {e}")))?;
        let history: Vec<HistoryEntry> =
            serde_json::from_str(field("history")?).map_err(|e| bad(format!("metadata `history`: {e}")))?;
        let chunks: Vec<String> = serde_json::from_str(field("chunks")?).map_err(|e| bad(format!("metadata `chunks`: {e}")))?;
        let device = meta.get("device").cloned();
        let warnings: Vec<String> = match meta.get("warnings") {
            Some(w) => serde_json::from_str(w).map_err(|e| bad(format!("metadata `warnings`: {e}")))?,
            None => Vec::new(),
        };
        let operations: Vec<Operation> = match meta.get("operations") {
            Some(o) => serde_json::from_str(o).map_err(|e| bad(format!("metadata `operations`: {e}")))?,
            None => Vec::new(),
        };

        let st = SafeTensors::deserialize(bytes).map_err(|e| bad(format!("not a safetensors file: {e}")))?;
        let (k, d) = (config.n_clusters, config.d_model);
        let e = config.n_exemplars;
        let w = 2 * config.context_window + 1;
        let tensor = |name: &str, dtype: Dtype, shape: &[usize]| -> Result<Vec<u8>> {
            let t = st.tensor(name).map_err(|_| bad(format!("tensor `{name}` is missing")))?;
            if t.dtype() != dtype || t.shape() != shape {
                return Err(bad(format!("tensor `{name}` is {:?} {:?}; expected {dtype:?} {shape:?}", t.dtype(), t.shape())));
            }
            Ok(t.data().to_vec())
        };
        let f32s = |b: Vec<u8>| b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect::<Vec<_>>();
        let f64s = |b: Vec<u8>| b.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect::<Vec<_>>();
        let i64s = |b: Vec<u8>| b.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect::<Vec<_>>();

        let centers = Centers::from_saved(k, d, f32s(tensor("centers", Dtype::F32, &[k, d])?)).map_err(|e| bad(format!("tensor `centers`: {e}")))?;
        let cluster_mass = f64s(tensor("cluster_mass", Dtype::F64, &[k])?);
        let cluster_count = i64s(tensor("cluster_count", Dtype::I64, &[k])?).into_iter().map(|c| c.max(0) as u64).collect();
        let read = |prefix: &str, lead: &[usize], slots: usize| -> Result<PackedExamples> {
            let shape = |tail: &[usize]| [lead, tail].concat();
            Ok(PackedExamples {
                count: i64s(tensor(&format!("{prefix}_count"), Dtype::I64, lead)?),
                values: f32s(tensor(&format!("{prefix}_values"), Dtype::F32, &shape(&[slots]))?),
                locations: i64s(tensor(&format!("{prefix}_locations"), Dtype::I64, &shape(&[slots, 3]))?),
                tokens: i64s(tensor(&format!("{prefix}_tokens"), Dtype::I64, &shape(&[slots, w]))?),
                context: f32s(tensor(&format!("{prefix}_context_memberships"), Dtype::F32, &shape(&[slots, w]))?),
            })
        };
        let top = read("exemplar", &[k], e)?;
        // Every later command trusts these numbers: a non-finite one is a broken file, said here.
        let finite = |name: &str, mut values: Box<dyn Iterator<Item = f64> + '_>| match values.position(|v| !v.is_finite()) {
            Some(i) => Err(bad(format!("tensor `{name}` holds a non-finite value (at flat index {i})"))),
            None => Ok(()),
        };
        finite("cluster_mass", Box::new(cluster_mass.iter().copied()))?;
        finite("exemplar_values", Box::new(top.values.iter().map(|&v| f64::from(v))))?;
        finite("exemplar_context_memberships", Box::new(top.context.iter().map(|&v| f64::from(v))))?;
        let exemplars = unpack_examples(&top, e, w, "exemplar_count").map_err(bad)?;
        let quantiles = match st.tensor("quantile_count") {
            Err(_) => vec![vec![Vec::new(); config.quantile_bins]; k],
            Ok(_) => {
                let (bins, q) = (config.quantile_bins, config.quantile_examples);
                let packed = read("quantile", &[k, bins], q)?;
                finite("quantile_values", Box::new(packed.values.iter().map(|&v| f64::from(v))))?;
                finite("quantile_context_memberships", Box::new(packed.context.iter().map(|&v| f64::from(v))))?;
                let flat = unpack_examples(&packed, q, w, "quantile_count").map_err(bad)?;
                flat.chunks(bins).map(|c| c.to_vec()).collect()
            }
        };
        let stats = match (st.tensor("stats_s").is_ok(), meta.get("stats_tokens")) {
            (false, _) => None,
            (true, tokens) => {
                let s = f64s(tensor("stats_s", Dtype::F64, &[k, d])?);
                let m = f64s(tensor("stats_m", Dtype::F64, &[k])?);
                finite("stats_s", Box::new(s.iter().copied()))?;
                finite("stats_m", Box::new(m.iter().copied()))?;
                let tokens = tokens.and_then(|t| t.parse().ok()).ok_or_else(|| bad("metadata `stats_tokens` is missing or not a number".into()))?;
                Some(SufficientStats { s, m, tokens })
            }
        };
        let linkage = match st.tensor("linkage") {
            Err(_) => None,
            Ok(_) => {
                let flat = f64s(tensor("linkage", Dtype::F64, &[k.saturating_sub(1), 4])?);
                let rows: Vec<LinkageRow> = flat.chunks_exact(4).map(|r| [r[0], r[1], r[2], r[3]]).collect();
                let in_range = rows.iter().enumerate().all(|(i, r)| r[0].fract() == 0.0 && r[1].fract() == 0.0 && r[0] >= 0.0 && r[1] < (k + i) as f64 && r[2].is_finite());
                if !in_range {
                    return Err(bad("tensor `linkage` holds ids or distances out of range".into()));
                }
                Some(rows)
            }
        };
        Ok(Model { config, centers, cluster_mass, cluster_count, exemplars, history, chunks, warnings, device, stats, linkage, operations, quantiles })
    }
}

/// Rewrites the JSON header of a safetensors buffer with its keys sorted (safetensors writes the
/// metadata map in hash order, which changes from run to run), padded to 8 bytes as the format
/// requires. Tensor offsets are relative to the data section, so they stay valid.
fn canonical_header(bytes: Vec<u8>) -> Vec<u8> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).expect("safetensors wrote JSON");
    let mut text = serde_json::to_string(&header).expect("JSON serializes"); // serde_json maps are sorted
    while text.len() % 8 != 0 {
        text.push(' ');
    }
    let mut out = Vec::with_capacity(8 + text.len() + bytes.len() - 8 - n);
    out.extend((text.len() as u64).to_le_bytes());
    out.extend(text.as_bytes());
    out.extend(&bytes[8 + n..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Model {
        let mut config = ClusteringConfig::new(2, 3);
        config.n_exemplars = 2;
        config.context_window = 1;
        let mut m = Model::new(config, Centers::from_rows(2, 3, vec![1.0, 0.0, 0.0, 0.0, 3.0, 4.0]).unwrap());
        m.cluster_mass = vec![1.5, 2.5];
        m.device = Some("cpu (auto: no usable GPU)".into());
        m.warnings = vec!["a warning".into()];
        m.cluster_count = vec![1, 3];
        m.exemplars[1] = vec![Exemplar { value: 0.9, chunk: 1, batch: 2, position: 3, tokens: vec![-1, 7, 8], context_memberships: vec![0.0, 0.9, 0.5] }];
        m.history = vec![HistoryEntry { iteration: 1, objective: 0.5, max_shift: 0.1, mass: vec![1.0, 3.0], reseeds: 0, twins: 0, skipped: 2, seconds: 0.25, data: "host cache, 96 bytes".into() }];
        m.chunks = vec!["a.npz".into(), "b.npz".into()];
        m.stats = Some(SufficientStats { s: vec![1.0, 0.0, 0.0, 0.0, 1.5, 2.0], m: vec![1.5, 2.5], tokens: 4 });
        m.quantiles[1][9] = vec![Exemplar { value: 0.95, chunk: 0, batch: 1, position: 2, tokens: vec![4, 5, 6], context_memberships: vec![0.1, 0.95, 0.0] }];
        m.quantiles[0][2] = vec![Exemplar { value: 0.25, chunk: 1, batch: 0, position: 0, tokens: vec![-1, 7, 8], context_memberships: vec![0.0, 0.25, 0.2] }];
        m.operations = vec![Operation { op: "merge".into(), clusters: vec![1, 2], mapping: vec![0, 1, 1], n_clusters: 2, chunks: vec![], iterations: 0 }];
        m.with_hierarchy().unwrap()
    }

    #[test]
    fn round_trips_and_is_deterministic() {
        let m = sample();
        let bytes = m.to_bytes().unwrap();
        assert_eq!(bytes, m.to_bytes().unwrap());
        assert_eq!(Model::from_bytes(&bytes, "m").unwrap(), m);
    }

    #[test]
    fn refuses_non_finite_statistics() {
        for (field, at) in [("cluster_mass", 0usize), ("exemplar_values", 1), ("exemplar_context_memberships", 1)] {
            let mut m = sample();
            match field {
                "cluster_mass" => m.cluster_mass[1] = f64::NAN,
                "exemplar_values" => m.exemplars[1][0].value = f32::INFINITY,
                _ => m.exemplars[1][0].context_memberships[at] = f32::NAN,
            }
            let err = Model::from_bytes(&m.to_bytes().unwrap(), "m.safetensors").unwrap_err();
            assert_eq!(err.code(), "ERR_BAD_MODEL");
            assert!(err.to_string().contains(&format!("tensor `{field}` holds a non-finite value")), "{err}");
        }
    }

    #[test]
    fn refuses_other_files_and_newer_versions() {
        let err = Model::from_bytes(b"not a model", "x.safetensors").unwrap_err();
        assert!(err.to_string().starts_with("x.safetensors: not a safetensors file"), "{err}");
        let view = TensorView::new(Dtype::F32, vec![1], &[0, 0, 0, 0]).unwrap();
        let other = safetensors::serialize(vec![("w", view)], None).unwrap();
        assert!(Model::from_bytes(&other, "w").unwrap_err().to_string().contains("not a soft-cluster model"));
        let bytes = sample().to_bytes().unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        header["__metadata__"]["format_version"] = "9".into();
        let newer = canonical_header([&((serde_json::to_string(&header).unwrap().len()) as u64).to_le_bytes()[..], serde_json::to_string(&header).unwrap().as_bytes(), &bytes[8 + n..]].concat());
        let err = Model::from_bytes(&newer, "n").unwrap_err();
        assert!(err.to_string().contains("format_version 9 is newer"), "{err}");
        assert_eq!(err.code(), "ERR_BAD_MODEL");
    }
}
