//! Fit state saved after every iteration (`<outputDir>/checkpoint.safetensors`), so an
//! interrupted fit resumes from its last finished iteration and ends with the same model.

use crate::config::ClusteringConfig;
use crate::error::{Error, Result};
use crate::kernels::Centers;
use crate::model::HistoryEntry;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

pub const FILE_NAME: &str = "checkpoint.safetensors";
const FORMAT: &str = "soft-cluster-checkpoint";

/// What identifies a chunk file's content cheaply: its size and modification time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChunkFingerprint {
    pub path: String,
    pub size: u64,
    /// Nanoseconds since the Unix epoch, as a string (JSON numbers lose precision).
    pub modified_ns: String,
}

impl ChunkFingerprint {
    pub fn of(path: &Path) -> Result<Self> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        let modified = meta.modified().map_err(|e| Error::io(path, e))?;
        let ns = modified.duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        Ok(ChunkFingerprint { path: path.display().to_string(), size: meta.len(), modified_ns: ns.to_string() })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub config: ClusteringConfig,
    /// Centers after the last finished iteration.
    pub centers: Centers,
    pub history: Vec<HistoryEntry>,
    pub chunks: Vec<ChunkFingerprint>,
    /// True once the iterations are over (all run, or stopped on `tol`): only the output pass is left.
    pub iterations_done: bool,
}

impl Checkpoint {
    pub fn path_in(output_dir: &Path) -> PathBuf {
        output_dir.join(FILE_NAME)
    }

    pub fn save(&self, output_dir: &Path) -> Result<()> {
        Self::write(output_dir, &self.config, &self.centers, &self.history, &self.chunks, self.iterations_done)
    }

    /// Writes a checkpoint from its parts (atomically: a kill mid-write leaves the previous one).
    pub fn write(output_dir: &Path, config: &ClusteringConfig, centers: &Centers, history: &[HistoryEntry], chunks: &[ChunkFingerprint], iterations_done: bool) -> Result<()> {
        let bytes: Vec<u8> = centers.data.iter().flat_map(|v| v.to_le_bytes()).collect();
        let view = TensorView::new(Dtype::F32, vec![centers.k, centers.d], &bytes).expect("sizes match");
        let metadata: HashMap<String, String> = [
            ("format", FORMAT.to_string()),
            ("format_version", "1".to_string()),
            ("config", config.to_json().to_string()),
            ("history", serde_json::to_string(history).expect("serializes")),
            ("chunks", serde_json::to_string(chunks).expect("serializes")),
            ("iterations_done", iterations_done.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let path = Self::path_in(output_dir);
        let bytes = safetensors::serialize(vec![("centers", view)], Some(metadata))
            .map_err(|e| Error::BadModel { file: path.display().to_string(), problem: format!("cannot serialize: {e}") })?;
        crate::output::write_atomically(&path, &bytes)
    }

    /// The checkpoint in `output_dir`, or `None` when there is none.
    pub fn load(output_dir: &Path) -> Result<Option<Checkpoint>> {
        let path = Self::path_in(output_dir);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(&path, e)),
        };
        let bad = |problem: String| Error::BadModel { file: path.display().to_string(), problem };
        let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(format!("not a checkpoint: {e}")))?;
        let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(format!("not a checkpoint: {e}")))?;
        let meta = header.metadata().clone().unwrap_or_default();
        if meta.get("format").map(String::as_str) != Some(FORMAT) {
            return Err(bad("not a soft-cluster checkpoint".into()));
        }
        let field = |name: &str| meta.get(name).ok_or_else(|| bad(format!("metadata `{name}` is missing")));
        let config_json: serde_json::Value = serde_json::from_str(field("config")?).map_err(|e| bad(e.to_string()))?;
        let config = ClusteringConfig::from_json(&config_json).map_err(|e| bad(e.to_string()))?;
        let history = serde_json::from_str(field("history")?).map_err(|e| bad(e.to_string()))?;
        let chunks = serde_json::from_str(field("chunks")?).map_err(|e| bad(e.to_string()))?;
        let iterations_done = field("iterations_done")? == "true";
        let t = st.tensor("centers").map_err(|_| bad("tensor `centers` is missing".into()))?;
        if t.dtype() != Dtype::F32 || t.shape() != [config.n_clusters, config.d_model] {
            return Err(bad(format!("tensor `centers` is {:?} {:?}", t.dtype(), t.shape())));
        }
        let data: Vec<f32> = t.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        let centers = Centers::from_saved(config.n_clusters, config.d_model, data).map_err(|e| bad(e.to_string()))?;
        Ok(Some(Checkpoint { config, centers, history, chunks, iterations_done }))
    }

    /// Refuses to resume when the config or the chunk files are not the ones the checkpoint saw.
    pub fn check_matches(&self, config: &ClusteringConfig, chunks: &[ChunkFingerprint]) -> Result<()> {
        if &self.config != config {
            let (a, b) = (self.config.to_json(), config.to_json());
            let (a, b) = (a.as_object().unwrap(), b.as_object().unwrap());
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            let shown = |v: Option<&serde_json::Value>| v.map_or("(none)".to_string(), |v| v.to_string());
            let fields: Vec<String> = keys
                .into_iter()
                .filter(|k| a.get(*k) != b.get(*k))
                .map(|k| format!("{k} = {} (checkpoint: {})", shown(b.get(k)), shown(a.get(k))))
                .collect();
            return Err(Error::config(
                fields.first().map(|f| f.split(' ').next().unwrap_or("config")).unwrap_or("config"),
                format!("differs from the checkpoint's: {}; resume with the same settings, or start over without resume", fields.join(", ")),
            ));
        }
        if self.chunks.len() != chunks.len() || self.chunks.iter().zip(chunks).any(|(a, b)| a.path != b.path) {
            return Err(Error::invalid_input(
                "chunks",
                format!("are not the {} files the checkpoint was made with; resume with the same list, or start over without resume", self.chunks.len()),
            ));
        }
        if let Some((old, _)) = self.chunks.iter().zip(chunks).find(|(a, b)| a != b) {
            return Err(Error::invalid_input(
                &old.path,
                "changed since the checkpoint (size or modification time differ); a resumed fit must see the same data, so start over without resume",
            ));
        }
        Ok(())
    }
}
