// Operations on a fitted model (issue: hierarchy, merge, split, update): each against what it
// must equal, on planted data.
import { execFileSync, spawnSync } from 'node:child_process'
import { existsSync, mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { readChunk, readNpy, SequentialSoftClustering } from '../ts'
import { expectError, fixture, seeded, writeNpy } from './helpers'

const tmp = (): string => mkdtempSync(join(tmpdir(), 'soft-cluster-ops-'))
const planted = [fixture('planted_a_f32.npz'), fixture('planted_b_f16_compressed.npz')]
const truth = readNpy(fixture('planted_centers.npy')).data // the 6 planted directions, [6, 64]
const cosine = (a: Float32Array, i: number, b: Float32Array, j: number, d: number): number => {
  let s = 0
  for (let t = 0; t < d; t++) s += a[i * d + t]! * b[j * d + t]!
  return s
}
/** For each row of `want`, the largest cosine to any row of `got`. */
const bestMatch = (want: Float32Array, got: Float32Array, d: number): number[] =>
  Array.from({ length: want.length / d }, (_, i) => Math.max(...Array.from({ length: got.length / d }, (_, j) => cosine(want, i, got, j, d))))
const argBest = (row: Float32Array, i: number, got: Float32Array, d: number): number => {
  let best = 0
  for (let j = 1; j < got.length / d; j++) if (cosine(row, i, got, j, d) > cosine(row, i, got, best, d)) best = j
  return best
}

async function fitPlanted(out: string, chunks = planted, extra: object = {}): Promise<SequentialSoftClustering> {
  const model = new SequentialSoftClustering({ nClusters: 6, temperature: 0.1, nIterations: 5, ...extra })
  await model.fitChunks(chunks, out)
  return model
}

const python = process.env.SOFT_CLUSTER_PYTHON ?? 'python3'
const hasScipy = spawnSync(python, ['-c', 'import scipy, safetensors, numpy']).status === 0

describe('operations on a fitted model', () => {
  it('merge: the center and mass of the summed statistics; the tree is a scipy linkage table', async () => {
    expect(hasScipy || !process.env.SOFT_CLUSTER_PYTHON, 'CI installs scipy (SOFT_CLUSTER_PYTHON)').toBe(true)
    const out = tmp()
    const model = await fitPlanted(out)
    const merged = await model.merge([4, 1])
    const op = merged.summary!.operations[0]!
    expect([op.op, op.clusters, op.mapping, op.nClusters]).toEqual(['merge', [1, 4], [0, 1, 2, 3, 1, 4], 5])
    expect(merged.summary!.clusterMass[1]).toBeCloseTo(model.summary!.clusterMass[1]! + model.summary!.clusterMass[4]!, 9)
    expect(merged.summary!.clusterCount[1]).toBe(model.summary!.clusterCount[1]! + model.summary!.clusterCount[4]!)
    await merged.save(join(out, 'merged.safetensors'))
    if (!hasScipy) return
    const check = `
import sys, json, numpy as np
from safetensors.numpy import load_file
from scipy.cluster import hierarchy
a, b = load_file(sys.argv[1]), load_file(sys.argv[2])
s = a["stats_s"][1] + a["stats_s"][4]
assert np.abs(b["centers"][1] - s / np.linalg.norm(s)).max() < 1e-6
assert abs(b["stats_m"][1] - (a["stats_m"][1] + a["stats_m"][4])) < 1e-9
for f in (a, b):
    Z = f["linkage"]
    assert hierarchy.is_valid_linkage(Z, throw=True)
    leaves = hierarchy.dendrogram(Z, no_plot=True)["leaves"]
    assert sorted(leaves) == list(range(len(f["centers"])))
print(json.dumps({"k": [len(a["centers"]), len(b["centers"])], "first": a["linkage"][0].tolist()}))
`
    const res = JSON.parse(execFileSync(python, ['-c', check, join(out, 'model.safetensors'), join(out, 'merged.safetensors')], { encoding: 'utf8' }))
    expect(res.k).toEqual([6, 5])
    expect(res.first).toEqual(model.hierarchy().linkage[0])
  }, 60_000)

  it('split: two planted directions fused by a merge are separated again', async () => {
    const model = await fitPlanted(tmp())
    const d = 64
    const centers = model.centers!
    // The clusters that hold planted directions 0 and 1, fused into one.
    const [a, b] = [argBest(truth, 0, centers, d), argBest(truth, 1, centers, d)]
    expect(a).not.toBe(b)
    const merged = await model.merge([a, b])
    const fused = merged.summary!.operations[0]!.mapping[a]!
    expect(Math.min(...bestMatch(truth, merged.centers!, d).slice(0, 2))).toBeLessThan(0.98)
    const split = await merged.split(fused, 2, planted)
    expect(split.config.nClusters).toBe(6)
    const best = bestMatch(truth, split.centers!, d)
    best.forEach((c) => expect(c).toBeGreaterThan(0.98))
    expect(split.summary!.operations.map((o) => o.op)).toEqual(['merge', 'split'])
    expect(split.summary!.chunks).toEqual(['planted_a_f32.npz', 'planted_b_f16_compressed.npz'])
  }, 60_000)

  it('the tree cut at the group count recovers a two-level planted structure', async () => {
    // 3 groups of 2 nearby directions (cosine about 0.75 within a group, about 0 across).
    const d = 32
    const rng = seeded(7)
    const unit = (v: number[]): number[] => {
      const n = Math.hypot(...v)
      return v.map((x) => x / n)
    }
    const bases = [0, 1, 2].map(() => unit(Array.from({ length: d }, rng.normal)))
    const dirs = bases.flatMap((b) => [0, 1].map(() => unit(b.map((x) => x + 0.1 * rng.normal()))))
    const per = 300
    const data = new Float32Array(dirs.length * per * d)
    dirs.forEach((u, k) => {
      for (let i = 0; i < per; i++) {
        const x = unit(u.map((v) => v + 0.06 * rng.normal()))
        data.set(x, (k * per + i) * d)
      }
    })
    const dir = tmp()
    writeNpy(join(dir, 'two-level.npy'), data, [dirs.length * per, d])
    const model = new SequentialSoftClustering({ nClusters: 6, temperature: 0.02, nIterations: 10 })
    await model.fitChunks([join(dir, 'two-level.npy')], join(dir, 'out'))
    const centers = model.centers!
    const planted = Float32Array.from(dirs.flat())
    const plantedOf = Array.from({ length: 6 }, (_, c) => argBest(centers, c, planted, d))
    expect(new Set(plantedOf).size).toBe(6) // every planted direction has its cluster
    // Cut at 3: the groups of clusters are the planted groups (directions 2g, 2g + 1).
    const groups = model.transform(data.subarray(0, 6 * per * d), { shape: [6 * per, d], level: 3 })
    expect(groups.nClusters).toBe(3)
    const k6 = model.transform(data.subarray(0, 6 * per * d), { shape: [6 * per, d] })
    const groupOf = new Map<number, number>()
    for (let r = 0; r < k6.nRows; r++) groupOf.set(k6.labels[r]!, groups.labels[r]!)
    for (let c = 0; c < 6; c++) {
      const sibling = plantedOf.indexOf(plantedOf[c]! ^ 1)
      expect(groupOf.get(c), `cluster ${c} and its planted sibling ${sibling}`).toBe(groupOf.get(sibling))
    }
    expect(new Set(groupOf.values()).size).toBe(3)
    // Level memberships are the sums of the clusters' memberships over each group.
    for (let r = 0; r < 50; r++) {
      const sums = [0, 0, 0]
      for (let c = 0; c < 6; c++) sums[groupOf.get(c)!] += k6.memberships![r * 6 + c]!
      sums.forEach((v, g) => expect(groups.memberships![r * 3 + g]).toBeCloseTo(v, 6))
    }
  }, 60_000)

  it('update: close to a fit over all chunks; exactly a fit from its centers when it passes over all data with decay 0', async () => {
    const start = readNpy(fixture('planted_init_centers.npy')).data
    const base = { nClusters: 6, dModel: 64, temperature: 0.1, nIterations: 4, tol: 0, initialCenters: start }
    const all = new SequentialSoftClustering(base)
    await all.fitChunks(planted, tmp())
    const half = new SequentialSoftClustering(base)
    const halfOut = tmp()
    await half.fitChunks([planted[0]!], halfOut)
    const updated = await SequentialSoftClustering.load(join(halfOut, 'model.safetensors'))
    const out = tmp()
    const history = await updated.partialFit([planted[1]!], out, { iterations: 4 })
    expect(history).toHaveLength(8)
    expect(existsSync(join(out, 'planted_b_f16_compressed.memberships.npz'))).toBe(true)
    expect(updated.summary!.chunks).toEqual(['planted_a_f32.npz', 'planted_b_f16_compressed.npz'])
    const gap = Math.max(...Array.from({ length: 6 }, (_, c) => 1 - cosine(updated.centers!, c, all.centers!, c, 64)))
    expect(gap).toBeLessThan(1e-5) // measured 1.5e-8: both reach the same fixed point of the planted data
    // Decay 0 over all chunks: the same passes as a fit from the half model's centers.
    const again = await SequentialSoftClustering.load(join(halfOut, 'model.safetensors'))
    await again.partialFit(planted, tmp(), { iterations: 3, decay: 0 })
    const fromCenters = new SequentialSoftClustering({ ...base, nIterations: 3, initialCenters: half.centers! })
    await fromCenters.fitChunks(planted, tmp())
    expect(again.centers).toEqual(fromCenters.centers)
    expect(again.summary!.clusterMass).toEqual(fromCenters.summary!.clusterMass)
    expect(again.summary!.exemplars).toEqual(fromCenters.summary!.exemplars)
    expect(again.summary!.operations.at(-1)!.op).toBe('refit')
    console.log(`update vs fit over all chunks: max 1 - cos = ${gap.toExponential(2)}`)
  }, 60_000)

  it('warns after an update that leaves the model collapsed, as a fit does', async () => {
    const collapsedOut = tmp()
    const collapsed = await fitPlanted(collapsedOut, [planted[0]!], { temperature: 1 })
    expect(collapsed.summary!.warnings).toHaveLength(1)
    const updated = await SequentialSoftClustering.load(join(collapsedOut, 'model.safetensors'))
    await updated.partialFit([planted[1]!], tmp(), { iterations: 1 })
    expect(updated.summary!.warnings).toHaveLength(1)
    expect(updated.summary!.warnings[0]).toContain('collapsed at temperature 1')
    const healthy = await fitPlanted(tmp(), [planted[0]!])
    const out = tmp()
    await healthy.save(join(out, 'm.safetensors'))
    const fine = await SequentialSoftClustering.load(join(out, 'm.safetensors'))
    await fine.partialFit([planted[1]!], tmp(), { iterations: 1 })
    expect(fine.summary!.warnings).toEqual([])
  }, 60_000)

  it('loads a format_version 1 model: its tree is computed on load, operations that need sums say so', async () => {
    const v1 = await SequentialSoftClustering.load(join(__dirname, '..', 'fuzz', 'corpus', 'model', 'k16.safetensors'))
    expect(v1.summary!.hasStatistics).toBe(false)
    const rows = v1.hierarchy().linkage
    expect(rows).toHaveLength(15)
    expect(rows[14]![3]).toBe(16)
    rows.forEach((r, i) => expect(i === 0 || r[2]! >= rows[i - 1]![2]!).toBe(true))
    await expect(v1.merge([0, 1])).rejects.toMatchObject({ code: 'ERR_INVALID_INPUT', message: expect.stringContaining('format_version 1') })
  })

  it('refuses bad input, naming the argument, and writes nothing', async () => {
    const out = tmp()
    const model = await fitPlanted(join(out, 'fit'))
    await expect(model.merge([1, 9])).rejects.toMatchObject({ code: 'ERR_INVALID_INPUT', message: expect.stringContaining('9 is not a cluster id') })
    await expect(model.merge([2, 2])).rejects.toMatchObject({ message: expect.stringContaining('cannot be merged with itself') })
    await expect(model.split(0, 100000, [planted[0]!])).rejects.toMatchObject({ message: expect.stringContaining('fewer than the 100000 parts') })
    await expect(model.split(0, 2, [fixture('bad/wrong_d_model.npz')])).rejects.toMatchObject({ message: expect.stringContaining("the model's dModel is 64") })
    await expect(model.partialFit([fixture('bad/wrong_d_model.npz')], join(out, 'never'))).rejects.toMatchObject({ message: expect.stringContaining('wrong_d_model.npz') })
    expect(existsSync(join(out, 'never'))).toBe(false)
    await expect(model.partialFit([planted[1]!], join(out, 'never'), { decay: 2 })).rejects.toMatchObject({ message: expect.stringContaining('decay: must be in [0, 1]') })
    const unfitted = new SequentialSoftClustering({ nClusters: 2, dModel: 64, temperature: 0.1, initialCenters: truth.subarray(0, 128) })
    await unfitted.save(join(out, 'plain.safetensors'))
    const plain = await SequentialSoftClustering.load(join(out, 'plain.safetensors'))
    expect(plain.summary!.hasStatistics).toBe(false)
    await expect(plain.merge([0, 1])).rejects.toMatchObject({ message: expect.stringContaining('no sufficient statistics') })
    await expect(plain.partialFit([planted[1]!], join(out, 'never'))).rejects.toMatchObject({ message: expect.stringContaining('no sufficient statistics') })
    expect(existsSync(join(out, 'never'))).toBe(false)
    expectError(() => model.transform(new Float32Array(64), { level: 7 }), 'ERR_INVALID_INPUT', 'level: must be between 1 and the number of clusters (6), got 7')
  }, 60_000)
})

describe('examples across the range of memberships', () => {
  // The defaults (10 bins x 5 examples), then quantileBins 4 x quantileExamples 2.
  it.each([
    [10, 5, {}],
    [4, 2, { quantileBins: 4, quantileExamples: 2 }],
  ])('%i bins x %i examples: every bin that has tokens is sampled, counts as documented, values in their bin, the same sample for the same seed', async (B, Q, sizes) => {
    // A soft temperature, so that memberships spread over the bins.
    const soft = { temperature: 0.4, ...sizes }
    const model = await fitPlanted(tmp(), planted, soft)
    expect([model.config.quantileBins, model.config.quantileExamples]).toEqual([B, Q])
    const bins = model.summary!.quantiles
    expect(bins).toHaveLength(6)
    // Direct computation: every token's memberships under the fitted centers.
    const members: Map<string, number>[] = Array.from({ length: 6 }, () => new Map())
    const binCounts = Array.from({ length: 6 }, () => new Array(B).fill(0) as number[])
    const binOf = (p: number): number => Math.min(B - 1, Math.floor(Math.fround(Math.fround(p) * B)))
    planted.forEach((path, chunk) => {
      const c = readChunk(path)
      const out = model.transform(c.activations, { shape: c.shape, attentionMask: c.attentionMask })
      for (let r = 0; r < out.nRows; r++) {
        for (let k = 0; k < 6; k++) {
          const p = out.memberships![r * 6 + k]!
          if (p <= 0) continue
          const t = out.rowTokens[r]!
          members[k]!.set(`${chunk}/${Math.floor(t / c.shape[1]!)}/${t % c.shape[1]!}`, p)
          binCounts[k]![binOf(p)]! += 1
        }
      }
    })
    let sampled = 0
    for (let k = 0; k < 6; k++) {
      expect(bins[k]).toHaveLength(B)
      bins[k]!.forEach((list, b) => {
        expect(list.length, `cluster ${k} bin ${b}`).toBe(Math.min(Q, binCounts[k]![b]!))
        for (const e of list) {
          expect(binOf(e.value)).toBe(b)
          expect(e.value).toBeCloseTo(members[k]!.get(`${e.chunk}/${e.batch}/${e.position}`)!, 6)
          expect(e.contextMemberships[model.config.contextWindow]).toBe(e.value)
        }
        sampled += list.length
      })
    }
    expect(sampled).toBeGreaterThan(B * Q) // tokens in many bins (116 at this temperature with the defaults)
    const again = await fitPlanted(tmp(), planted, soft)
    expect(again.summary!.quantiles).toEqual(bins)
    const otherSeed = await fitPlanted(tmp(), planted, { ...soft, seed: 1 })
    expect(otherSeed.summary!.quantiles).not.toEqual(bins)
    // Saved and loaded, the sample stays.
    const out = tmp()
    await model.save(join(out, 'm.safetensors'))
    expect((await SequentialSoftClustering.load(join(out, 'm.safetensors'))).summary!.quantiles).toEqual(bins)
  }, 60_000)

  it('refuses quantileBins below 1, and quantileExamples 0 keeps none', async () => {
    expectError(() => new SequentialSoftClustering({ nClusters: 2, dModel: 4, quantileBins: 0 }), 'ERR_INVALID_CONFIG', 'quantileBins: must be an integer >= 1, got 0')
    const none = await fitPlanted(tmp(), planted, { temperature: 0.4, quantileExamples: 0 })
    expect(none.summary!.quantiles.flat(2)).toEqual([])
  }, 60_000)
})
