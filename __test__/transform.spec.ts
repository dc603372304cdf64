import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { analyzeSequentialClusters, readChunk, readNpy, resolveConfig, SequentialSoftClustering } from '../ts'
import { ambiguous, expectError, fixture, referenceRow } from './helpers'

const TOL = 1e-4

/** Checks dense and sparse memberships of every row against the float64 reference. */
function checkAgainstReference(activations: Float32Array, shape: number[], mask: Uint8Array | undefined, centers: Float32Array, k: number, temperature: number, minMembership: number): number {
  const d = shape[shape.length - 1]!
  const model = new SequentialSoftClustering({ nClusters: k, dModel: d, temperature, minMembership, initialCenters: centers })
  const out = model.transform(activations, { shape, attentionMask: mask })
  const seq = shape.length === 3 ? shape[1]! : shape[0]!
  const unit = model.centers!
  expect(out.nClusters).toBe(k)
  let compared = 0
  let nz = 0
  for (let r = 0; r < out.nRows; r++) {
    const t = out.rowTokens[r]!
    const a = activations.subarray(t * d, (t + 1) * d)
    const want = referenceRow(a, unit, k, temperature, minMembership)
    const got = out.memberships!.subarray(r * k, (r + 1) * k)
    for (let c = 0; c < k; c++) {
      if (got[c]! > 0) {
        expect([out.indices[nz * 3], out.indices[nz * 3 + 1], out.indices[nz * 3 + 2]]).toEqual([Math.floor(t / seq), t % seq, c])
        expect(out.values[nz]).toBe(got[c])
        nz++
      }
    }
    if (ambiguous(a, unit, k, temperature, minMembership)) continue
    compared++
    for (let c = 0; c < k; c++) {
      if (Math.abs(got[c]! - want[c]!) > TOL) throw new Error(`token ${t} cluster ${c}: ${got[c]} vs ${want[c]} (T=${temperature}, min=${minMembership})`)
    }
  }
  expect(out.values.length).toBe(nz)
  return compared
}

describe('transform', () => {
  const init = readNpy(fixture('planted_init_centers.npy'))

  it.each(['planted_a_f32.npz', 'planted_b_f16_compressed.npz', 'flat_2d_f64.npz'])('matches the float64 membership formula (docs/algorithm.md "Memberships") on %s', (name) => {
    const chunk = readChunk(fixture(name))
    for (const [t, m] of [[0.25, 0.01], [1, 0.01], [0.003, 0], [10, 0.3]] as const) {
      const n = checkAgainstReference(chunk.activations, chunk.shape, chunk.attentionMask, init.data, 6, t, m)
      expect(n).toBeGreaterThan(20)
    }
  })

  it('matches the reference on random shapes, including K = 1, D = 1 and extreme temperatures', () => {
    fc.assert(
      fc.property(
        fc.record({
          b: fc.integer({ min: 1, max: 3 }),
          s: fc.integer({ min: 1, max: 12 }),
          d: fc.integer({ min: 1, max: 24 }),
          k: fc.integer({ min: 1, max: 9 }),
          temperature: fc.constantFrom(1e-4, 0.05, 1, 1e6),
          minMembership: fc.constantFrom(0, 0.01, 0.5, 0.99),
          seed: fc.integer(),
        }),
        ({ b, s, d, k, temperature, minMembership, seed }) => {
          let state = seed >>> 0
          const rand = () => ((state = (Math.imul(state, 1664525) + 1013904223) >>> 0) / 2 ** 32) * 2 - 1
          const acts = Float32Array.from({ length: b * s * d }, rand)
          const mask = Uint8Array.from({ length: b * s }, () => (rand() > -0.6 ? 1 : 0))
          const centers = Float32Array.from({ length: k * d }, rand)
          checkAgainstReference(acts, [b, s, d], mask, centers, k, temperature, minMembership)
        },
      ),
      { numRuns: 120 },
    )
  })

  it('keeps only the maximum when nothing else passes the threshold', () => {
    const model = new SequentialSoftClustering({ nClusters: 3, dModel: 2, temperature: 1, minMembership: 0.9, initialCenters: [[1, 0], [0, 1], [-1, 0]] })
    const out = model.transform(new Float32Array([1, 0.9, -1, 0.1]), { shape: [2, 2] })
    expect(Array.from(out.memberships!)).toEqual([1, 0, 0, 0, 0, 1])
  })

  it('gives no row to padding or zero vectors, and counts the zeros', () => {
    const model = new SequentialSoftClustering({ nClusters: 2, dModel: 2, temperature: 1, initialCenters: new Float32Array([1, 0, 0, 1]) })
    const out = model.transform(new Float32Array([1, 0, 0, 0, 0, 1, 5, 5]), { shape: [1, 4, 2], attentionMask: [true, true, true, false] })
    expect(Array.from(out.rowTokens)).toEqual([0, 2])
    expect(out.skipped).toBe(1)
    expect(out.nRows).toBe(2)
  })

  it('gives the same answer off the main thread, and the sparse form alone when asked', async () => {
    const chunk = readChunk(fixture('planted_a_f32.npz'))
    const model = new SequentialSoftClustering({ nClusters: 6, dModel: 64, temperature: 0.25, initialCenters: init.data })
    const sync = model.transform(chunk.activations, { shape: chunk.shape, attentionMask: chunk.attentionMask })
    const async = await model.transformAsync(chunk.activations, { shape: chunk.shape, attentionMask: chunk.attentionMask, dense: false })
    expect(async.memberships).toBeUndefined()
    expect(async.values).toEqual(sync.values)
    expect(async.indices).toEqual(sync.indices)
  })

  it('refuses misuse with a code and a clear message', async () => {
    const model = new SequentialSoftClustering({ nClusters: 2, dModel: 3, temperature: 1, initialCenters: [[1, 0, 0], [0, 1, 0]] })
    expectError(() => model.transform(new Float32Array(7), { shape: [2, 3] }), 'ERR_INVALID_INPUT', 'has 7 values but shape [2, 3] needs 6')
    expectError(() => model.transform(new Float32Array(6), { shape: [2, -3] }), 'ERR_INVALID_INPUT', 'non-negative integers')
    expectError(() => model.transform(new Float32Array(6), { shape: [3, 2] }), 'ERR_INVALID_INPUT', "D = 2 but the model's dModel is 3")
    expectError(() => model.transform(new Float32Array(6), { shape: [2, 3], attentionMask: [1] }), 'ERR_INVALID_INPUT', 'attentionMask: has 1 entries but there are 2 tokens')
    expectError(() => model.transform(new Float32Array([NaN, 0, 0, 1, 1, 1]), { shape: [1, 2, 3] }), 'ERR_NON_FINITE', 'batch 0, position 0')
    await expect(model.transformAsync(new Float32Array(7), { shape: [2, 3] })).rejects.toMatchObject({ code: 'ERR_INVALID_INPUT' })
    const unfitted = new SequentialSoftClustering({ nClusters: 2, dModel: 3 })
    expect(unfitted.centers).toBeNull()
    expectError(() => unfitted.transform(new Float32Array(6), { shape: [2, 3] }), 'ERR_INVALID_INPUT', 'has no centers yet')
    expectError(() => analyzeSequentialClusters(unfitted, new Float32Array(6), null, { shape: [2, 3] }), 'ERR_INVALID_INPUT', 'has no centers yet')
    await expect(unfitted.transformChunks([fixture('planted_a_f32.npz')], '/tmp/never')).rejects.toMatchObject({ code: 'ERR_INVALID_INPUT' })
    expectError(() => model.transform(new Float32Array(6), { shape: [2, 1.5, 2] }), 'ERR_INVALID_INPUT', 'non-negative integers')
  })
})

describe('ClusteringConfig', () => {
  it('fills in the defaults of docs/algorithm.md "Config"', () => {
    expect(resolveConfig({ nClusters: 10, dModel: 768 })).toEqual({
      nClusters: 10, dModel: 768, temperature: 'auto', minMembership: 0.01, device: 'auto', nExemplars: 10, contextWindow: 8, distinctContexts: false, quantileBins: 10, quantileExamples: 5, nIterations: 10, warmupIterations: 10, seed: 0, tol: 1e-7, precision: 'float32', cache: 'auto',
    })
  })

  it('takes "auto" or a number as the temperature, and a chosen temperature with its rule back', () => {
    expect(resolveConfig({ nClusters: 2, dModel: 4, temperature: 'auto' }).temperature).toBe('auto')
    expect(resolveConfig({ nClusters: 2, dModel: 4, temperature: 0.05 }).temperature).toBe(0.05)
    expect(resolveConfig({ nClusters: 2, dModel: 4, temperature: 0.05, temperatureRule: 'auto: a rule' })).toMatchObject({ temperature: 0.05, temperatureRule: 'auto: a rule' })
    expect(resolveConfig({ nClusters: 2, dModel: 4, device: 'cuda:1', precision: 'tf32' })).toMatchObject({ device: 'cuda:1', precision: 'tf32' })
    expect(resolveConfig({ nClusters: 2, dModel: 4, cache: 'off' }).cache).toBe('off')
    expect(resolveConfig({ nClusters: 2, dModel: 4, cache: 1e9 }).cache).toBe(1e9)
    const m = new SequentialSoftClustering({ nClusters: 2, dModel: 4, temperature: 0.5, device: undefined, seed: null as never })
    expect(m.config).toMatchObject({ temperature: 0.5, device: 'auto', seed: 0 })
  })

  it.each([
    [{ nClusters: 0, dModel: 4 }, 'nClusters'],
    [{ nClusters: 2, dModel: 0 }, 'dModel'],
    [{ nClusters: 2.5, dModel: 4 }, 'nClusters'],
    [{ nClusters: 2, dModel: 4, temperature: 0 }, 'temperature'],
    [{ nClusters: 2, dModel: 4, temperature: -1 }, 'temperature'],
    [{ nClusters: 2, dModel: 4, temperature: 'hot' }, 'temperature'],
    [{ nClusters: 2, dModel: 4, temperature: 0.5, temperatureRule: 7 }, 'temperatureRule'],
    [{ nClusters: 2, dModel: 4, temperatureRule: 'by hand' }, 'temperatureRule'],
    [{ nClusters: '2', dModel: 4 }, 'nClusters'],
    [{ nClusters: 2, dModel: 4, device: 3 }, 'device'],
    [{ nClusters: 2, dModel: 4, minMembership: 1 }, 'minMembership'],
    [{ nClusters: 2, dModel: 4, tol: -1 }, 'tol'],
    [{ nClusters: 2, dModel: 4, device: 'tpu' }, 'device'],
    [{ nClusters: 2, dModel: 4, precision: 'fp16' }, 'precision'],
    [{ nClusters: 2, dModel: 4, nIterations: -1 }, 'nIterations'],
    [{ nClusters: 2, dModel: 4, bogus: 1 }, 'bogus'],
    [{ dModel: 4 }, 'nClusters'],
  ])('refuses %j naming %s', (config, field) => {
    expectError(() => new SequentialSoftClustering(config as never), 'ERR_INVALID_CONFIG', `invalid config: ${field}`)
  })

  it('refuses initialCenters of the wrong size or without direction', () => {
    expectError(() => new SequentialSoftClustering({ nClusters: 2, dModel: 3, initialCenters: new Float32Array(5) }), 'ERR_INVALID_INPUT', 'initialCenters', 'expected nClusters * dModel')
    expectError(() => new SequentialSoftClustering({ nClusters: 2, dModel: 2, initialCenters: [[1, 0], [0, 0]] }), 'ERR_INVALID_INPUT', 'row 1 has no direction')
    expectError(() => new SequentialSoftClustering({ nClusters: 2, dModel: 2, initialCenters: [[1, 0], [0]] }), 'ERR_INVALID_CONFIG', 'row 1 has 1 values')
  })

  it('normalizes initialCenters on entry', () => {
    const m = new SequentialSoftClustering({ nClusters: 1, dModel: 2, initialCenters: [[3, 4]] })
    expect(Array.from(m.centers!)).toEqual([Math.fround(0.6), Math.fround(0.8)])
  })
})
