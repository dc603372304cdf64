//! Issue 20 case 5: tokens with a direction get the memberships of that direction at any finite
//! scale (float32 subnormals, float64 near its smallest and largest values, both in one chunk),
//! and a model with a non-finite number is never written.

mod common;
use common::*;
use soft_cluster_core::fit::{fit_chunks, FitRequest};
use soft_cluster_core::kernels::cpu::CpuBackend;
use soft_cluster_core::transform::transform;
use soft_cluster_core::{read_chunk, Centers, ClusteringConfig, Model, Temperature, Tokens};
use std::path::Path;

const K: usize = 5;
const D: usize = 16;
const N: usize = 48;

fn config() -> ClusteringConfig {
    let mut c = ClusteringConfig::new(K, D);
    c.temperature = Temperature::Fixed(0.1);
    c
}

/// The chunk's memberships, dense, through the reader and the CPU backend.
fn memberships(path: &Path, centers: &Centers) -> Vec<f32> {
    let chunk = read_chunk(path).unwrap();
    let out = transform(&CpuBackend::default(), &config(), centers, &Tokens::from_chunk(&chunk, 0), true).unwrap();
    assert_eq!(out.rows.len(), N, "every token has a direction and a row");
    out.dense.unwrap()
}

/// The float64 reference on the stored values' direction (scaled by their largest value first,
/// so the reference itself cannot overflow or underflow).
fn reference(stored: &[f64], centers: &Centers) -> Vec<f64> {
    stored
        .chunks(D)
        .flat_map(|row| {
            let max = row.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            let scaled: Vec<f64> = row.iter().map(|v| v / max).collect();
            reference_row(&scaled, &centers.data, K, 0.1, 0.01)
        })
        .collect()
}

fn check(label: &str, got: &[f32], want: &[f64]) {
    let worst = got.iter().zip(want).map(|(&g, &w)| (f64::from(g) - w).abs()).fold(0.0, f64::max);
    assert!(worst < 1e-4, "{label}: largest error {worst} against the float64 reference");
}

#[test]
fn memberships_do_not_depend_on_the_scale_of_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let centers = Centers::from_rows(K, D, unit_rows(K, D, 3)).unwrap();
    let directions = unit_rows(N, D, 11);

    // float32: ordinary, subnormal (1e-39, 1e-42: fewer bits, still a direction), and huge.
    for scale in [1.0f32, 1e-39, 1e-42, 3e37] {
        let stored: Vec<f32> = directions.iter().map(|&v| v * scale).collect();
        let path = dir.path().join(format!("f32_{scale:e}.npz"));
        write_chunk(&path, 1, N, D, &stored, None, None);
        let want = reference(&stored.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(), &centers);
        check(&format!("float32 x {scale:e}"), &memberships(&path, &centers), &want);
    }
    // float64: near its smallest (subnormal) and largest values, and both in one chunk.
    let mixed: Vec<f64> = (0..N).map(|t| [1e300, 1e-310, 1.7e308 / 4.0, 1e-320][t % 4]).collect();
    for (label, row_scale) in [("1e-310", vec![1e-310; N]), ("1.7e308", vec![1.7e308 / 4.0; N]), ("1e300 and 1e-310 mixed", mixed)] {
        let stored: Vec<f64> = directions.iter().enumerate().map(|(i, &v)| f64::from(v) * row_scale[i / D]).collect();
        let path = dir.path().join(format!("f64_{}.npz", label.replace(' ', "_")));
        let bytes: Vec<u8> = stored.iter().flat_map(|v| v.to_le_bytes()).collect();
        write_npz(&path, &[("activations", npy_bytes("<f8", false, &[1, N, D], &bytes))], false);
        check(&format!("float64 x {label}"), &memberships(&path, &centers), &reference(&stored, &centers));
    }
}

#[test]
fn a_fit_on_extreme_values_is_finite_and_its_model_loads() {
    let dir = tempfile::tempdir().unwrap();
    let directions = unit_rows(N, D, 11);
    // Every token at 1e300, or at 1e-310: before, "initialCenters: row 0 has no direction" or
    // a center of inf and NaN objectives. Now the same model as the same directions at scale 1.
    let fit_at = |label: &str, scale: f64| {
        let stored: Vec<u8> = directions.iter().flat_map(|&v| (f64::from(v) * scale).to_le_bytes()).collect();
        let path = dir.path().join(label).with_extension("npz");
        write_npz(&path, &[("activations", npy_bytes("<f8", false, &[1, N, D], &stored))], false);
        let out = dir.path().join(format!("out_{label}"));
        let mut config = config();
        config.n_clusters = 3;
        let model = fit_chunks(FitRequest { config: &config, initial_centers: None, chunks: &[path], output_dir: &out, resume: false, overwrite: false, device: None, ranks: &soft_cluster_core::ranks::OneProcess }, &CpuBackend::default(), &mut |_| {}).unwrap();
        assert!(model.centers.data.iter().all(|v| v.is_finite()) && model.history.iter().all(|h| h.objective.is_finite()), "{label}");
        Model::load(&out.join("model.safetensors")).unwrap();
        model
    };
    let unit = fit_at("unit", 1.0);
    for (label, scale) in [("huge", 1e300), ("tiny", 1e-310)] {
        let model = fit_at(label, scale);
        let worst = model.centers.data.iter().zip(&unit.centers.data).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(worst < 1e-5, "{label}: centers differ from the unit-scale fit by {worst}");
    }
}

#[test]
fn a_model_with_a_non_finite_number_is_never_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = Model::new(config(), Centers::from_rows(K, D, unit_rows(K, D, 3)).unwrap());
    model.centers.data[7] = f32::NAN;
    let path = dir.path().join("model.safetensors");
    let err = model.save(&path).unwrap_err();
    assert_eq!(err.code(), "ERR_BAD_MODEL");
    assert!(err.to_string().contains("not written: `centers` holds a non-finite value (at flat index 7)"), "{err}");
    assert!(!path.exists());
}
