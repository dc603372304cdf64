//! Memberships of new data under fixed centers (the `transform` of SPEC 7).

use crate::config::ClusteringConfig;
use crate::error::Result;
use crate::kernels::{Backend, Centers, MembershipParams, PassOutput, Tokens, Want};

pub fn params_of(config: &ClusteringConfig) -> MembershipParams {
    MembershipParams { temperature: config.temperature, min_membership: config.min_membership }
}

/// Memberships of every real token of `tokens`; `dense` adds the `[rows, K]` matrix.
pub fn transform(backend: &dyn Backend, config: &ClusteringConfig, centers: &Centers, tokens: &Tokens, dense: bool) -> Result<PassOutput> {
    backend.run(centers, tokens, params_of(config), Want { dense, sparse: true, stats: false })
}
