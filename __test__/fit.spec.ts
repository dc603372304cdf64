import { execFileSync } from 'node:child_process'
import { copyFileSync, existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { membershipsPathFor, probeDevice, readChunk, readMemberships, readNpy, SequentialSoftClustering, type FitProgress } from '../ts'
import { expectError, fixture } from './helpers'

const expected = JSON.parse(readFileSync(fixture('planted_expected.json'), 'utf8'))
const init = readNpy(fixture('planted_init_centers.npy'))
const planted = [fixture('planted_a_f32.npz'), fixture('planted_b_f16_compressed.npz')]
const tmp = () => mkdtempSync(join(tmpdir(), 'soft-cluster-'))

function plantedModel(extra: object = {}): SequentialSoftClustering {
  return new SequentialSoftClustering({
    nClusters: 6, dModel: 64, temperature: expected.temperature, minMembership: expected.min_membership,
    nIterations: expected.iterations, nExemplars: expected.n_exemplars, contextWindow: expected.context_window,
    tol: 0, initialCenters: init.data, ...extra,
  })
}

const dot = (a: ArrayLike<number>, b: ArrayLike<number>, ai = 0, bi = 0, d = 64) => {
  let s = 0
  for (let j = 0; j < d; j++) s += a[ai + j]! * b[bi + j]!
  return s
}

describe('fitChunks', () => {
  it('reproduces the independent float64 fit of the planted fixtures', async () => {
    const out = tmp()
    const model = plantedModel()
    const progress: FitProgress[] = []
    const history = await model.fitChunks(planted, out, { onProgress: (p) => progress.push(p) })
    expect(history).toHaveLength(5)
    expect(history[0]!.mass).toHaveLength(6)

    const want = readNpy(fixture('planted_expected_centers.npy')).data
    const got = model.centers!
    for (let c = 0; c < 6; c++) expect(1 - dot(got, want, c * 64, c * 64)).toBeLessThan(1e-5)

    const mine = readMemberships(join(out, 'planted_a_f32.memberships.npz'))
    const theirs = readMemberships(fixture('planted_a_f32.expected.memberships.npz'))
    expect(mine.indices).toEqual(theirs.indices)
    mine.values.forEach((v, i) => expect(Math.abs(v - theirs.values[i]!)).toBeLessThanOrEqual(1e-4))
    expect([mine.totalSequences, mine.sequenceLength]).toEqual([5, 32])
    expect(JSON.parse(mine.metadata!)).toMatchObject({ total_sequences: 5, sequence_length: 32, n_clusters: 6, source: 'planted_a_f32.npz', format_version: 1 })

    const summary = model.summary!
    expect(summary.chunks).toEqual(['planted_a_f32.npz', 'planted_b_f16_compressed.npz'])
    expected.expected_exemplars.forEach((list: any[], c: number) => {
      expect(summary.exemplars[c]).toHaveLength(list.length)
      list.forEach((e, i) => {
        const g = summary.exemplars[c]![i]!
        expect([g.chunk, g.batch, g.position, g.tokens]).toEqual([e.chunk, e.batch, e.position, e.tokens])
        expect(Math.abs(g.value - e.value)).toBeLessThanOrEqual(1e-4)
        g.contextMemberships.forEach((v, j) => expect(Math.abs(v - e.context_memberships[j])).toBeLessThanOrEqual(1e-4))
      })
    })

    // Progress: every chunk of every pass, in order.
    expect(progress.filter((p) => p.phase === 'iterate')).toHaveLength(10)
    expect(progress.filter((p) => p.phase === 'output')).toHaveLength(2)
    const last = progress[progress.length - 1]!
    expect([last.chunk, last.nChunks, last.tokensDone]).toEqual([2, 2, 215])
    expect(last.tokensPerS).toBeGreaterThan(0)
    expect(existsSync(join(out, 'model.safetensors'))).toBe(true)
  })

  it('never blocks the event loop', async () => {
    const model = plantedModel({ nIterations: 400 })
    let ticks = 0
    const timer = setInterval(() => ticks++, 1)
    const started = Date.now()
    await model.fitChunks(planted, tmp())
    clearInterval(timer)
    const elapsed = Date.now() - started
    expect(elapsed).toBeGreaterThan(20)
    expect(ticks).toBeGreaterThan(elapsed / 10) // a timer every millisecond kept firing
  })

  it('refuses a second fit on the same instance while one runs', async () => {
    const model = plantedModel({ nIterations: 50 })
    const first = model.fitChunks(planted, tmp())
    await expect(model.fitChunks(planted, tmp())).rejects.toMatchObject({ code: 'ERR_INVALID_INPUT', message: expect.stringContaining('a fit is already running') })
    expectError(() => model.transform(new Float32Array(64), { shape: [1, 64] }), 'ERR_INVALID_INPUT', 'is being fitted')
    await first
    expect(model.transform(new Float32Array(64).fill(1), { shape: [1, 64] }).nRows).toBe(1)
  })

  it('rejects a bad chunk with its name and writes no model', async () => {
    const out = tmp()
    const bad = fixture('bad/wrong_d_model.npz')
    await expect(plantedModel().fitChunks([planted[0]!, bad], out)).rejects.toMatchObject({
      code: 'ERR_BAD_CHUNK', message: expect.stringContaining(bad),
    })
    expect(existsSync(join(out, 'model.safetensors'))).toBe(false)
    await expect(plantedModel().fitChunks([], out)).rejects.toMatchObject({ code: 'ERR_INVALID_INPUT' })
  })

  // Which branch runs depends on the machine: the binding says whether a GPU is usable here.
  const cuda = probeDevice('cuda')
  it(
    cuda.usable
      ? `GPU usable (${cuda.reason}): a fit on "cuda" matches the CPU's`
      : 'no usable GPU: "cuda" fails with ERR_DEVICE saying why, never crashes or falls back silently',
    async () => {
      if (!cuda.usable) {
        expect(cuda.reason).toMatch(/cuda:0: .*(libcuda|GPU|device)/)
        await expect(plantedModel({ device: 'cuda' }).fitChunks(planted, tmp())).rejects.toMatchObject({
          code: 'ERR_DEVICE', message: expect.stringMatching(/cuda:0: .*(libcuda|GPU|device)/),
        })
        return
      }
      const gpu = plantedModel({ device: 'cuda' })
      const cpu = plantedModel({ device: 'cpu' })
      const [hg, hc] = [await gpu.fitChunks(planted, tmp()), await cpu.fitChunks(planted, tmp())]
      expect(gpu.summary!.device).toMatch(/^cuda:0 /)
      expect(cpu.summary!.device).toBe('cpu (asked for)')
      expect(hg).toHaveLength(hc.length)
      hg.forEach((h, i) => expect(Math.abs(h.objective - hc[i]!.objective)).toBeLessThan(1e-5))
      for (let c = 0; c < 6; c++) expect(1 - dot(gpu.centers!, cpu.centers!, c * 64, c * 64)).toBeLessThan(1e-5)
    },
  )

  it('says where it ran and why, and names the memberships files as the core does', async () => {
    const out = tmp()
    const model = plantedModel({ device: 'cpu' })
    expect(model.summary!.device).toBeUndefined() // initialCenters alone: not fitted yet
    await model.fitChunks(planted, out)
    expect(model.summary!.device).toBe('cpu (asked for)')
    expect(membershipsPathFor(out, planted[0]!)).toBe(join(out, 'planted_a_f32.memberships.npz'))
    expect(existsSync(membershipsPathFor(out, planted[1]!))).toBe(true)
    const loaded = await SequentialSoftClustering.load(join(out, 'model.safetensors'))
    expect(loaded.summary!.device).toBe('cpu (asked for)') // stored in the model file
  })

  it('recovers the planted directions from k-means++ and is deterministic', async () => {
    const truth = readNpy(fixture('planted_centers.npy')).data
    const fitOnce = async (seed: number) => {
      const m = new SequentialSoftClustering({ nClusters: 6, dModel: 64, temperature: 0.1, nIterations: 20, seed })
      await m.fitChunks(planted, tmp())
      return m.centers!
    }
    const a = await fitOnce(1)
    for (let t = 0; t < 6; t++) {
      let best = -1
      for (let c = 0; c < 6; c++) best = Math.max(best, dot(truth, a, t * 64, c * 64) / Math.sqrt(dot(truth, truth, t * 64, t * 64)))
      expect(best).toBeGreaterThan(0.98)
    }
    expect(await fitOnce(1)).toEqual(a)
  })
})

describe('distinctContexts', () => {
  /** Pairs of a cluster's exemplars in one sequence within the context window of each other. */
  const overlapping = (model: SequentialSoftClustering): number => {
    const w = model.config.contextWindow
    let pairs = 0
    for (const list of model.summary!.exemplars) {
      list.forEach((a, i) => list.slice(i + 1).forEach((b) => (pairs += Number(a.chunk === b.chunk && a.batch === b.batch && Math.abs(a.position - b.position) <= w))))
    }
    return pairs
  }
  const minilm = ['minilm_000', 'minilm_001', 'minilm_002'].map((n) => join(__dirname, '..', 'examples', 'minilm', `${n}.npz`))

  it('keeps exemplars that never share most of their context, on real activations', async () => {
    const fitWith = async (distinctContexts: boolean) => {
      const model = new SequentialSoftClustering({ nClusters: 12, dModel: 384, nIterations: 3, distinctContexts })
      await model.fitChunks(minilm, tmp())
      return model
    }
    const [plain, distinct] = [await fitWith(false), await fitWith(true)]
    // Neighbouring tokens of MiniLM's activations share clusters: a plain top-k repeats windows.
    expect(overlapping(plain)).toBeGreaterThan(10)
    expect(overlapping(distinct)).toBe(0)
    expect(distinct.config.distinctContexts).toBe(true)
    // Each kept token is the largest membership of its window, and the best one is the plain fit's best.
    for (const [c, list] of distinct.summary!.exemplars.entries()) {
      expect(list.length).toBe(10)
      for (const e of list) expect(Math.max(...e.contextMemberships)).toBe(e.value)
      expect(list[0]!.value).toBe(plain.summary!.exemplars[c]![0]!.value)
    }
    // The flag travels with the model file.
    const path = join(tmp(), 'model.safetensors')
    await distinct.save(path)
    expect((await SequentialSoftClustering.load(path)).config.distinctContexts).toBe(true)
  }, 60_000)

  it('is refused unless a boolean', () => {
    expectError(() => new SequentialSoftClustering({ nClusters: 2, dModel: 4, distinctContexts: 'yes' as unknown as boolean }), 'ERR_INVALID_CONFIG', 'distinctContexts: must be true or false, got "yes"')
  })
})

describe('save and load', () => {
  it('round-trips a fitted model, which then transforms exactly as before', async () => {
    const out = tmp()
    const model = plantedModel()
    await model.fitChunks(planted, out)
    const path = join(out, 'copy.safetensors')
    await model.save(path)
    expect(readFileSync(path)).toEqual(readFileSync(join(out, 'model.safetensors')))
    const loaded = await SequentialSoftClustering.load(path)
    expect(loaded.config).toEqual(model.config)
    expect(model.summary!.device).toMatch(/^(cpu|cuda:0) \(auto: /)
    expect(loaded.summary).toEqual(model.summary) // the device and its reason travel in the file
    const chunk = readChunk(planted[0]!)
    const a = model.transform(chunk.activations, { shape: chunk.shape, attentionMask: chunk.attentionMask })
    const b = loaded.transform(chunk.activations, { shape: chunk.shape, attentionMask: chunk.attentionMask })
    expect(b.memberships).toEqual(a.memberships)
  })

  it('writes files a Python user can read (names, shapes, dtypes and metadata of docs/formats.md "Memberships file" and "Model file")', async () => {
    const out = tmp()
    await plantedModel().fitChunks(planted, out)
    const python = process.env.SOFT_CLUSTER_PYTHON ?? 'python3'
    const report = JSON.parse(execFileSync(python, [join(__dirname, '..', 'scripts', 'read_outputs.py'), join(out, 'model.safetensors'), join(out, 'planted_a_f32.memberships.npz')], { encoding: 'utf8' }))
    if (process.env.SOFT_CLUSTER_PYTHON) expect(report.reader).toBe('numpy') // CI installs numpy and safetensors
    const dtype = (t: string) => ({ F32: 'float32', F64: 'float64', I64: 'int64' })[t] ?? t
    const tensors = Object.fromEntries(Object.entries(report.tensors as Record<string, { dtype: string; shape: number[] }>).map(([k, v]) => [k, [dtype(v.dtype), v.shape]]))
    expect(tensors).toEqual({
      centers: ['float32', [6, 64]], cluster_mass: ['float64', [6]], cluster_count: ['int64', [6]],
      exemplar_count: ['int64', [6]], exemplar_values: ['float32', [6, 3]], exemplar_locations: ['int64', [6, 3, 3]],
      exemplar_tokens: ['int64', [6, 3, 5]], exemplar_context_memberships: ['float32', [6, 3, 5]],
      stats_s: ['float64', [6, 64]], stats_m: ['float64', [6]], linkage: ['float64', [5, 4]],
      quantile_count: ['int64', [6, 10]], quantile_values: ['float32', [6, 10, 5]], quantile_locations: ['int64', [6, 10, 5, 3]],
      quantile_tokens: ['int64', [6, 10, 5, 5]], quantile_context_memberships: ['float32', [6, 10, 5, 5]],
    })
    expect(report.metadata.format).toBe('soft-cluster-model')
    expect(report.metadata.format_version).toBe('2')
    expect(Number(report.metadata.stats_tokens)).toBe(137 + 78)
    expect(JSON.parse(report.metadata.config)).toMatchObject({ nClusters: 6, dModel: 64, temperature: 0.25 })
    expect(JSON.parse(report.metadata.history)).toHaveLength(5)
    expect(JSON.parse(report.metadata.chunks)).toEqual(['planted_a_f32.npz', 'planted_b_f16_compressed.npz'])
    const arrays = report.arrays
    expect(arrays.indices.dtype).toBe('<i8')
    expect(arrays.indices.shape[1]).toBe(3)
    expect(arrays.values.dtype).toBe('<f4')
    expect([arrays.total_sequences.shape, arrays.sequence_length.shape, arrays.metadata.shape]).toEqual([[], [], []])
    expect(JSON.parse(arrays.metadata.value).source).toBe('planted_a_f32.npz')
    expect(arrays.values.value).toHaveLength(arrays.indices.shape[0])
  })

  it('refuses files that are not models, and models without centers', async () => {
    const dir = tmp()
    const junk = join(dir, 'junk.safetensors')
    writeFileSync(junk, 'not a model at all')
    await expect(SequentialSoftClustering.load(junk)).rejects.toMatchObject({ code: 'ERR_BAD_MODEL', message: expect.stringContaining(junk) })
    await expect(SequentialSoftClustering.load(join(dir, 'missing.safetensors'))).rejects.toMatchObject({ code: 'ERR_IO' })
    const empty = new SequentialSoftClustering({ nClusters: 2, dModel: 4 })
    expect(empty.summary).toBeNull()
    await expect(empty.save(join(dir, 'x.safetensors'))).rejects.toMatchObject({ code: 'ERR_INVALID_INPUT', message: expect.stringContaining('has no centers yet') })
    copyFileSync(fixture('planted_init_centers.npy'), join(dir, 'centers.npy'))
    await expect(SequentialSoftClustering.load(join(dir, 'centers.npy'))).rejects.toMatchObject({ code: 'ERR_BAD_MODEL' })
  })
})
