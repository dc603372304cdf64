import { spawnSync } from 'node:child_process'
import { existsSync, mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'

const BIN = join(__dirname, '..', 'bin', 'soft-cluster.js')
const run = (...args: string[]) => spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8' })

describe('soft-cluster CLI', () => {
  it('demo fits the bundled chunks and says where the outputs are', () => {
    const out = join(mkdtempSync(join(tmpdir(), 'sc-demo-')), 'demo')
    const r = run('demo', '--out', out)
    expect(r.status).toBe(0)
    expect(r.stdout).toContain('Fitting 6 clusters')
    expect(r.stdout.match(/cluster \d: mass/g)).toHaveLength(6)
    expect(r.stdout).toContain(join(out, 'model.safetensors'))
    expect(existsSync(join(out, 'model.safetensors'))).toBe(true)
    expect(existsSync(join(out, 'planted_a_f32.memberships.npz'))).toBe(true)
  })

  it('prints its version and refuses unknown commands with a non-zero exit', () => {
    expect(run('--version').stdout.trim()).toMatch(/^\d+\.\d+\.\d+$/)
    const r = run('bogus')
    expect(r.status).not.toBe(0)
    expect(r.stderr).toContain("unknown command 'bogus'")
  })
})
