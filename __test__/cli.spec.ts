import { spawnSync } from 'node:child_process'
import { existsSync, mkdtempSync, readFileSync } from 'node:fs'
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

  it('fit then transform: transform writes the memberships the fit wrote', () => {
    const dir = mkdtempSync(join(tmpdir(), 'sc-cli-'))
    const a = join(__dirname, '..', 'fixtures', 'planted_a_f32.npz')
    const b = join(__dirname, '..', 'fixtures', 'planted_b_f16_compressed.npz')
    expect(run('fit', a, b, '--clusters', '6', '--out', join(dir, 'fit'), '--temperature', '0.25').status).toBe(0)
    const r = run('transform', '--model', join(dir, 'fit', 'model.safetensors'), a, b, '--out', join(dir, 'tr'))
    expect(r.status).toBe(0)
    expect(r.stdout).toContain('wrote memberships of 215 tokens in 2 .memberships.npz files')
    for (const name of ['planted_a_f32.memberships.npz', 'planted_b_f16_compressed.memberships.npz']) {
      expect(readFileSync(join(dir, 'tr', name))).toEqual(readFileSync(join(dir, 'fit', name)))
    }
    const bad = run('transform', '--model', a, a, '--out', join(dir, 'x'))
    expect(bad.status).toBe(1)
    expect(bad.stderr.trim().split('\n')).toHaveLength(1)
    expect(bad.stderr).toContain('[ERR_BAD_MODEL]')
    expect(run('transform', a, '--out', join(dir, 'x')).stderr).toContain("required option '--model <file>' not specified")
  })

  it('prints its version and refuses unknown commands with a non-zero exit', () => {
    expect(run('--version').stdout.trim()).toMatch(/^\d+\.\d+\.\d+$/)
    const r = run('bogus')
    expect(r.status).not.toBe(0)
    expect(r.stderr).toContain("unknown command 'bogus'")
  })
})
