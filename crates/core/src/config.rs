//! `ClusteringConfig`: the one place that knows the defaults, the valid ranges and how device,
//! precision and temperature are spelled (docs/algorithm.md "Config"). The binding converts a JS
//! object into it once; a model or checkpoint file's JSON comes back through `from_json`.

use crate::error::{Error, Result};
use serde::{Serialize, Serializer};
use serde_json::{Map, Value};
use std::fmt;

/// The softmax temperature on cosines: chosen from the data at init, or given.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Temperature {
    /// Chosen during init (`init::auto_temperature`); a fitted model stores the number.
    Auto,
    Fixed(f64),
}

impl Temperature {
    /// The number, or an error for `auto` before a fit has chosen one.
    pub fn value(self) -> Result<f64> {
        match self {
            Temperature::Fixed(t) => Ok(t),
            Temperature::Auto => Err(Error::config(
                "temperature",
                "is \"auto\", which a fit chooses from the data; fit first, or give a number",
            )),
        }
    }
}

impl std::str::FromStr for Temperature {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Temperature::Auto),
            _ => s.parse().map(Temperature::Fixed).map_err(|_| Error::config("temperature", format!("must be \"auto\" or a number, got {s:?}"))),
        }
    }
}

impl Serialize for Temperature {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Temperature::Auto => s.serialize_str("auto"),
            Temperature::Fixed(t) => s.serialize_f64(*t),
        }
    }
}

/// Where the work runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Device {
    /// The first GPU when the CUDA libraries and a device are usable, else the CPU.
    Auto,
    Cpu,
    Cuda(usize),
    /// Every GPU the driver lists, one backend each (`"cuda:all"`).
    CudaAll,
    /// These GPUs, one backend each, in this order (`"cuda:0,1,3"`; an ordinal may repeat: two
    /// backends on one GPU).
    CudaList(Vec<usize>),
}

impl std::str::FromStr for Device {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let number = |n: &str| (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())).then(|| n.parse::<usize>().ok()).flatten();
        let ordinals: Option<Vec<usize>> = s.strip_prefix("cuda:").and_then(|list| list.split(',').map(number).collect());
        match (s, ordinals) {
            ("auto", _) => Ok(Device::Auto),
            ("cpu", _) => Ok(Device::Cpu),
            ("cuda", _) => Ok(Device::Cuda(0)),
            ("cuda:all", _) => Ok(Device::CudaAll),
            (_, Some(list)) if list.len() == 1 => Ok(Device::Cuda(list[0])),
            (_, Some(list)) => Ok(Device::CudaList(list)),
            _ => Err(bad_device(s)),
        }
    }
}

fn bad_device(s: &str) -> Error {
    Error::config("device", format!("must be \"auto\", \"cpu\", \"cuda\", \"cuda:N\", \"cuda:all\" or a list such as \"cuda:0,1\", got {s:?}"))
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Device::Auto => f.write_str("auto"),
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
            Device::CudaAll => f.write_str("cuda:all"),
            Device::CudaList(list) => write!(f, "cuda:{}", list.iter().map(usize::to_string).collect::<Vec<_>>().join(",")),
        }
    }
}

/// Matrix products on CUDA: exact float32, or TF32 tensor cores (about 1e-3 relative error in
/// cosines). The CPU always computes in float32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    #[default]
    Float32,
    Tf32,
}

impl std::str::FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "float32" => Ok(Precision::Float32),
            "tf32" => Ok(Precision::Tf32),
            _ => Err(Error::config("precision", format!("must be \"float32\" or \"tf32\", got {s:?}"))),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            Precision::Float32 => "float32",
            Precision::Tf32 => "tf32",
        })
    }
}

fn as_string<T: fmt::Display, S: Serializer>(v: &T, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.collect_str(v)
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusteringConfig {
    pub n_clusters: usize,
    pub d_model: usize,
    pub temperature: Temperature,
    /// How a fit chose `temperature` when it was `auto` (absent when the user gave it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature_rule: Option<String>,
    pub min_membership: f64,
    #[serde(serialize_with = "as_string")]
    pub device: Device,
    pub n_exemplars: usize,
    pub context_window: usize,
    /// Top exemplars of a cluster never share most of their context (docs/algorithm.md
    /// "Exemplars"): a token is kept only where its membership is the largest within
    /// `contextWindow` positions of it.
    pub distinct_contexts: bool,
    /// Bins of membership of the quantile examples (docs/algorithm.md "Quantile examples").
    pub quantile_bins: usize,
    /// Quantile examples kept per bin.
    pub quantile_examples: usize,
    pub n_iterations: usize,
    /// Hard k-means iterations on the init sample after k-means++ (none with `initialCenters`).
    pub warmup_iterations: usize,
    pub seed: u64,
    pub tol: f64,
    #[serde(serialize_with = "as_string")]
    pub precision: Precision,
    /// Host memory for the activation cache (`cache::ChunkCache`): `"auto"`, `"off"` or bytes.
    pub cache: CacheSetting,
}

/// How much host memory the cache may take: `Auto` (half the available memory, see
/// `cache::auto_budget`), `Off`, or a budget in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheSetting {
    #[default]
    Auto,
    Off,
    Bytes(u64),
}

impl std::str::FromStr for CacheSetting {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(CacheSetting::Auto),
            "off" => Ok(CacheSetting::Off),
            _ => s.parse().map(CacheSetting::Bytes).map_err(|_| Error::config("cache", format!("must be \"auto\", \"off\" or a number of bytes, got {s:?}"))),
        }
    }
}

impl std::fmt::Display for CacheSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CacheSetting::Auto => f.write_str("auto"),
            CacheSetting::Off => f.write_str("off"),
            CacheSetting::Bytes(n) => write!(f, "{n}"),
        }
    }
}

impl Serialize for CacheSetting {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            CacheSetting::Bytes(n) => s.serialize_u64(*n),
            other => s.serialize_str(&other.to_string()),
        }
    }
}

/// Field names accepted in a config object (`initialCenters` travels separately, as data).
const FIELDS: &[&str] = &[
    "nClusters", "dModel", "temperature", "temperatureRule", "minMembership", "device", "nExemplars",
    "contextWindow", "distinctContexts", "quantileBins", "quantileExamples", "nIterations", "warmupIterations", "seed", "tol", "precision", "cache", "initialCenters",
];

/// Largest `quantileBins` and `quantileExamples`.
pub const MAX_QUANTILE_SIZE: usize = 1000;

/// Largest integer a JS number holds exactly; bigger "integers" have already lost digits.
const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_991.0;

impl ClusteringConfig {
    /// A config with the defaults of docs/algorithm.md "Config" for everything but the two required fields.
    pub fn new(n_clusters: usize, d_model: usize) -> Self {
        ClusteringConfig {
            n_clusters,
            d_model,
            temperature: Temperature::Auto,
            temperature_rule: None,
            min_membership: 0.01,
            device: Device::Auto,
            n_exemplars: 10,
            context_window: 8,
            distinct_contexts: false,
            quantile_bins: crate::quantiles::QUANTILE_BINS,
            quantile_examples: crate::quantiles::QUANTILE_EXAMPLES,
            n_iterations: 10,
            warmup_iterations: 10,
            seed: 0,
            tol: 1e-7,
            precision: Precision::Float32,
            cache: CacheSetting::Auto,
        }
    }

    /// Builds a config from a JSON object as users write it (camelCase, defaults filled in).
    /// Unknown fields, wrong types and out-of-range values are refused with the field's name.
    pub fn from_json(value: &Value) -> Result<Self> {
        let map = value.as_object().ok_or_else(|| Error::config("config", "must be an object"))?;
        if let Some(unknown) = map.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(Error::config(unknown, format!("unknown field (known: {})", FIELDS.join(", "))));
        }
        let n_clusters = integer(map, "nClusters", 1)?.ok_or_else(|| Error::config("nClusters", "is required"))?;
        let d_model = integer(map, "dModel", 1)?.ok_or_else(|| Error::config("dModel", "is required"))?;
        let mut c = ClusteringConfig::new(n_clusters as usize, d_model as usize);
        match map.get("temperature") {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s == "auto" => c.temperature = Temperature::Auto,
            Some(Value::Number(n)) => c.temperature = Temperature::Fixed(n.as_f64().unwrap_or(f64::NAN)),
            Some(v) => return Err(Error::config("temperature", format!("must be \"auto\" or a number, got {v}"))),
        }
        if let Some(v) = map.get("temperatureRule") {
            c.temperature_rule = Some(v.as_str().ok_or_else(|| Error::config("temperatureRule", "must be a string"))?.to_string());
        }
        if let Some(v) = number(map, "minMembership")? { c.min_membership = v; }
        if let Some(v) = map.get("device") {
            c.device = v.as_str().ok_or_else(|| Error::config("device", "must be a string"))?.parse()?;
        }
        if let Some(v) = integer(map, "nExemplars", 0)? { c.n_exemplars = v as usize; }
        if let Some(v) = integer(map, "contextWindow", 0)? { c.context_window = v as usize; }
        match map.get("distinctContexts") {
            None | Some(Value::Null) => {}
            Some(Value::Bool(b)) => c.distinct_contexts = *b,
            Some(v) => return Err(Error::config("distinctContexts", format!("must be true or false, got {v}"))),
        }
        if let Some(v) = integer(map, "quantileBins", 1)? { c.quantile_bins = v as usize; }
        if let Some(v) = integer(map, "quantileExamples", 0)? { c.quantile_examples = v as usize; }
        // Bounded: K x bins lists are allocated up front, also for a model file that has no samples.
        for (field, v) in [("quantileBins", c.quantile_bins), ("quantileExamples", c.quantile_examples)] {
            if v > MAX_QUANTILE_SIZE {
                return Err(Error::config(field, format!("must be at most {MAX_QUANTILE_SIZE}, got {v}")));
            }
        }
        if let Some(v) = integer(map, "nIterations", 0)? { c.n_iterations = v as usize; }
        if let Some(v) = integer(map, "warmupIterations", 0)? { c.warmup_iterations = v as usize; }
        if let Some(v) = integer(map, "seed", 0)? { c.seed = v; }
        if let Some(v) = number(map, "tol")? { c.tol = v; }
        if let Some(v) = map.get("precision") {
            c.precision = v.as_str().ok_or_else(|| Error::config("precision", "must be a string"))?.parse()?;
        }
        match map.get("cache") {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s == "auto" || s == "off" => c.cache = s.parse()?,
            Some(v) => match v.as_f64() {
                Some(n) if n >= 0.0 && n.fract() == 0.0 && n <= MAX_SAFE_INTEGER => c.cache = CacheSetting::Bytes(n as u64),
                _ => return Err(Error::config("cache", format!("must be \"auto\", \"off\" or a whole number of bytes, got {v}"))),
            },
        }
        c.validate()?;
        Ok(c)
    }

    /// Checks every range of docs/algorithm.md "Config"; the message names the field.
    pub fn validate(&self) -> Result<()> {
        if self.n_clusters < 1 { return Err(Error::config("nClusters", "must be at least 1")); }
        if self.d_model < 1 { return Err(Error::config("dModel", "must be at least 1")); }
        if let Temperature::Fixed(t) = self.temperature {
            if !(t > 0.0 && t.is_finite()) {
                return Err(Error::config("temperature", format!("must be \"auto\" or a finite number > 0, got {t}")));
            }
        }
        if self.temperature_rule.is_some() && self.temperature == Temperature::Auto {
            return Err(Error::config("temperatureRule", "describes a chosen temperature; it needs a numeric temperature"));
        }
        if !(self.min_membership >= 0.0 && self.min_membership < 1.0) {
            return Err(Error::config("minMembership", format!("must be in [0, 1), got {}", self.min_membership)));
        }
        if !(self.tol >= 0.0 && self.tol.is_finite()) {
            return Err(Error::config("tol", format!("must be a finite number >= 0, got {}", self.tol)));
        }
        Ok(())
    }

    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).expect("config serializes")
    }
}

fn number(map: &Map<String, Value>, field: &str) -> Result<Option<f64>> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or_else(|| Error::config(field, format!("must be a number, got {v}"))),
    }
}

/// An integer field of at least `least`.
fn integer(map: &Map<String, Value>, field: &str, least: u64) -> Result<Option<u64>> {
    let Some(v) = number(map, field)? else { return Ok(None) };
    if v.fract() != 0.0 || v < least as f64 || v > MAX_SAFE_INTEGER {
        return Err(Error::config(field, format!("must be an integer >= {least}, got {v}")));
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
        assert_eq!(c.temperature, Temperature::Auto);
        assert_eq!(c.min_membership, 0.01);
        assert_eq!(c.device, Device::Auto);
        assert_eq!((c.n_exemplars, c.context_window, c.n_iterations, c.warmup_iterations, c.seed), (10, 8, 10, 10, 0));
        assert_eq!(c.tol, 1e-7);
        assert_eq!(c.precision, Precision::Float32);
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
        assert_eq!(field_of(json!({"nClusters": 2, "dModel": 4, "warmupIterations": -1})), "warmupIterations");
        assert_eq!(field_of(json!({"nClusters": 2, "dModel": 4, "clusters": 3})), "clusters");
        assert_eq!(field_of(json!({"nClusters": 2, "dModel": 4, "precision": "fp16"})), "precision");
        assert_eq!(field_of(json!({"nClusters": 2, "dModel": 4, "precision": 32})), "precision");
        assert_eq!(field_of(json!({"nClusters": 2, "dModel": 4, "temperature": "cold"})), "temperature");
        assert_eq!(field_of(json!({"nClusters": 2, "dModel": 4, "temperatureRule": "x"})), "temperatureRule");
        assert_eq!(field_of(json!({"nClusters": 2, "dModel": 4, "quantileBins": 0})), "quantileBins");
        assert_eq!(field_of(json!({"nClusters": 2, "dModel": 4, "quantileBins": 1001})), "quantileBins");
        assert_eq!(field_of(json!({"nClusters": 2, "dModel": 4, "quantileExamples": 1e12})), "quantileExamples");
        assert_eq!(field_of(json!({"nClusters": 2, "dModel": 4, "distinctContexts": 1})), "distinctContexts");
    }

    #[test]
    fn temperature_is_auto_or_a_number_and_round_trips() {
        let c = ClusteringConfig::from_json(&json!({"nClusters": 2, "dModel": 4, "temperature": 0.05})).unwrap();
        assert_eq!(c.temperature, Temperature::Fixed(0.05));
        assert_eq!(ClusteringConfig::from_json(&c.to_json()).unwrap(), c);
        let auto = ClusteringConfig::from_json(&json!({"nClusters": 2, "dModel": 4, "temperature": "auto"})).unwrap();
        assert_eq!(auto.to_json()["temperature"], json!("auto"));
        assert_eq!(ClusteringConfig::from_json(&auto.to_json()).unwrap(), auto);
        assert!(auto.temperature.value().is_err());
        let chosen = json!({"nClusters": 2, "dModel": 4, "temperature": 0.03, "temperatureRule": "auto"});
        assert_eq!(ClusteringConfig::from_json(&chosen).unwrap().to_json()["temperatureRule"], json!("auto"));
    }

    #[test]
    fn cuda_devices_are_accepted() {
        for (d, want) in [
            ("cpu", Device::Cpu),
            ("cuda", Device::Cuda(0)),
            ("cuda:0", Device::Cuda(0)),
            ("cuda:12", Device::Cuda(12)),
            ("auto", Device::Auto),
            ("cuda:all", Device::CudaAll),
            ("cuda:0,1,3", Device::CudaList(vec![0, 1, 3])),
            ("cuda:0,0", Device::CudaList(vec![0, 0])),
        ] {
            let c = ClusteringConfig::from_json(&json!({"nClusters": 2, "dModel": 4, "device": d})).unwrap();
            assert_eq!(c.device, want);
            assert_eq!(c.device.to_string(), if d == "cuda" { "cuda:0" } else { d });
        }
        for bad in ["cuda:99999999999999999999999", "cuda:", "cuda:0,", "cuda:,1", "cuda:a", "cuda:0;1", "cuda:ALL", "gpu"] {
            assert_eq!(field_of(json!({"nClusters": 2, "dModel": 4, "device": bad})), "device", "{bad}");
        }
    }
}
