// The metrics of `analyze` against a direct computation in JS (float64, from the docs/algorithm.md "Memberships" reference
// memberships), every metric; the definitions are in crates/core/src/analysis.rs.
import { describe, expect, it } from 'vitest'
import { analyzeChunks, analyzeSequentialClusters, readChunk, readNpy, SequentialSoftClustering } from '../ts'
import { expectError, fixture, referenceRow } from './helpers'

const K = 6
const D = 64
const T = 0.25
const M = 0.01
const chunk = readChunk(fixture('planted_a_f32.npz'))
const centers = readNpy(fixture('planted_init_centers.npy')).data
const model = new SequentialSoftClustering({ nClusters: K, dModel: D, temperature: T, minMembership: M, initialCenters: centers })

const dot = (a: ArrayLike<number>, b: ArrayLike<number>, bi = 0) => {
  let s = 0
  for (let j = 0; j < D; j++) s += a[j]! * b[bi + j]!
  return s
}
const argmax = (p: number[]) => p.reduce((best, v, c) => (v > p[best]! ? c : best), 0)

/** Every real, non-zero token: unit vector, token id, memberships, cosines to the centers. */
function rows() {
  const out: { x: number[]; id: number; p: number[]; cos: number[] }[] = []
  const [b, s] = chunk.shape
  for (let t = 0; t < b! * s!; t++) {
    if (chunk.attentionMask && !chunk.attentionMask[t]) continue
    const a = Array.from(chunk.activations.subarray(t * D, (t + 1) * D))
    const norm = Math.sqrt(dot(a, a))
    if (norm === 0) continue
    const x = a.map((v) => v / norm)
    out.push({ x, id: Number(chunk.tokenIds![t]), p: referenceRow(a, centers, K, T, M), cos: Array.from({ length: K }, (_, c) => dot(x, centers, c * D)) })
  }
  return out
}

describe('analyzeSequentialClusters', () => {
  const r = rows()
  const n = r.length
  const stats = analyzeSequentialClusters(model, chunk.activations, chunk.tokenIds, { shape: chunk.shape, attentionMask: chunk.attentionMask, topTokens: 4, histogramBins: 5, silhouetteSample: 5000 })
  const sim = (j: number, l: number) => dot(centers.subarray(j * D, (j + 1) * D), centers, l * D)

  it('per cluster: mass, hard count, mean cosine, max / mean / nonzero share, histogram, top tokens, nearest center', () => {
    expect(stats.overall.nTokens).toBe(n)
    for (let c = 0; c < K; c++) {
      const col = r.map((row) => row.p[c]!)
      const nz = col.filter((p) => p > 0)
      const mass = col.reduce((x, y) => x + y, 0)
      const s = stats.clusters[c]!
      expect(s.cluster).toBe(c)
      expect(s.mass).toBeCloseTo(mass, 4)
      expect(s.hardCount).toBe(r.filter((row) => argmax(row.p) === c).length)
      expect(s.meanCosine).toBeCloseTo(r.reduce((acc, row) => acc + row.p[c]! * row.cos[c]!, 0) / mass, 4)
      expect(s.maxMembership).toBeCloseTo(Math.max(...col), 4)
      expect(s.meanMembership).toBeCloseTo(nz.reduce((x, y) => x + y, 0) / nz.length, 4)
      expect(s.nonzeroFraction).toBeCloseTo(nz.length / n, 6)
      const hist = [0, 0, 0, 0, 0]
      for (const p of nz) hist[Math.min(4, Math.floor(p * 5))]!++
      expect(s.histogram).toEqual(hist)
      const weights = new Map<number, number>()
      r.forEach((row) => row.p[c]! > 0 && weights.set(row.id, (weights.get(row.id) ?? 0) + row.p[c]!))
      const top = [...weights.entries()].sort((x, y) => y[1] - x[1] || x[0] - y[0]).slice(0, 4)
      expect(s.topTokens.map((t) => t.tokenId)).toEqual(top.map(([id]) => id))
      s.topTokens.forEach((t, i) => expect(t.weight).toBeCloseTo(top[i]![1], 4))
      const others = [...Array(K).keys()].filter((j) => j !== c)
      const nearest = others.reduce((best, j) => (sim(c, j) > sim(c, best) ? j : best))
      expect(s.nearestCenter).toBe(nearest)
      expect(s.nearestCenterCosine).toBeCloseTo(sim(c, nearest), 5)
      for (let l = 0; l < K; l++) expect(stats.centerSimilarity[c]![l]).toBeCloseTo(sim(c, l), 5)
    }
  })

  it('overall: partition entropy and coefficient, nonzero per token, Xie-Beni, silhouette', () => {
    const o = stats.overall
    const mean = (f: (row: (typeof r)[number]) => number) => r.reduce((acc, row) => acc + f(row), 0) / n
    expect(o.partitionEntropy).toBeCloseTo(mean((row) => -row.p.reduce((acc, p) => acc + (p > 0 ? p * Math.log(p) : 0), 0)) / Math.log(K), 4)
    expect(o.partitionCoefficient).toBeCloseTo(mean((row) => row.p.reduce((acc, p) => acc + p * p, 0)), 4)
    expect(o.meanNonzeroPerToken).toBeCloseTo(mean((row) => row.p.filter((p) => p > 0).length), 6)
    let minSep = Infinity
    for (let j = 0; j < K; j++) for (let l = 0; l < K; l++) if (j !== l) minSep = Math.min(minSep, 1 - sim(j, l))
    expect(o.xieBeni!).toBeCloseTo((mean((row) => row.p.reduce((acc, p, c) => acc + p * p * (1 - row.cos[c]!), 0)) * n) / (n * minSep), 4)
    // The sample (5000) holds every token, so the silhouette is over all of them.
    expect(o.silhouetteSample).toBe(n)
    const label = r.map((row) => argmax(row.p))
    let total = 0
    for (let i = 0; i < n; i++) {
      const sums = new Array(K).fill(0)
      const counts = new Array(K).fill(0)
      for (let j = 0; j < n; j++) {
        if (j === i) continue
        sums[label[j]!] += 1 - dot(r[i]!.x, r[j]!.x)
        counts[label[j]!]++
      }
      if (counts[label[i]!] === 0) continue
      const a = sums[label[i]!] / counts[label[i]!]
      const b = Math.min(...[...Array(K).keys()].filter((c) => c !== label[i] && counts[c] > 0).map((c) => sums[c] / counts[c]))
      total += (b - a) / Math.max(a, b)
    }
    expect(o.silhouette!).toBeCloseTo(total / n, 4)
  })

  it('samples the silhouette with a seed, and streams chunk files to the same numbers', async () => {
    const small = (seed: number) => analyzeSequentialClusters(model, chunk.activations, null, { shape: chunk.shape, attentionMask: chunk.attentionMask, silhouetteSample: 40, seed }).overall
    expect(small(1).silhouetteSample).toBe(40)
    expect(small(1).silhouette).toBe(small(1).silhouette)
    expect(small(1).silhouette).not.toBe(small(2).silhouette)
    const streamed = await analyzeChunks(model, [fixture('planted_a_f32.npz')], { topTokens: 4, histogramBins: 5, silhouetteSample: 5000 })
    expect(streamed.clusters.map((c) => c.hardCount)).toEqual(stats.clusters.map((c) => c.hardCount))
    expect(streamed.overall.silhouette!).toBeCloseTo(stats.overall.silhouette!, 6)
    expect(streamed.centerMap).toHaveLength(K)
    expect(streamed.centerMapVariance[0]).toBeGreaterThanOrEqual(streamed.centerMapVariance[1])
    expectError(() => analyzeSequentialClusters(model, chunk.activations, [1, 2], { shape: chunk.shape }), 'ERR_INVALID_INPUT', 'tokenIds: has 2 entries')
    await expect(analyzeChunks(model, [fixture('bad/truncated.npz')])).rejects.toMatchObject({ code: 'ERR_BAD_CHUNK', message: expect.stringContaining('truncated.npz') })
  })
})
