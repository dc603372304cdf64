//! Which device a config's `device` gets, asked without running anything.

use napi_derive::napi;
use soft_cluster_core::kernels::choose_backend;
use soft_cluster_core::ClusteringConfig;

/// Whether a device can be used here, and why (or why not).
#[napi(object)]
pub struct DeviceProbe {
    /// The device asked for, as the config spells it (`auto`, `cpu`, `cuda:0`, ...).
    pub device: String,
    /// True when a fit on this device would start.
    pub usable: bool,
    /// The backend's reason (`cuda:0 (NVIDIA ...)`, `cpu (auto: no usable GPU: ...)`) or the error.
    pub reason: String,
}

/// Opens the backend a fit with `device` (default `cuda`) would use, and says whether it worked:
/// `probeDevice('cuda').usable` is true exactly where a GPU and its libraries are usable.
#[napi]
pub fn probe_device(#[napi(ts_arg_type = "'auto' | 'cpu' | 'cuda' | 'cuda:all' | `cuda:${string}`")] device: Option<String>) -> DeviceProbe {
    let asked = device.unwrap_or_else(|| "cuda".into());
    let chosen = asked.parse().and_then(|device| choose_backend(&ClusteringConfig { device, ..ClusteringConfig::new(1, 1) }));
    match chosen {
        Ok(c) => DeviceProbe { device: asked, usable: true, reason: c.reason },
        Err(e) => DeviceProbe { device: asked, usable: false, reason: e.to_string() },
    }
}
