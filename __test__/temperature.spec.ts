import { spawnSync } from 'node:child_process'
import { mkdtempSync, readdirSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { SequentialSoftClustering } from '../ts'

// Real transformer activations (the demo's MiniLM layer-3 hidden states): what the defaults must
// be useful on, and where the design document's temperature 1.0 collapses every center.
const EXAMPLES = join(__dirname, '..', 'examples', 'minilm')
const BIN = join(__dirname, '..', 'bin', 'soft-cluster.js')
const run = (...args: string[]) => spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8' })
const chunks = readdirSync(EXAMPLES).filter((n) => n.endsWith('.npz')).sort().map((n) => join(EXAMPLES, n))

/** Pairs of distinct centers with cosine above `threshold`. */
function twinPairs(centers: Float32Array, k: number, threshold: number): number {
  const d = centers.length / k
  let pairs = 0
  for (let a = 0; a < k; a++) {
    for (let b = a + 1; b < k; b++) {
      let dot = 0
      for (let i = 0; i < d; i++) dot += centers[a * d + i]! * centers[b * d + i]!
      if (dot > threshold) pairs++
    }
  }
  return pairs
}

describe('temperature "auto" (the default) on real activations', () => {
  it('chooses a temperature, stores it with its rule, and leaves no twin or empty cluster', async () => {
    const out = mkdtempSync(join(tmpdir(), 'sc-auto-'))
    const model = new SequentialSoftClustering({ nClusters: 24, dModel: 384, device: 'cpu' })
    const history = await model.fitChunks(chunks, out)
    const { temperature, temperatureRule } = model.config
    expect(typeof temperature).toBe('number')
    expect(temperature as number).toBeGreaterThan(0.001)
    expect(temperature as number).toBeLessThan(0.2)
    expect(temperatureRule).toMatch(/^auto: /)
    expect(twinPairs(model.centers, 24, 0.99)).toBe(0)
    expect(model.summary!.clusterCount.filter((c) => c === 0)).toHaveLength(0)
    expect(model.summary!.warnings).toEqual([])
    expect(history.every((h) => h.twins === 0 || h.reseeds > 0)).toBe(true)
    // The chosen number is what a reloaded model transforms with.
    const loaded = await SequentialSoftClustering.load(join(out, 'model.safetensors'))
    expect(loaded.config.temperature).toBe(temperature)
    expect(loaded.config.temperatureRule).toBe(temperatureRule)
  })

  it('--temperature 1 collapses; the fit warns in one stderr line naming T and the auto value, and --json carries it', () => {
    const out = mkdtempSync(join(tmpdir(), 'sc-hot-'))
    const r = run('fit', EXAMPLES, '--clusters', '24', '--out', out, '--temperature', '1', '--device', 'cpu', '--json')
    expect(r.status, r.stderr).toBe(0)
    const lines = r.stderr.trim().split('\n')
    expect(lines).toHaveLength(1)
    expect(lines[0]).toMatch(/^soft-cluster: warning: the fit ended collapsed at temperature 1: \d+ twin center pairs/)
    expect(lines[0]).toMatch(/temperature "auto" would choose 0\.\d{3} for this data/)
    const j = JSON.parse(r.stdout)
    expect(j.warnings).toEqual([lines[0]!.replace('soft-cluster: warning: ', '')])
    // And the default gives no warning on the same data.
    const ok = run('fit', EXAMPLES, '--clusters', '24', '--out', join(out, 'auto'), '--device', 'cpu', '--json')
    expect(ok.status, ok.stderr).toBe(0)
    expect(ok.stderr).toBe('')
    expect(JSON.parse(ok.stdout).warnings).toEqual([])
    // The suggestion is the temperature the default fit chose (the collapsed fit's own init
    // computes it, without a second init).
    expect(lines[0]).toContain(`temperature "auto" would choose ${JSON.parse(ok.stdout).temperature.toFixed(3)} for this data`)
  })
})
