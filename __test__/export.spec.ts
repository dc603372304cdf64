// `soft-cluster export`: one JSON file per cluster (docs/formats.md "Export"), checked against the
// model and the metrics it came from, on the bundled MiniLM activations with their tokenizer.
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { beforeAll, describe, expect, it } from 'vitest'
import { analyzeChunks, SequentialSoftClustering, type ClusterAnalysis } from '../ts'
import { expectFailure, runCli } from './helpers'

const MINILM = join(__dirname, '..', 'examples', 'minilm')
const TOKENIZER = join(MINILM, 'tokenizer.json')
const K = 8
const run = runCli
const readJson = (path: string) => JSON.parse(readFileSync(path, 'utf8'))


let dir: string
let modelPath: string
let model: SequentialSoftClustering
let analysis: ClusterAnalysis
let vocab: Map<number, string>
beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'sc-export-'))
  const r = run('fit', MINILM, '--clusters', String(K), '--iterations', '3', '--out', join(dir, 'fit'))
  expect(r.status, r.stderr).toBe(0)
  modelPath = join(dir, 'fit', 'model.safetensors')
  model = await SequentialSoftClustering.load(modelPath)
  analysis = await analyzeChunks(model, ['minilm_000', 'minilm_001', 'minilm_002'].map((n) => join(MINILM, `${n}.npz`)))
  vocab = new Map(Object.entries(readJson(TOKENIZER).model.vocab as Record<string, number>).map(([t, id]) => [id, t]))
}, 120_000)

describe('soft-cluster export', () => {
  it('writes index.json and one file per cluster, true to the model and the metrics', () => {
    const out = join(dir, 'export')
    const r = run('export', '--model', modelPath, MINILM, '--tokenizer', TOKENIZER, '--format', 'json', '--out', out, '--json')
    expect(r.status, r.stderr).toBe(0)
    expect(JSON.parse(r.stdout)).toEqual({ out, files: K + 1 })
    const index = readJson(join(out, 'index.json'))
    expect(index).toMatchObject({ format: 'soft-cluster-export', formatVersion: 1, nClusters: K, dModel: 384, chunks: model.summary!.chunks })
    expect(readdirSync(out).sort()).toEqual(['index.json', ...index.files].sort())
    for (let c = 0; c < K; c++) {
      const f = readJson(join(out, index.files[c]))
      const s = analysis.clusters[c]!
      expect(f).toMatchObject({ format: 'soft-cluster-export', index: c, hardCount: s.hardCount, frac_nonzero: s.nonzeroFraction, freq_hist_data_bar_heights: s.histogram })
      expect(f.mass).toBeCloseTo(s.mass, 9)
      expect(f.topkCosSimIndices).toEqual(s.nearestCenters.map((n) => n.cluster))
      expect(f.topkCosSimIndices).toHaveLength(K - 1)
      // Token tables: the core's ids and numbers, each with the tokenizer's text of that id.
      expect(f.topTokens.map((t: { tokenId: number }) => t.tokenId)).toEqual(s.topTokens.map((t) => t.tokenId))
      expect(f.liftTokens).toEqual(s.liftTokens.map((t) => ({ ...t, text: expect.any(String) })))
      expect(f.liftTokens.length).toBeGreaterThan(0)
      for (const t of f.liftTokens) expect(t.text.trim().replace(/^##/, '')).toBe(vocab.get(t.tokenId)!.replace(/^##/, ''))
      // Activation records: the top exemplars, then every quantile example, each in its bin.
      const exemplars = model.summary!.exemplars[c]!
      const bins = model.summary!.quantiles[c]!
      expect(f.activations).toHaveLength(exemplars.length + bins.flat().length)
      expect(f.maxActApprox).toBe(exemplars[0]!.value)
      f.activations.forEach((a: Record<string, any>, i: number) => {
        expect(a.tokens).toHaveLength(a.values.length)
        expect(a.tokenIds).toHaveLength(a.values.length)
        expect(a.values[a.centerTokenIndex]).toBe(a.value)
        expect(a.maxValue).toBe(Math.max(...a.values))
        expect(a.values[a.maxValueTokenIndex]).toBe(a.maxValue)
        expect(a.dataSource).toBe(model.summary!.chunks[a.chunk])
        if (i < exemplars.length) {
          expect([a.value, a.chunk, a.batch, a.position, a.binMin]).toEqual([exemplars[i]!.value, exemplars[i]!.chunk, exemplars[i]!.batch, exemplars[i]!.position, null])
        } else {
          expect(a.value).toBeGreaterThanOrEqual(a.binMin)
          expect(a.value).toBeLessThan(a.binMax + (a.binMax === 1 ? 1e-9 : 0))
          expect(a.binContains).toBeCloseTo(s.histogram[Math.round(a.binMin * 10)]! / s.histogram.reduce((x, y) => x + y, 0), 9)
        }
      })
    }
  })

  it('without chunks: the model alone, metrics null; --vectors adds the centers', () => {
    const out = join(dir, 'alone')
    const r = run('export', '--model', modelPath, '--out', out, '--vectors')
    expect(r.status, r.stderr).toBe(0)
    expect(r.stdout).toContain(`wrote ${K + 1} files into ${out}`)
    const f = readJson(join(out, 'cluster-00003.json'))
    expect(f).toMatchObject({ frac_nonzero: null, meanCosine: null, topTokens: [], liftTokens: [], freq_hist_data_bar_heights: [], hasVector: true })
    expect(f.mass).toBe(model.summary!.clusterMass[3])
    expect(f.vector).toEqual(Array.from(model.centers!.subarray(3 * 384, 4 * 384)))
    expect(f.activations.length).toBeGreaterThan(0)
    // Without a tokenizer the text of a token is its id.
    expect(f.activations[0].tokens[f.activations[0].centerTokenIndex].trim()).toBe(String(f.activations[0].tokenIds[f.activations[0].centerTokenIndex]))
  })

  it('never replaces a folder that is not an earlier export, and replaces an export only with --overwrite', () => {
    const mine = join(dir, 'mine')
    mkdirSync(mine)
    writeFileSync(join(mine, 'notes.txt'), 'keep me')
    expectFailure(run('export', '--model', modelPath, '--out', mine), `--out ${mine}: is not empty and holds more than an earlier export`)
    expectFailure(run('export', '--model', modelPath, '--out', mine, '--overwrite'), 'is not empty')
    expect(readFileSync(join(mine, 'notes.txt'), 'utf8')).toBe('keep me')
    expectFailure(run('export', '--model', modelPath, '--out', join(mine, 'notes.txt')), 'is a file, not a folder')

    const earlier = join(dir, 'earlier')
    expect(run('export', '--model', modelPath, '--out', earlier).status).toBe(0)
    expectFailure(run('export', '--model', modelPath, '--out', earlier), 'holds an earlier export; give --overwrite')
    const r = run('export', '--model', modelPath, MINILM, '--out', earlier, '--overwrite')
    expect(r.status, r.stderr).toBe(0)
    expect(readJson(join(earlier, 'cluster-00000.json')).frac_nonzero).not.toBeNull()
    // No staging folder is left beside it.
    expect(readdirSync(dir).filter((n) => n.includes('.soft-cluster-'))).toEqual([])

    expectFailure(run('export', '--model', modelPath, '--out', join(dir, 'csv'), '--format', 'csv'), '--format csv: not a known format (known: json)')
    expect(existsSync(join(dir, 'csv'))).toBe(false)
    expectFailure(run('export', '--model', join(dir, 'missing.safetensors'), '--out', join(dir, 'x')), 'missing.safetensors')
    expect(existsSync(join(dir, 'x'))).toBe(false)
  })
})
