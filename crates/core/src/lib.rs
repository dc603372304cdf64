//! soft-cluster core: soft spherical k-means over streamed neural-network activations.
//!
//! Pure Rust, no Node types. Modules follow the concepts of `SPEC.md`: `npz` reads chunks,
//! `kernels` computes memberships on a `Backend`, `pass` is what a pass accumulates,
//! `config` holds the defaults and their validation, `transform` is the user-facing step.

pub mod analysis;
pub mod checkpoint;
pub mod config;
pub mod error;
pub mod exemplars;
pub mod fit;
pub mod kernels;
pub mod model;
pub mod npz;
pub mod output;
pub mod pass;
pub mod transform;

pub use config::ClusteringConfig;
pub use model::{HistoryEntry, Model};
pub use error::{Error, Result};
pub use kernels::{Backend, Centers, MembershipParams, PassOutput, PreparedRows, SparseRows, Tokens, Want};
pub use npz::{read_chunk, Activations, ActivationsRef, Chunk};
pub use pass::PassStats;
