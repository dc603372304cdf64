import { spawnSync } from 'node:child_process'
import { copyFileSync, mkdtempSync, readFileSync, symlinkSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'

// Cases from the attack on the CLI (issue 20): inputs are never overwritten or deleted.
const BIN = join(__dirname, '..', 'bin', 'soft-cluster.js')
const run = (...args: string[]) => spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8' })
const fixture = join(__dirname, '..', 'fixtures', 'planted_a_f32.npz')

describe('the report never replaces its inputs', () => {
  it('refuses --out naming the model, a chunk, or either through a link, and leaves them as they were', () => {
    const dir = mkdtempSync(join(tmpdir(), 'sc-hostile-'))
    const chunk = join(dir, 'a.npz')
    copyFileSync(fixture, chunk)
    const fit = run('fit', chunk, '--clusters', '3', '--out', join(dir, 'out'), '--temperature', '0.25', '--iterations', '1', '--device', 'cpu')
    expect(fit.status, fit.stderr).toBe(0)
    const model = join(dir, 'out', 'model.safetensors')
    const link = join(dir, 'link.html')
    symlinkSync(model, link)
    const before = { model: readFileSync(model), chunk: readFileSync(chunk) }
    for (const out of [model, chunk, link]) {
      const r = run('report', '--model', model, chunk, '--out', out)
      expect(r.status, out).toBe(1)
      expect(r.stderr.trim().split('\n')).toHaveLength(1)
      expect(r.stderr).toContain('[ERR_INVALID_INPUT]')
      expect(r.stderr).toContain(`--out ${out}: is the input`)
    }
    expect(readFileSync(model).equals(before.model)).toBe(true)
    expect(readFileSync(chunk).equals(before.chunk)).toBe(true)
  })
})
