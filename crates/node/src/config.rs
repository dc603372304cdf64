//! The config across the boundary: `ClusteringConfig` (what JS passes), `ResolvedConfig` (what
//! the core made of it, every default filled in). A JS config is read once into the core's
//! `ClusteringConfig` by `ClusteringConfig::from_json`, which is the validation: unknown fields,
//! wrong types and out-of-range values are `ERR_INVALID_CONFIG` errors naming the field.

use crate::errors::js_error;
use napi::bindgen_prelude::*;
use napi::Env;
use napi_derive::napi;
use serde_json::{Map, Number, Value};
use soft_cluster_core::{CacheSetting, ClusteringConfig as CoreConfig, Temperature};

/// The config (docs/algorithm.md "Config"). Only `nClusters` and `dModel` are required; the core
/// fills in the defaults.
#[napi(object)]
pub struct ClusteringConfig {
    pub n_clusters: f64,
    pub d_model: f64,
    /// Softmax temperature on cosine similarities: a number > 0, or `"auto"` (the default), which
    /// a fit chooses from the data during init.
    #[napi(ts_type = "number | 'auto'")]
    pub temperature: Option<Either<f64, String>>,
    /// How a fit chose `temperature` when it was `"auto"`. Written by the fit (see
    /// `NativeModel.config`), accepted back when a config is loaded; absent when the user gave it.
    pub temperature_rule: Option<String>,
    /// Memberships below this are dropped, except each token's largest (default 0.01).
    pub min_membership: Option<f64>,
    /// Where the work runs: `auto` (default) picks CUDA when a usable GPU and driver are present,
    /// else the CPU.
    #[napi(ts_type = "'auto' | 'cpu' | 'cuda' | 'cuda:all' | `cuda:${string}`")]
    pub device: Option<String>,
    /// Exemplars kept per cluster (default 10).
    pub n_exemplars: Option<f64>,
    /// Context tokens on each side of an exemplar (default 8).
    pub context_window: Option<f64>,
    /// Top exemplars of a cluster never share most of their context: a token is kept only where
    /// its membership is the largest within `contextWindow` positions (default false).
    pub distinct_contexts: Option<bool>,
    /// Bins of membership of the examples across the range (default 10).
    pub quantile_bins: Option<f64>,
    /// Examples kept per bin (default 5).
    pub quantile_examples: Option<f64>,
    /// Passes over the data (default 10).
    pub n_iterations: Option<f64>,
    /// Hard k-means iterations on the init sample after k-means++ (default 10; none with
    /// `initialCenters`).
    pub warmup_iterations: Option<f64>,
    /// Seed of the k-means++ sample (default 0).
    pub seed: Option<f64>,
    /// Stop when the largest center shift falls below this; 0 = never stop early (default 1e-7).
    pub tol: Option<f64>,
    /// Matrix products on CUDA: `float32` (default) or `tf32` (tensor cores, several times faster
    /// at large K and D; cosines carry about 1e-3 relative error, memberships about 1e-3 / T).
    /// The CPU always computes in float32.
    #[napi(ts_type = "'float32' | 'tf32'")]
    pub precision: Option<String>,
    /// Host memory a fit may keep its decoded chunks in, so that passes after the first read no
    /// files: `"auto"` (default: half the available memory), `"off"`, or a budget in bytes. When
    /// the chunks do not fit, every pass streams them from the files; the result is the same bits.
    #[napi(ts_type = "'auto' | 'off' | number")]
    pub cache: Option<Either<f64, String>>,
}

/// The config with every default filled in, as the core resolved it.
#[napi(object)]
pub struct ResolvedConfig {
    pub n_clusters: f64,
    pub d_model: f64,
    /// `"auto"` until a fit has chosen the number (then `temperatureRule` says how).
    #[napi(ts_type = "number | 'auto'")]
    pub temperature: Either<f64, String>,
    pub temperature_rule: Option<String>,
    pub min_membership: f64,
    #[napi(ts_type = "'auto' | 'cpu' | 'cuda' | 'cuda:all' | `cuda:${string}`")]
    pub device: String,
    pub n_exemplars: f64,
    pub context_window: f64,
    pub distinct_contexts: bool,
    pub quantile_bins: f64,
    pub quantile_examples: f64,
    pub n_iterations: f64,
    pub warmup_iterations: f64,
    pub seed: f64,
    pub tol: f64,
    #[napi(ts_type = "'float32' | 'tf32'")]
    pub precision: String,
    #[napi(ts_type = "'auto' | 'off' | number")]
    pub cache: Either<f64, String>,
}

impl From<&CoreConfig> for ResolvedConfig {
    fn from(c: &CoreConfig) -> Self {
        ResolvedConfig {
            n_clusters: c.n_clusters as f64,
            d_model: c.d_model as f64,
            temperature: match c.temperature {
                Temperature::Auto => Either::B("auto".to_string()),
                Temperature::Fixed(t) => Either::A(t),
            },
            temperature_rule: c.temperature_rule.clone(),
            min_membership: c.min_membership,
            device: c.device.to_string(),
            n_exemplars: c.n_exemplars as f64,
            context_window: c.context_window as f64,
            distinct_contexts: c.distinct_contexts,
            quantile_bins: c.quantile_bins as f64,
            quantile_examples: c.quantile_examples as f64,
            n_iterations: c.n_iterations as f64,
            warmup_iterations: c.warmup_iterations as f64,
            seed: c.seed as f64,
            tol: c.tol,
            precision: c.precision.to_string(),
            cache: match c.cache {
                CacheSetting::Bytes(n) => Either::A(n as f64),
                other => Either::B(other.to_string()),
            },
        }
    }
}

/// A `ClusteringConfig` argument as it arrived: its own properties, read as JSON values without
/// judging them (`undefined` and `null` count as absent), so that the core's `from_json` sees
/// every field, known or not, and refuses what it must by name.
pub struct ConfigArg(Value);

impl TypeName for ConfigArg {
    fn type_name() -> &'static str {
        "ClusteringConfig"
    }
    fn value_type() -> ValueType {
        ValueType::Object
    }
}

impl ValidateNapiValue for ConfigArg {}

impl FromNapiValue for ConfigArg {
    unsafe fn from_napi_value(env: sys::napi_env, value: sys::napi_value) -> Result<Self> {
        let value = unsafe { Unknown::from_napi_value(env, value)? };
        if value.get_type()? != ValueType::Object {
            return Ok(ConfigArg(Value::Null)); // from_json: "config: must be an object"
        }
        let obj = unsafe { value.cast::<Object>()? };
        let names = obj.get_property_names()?;
        let mut map = Map::new();
        for i in 0..names.get_array_length()? {
            let name: String = names.get_element(i)?;
            let field = json_scalar(&obj.get_named_property::<Unknown>(&name)?)?;
            if !field.is_null() {
                map.insert(name, field);
            }
        }
        Ok(ConfigArg(Value::Object(map)))
    }
}

/// A config field's value as JSON. Objects, arrays and functions become `{}`: no field takes
/// one, and the core says so by name.
fn json_scalar(v: &Unknown) -> Result<Value> {
    Ok(match v.get_type()? {
        ValueType::Undefined | ValueType::Null => Value::Null,
        ValueType::Boolean => Value::Bool(unsafe { v.cast::<bool>()? }),
        ValueType::Number => {
            let n = unsafe { v.cast::<f64>()? };
            Number::from_f64(n).map(Value::Number).unwrap_or_else(|| Value::String(n.to_string()))
        }
        ValueType::String => Value::String(unsafe { v.cast::<String>()? }),
        _ => Value::Object(Map::new()),
    })
}

impl TryFrom<ConfigArg> for CoreConfig {
    type Error = soft_cluster_core::Error;
    fn try_from(arg: ConfigArg) -> soft_cluster_core::Result<Self> {
        CoreConfig::from_json(&arg.0)
    }
}

/// Reads and validates a config argument: the one conversion.
pub fn core_config(env: &Env, config: ConfigArg) -> Result<CoreConfig> {
    CoreConfig::try_from(config).map_err(|e| js_error(env, e))
}

/// Validates a config and returns it with the defaults filled in.
#[napi]
pub fn resolve_config(env: Env, #[napi(ts_arg_type = "ClusteringConfig")] config: ConfigArg) -> Result<ResolvedConfig> {
    Ok(ResolvedConfig::from(&core_config(&env, config)?))
}
