//! Node.js binding of soft-cluster: typed arrays and typed objects in and out, heavy work on the
//! libuv pool, core errors turned into JS errors with a `code`. No logic of its own: it calls the
//! core. The `index.d.ts` napi generates from these modules is the only declaration of the shapes
//! that cross the boundary; ts/ re-exports them.
//!
//! - `errors`: the one conversion of core errors into JS errors
//! - `tasks`: `Work`, the one task type for the libuv pool
//! - `config`: the config object, read once into the core's `ClusteringConfig`
//! - `chunks`: chunk, `.npy` and memberships files, and the memberships file's name
//! - `model`: `NativeModel` (fit, transform, analyze, save, load) and its progress reports
//! - `summary`: history, exemplars and the model summary
//! - `analysis`: the quality metrics and their options
//! - `device`: whether a device is usable, and why
//! - `processes`: rank and size of a run on several processes (MPI)

pub mod analysis;
pub mod chunks;
pub mod config;
pub mod device;
pub mod errors;
pub mod model;
pub mod processes;
pub mod summary;
pub mod tasks;
