//! soft-cluster core: soft spherical k-means over streamed neural-network activations.
//!
//! Pure Rust, no Node types. One module per concept (docs/formats.md and docs/algorithm.md say
//! what the files and the algorithm are):
//! - `config`: the config, its defaults and validation, `Device`, `Precision`, `Temperature`
//! - `chunk`: a chunk as every reader hands it over; `sources`: which reader a file needs;
//!   `npz` (.npz, .npy), `safetensors_chunk` (.safetensors), `arrow_chunk` (.arrow): the readers; `memberships_file`: the per-chunk output file, both ways
//! - `stream`: visiting chunks with read-ahead, chunk names, progress, reservoir sampling
//! - `kernels`: the membership step on a `Backend` (`cpu`, `cuda`), and a streaming `Pass`
//! - `pass`: what a pass accumulates, merged in one place
//! - `init`: the init sample and spherical k-means++
//! - `fit`: the iteration loop and the output pass; `transform`: memberships under fixed centers
//! - `exemplars`: the bounded top-k heaps and what they are offered; `quantiles`: examples across the range of memberships
//! - `analysis`: quality metrics; `model` and `checkpoint`: the saved files; `hierarchy`: the tree over the clusters
//! - `merge`, `split`, `update`: operations on a fitted model
//! - `memory`: available memory and the per-array read limit
//! - `output`: atomic writes; `run_folder`: an output folder held by a run (lock, staging, manifest); `error`: the error type and its stable codes

pub mod analysis;
pub mod arrow_chunk;
pub mod cache;
pub mod checkpoint;
pub mod chunk;
pub mod config;
pub mod error;
pub mod exemplars;
pub mod fit;
pub mod hierarchy;
pub mod init;
pub mod kernels;
pub mod memberships_file;
pub mod merge;
pub mod memory;
pub mod model;
pub mod npz;
pub mod output;
pub mod pass;
pub mod quantiles;
pub mod ranks;
pub mod run_folder;
pub mod safetensors_chunk;
pub mod sources;
pub mod split;
pub mod stream;
pub mod transform;
pub mod update;
pub mod world;

pub use config::{CacheSetting, ClusteringConfig, Device, Precision, Temperature};
pub use model::{HistoryEntry, Model};
pub use error::{Error, Result};
pub use kernels::{Backend, Centers, MembershipParams, Pass, PassOutput, PreparedRows, SparseRows, Tokens, Want};
pub use chunk::{Activations, ActivationsRef, Chunk};
pub use sources::read_chunk;
pub use pass::PassStats;
