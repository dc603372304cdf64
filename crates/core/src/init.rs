//! Init of a fit (docs/algorithm.md "Init" and "Temperature"): a seeded uniform sample of real
//! tokens, spherical k-means++ over it, hard warm-up iterations, and the automatic temperature
//! chosen from the warmed-up clusters. Its products go through the backend.

use crate::config::{ClusteringConfig, Temperature};
use crate::error::{Error, Result};
use crate::kernels::byte_rows::ByteRows;
use crate::kernels::{for_each_cosine_row, prepare_rows, unit_row, Backend, Centers, Tokens};
use crate::cache::ChunkCache;
use crate::quantiles;
use crate::ranks::{agree, Collective, Share};
use crate::stream::{report, Phase, Progress};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BinaryHeap;
use std::time::Instant;

/// Tokens sampled for init: enough for the temperature rule to see each cluster's spread (at
/// least 16384, 16 per cluster), at most 32768 rows: k-means++ and the warm-up (on the first
/// `seeding_rows` of them) cost `rows x K x D` each.
pub fn sample_size(k: usize) -> usize {
    (16 * k).clamp(16384, 32768).max(k)
}

/// Salt of the sample's keys, so that they are not the quantile sample's.
const SAMPLE_SALT: u64 = 0x5a3c_91e7_d204_6b1f;

/// A seeded uniform sample of the unit vectors of real tokens: the `sample_size(K)` tokens with
/// the smallest keys, a hash of the seed and the token's place among all the run's tokens (ties:
/// the earlier), in key order. It depends neither on the order chunks are read in, nor on how
/// they are shared among ranks, nor on how the tokens are split into files: each rank keeps its
/// own smallest, the ranks agree on the cut from the keys alone, and rank 0 gets the rows under it
/// (the other ranks get none).
fn sample_tokens(config: &ClusteringConfig, share: &Share, cache: &mut ChunkCache, comm: &dyn Collective, progress: &mut dyn FnMut(&Progress)) -> Result<Vec<f32>> {
    let (k, d) = (config.n_clusters, config.d_model);
    let capacity = sample_size(k);
    let seed = config.seed ^ SAMPLE_SALT;
    let local = (|| {
        // A max-heap on (key, location): the top is the first to go when a smaller key comes.
        let mut kept: BinaryHeap<(u64, u64, usize)> = BinaryHeap::with_capacity(capacity + 1);
        let mut rows: Vec<f32> = Vec::with_capacity(capacity * d);
        let mut seen: u64 = 0;
        let started = Instant::now();
        cache.stream(&share.paths, d, |i, chunk| {
            let tokens = Tokens::from_chunk(chunk, share.ids[i]);
            let prepared = prepare_rows(&tokens)?;
            // A large file comes in blocks of whole sequences.
            let first = share.first_token[i] + (tokens.first_row * tokens.seq_len.max(1)) as u64;
            for (&t, &inv) in prepared.token.iter().zip(&prepared.inv_norm) {
                let at = first + u64::from(t);
                let key = quantiles::key(seed, (at as usize, 0, 0));
                let slot = if kept.len() < capacity {
                    rows.resize(rows.len() + d, 0.0);
                    kept.len()
                } else if kept.peek().is_some_and(|top| (key, at) < (top.0, top.1)) {
                    kept.pop().expect("full").2
                } else {
                    continue;
                };
                unit_row(&tokens, t as usize, inv, &mut rows[slot * d..(slot + 1) * d]);
                kept.push((key, at, slot));
            }
            seen += prepared.len() as u64;
            report(progress, Phase::Init, 0, config.n_iterations, i, share.paths.len(), seen, started);
            Ok(())
        })?;
        Ok((kept.into_vec(), rows))
    })();
    // (key, place, row in `rows`) of each sampled token.
    let (mut sample, mut rows) = agree(comm, local)?;
    if comm.size() > 1 {
        // The cut: the `capacity`-th smallest (key, place) of all ranks.
        let keys: Vec<u8> = sample.iter().flat_map(|&(key, at, _)| [key, at]).flat_map(u64::to_le_bytes).collect();
        let mut all: Vec<(u64, u64)> = comm
            .all_gather(keys)?
            .iter()
            .flat_map(|b| b.chunks_exact(16).map(|e| (u64_at(&e[..8]), u64_at(&e[8..]))))
            .collect();
        all.sort_unstable();
        if let Some(&cut) = all.get(capacity.saturating_sub(1)) {
            sample.retain(|&(key, at, _)| (key, at) <= cut);
        }
        let row = |slot: usize| rows[slot * d..(slot + 1) * d].iter().flat_map(|v| v.to_le_bytes());
        let mine: Vec<u8> = sample.iter().flat_map(|&(key, at, slot)| [key, at].into_iter().flat_map(u64::to_le_bytes).chain(row(slot))).collect();
        // Rank 0 gets every rank's rows under the cut, one buffer of rows as they came.
        (sample, rows) = (Vec::new(), Vec::new());
        for e in comm.gather(mine)?.iter().flat_map(|b| b.chunks_exact(16 + 4 * d)) {
            sample.push((u64_at(&e[..8]), u64_at(&e[8..16]), sample.len()));
            rows.extend(e[16..].chunks_exact(4).map(|v| f32::from_le_bytes(v.try_into().expect("4 bytes"))));
        }
    }
    sample.sort_unstable();
    let order: Vec<usize> = sample.iter().map(|&(_, _, slot)| slot).collect();
    Ok(reorder_rows(rows, &order, d))
}

/// `rows` (of `d` values) with row `i` the old row `order[i]`, rows not in `order` dropped: in
/// place, as the sample may be a large part of memory.
fn reorder_rows(mut rows: Vec<f32>, order: &[usize], d: usize) -> Vec<f32> {
    let mut to = vec![usize::MAX; rows.len() / d];
    order.iter().enumerate().for_each(|(i, &slot)| to[slot] = i);
    for at in 0..to.len() {
        // Each swap puts the row at `at` where it belongs and brings another one to `at`.
        while to[at] != usize::MAX && to[at] != at {
            let dest = to[at];
            let (low, high) = rows.split_at_mut(at.max(dest) * d);
            low[at.min(dest) * d..(at.min(dest) + 1) * d].swap_with_slice(&mut high[..d]);
            to.swap(at, dest);
        }
    }
    rows.truncate(order.len() * d);
    rows
}

fn u64_at(bytes: &[u8]) -> u64 {
    u64::from_le_bytes(bytes.try_into().expect("8 bytes"))
}

/// Sample rows that k-means++ and the warm-up run on: the first of the sample (a uniform
/// subsample, as the sample is in key order), 16 per cluster and at least 4096. Below K = 1024
/// that is fewer than the sample (which the temperature rule reads whole): k-means++ makes K
/// passes over its rows and the warm-up one GEMM per iteration, so init at K = 256 went from
/// 1.5 s to 0.3 s on the harness data (benches/RESULTS.md); seeding from 16 rows per cluster
/// measured as good as from 32 on the real activations of the quality bench, 8 did not.
pub fn seeding_rows(k: usize) -> usize {
    (16 * k).max(4096)
}

/// Greedy spherical k-means++ (distance `1 - cos`) over the first `seeding_rows(K)` unit rows of
/// `sample`, their cosines computed from 8-bit copies of the rows (`ByteRows`: each step reads
/// every row).
fn kmeans_plus_plus(sample: &[f32], k: usize, d: usize, rng: &mut ChaCha8Rng) -> Result<Centers> {
    let n = (sample.len() / d).min(seeding_rows(k));
    let rows = ByteRows::from_f32(&sample[..n * d], d);
    let row = |i: usize| &sample[i * d..(i + 1) * d];
    // Cosines of every seeding row to each of `candidates`, `[n, t]`.
    let cosines_to = |candidates: &[usize]| rows.dots(&candidates.iter().flat_map(|&c| row(c).iter().copied()).collect::<Vec<f32>>());
    // `gap[i]` = 1 - max cos(x_i, chosen): the squared chord distance / 2, what k-means++ samples by.
    let mut chosen = vec![rng.random_range(0..n)];
    let mut gap: Vec<f32> = cosines_to(&chosen).iter().map(|&c| (1.0 - c).max(0.0)).collect();
    gap[chosen[0]] = 0.0; // not the rounding of its own cosine
    // Greedy k-means++ (as scikit-learn does): draw a few candidates, keep the one that lowers the
    // total gap most. Plain k-means++ too often puts two centers in one planted cluster.
    let trials = 2 + (k as f64).ln().floor() as usize;
    let mut cumulative = vec![0f64; n];
    while chosen.len() < k {
        let mut total = 0f64;
        for (c, &g) in cumulative.iter_mut().zip(&gap) {
            total += f64::from(g);
            *c = total;
        }
        let candidates: Vec<usize> = (0..trials)
            .map(|_| {
                if total <= 0.0 {
                    return rng.random_range(0..n); // every token sits on a chosen center
                }
                // The first row whose running total passes the draw.
                let target = rng.random::<f64>() * total;
                cumulative.partition_point(|&c| c <= target).min(n - 1)
            })
            .collect();
        let cosines = cosines_to(&candidates);
        let (gap_ref, cos_ref) = (&gap, &cosines);
        let gap_with = |c: usize| (0..n).map(move |i| gap_ref[i].min((1.0 - cos_ref[i * trials + c]).max(0.0)));
        let (best, _) = (0..trials)
            .map(|c| (c, gap_with(c).map(f64::from).sum::<f64>()))
            .fold((0, f64::INFINITY), |b, x| if x.1 < b.1 { x } else { b });
        gap = gap_with(best).collect();
        gap[candidates[best]] = 0.0;
        chosen.push(candidates[best]);
    }
    let data = chosen.iter().flat_map(|&i| row(i).iter().copied()).collect();
    // Sample rows are unit vectors already; a failure here is ours, not the user's initialCenters.
    Centers::from_rows(k, d, data).map_err(|e| Error::invalid_input("k-means++ init", format!("a sampled token could not be a center: {e}")))
}


/// What init hands the iterations: the starting centers and the temperature to use.
#[derive(Debug, Clone)]
pub struct Start {
    pub centers: Centers,
    pub temperature: f64,
    /// How an `auto` temperature was chosen; `None` when the user gave it.
    pub temperature_rule: Option<String>,
    /// The temperature `auto` chooses for this data, when init drew the sample and ran
    /// k-means++ (what `suggested_temperature` would compute again; the collapse warning names it).
    pub auto_temperature: Option<f64>,
}

/// Divides the low quantile of the pair merge temperatures (see `auto_temperature`).
pub const AUTO_MARGIN: f64 = 3.0;
/// Which quantile of the pair merge temperatures `auto` starts from.
pub const AUTO_QUANTILE: f64 = 0.1;
/// Bounds of an `auto` temperature.
const AUTO_RANGE: (f64, f64) = (1e-3, 1.0);

/// Init of a fit. With `initial` centers and a numeric temperature nothing is read; otherwise
/// the seeded sample is drawn, k-means++ and the hard warm-up run on it (not with `initial`),
/// and an `auto` temperature is chosen from the clusters of the sample. The chunks are read
/// through `cache` (this first pass fills it).
pub fn start(config: &ClusteringConfig, initial: Option<Centers>, share: &Share, cache: &mut ChunkCache, backend: &dyn Backend, comm: &dyn Collective, progress: &mut dyn FnMut(&Progress)) -> Result<Start> {
    if let (Some(centers), Temperature::Fixed(t)) = (&initial, config.temperature) {
        return Ok(Start { centers: centers.clone(), temperature: t, temperature_rule: None, auto_temperature: None });
    }
    let sample = sample_tokens(config, share, cache, comm, progress)?;
    // Rank 0 alone runs k-means++ and the warm-up on the sample, then hands the start to all.
    let (k, d) = (config.n_clusters, config.d_model);
    let on_root = if comm.rank() == 0 { start_from_sample(config, initial.clone(), &sample, backend).map(Some) } else { Ok(None) };
    let start = agree(comm, on_root)?;
    if comm.size() == 1 {
        return Ok(start.expect("rank 0"));
    }
    let bytes = comm.broadcast(start.as_ref().map(encode_start).unwrap_or_default())?;
    decode_start(&bytes, k, d)
}

/// A `Start` as bytes (rank 0 to the others): temperature, auto temperature (NaN: none), the
/// rule's length and text, the centers; little-endian.
fn encode_start(s: &Start) -> Vec<u8> {
    let rule = s.temperature_rule.clone().unwrap_or_default().into_bytes();
    let mut out = Vec::with_capacity(24 + rule.len() + 4 * s.centers.data.len());
    out.extend(s.temperature.to_le_bytes());
    out.extend(s.auto_temperature.unwrap_or(f64::NAN).to_le_bytes());
    out.extend((rule.len() as u64).to_le_bytes());
    out.extend(rule);
    s.centers.data.iter().for_each(|v| out.extend(v.to_le_bytes()));
    out
}

fn decode_start(bytes: &[u8], k: usize, d: usize) -> Result<Start> {
    let f64_at = |at: usize| f64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let rule_len = bytes.get(16..24).map_or(usize::MAX, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize);
    if rule_len.checked_add(24 + 4 * k * d) != Some(bytes.len()) {
        return Err(Error::invalid_input("init from rank 0", format!("{} bytes are not a start of {k} x {d} centers", bytes.len())));
    }
    let (temperature, auto) = (f64_at(0), f64_at(8));
    let rule = String::from_utf8_lossy(&bytes[24..24 + rule_len]).into_owned();
    let data = bytes[24 + rule_len..].chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))).collect();
    Ok(Start { centers: Centers { k, d, data }, temperature, temperature_rule: (!rule.is_empty()).then_some(rule), auto_temperature: (!auto.is_nan()).then_some(auto) })
}

/// `start` once the sample is drawn.
fn start_from_sample(config: &ClusteringConfig, initial: Option<Centers>, sample: &[f32], backend: &dyn Backend) -> Result<Start> {
    let (k, d) = (config.n_clusters, config.d_model);
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let from_kmeans = initial.is_none();
    let centers = match initial {
        Some(c) => c,
        None => {
            let n = sample.len() / d;
            if n < k {
                return Err(Error::invalid_input("chunks", format!("hold {n} real, non-zero tokens, fewer than nClusters = {k}")));
            }
            let centers = kmeans_plus_plus(sample, k, d, &mut rng)?;
            warm_up(&sample[..n.min(seeding_rows(k)) * d], centers, config.warmup_iterations, backend)?.0
        }
    };
    match config.temperature {
        Temperature::Fixed(t) => {
            // One pass over the sample now spares the collapse warning a second init.
            let auto = if from_kmeans { Some(auto_temperature(sample, &centers, backend)?.0) } else { None };
            Ok(Start { centers, temperature: t, temperature_rule: None, auto_temperature: auto })
        }
        Temperature::Auto => {
            let (t, rule) = auto_temperature(sample, &centers, backend)?;
            Ok(Start { centers, temperature: t, temperature_rule: Some(rule), auto_temperature: Some(t) })
        }
    }
}

/// The temperature `auto` would choose for these chunks (for the collapse warning of a fit run
/// at a numeric temperature): the same sample, k-means++ and warm-up as `start`.
pub fn suggested_temperature(config: &ClusteringConfig, share: &Share, cache: &mut ChunkCache, backend: &dyn Backend, comm: &dyn Collective) -> Result<f64> {
    let auto = ClusteringConfig { temperature: Temperature::Auto, temperature_rule: None, ..config.clone() };
    start(&auto, None, share, cache, backend, comm, &mut |_| {}).map(|s| s.temperature)
}

/// Index of the best center of each sample row (ties: the lowest index) and its cosine.
fn assign(sample: &[f32], centers: &Centers, backend: &dyn Backend) -> Result<Vec<(usize, f32)>> {
    nearest(sample, &centers.data, centers.d, false, backend)
}

/// For each row of `rows`, the row of `others` with the largest cosine (ties: the lowest index)
/// and that cosine (`usize::MAX` when there is none); `skip_self` leaves out `others[i]` for row
/// `i` (rows and others the same set).
fn nearest(rows: &[f32], others: &[f32], d: usize, skip_self: bool, backend: &dyn Backend) -> Result<Vec<(usize, f32)>> {
    let mut best = Vec::with_capacity(rows.len() / d);
    for_each_cosine_row(backend, rows, others, d, |i, row| {
        let pick = row.iter().enumerate().filter(|&(c, _)| !skip_self || c != i);
        best.push(pick.fold((usize::MAX, f32::NEG_INFINITY), |b, (c, &v)| if v > b.1 || b.0 == usize::MAX { (c, v) } else { b }));
    })?;
    Ok(best)
}

/// Stop the warm-up once an assignment moves at most this share of the seeding rows: on the
/// quality bench's real activations stopping at 0.5% or 2% changed the fitted hard objective by
/// at most 0.0003 (the soft iterations follow), and at K = 1024 on the harness data the warm-up
/// runs 3 GEMMs instead of 9.
const WARMUP_SETTLED: f64 = 0.01;

/// Hard spherical k-means on the sample: each row goes to its nearest center, each center to
/// the normalized sum of its rows. A center left without rows moves to the sample row worst
/// covered by the others (lowest best cosine, earliest first). Stops early when nothing moves,
/// and after the update of an assignment that moved at most `WARMUP_SETTLED` of the rows.
/// Also returns how many rows each assignment moved (all of them for the first).
fn warm_up(sample: &[f32], mut centers: Centers, iterations: usize, backend: &dyn Backend) -> Result<(Centers, Vec<usize>)> {
    let (k, d) = (centers.k, centers.d);
    let mut previous: Vec<usize> = Vec::new();
    let mut moved = Vec::new();
    for _ in 0..iterations {
        let best = assign(sample, &centers, backend)?;
        let owner: Vec<usize> = best.iter().map(|b| b.0).collect();
        let changed = if previous.is_empty() { owner.len() } else { owner.iter().zip(&previous).filter(|(a, b)| a != b).count() };
        moved.push(changed);
        if changed == 0 {
            break;
        }
        let mut sums = vec![0f64; k * d];
        for (row, &c) in sample.chunks_exact(d).zip(&owner) {
            sums[c * d..(c + 1) * d].iter_mut().zip(row).for_each(|(s, &x)| *s += f64::from(x));
        }
        // Sample rows by how badly the centers cover them, sorted only if a center needs one.
        let mut worst: Option<std::vec::IntoIter<usize>> = None;
        for c in 0..k {
            let s = &sums[c * d..(c + 1) * d];
            let norm = s.iter().map(|v| v * v).sum::<f64>().sqrt();
            let row = &mut centers.data[c * d..(c + 1) * d];
            if norm > 0.0 {
                row.iter_mut().zip(s).for_each(|(r, v)| *r = (v / norm) as f32);
                continue;
            }
            let order = worst.get_or_insert_with(|| {
                let mut rows: Vec<usize> = (0..best.len()).collect();
                rows.sort_by(|&a, &b| best[a].1.total_cmp(&best[b].1).then(a.cmp(&b)));
                rows.into_iter()
            });
            if let Some(i) = order.next() {
                row.copy_from_slice(&sample[i * d..(i + 1) * d]);
            }
        }
        if moved.len() > 1 && changed as f64 <= WARMUP_SETTLED * owner.len() as f64 {
            break;
        }
        previous = owner;
    }
    Ok((centers, moved))
}

/// The `auto` temperature (docs/algorithm.md "Temperature"). Soft k-means keeps two clusters
/// apart only while the temperature is below the one at which their union would rather be one
/// cluster: linearizing the update around a single center `m/|m|` shows that center splits
/// along a unit direction `u` exactly when `T < Var(x . u) / |mean x|` over the union. For each
/// cluster of the sample and its nearest other center, this merge temperature is measured
/// along the line joining the two centers; `auto` is a low quantile of them divided by a
/// margin, so that nearly all neighbouring clusters stay apart.
pub fn auto_temperature(sample: &[f32], centers: &Centers, backend: &dyn Backend) -> Result<(f64, String)> {
    let (k, d) = (centers.k, centers.d);
    let best = assign(sample, centers, backend)?;
    let neighbour = nearest(&centers.data, &centers.data, d, true, backend)?;
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); k];
    for (i, &(c, _)) in best.iter().enumerate() {
        members[c].push(i);
    }
    let mut merge: Vec<f64> = Vec::new();
    for a in 0..k {
        let b = neighbour[a].0;
        if b >= k {
            continue; // K = 1: no other center
        }
        let union: Vec<usize> = members[a].iter().chain(&members[b]).copied().collect();
        if members[a].len() < 2 || members[b].len() < 2 {
            continue;
        }
        let mut u: Vec<f64> = centers.row(a).iter().zip(centers.row(b)).map(|(&x, &y)| f64::from(x) - f64::from(y)).collect();
        let norm = u.iter().map(|v| v * v).sum::<f64>().sqrt();
        if norm == 0.0 {
            continue;
        }
        u.iter_mut().for_each(|v| *v /= norm);
        let mut mean = vec![0f64; d];
        let (mut sum, mut sum_sq) = (0f64, 0f64);
        for &i in &union {
            let row = &sample[i * d..(i + 1) * d];
            let along: f64 = row.iter().zip(&u).map(|(&x, &v)| f64::from(x) * v).sum();
            sum += along;
            sum_sq += along * along;
            mean.iter_mut().zip(row).for_each(|(m, &x)| *m += f64::from(x));
        }
        let n = union.len() as f64;
        let variance = (sum_sq / n - (sum / n).powi(2)).max(0.0);
        let mean_norm = mean.iter().map(|v| v * v).sum::<f64>().sqrt() / n;
        if mean_norm > 0.0 {
            merge.push(variance / mean_norm);
        }
    }
    if merge.is_empty() {
        // One cluster, or too few tokens to measure: memberships barely depend on T.
        return Ok((0.1, "auto: no pair of clusters to measure on the sample; 0.1".into()));
    }
    merge.sort_by(f64::total_cmp);
    let at = merge[((merge.len() - 1) as f64 * AUTO_QUANTILE).floor() as usize];
    let t = (at / AUTO_MARGIN).clamp(AUTO_RANGE.0, AUTO_RANGE.1);
    let rule = format!(
        "auto: {}th percentile of the {} neighbour-pair merge temperatures on the init sample ({at:.4}) / {AUTO_MARGIN}",
        (AUTO_QUANTILE * 100.0).round(),
        merge.len()
    );
    Ok((t, rule))
}

#[cfg(test)]
mod seeding_tests {
    use super::{kmeans_plus_plus, seeding_rows};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn kmeans_plus_plus_seeds_one_center_per_cluster_from_the_seeding_rows_only() {
        let (d, k) = (16, 5);
        let n = seeding_rows(k);
        // Rows 0..n: tight clusters around axes 0..4 in turn; after them, 2000 rows on axis 5
        // that k-means++ would take for a sixth cluster if it read past the seeding rows.
        let mut sample = Vec::new();
        for i in 0..n + 2000 {
            let axis = if i < n { i % 5 } else { 5 };
            let mut row: Vec<f32> = (0..d).map(|j| if j == axis { 1.0 } else { 0.01 * ((i * 7 + j) % 5) as f32 }).collect();
            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            row.iter_mut().for_each(|v| *v /= norm);
            sample.extend(row);
        }
        for seed in 0..4 {
            let centers = kmeans_plus_plus(&sample, k, d, &mut ChaCha8Rng::seed_from_u64(seed)).unwrap();
            let mut axes: Vec<usize> = (0..k).map(|c| (0..d).max_by(|&a, &b| centers.row(c)[a].total_cmp(&centers.row(c)[b])).unwrap()).collect();
            axes.sort_unstable();
            assert_eq!(axes, vec![0, 1, 2, 3, 4], "seed {seed}");
        }
    }
}

#[cfg(test)]
mod warm_up_tests {
    use super::{warm_up, WARMUP_SETTLED};
    use crate::kernels::cpu::CpuBackend;
    use crate::kernels::Centers;

    #[test]
    fn warm_up_stops_after_the_first_assignment_that_moves_at_most_one_percent_of_the_rows() {
        // Rows spread evenly over an arc of 1.5 radians, two centers starting at one end: each
        // Lloyd step moves the boundary half the way to the middle, so the moves halve and
        // reach 1% only after several steps (full convergence takes many more).
        let (n, d) = (2000, 3);
        let sample: Vec<f32> = (0..n).flat_map(|i| {
            let a = 1.5 * (i as f32 + 0.5) / n as f32;
            [a.cos(), a.sin(), 0.0]
        }).collect();
        let start = Centers::from_rows(2, d, vec![1.0, 0.0, 0.0, 0.05f32.cos(), 0.05f32.sin(), 0.0]).unwrap();
        let (_, moved) = warm_up(&sample, start, 50, &CpuBackend::default()).unwrap();
        let settled = (WARMUP_SETTLED * n as f64) as usize;
        assert!(moved.len() >= 4, "{moved:?}");
        assert_eq!(moved[0], n);
        assert!(moved[1..moved.len() - 1].iter().all(|&m| m > settled), "stopped late: {moved:?}");
        assert!(*moved.last().unwrap() <= settled && *moved.last().unwrap() > 0, "{moved:?}");
    }
}

#[cfg(test)]
mod reorder_tests {
    use super::reorder_rows;

    #[test]
    fn rows_are_reordered_in_place_and_the_rest_dropped() {
        let rows: Vec<f32> = (0..6).flat_map(|r| [r as f32, 10.0 + r as f32]).collect();
        for order in [vec![3, 0, 4], vec![5, 4, 3, 2, 1, 0], vec![1], vec![]] {
            let want: Vec<f32> = order.iter().flat_map(|&r| [r as f32, 10.0 + r as f32]).collect();
            assert_eq!(reorder_rows(rows.clone(), &order, 2), want, "{order:?}");
        }
    }
}
