//! The tree over a model's clusters (docs/algorithm.md "Hierarchy"): agglomerative clustering of
//! the centers, average linkage on cosine distance `1 - C_a . C_b` with each cluster weighted by
//! its mass, as a linkage table in scipy's layout (`scipy.cluster.hierarchy.dendrogram` draws it),
//! and the cut of that tree into N groups.

use crate::error::{Error, Result};
use crate::kernels::cpu::{cosines_on_host, GemmCrate};
use crate::kernels::Centers;

/// One row of the linkage table: the two merged ids (< K: a cluster; K + i: the group row i
/// made), the distance at which they merge, and the number of clusters in the new group.
pub type LinkageRow = [f64; 4];

/// The weight of each cluster in the averages: its mass, with a floor so that an empty cluster
/// still joins the tree (and a model with no masses weighs its clusters alike).
fn weights(mass: &[f64]) -> Vec<f64> {
    let total: f64 = mass.iter().filter(|m| m.is_finite() && **m > 0.0).sum();
    let floor = if total > 0.0 { total * 1e-9 / mass.len() as f64 } else { 1.0 };
    mass.iter().map(|&m| if m.is_finite() && m > 0.0 { m + floor } else { floor }).collect()
}

/// The linkage table `[K - 1, 4]`, rows by increasing distance. The distance between two groups
/// is the mass-weighted mean of the cosine distances between their clusters (UPGMA with masses
/// as weights; Lance-Williams `d(A+B, C) = (w_A d(A, C) + w_B d(B, C)) / (w_A + w_B)`). Built
/// with the nearest-neighbour chain, O(K^2) time and `4 K^2` bytes; ties go to the lowest ids.
pub fn linkage(centers: &Centers, mass: &[f64]) -> Result<Vec<LinkageRow>> {
    let k = centers.k;
    if mass.len() != k {
        return Err(Error::invalid_input("cluster mass", format!("has {} entries for {k} clusters", mass.len())));
    }
    if k < 2 {
        return Ok(Vec::new());
    }
    // Distances between the current groups (slot = lowest cluster id in the group), f32 to
    // halve the memory at large K; the averages are formed in f64. The cosines are one GEMM
    // (blocks of rows at a time), symmetrized so that d(a, b) and d(b, a) are the same bits.
    let d = centers.d;
    let mut dist = vec![0f32; k * k];
    const ROWS: usize = 1024;
    for first in (0..k).step_by(ROWS) {
        let rows = &centers.data[first * d..(first + ROWS).min(k) * d];
        dist[first * k..first * k + rows.len() / d * k].copy_from_slice(&cosines_on_host(GemmCrate::default(), rows, &centers.data, d));
    }
    for a in 0..k {
        dist[a * k + a] = 0.0;
        for b in (a + 1)..k {
            let v = (1.0 - dist[a * k + b]).max(0.0);
            dist[a * k + b] = v;
            dist[b * k + a] = v;
        }
    }
    let mut weight = weights(mass);
    let mut size = vec![1usize; k];
    let mut active = vec![true; k];
    let mut merges: Vec<(usize, usize, f64)> = Vec::with_capacity(k - 1);
    let mut chain: Vec<usize> = Vec::new();
    let nearest = |dist: &[f32], active: &[bool], a: usize, prefer: Option<usize>| -> usize {
        let mut best = usize::MAX;
        let mut best_d = f32::INFINITY;
        for b in 0..k {
            if b == a || !active[b] {
                continue;
            }
            let d = dist[a * k + b];
            if d < best_d || (d == best_d && Some(b) == prefer) {
                best = b;
                best_d = d;
            }
        }
        best
    };
    while merges.len() < k - 1 {
        if chain.is_empty() {
            chain.push(active.iter().position(|&a| a).expect("two groups are left"));
        }
        let a = *chain.last().unwrap();
        // Prefer the previous element of the chain on ties, so that the chain ends.
        let previous = chain.len().checked_sub(2).map(|i| chain[i]);
        let b = nearest(&dist, &active, a, previous);
        if Some(b) == previous {
            chain.pop();
            chain.pop();
            let (lo, hi) = (a.min(b), a.max(b));
            merges.push((lo, hi, f64::from(dist[a * k + b])));
            let (wa, wb) = (weight[lo], weight[hi]);
            for c in 0..k {
                if active[c] && c != lo && c != hi {
                    let v = ((wa * f64::from(dist[lo * k + c]) + wb * f64::from(dist[hi * k + c])) / (wa + wb)) as f32;
                    dist[lo * k + c] = v;
                    dist[c * k + lo] = v;
                }
            }
            active[hi] = false;
            weight[lo] = wa + wb;
            size[lo] += size[hi];
        } else {
            chain.push(b);
        }
    }
    // scipy's numbering: sort by distance (stable), then name each new group K + its row.
    merges.sort_by(|x, y| x.2.total_cmp(&y.2));
    let mut id_of_slot: Vec<usize> = (0..k).collect();
    let mut leaves = vec![1usize; k];
    let mut rows = Vec::with_capacity(k - 1);
    for (i, &(lo, hi, d)) in merges.iter().enumerate() {
        let (x, y) = (id_of_slot[lo], id_of_slot[hi]);
        let n = leaves[lo] + leaves[hi];
        rows.push([x.min(y) as f64, x.max(y) as f64, d, n as f64]);
        id_of_slot[lo] = k + i;
        leaves[lo] = n;
    }
    Ok(rows)
}

/// The group of each cluster when the tree is cut into `groups` groups (the last `groups - 1`
/// merges undone). Groups are numbered by their lowest cluster id: group 0 holds cluster 0.
pub fn cut(linkage: &[LinkageRow], k: usize, groups: usize) -> Result<Vec<usize>> {
    if groups == 0 || groups > k {
        return Err(Error::invalid_input("level", format!("must be between 1 and the number of clusters ({k}), got {groups}")));
    }
    if linkage.len() + 1 != k {
        return Err(Error::invalid_input("linkage", format!("has {} rows for {k} clusters (needs {})", linkage.len(), k.saturating_sub(1))));
    }
    // Union-find over clusters and merged groups.
    let mut parent: Vec<usize> = (0..2 * k - 1).collect();
    fn root(parent: &mut [usize], mut x: usize) -> usize {
        while parent[x] != x {
            parent[x] = parent[parent[x]];
            x = parent[x];
        }
        x
    }
    for (i, row) in linkage.iter().take(k - groups).enumerate() {
        let (a, b) = (row[0] as usize, row[1] as usize);
        let (ra, rb) = (root(&mut parent, a), root(&mut parent, b));
        parent[ra] = k + i;
        parent[rb] = k + i;
    }
    let mut number = std::collections::HashMap::new();
    Ok((0..k)
        .map(|c| {
            let r = root(&mut parent, c);
            let next = number.len();
            *number.entry(r).or_insert(next)
        })
        .collect())
}

/// The clusters in the order a dendrogram draws its leaves (left to right).
pub fn leaf_order(linkage: &[LinkageRow], k: usize) -> Vec<usize> {
    if k == 0 {
        return Vec::new();
    }
    let mut order = Vec::with_capacity(k);
    let mut stack = vec![if linkage.is_empty() { 0 } else { k + linkage.len() - 1 }];
    while let Some(id) = stack.pop() {
        if id < k {
            order.push(id);
        } else {
            let row = linkage[id - k];
            stack.push(row[1] as usize);
            stack.push(row[0] as usize);
        }
    }
    order
}

/// What a dendrogram draws, in scipy's terms: the leaves left to right (`order`), and for each
/// linkage row the U joining its two children: x (`icoord`, leaf `i` of the order at `10 i + 5`)
/// and height (`dcoord`, 0 for a leaf, else the merge distance) of its four corners.
#[derive(Debug, Clone, PartialEq)]
pub struct Dendrogram {
    pub order: Vec<usize>,
    pub icoord: Vec<[f64; 4]>,
    pub dcoord: Vec<[f64; 4]>,
}

pub fn dendrogram(linkage: &[LinkageRow], k: usize) -> Dendrogram {
    let order = leaf_order(linkage, k);
    let mut x = vec![0f64; k + linkage.len()];
    let mut height = vec![0f64; k + linkage.len()];
    for (i, &leaf) in order.iter().enumerate() {
        x[leaf] = 10.0 * i as f64 + 5.0;
    }
    let (mut icoord, mut dcoord) = (Vec::with_capacity(linkage.len()), Vec::with_capacity(linkage.len()));
    for (i, row) in linkage.iter().enumerate() {
        let (a, b) = (row[0] as usize, row[1] as usize);
        icoord.push([x[a], x[a], x[b], x[b]]);
        dcoord.push([height[a], row[2], row[2], height[b]]);
        x[k + i] = (x[a] + x[b]) / 2.0;
        height[k + i] = row[2];
    }
    Dendrogram { order, icoord, dcoord }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn centers(rows: &[[f32; 3]]) -> Centers {
        Centers::from_rows(rows.len(), 3, rows.iter().flatten().copied().collect()).unwrap()
    }

    #[test]
    fn two_groups_of_nearby_directions_are_the_top_split() {
        // Clusters 0, 2 near x; 1, 3 near y; the tree joins within groups first.
        let c = centers(&[[1.0, 0.05, 0.0], [0.05, 1.0, 0.0], [1.0, -0.05, 0.02], [0.0, 1.0, 0.05]]);
        let rows = linkage(&c, &[1.0, 1.0, 1.0, 1.0]).unwrap();
        assert_eq!(rows.len(), 3);
        assert!(rows.windows(2).all(|w| w[0][2] <= w[1][2]), "{rows:?}");
        assert_eq!(rows[2][3], 4.0);
        assert_eq!(cut(&rows, 4, 2).unwrap(), vec![0, 1, 0, 1]);
        assert_eq!(cut(&rows, 4, 4).unwrap(), vec![0, 1, 2, 3]);
        assert_eq!(cut(&rows, 4, 1).unwrap(), vec![0, 0, 0, 0]);
        assert!(cut(&rows, 4, 5).is_err());
        let order = leaf_order(&rows, 4);
        let pos = |c: usize| order.iter().position(|&x| x == c).unwrap();
        assert_eq!(pos(0).abs_diff(pos(2)), 1);
        assert_eq!(pos(1).abs_diff(pos(3)), 1);
        let tree = dendrogram(&rows, 4);
        assert_eq!(tree.order, order);
        // The top U spans the two groups' midpoints at the last distance.
        assert_eq!(tree.dcoord[2][1], rows[2][2]);
        assert_eq!((tree.icoord[2][0] + tree.icoord[2][2]) / 2.0, 20.0);
    }

    #[test]
    fn group_distances_are_mass_weighted_means() {
        // 0 and 1 merge first; their group's distance to 2 is the mass-weighted mean.
        let c = centers(&[[1.0, 0.0, 0.0], [0.99, 0.141, 0.0], [0.0, 0.0, 1.0]]);
        let mass = [3.0, 1.0, 2.0];
        let rows = linkage(&c, &mass).unwrap();
        assert_eq!((rows[0][0], rows[0][1]), (0.0, 1.0));
        let d = |a: usize, b: usize| 1.0 - c.row(a).iter().zip(c.row(b)).map(|(&x, &y)| f64::from(x) * f64::from(y)).sum::<f64>();
        let want = (3.0 * d(0, 2) + 1.0 * d(1, 2)) / 4.0;
        assert!((rows[1][2] - want).abs() < 1e-6, "{} vs {want}", rows[1][2]);
        assert_eq!((rows[1][0], rows[1][1], rows[1][3]), (2.0, 3.0, 3.0));
    }
}
