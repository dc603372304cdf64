import { spawnSync } from 'node:child_process'
import { existsSync, mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'

const BIN = join(__dirname, '..', 'bin', 'soft-cluster.js')
const run = (...args: string[]) => spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8' })
const chunk = join(__dirname, '..', 'fixtures', 'planted_a_f32.npz')

// Test machines have no GPU; the CUDA backend itself is tested on one by crates/core/tests/cuda.rs.
describe('soft-cluster fit --device / --precision', () => {
  it('"--device cuda" without a usable GPU fails in one line saying why, and writes nothing', () => {
    const out = join(mkdtempSync(join(tmpdir(), 'sc-dev-')), 'out')
    const r = run('fit', chunk, '--clusters', '3', '--out', out, '--device', 'cuda:0', '--iterations', '1')
    expect(r.status).toBe(1)
    expect(r.stderr.trim().split('\n')).toHaveLength(1)
    expect(r.stderr).toContain('[ERR_DEVICE]')
    expect(r.stderr).toContain('cuda:0')
    expect(existsSync(join(out, 'model.safetensors'))).toBe(false)
  })

  it('refuses an unknown precision naming the field, and accepts tf32 (a no-op on the CPU)', () => {
    const dir = mkdtempSync(join(tmpdir(), 'sc-prec-'))
    const bad = run('fit', chunk, '--clusters', '3', '--out', join(dir, 'a'), '--precision', 'fp16')
    expect(bad.status).toBe(1)
    expect(bad.stderr).toContain('precision')
    expect(bad.stderr).toContain('[ERR_INVALID_CONFIG]')
    const ok = run('fit', chunk, '--clusters', '3', '--out', join(dir, 'b'), '--precision', 'tf32', '--device', 'cpu', '--iterations', '1')
    expect(ok.status).toBe(0)
    expect(existsSync(join(dir, 'b', 'model.safetensors'))).toBe(true)
  })
})
