//! Merging clusters (docs/algorithm.md "Merge"): the merged cluster's sums are the sums of its
//! parts, so its center is `(S_a + S_b) / |S_a + S_b|` and its mass `m_a + m_b`: what a fit
//! started from the merged center would hold after zero iterations. The merged cluster takes the
//! lowest id of its parts; the clusters after a removed id move down by one.

use crate::error::{Error, Result};
use crate::exemplars::{drop_overlapping, Exemplar};
use crate::kernels::Centers;
use crate::kernels::Backend;
use crate::model::{Model, Operation, SufficientStats};
use crate::quantiles::QuantileSample;
use crate::stream::Progress;
use crate::update::passes;
use std::path::PathBuf;

/// `mapping[old] = new` for merging `clusters` (sorted, distinct) out of `k`.
fn merge_mapping(k: usize, clusters: &[usize]) -> Vec<usize> {
    let target = clusters[0];
    let mut mapping = Vec::with_capacity(k);
    let mut next = 0;
    for old in 0..k {
        if clusters.contains(&old) && old != target {
            mapping.push(usize::MAX); // filled below
        } else {
            mapping.push(next);
            next += 1;
        }
    }
    let merged = mapping[target];
    mapping.iter_mut().filter(|m| **m == usize::MAX).for_each(|m| *m = merged);
    mapping
}

/// Checks the cluster ids of a merge: at least two, distinct, each below K.
fn check_ids(clusters: &[usize], k: usize) -> Result<Vec<usize>> {
    let mut sorted = clusters.to_vec();
    sorted.sort_unstable();
    if let Some(&bad) = sorted.iter().find(|&&c| c >= k) {
        return Err(Error::invalid_input("clusters", format!("{bad} is not a cluster id (the model has {k}: 0 to {})", k - 1)));
    }
    if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
        return Err(Error::invalid_input("clusters", format!("{} is given twice: a cluster cannot be merged with itself", w[0])));
    }
    if sorted.len() < 2 {
        return Err(Error::invalid_input("clusters", format!("a merge needs at least two clusters, got {}", sorted.len())));
    }
    Ok(sorted)
}

/// The model with `clusters` merged into one. Needs the model's sums (`format_version` 2).
pub fn merge(model: &Model, clusters: &[usize]) -> Result<Model> {
    let (k, d) = (model.centers.k, model.centers.d);
    let ids = check_ids(clusters, k)?;
    let stats = model.stats.as_ref().ok_or_else(|| {
        Error::invalid_input("model", "has no sufficient statistics (a format_version 1 file, or never fitted); fit it again with this version to merge its clusters")
    })?;
    let mapping = merge_mapping(k, &ids);
    let new_k = k - (ids.len() - 1);
    let mut s = vec![0f64; new_k * d];
    let mut m = vec![0f64; new_k];
    let mut mass = vec![0f64; new_k];
    let mut count = vec![0u64; new_k];
    for old in 0..k {
        let new = mapping[old];
        s[new * d..(new + 1) * d].iter_mut().zip(&stats.s[old * d..(old + 1) * d]).for_each(|(a, b)| *a += b);
        m[new] += stats.m[old];
        mass[new] += model.cluster_mass[old];
        count[new] += model.cluster_count[old];
    }
    let mut data = Vec::with_capacity(new_k * d);
    for new in 0..new_k {
        let old = mapping.iter().position(|&x| x == new).expect("every new id has an old one");
        let row = &s[new * d..(new + 1) * d];
        let norm = row.iter().map(|v| v * v).sum::<f64>().sqrt();
        if new == mapping[ids[0]] && norm > 0.0 {
            data.extend(row.iter().map(|v| (v / norm) as f32));
        } else {
            // An unmerged cluster keeps its center (its sums were taken under it).
            data.extend_from_slice(model.centers.row(old));
        }
    }
    // Exemplars: both lists, best first by their stored values; with distinct contexts, two
    // exemplars of the merged clusters may share a window, and the lesser goes.
    let mut lists: Vec<Vec<Exemplar>> = vec![Vec::new(); new_k];
    for (old, list) in model.exemplars.iter().enumerate() {
        lists[mapping[old]].extend(list.iter().cloned());
    }
    let exemplars: Vec<Vec<Exemplar>> = lists
        .into_iter()
        .map(|mut list| {
            list.sort_by(|a, b| b.value.total_cmp(&a.value).then(a.location().cmp(&b.location())));
            // A token that was an exemplar of two merged clusters is listed once.
            list.dedup_by(|later, earlier| later.location() == earlier.location());
            let mut list = if model.config.distinct_contexts { drop_overlapping(list, model.config.context_window) } else { list };
            list.truncate(model.config.n_exemplars);
            list
        })
        .collect();
    // Quantile examples: both samples, each example in the bin of its stored membership.
    let mut quantiles = QuantileSample::new(new_k, model.config.quantile_bins, model.config.quantile_examples, model.config.seed);
    for (old, bins) in model.quantiles.iter().enumerate() {
        for e in bins.iter().flatten() {
            quantiles.offer(mapping[old], e.clone());
        }
    }
    let mut operations = model.operations.clone();
    operations.push(Operation { op: "merge".into(), clusters: ids.clone(), mapping: mapping.clone(), n_clusters: new_k, chunks: Vec::new(), iterations: 0 });
    let mut config = model.config.clone();
    config.n_clusters = new_k;
    Ok(Model {
        config,
        centers: Centers { k: new_k, d, data },
        cluster_mass: mass,
        cluster_count: count,
        exemplars,
        quantiles: quantiles.into_bins(),
        history: model.history.clone(),
        chunks: model.chunks.clone(),
        warnings: Vec::new(),
        device: model.device.clone(),
        stats: Some(SufficientStats { s, m, tokens: stats.tokens }),
        linkage: None,
        operations,
    })
}

/// `merge`, then, given chunks, that many passes over them (decay 0: the model then describes
/// those chunks, its sums re-estimated under the new centers).
pub fn merge_with_passes(model: &Model, clusters: &[usize], chunks: Option<(&[PathBuf], usize)>, backend: &dyn Backend, progress: &mut dyn FnMut(&Progress)) -> Result<Model> {
    let merged = merge(model, clusters)?;
    let Some((chunks, iterations)) = chunks else { return merged.with_hierarchy() };
    let mut out = passes(&merged, chunks, iterations, 0.0, None, backend, progress)?;
    let ran = out.history.len() - merged.history.len();
    if let Some(last) = out.operations.last_mut() {
        last.iterations = ran;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ClusteringConfig;

    fn model() -> Model {
        let mut m = Model::new(ClusteringConfig::new(4, 2), Centers::from_rows(4, 2, vec![1.0, 0.0, 0.8, 0.6, 0.0, 1.0, -1.0, 0.0]).unwrap());
        m.stats = Some(SufficientStats { s: vec![2.0, 0.0, 0.8, 0.6, 0.0, 3.0, -1.0, 0.0], m: vec![2.0, 1.0, 3.0, 1.0], tokens: 7 });
        m.cluster_mass = vec![2.0, 1.0, 3.0, 1.0];
        m.cluster_count = vec![2, 1, 3, 1];
        m
    }

    #[test]
    fn merged_center_and_mass_come_from_the_summed_statistics() {
        let merged = merge(&model(), &[2, 0]).unwrap();
        assert_eq!(merged.centers.k, 3);
        // S_0 + S_2 = (2, 3): the center is its direction; mass 2 + 3.
        let n = (13f64).sqrt();
        assert!((f64::from(merged.centers.row(0)[0]) - 2.0 / n).abs() < 1e-7 && (f64::from(merged.centers.row(0)[1]) - 3.0 / n).abs() < 1e-7);
        assert_eq!(merged.cluster_mass, vec![5.0, 1.0, 1.0]);
        assert_eq!(merged.cluster_count, vec![5, 1, 1]);
        assert_eq!(merged.centers.row(1), model().centers.row(1));
        assert_eq!(merged.centers.row(2), model().centers.row(3));
        assert_eq!(merged.operations[0].mapping, vec![0, 1, 0, 2]);
        assert_eq!(merged.config.n_clusters, 3);
    }

    #[test]
    fn refuses_bad_ids_and_models_without_sums() {
        let msg = |ids: &[usize]| merge(&model(), ids).unwrap_err().to_string();
        assert!(msg(&[1, 4]).contains("4 is not a cluster id"));
        assert!(msg(&[1, 1]).contains("cannot be merged with itself"));
        assert!(msg(&[1]).contains("at least two clusters"));
        let mut old = model();
        old.stats = None;
        assert!(merge(&old, &[0, 1]).unwrap_err().to_string().contains("no sufficient statistics"));
    }
}
