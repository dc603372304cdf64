//! Per-cluster statistics of a batch of tokens under fixed centers
//! (`analyzeSequentialClusters` of SPEC 7).

use crate::config::ClusteringConfig;
use crate::error::{Error, Result};
use crate::kernels::{unit_row, Backend, Centers, Tokens, Want};
use crate::transform::params_of;
use serde::Serialize;
use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenWeight {
    pub token_id: i64,
    /// Sum of this cluster's memberships over the occurrences of the token.
    pub weight: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStats {
    pub cluster: usize,
    /// `sum_x p_k(x)`.
    pub mass: f64,
    /// Tokens whose largest membership is k.
    pub hard_count: u64,
    /// Membership-weighted mean of `cos(x, C_k)` (0 when the mass is 0).
    pub mean_cosine: f64,
    /// Token ids with the largest summed membership, largest first (ties: smaller id).
    pub top_tokens: Vec<TokenWeight>,
}

pub fn analyze(backend: &dyn Backend, config: &ClusteringConfig, centers: &Centers, tokens: &Tokens, token_ids: Option<&[i64]>, top: usize) -> Result<Vec<ClusterStats>> {
    if let Some(ids) = token_ids {
        if ids.len() != tokens.n_tokens() {
            return Err(Error::invalid_input("tokenIds", format!("has {} entries but there are {} tokens", ids.len(), tokens.n_tokens())));
        }
    }
    let out = backend.run(centers, tokens, params_of(config), Want { sparse: true, stats: true, ..Want::default() })?;
    let stats = out.stats.expect("stats were asked for");
    let sparse = out.sparse.expect("sparse was asked for");
    let (k, d) = (centers.k, centers.d);
    let mut weighted_cos = vec![0f64; k];
    let mut weights: Vec<HashMap<i64, f64>> = vec![HashMap::new(); k];
    let mut x = vec![0f32; d];
    for (r, (&t, &inv)) in out.rows.token.iter().zip(&out.rows.inv_norm).enumerate() {
        unit_row(tokens, t as usize, inv, &mut x);
        let (clusters, values) = sparse.row(r);
        for (&c, &p) in clusters.iter().zip(values) {
            let cos: f64 = x.iter().zip(centers.row(c as usize)).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum();
            weighted_cos[c as usize] += f64::from(p) * cos;
            if let Some(ids) = token_ids {
                *weights[c as usize].entry(ids[t as usize]).or_default() += f64::from(p);
            }
        }
    }
    Ok((0..k)
        .map(|c| {
            let mut top_tokens: Vec<TokenWeight> = weights[c].iter().map(|(&token_id, &weight)| TokenWeight { token_id, weight }).collect();
            top_tokens.sort_by(|a, b| b.weight.total_cmp(&a.weight).then(a.token_id.cmp(&b.token_id)));
            top_tokens.truncate(top);
            let mass = stats.mass[c];
            ClusterStats {
                cluster: c,
                mass,
                hard_count: stats.hard_count[c],
                mean_cosine: if mass > 0.0 { weighted_cos[c] / mass } else { 0.0 },
                top_tokens,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::cpu::CpuBackend;
    use crate::npz::ActivationsRef;

    #[test]
    fn statistics_match_a_direct_computation() {
        // Three tokens on two axis centers, hard memberships (tiny temperature).
        let acts = vec![2.0f32, 0.0, 1.0, 1.0, 0.0, 3.0];
        let ids = vec![7i64, 7, 9];
        let centers = Centers::from_rows(2, 2, vec![1.0, 0.0, 0.0, 1.0]).unwrap();
        let mut config = ClusteringConfig::new(2, 2);
        config.temperature = 0.05;
        config.min_membership = 0.001;
        let tokens = Tokens { source: "activations", chunk_index: 0, activations: ActivationsRef::F32(&acts), seq_len: 3, d: 2, mask: None };
        let stats = analyze(&CpuBackend::default(), &config, &centers, &tokens, Some(&ids), 5).unwrap();
        // Token (1,1) splits evenly (both cosines 0.707): p = 0.5 each.
        assert!((stats[0].mass - 1.5).abs() < 1e-6 && (stats[1].mass - 1.5).abs() < 1e-6);
        assert_eq!((stats[0].hard_count, stats[1].hard_count), (2, 1));
        let h = std::f64::consts::FRAC_1_SQRT_2;
        assert!((stats[0].mean_cosine - (1.0 + 0.5 * h) / 1.5).abs() < 1e-6);
        assert_eq!(stats[0].top_tokens, vec![TokenWeight { token_id: 7, weight: stats[0].top_tokens[0].weight }]);
        assert!((stats[0].top_tokens[0].weight - 1.5).abs() < 1e-6);
        assert_eq!(stats[1].top_tokens.iter().map(|t| t.token_id).collect::<Vec<_>>(), vec![9, 7]);
        let err = analyze(&CpuBackend::default(), &config, &centers, &tokens, Some(&ids[..2]), 5).unwrap_err();
        assert!(err.to_string().contains("tokenIds: has 2 entries but there are 3 tokens"));
    }
}
