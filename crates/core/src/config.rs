//! `ClusteringConfig` (SPEC 7): the one place that knows the defaults and the valid ranges.
//! The TypeScript facade and the CLI hand their JSON here instead of validating themselves.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusteringConfig {
    pub n_clusters: usize,
    pub d_model: usize,
    pub temperature: f64,
    pub min_membership: f64,
    pub device: String,
    pub n_exemplars: usize,
    pub context_window: usize,
    pub n_iterations: usize,
    pub seed: u64,
    pub tol: f64,
    /// `"float32"` (default) or `"tf32"`: TF32 tensor cores for the CUDA backend's matrix
    /// products (about 1e-3 relative error in cosines; the CPU always computes in float32).
    #[serde(default = "default_precision")]
    pub precision: String,
}

fn default_precision() -> String {
    "float32".into()
}

/// Field names accepted in a config object (`initialCenters` travels separately, as data).
const FIELDS: &[&str] = &[
    "nClusters", "dModel", "temperature", "minMembership", "device", "nExemplars", "contextWindow",
    "nIterations", "seed", "tol", "precision", "initialCenters",
];

/// Largest integer a JS number holds exactly; bigger "integers" have already lost digits.
const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_991.0;

impl ClusteringConfig {
    /// A config with the SPEC defaults for everything but the two required fields.
    pub fn new(n_clusters: usize, d_model: usize) -> Self {
        ClusteringConfig {
            n_clusters,
            d_model,
            temperature: 1.0,
            min_membership: 0.01,
            device: "auto".into(),
            n_exemplars: 10,
            context_window: 8,
            n_iterations: 10,
            seed: 0,
            tol: 1e-7,
            precision: default_precision(),
        }
    }

    /// Builds a config from a JSON object as users write it (camelCase, defaults filled in).
    /// Unknown fields, wrong types and out-of-range values are refused with the field's name.
    pub fn from_json(value: &Value) -> Result<Self> {
        let map = value.as_object().ok_or_else(|| Error::config("config", "must be an object"))?;
        if let Some(unknown) = map.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(Error::config(unknown, format!("unknown field (known: {})", FIELDS.join(", "))));
        }
        let n_clusters = integer(map, "nClusters")?.ok_or_else(|| Error::config("nClusters", "is required"))?;
        let d_model = integer(map, "dModel")?.ok_or_else(|| Error::config("dModel", "is required"))?;
        let mut c = ClusteringConfig::new(n_clusters as usize, d_model as usize);
        if let Some(v) = number(map, "temperature")? { c.temperature = v; }
        if let Some(v) = number(map, "minMembership")? { c.min_membership = v; }
        if let Some(v) = map.get("device") {
            c.device = v.as_str().ok_or_else(|| Error::config("device", "must be a string"))?.to_string();
        }
        if let Some(v) = integer(map, "nExemplars")? { c.n_exemplars = v as usize; }
        if let Some(v) = integer(map, "contextWindow")? { c.context_window = v as usize; }
        if let Some(v) = integer(map, "nIterations")? { c.n_iterations = v as usize; }
        if let Some(v) = integer(map, "seed")? { c.seed = v; }
        if let Some(v) = number(map, "tol")? { c.tol = v; }
        if let Some(v) = map.get("precision") {
            c.precision = v.as_str().ok_or_else(|| Error::config("precision", "must be a string"))?.to_string();
        }
        c.validate()?;
        Ok(c)
    }

    /// Checks every range of SPEC 7; the message names the field.
    pub fn validate(&self) -> Result<()> {
        if self.n_clusters < 1 { return Err(Error::config("nClusters", "must be at least 1")); }
        if self.d_model < 1 { return Err(Error::config("dModel", "must be at least 1")); }
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return Err(Error::config("temperature", format!("must be a finite number > 0, got {}", self.temperature)));
        }
        if !(self.min_membership >= 0.0 && self.min_membership < 1.0) {
            return Err(Error::config("minMembership", format!("must be in [0, 1), got {}", self.min_membership)));
        }
        if !(self.tol >= 0.0 && self.tol.is_finite()) {
            return Err(Error::config("tol", format!("must be a finite number >= 0, got {}", self.tol)));
        }
        if !valid_device(&self.device) {
            return Err(Error::config("device", format!("must be \"auto\", \"cpu\", \"cuda\" or \"cuda:N\", got {:?}", self.device)));
        }
        if !matches!(self.precision.as_str(), "float32" | "tf32") {
            return Err(Error::config("precision", format!("must be \"float32\" or \"tf32\", got {:?}", self.precision)));
        }
        Ok(())
    }

    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).expect("config serializes")
    }
}

fn valid_device(d: &str) -> bool {
    matches!(d, "auto" | "cpu" | "cuda")
        || d.strip_prefix("cuda:").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn number(map: &Map<String, Value>, field: &str) -> Result<Option<f64>> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or_else(|| Error::config(field, format!("must be a number, got {v}"))),
    }
}

fn integer(map: &Map<String, Value>, field: &str) -> Result<Option<u64>> {
    let Some(v) = number(map, field)? else { return Ok(None) };
    if v.fract() != 0.0 || v < 0.0 || v > MAX_SAFE_INTEGER {
        return Err(Error::config(field, format!("must be a non-negative integer, got {v}")));
    }
    Ok(Some(v as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn field_of(v: Value) -> String {
        match ClusteringConfig::from_json(&v) {
            Err(Error::Config { field, .. }) => field,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_fill_the_rest() {
        let c = ClusteringConfig::from_json(&json!({"nClusters": 10, "dModel": 768})).unwrap();
        assert_eq!(c, ClusteringConfig::new(10, 768));
        assert_eq!(c.temperature, 1.0);
        assert_eq!(c.min_membership, 0.01);
        assert_eq!(c.device, "auto");
        assert_eq!((c.n_exemplars, c.context_window, c.n_iterations, c.seed), (10, 8, 10, 0));
        assert_eq!(c.tol, 1e-7);
        assert_eq!(c.precision, "float32");
    }

    #[test]
    fn bad_fields_are_named() {
        assert_eq!(field_of(json!({"dModel": 4})), "nClusters");
        assert_eq!(field_of(json!({"nClusters": 0, "dModel": 4})), "nClusters");
        assert_eq!(field_of(json!({"nClusters": 2, "dModel": 0})), "dModel");
        assert_eq!(field_of(json!({"nClusters": 2.5, "dModel": 4})), "nClusters");
        assert_eq!(field_of(json!({"nClusters": 2, "dModel": -4})), "dModel");
        assert_eq!(field_of(json!({"nClusters": 2, "dModel": 4, "temperature": 0})), "temperature");
        assert_eq!(field_of(json!({"nClusters": 2, "dModel": 4, "temperature": "hot"})), "temperature");
        assert_eq!(field_of(json!({"nClusters": 2, "dModel": 4, "minMembership": 1})), "minMembership");
        assert_eq!(field_of(json!({"nClusters": 2, "dModel": 4, "minMembership": -0.1})), "minMembership");
        assert_eq!(field_of(json!({"nClusters": 2, "dModel": 4, "tol": -1})), "tol");
        assert_eq!(field_of(json!({"nClusters": 2, "dModel": 4, "device": "tpu"})), "device");
        assert_eq!(field_of(json!({"nClusters": 2, "dModel": 4, "device": "cuda:"})), "device");
        assert_eq!(field_of(json!({"nClusters": 2, "dModel": 4, "nIterations": 1.5})), "nIterations");
        assert_eq!(field_of(json!({"nClusters": 2, "dModel": 4, "clusters": 3})), "clusters");
        assert_eq!(field_of(json!({"nClusters": 2, "dModel": 4, "precision": "fp16"})), "precision");
        assert_eq!(field_of(json!({"nClusters": 2, "dModel": 4, "precision": 32})), "precision");
    }

    #[test]
    fn cuda_devices_are_accepted() {
        for d in ["cpu", "cuda", "cuda:0", "cuda:12", "auto"] {
            let c = ClusteringConfig::from_json(&json!({"nClusters": 2, "dModel": 4, "device": d})).unwrap();
            assert_eq!(c.device, d);
        }
    }
}
