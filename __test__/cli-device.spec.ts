import { spawnSync } from 'node:child_process'
import { existsSync, mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { probeDevice } from '../ts'

const BIN = join(__dirname, '..', 'bin', 'soft-cluster.js')
const run = (...args: string[]) => spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8' })
const chunk = join(__dirname, '..', 'fixtures', 'planted_a_f32.npz')

// The CUDA backend itself is tested on a GPU by crates/core/tests/cuda.rs; here the binding says
// whether one is usable, and the title says which branch ran.
const cuda = probeDevice('cuda:0')

describe('soft-cluster fit --device / --precision', () => {
  it(cuda.usable ? `GPU usable: "--device cuda:0" fits there and --json says so (${cuda.reason})` : '"--device cuda" without a usable GPU fails in one line saying why, and writes nothing', () => {
    const out = join(mkdtempSync(join(tmpdir(), 'sc-dev-')), 'out')
    const r = run('fit', chunk, '--clusters', '3', '--out', out, '--device', 'cuda:0', '--iterations', '1', '--temperature', '0.25', '--json')
    if (cuda.usable) {
      expect(r.status, r.stderr).toBe(0)
      expect(JSON.parse(r.stdout).device).toMatch(/^cuda:0 /)
      expect(existsSync(join(out, 'model.safetensors'))).toBe(true)
      return
    }
    expect(r.status).toBe(1)
    expect(r.stderr.trim().split('\n')).toHaveLength(1)
    expect(r.stderr).toContain('[ERR_DEVICE]')
    expect(r.stderr).toContain('cuda:0')
    expect(existsSync(join(out, 'model.safetensors'))).toBe(false)
  })

  it(cuda.usable ? '"--device cuda:all" and "cuda:0,0" fit on several backends and say which' : '"--device cuda:all" and "cuda:0,1" without a usable GPU fail in one line saying why; malformed lists are refused', () => {
    const dir = mkdtempSync(join(tmpdir(), 'sc-multi-'))
    for (const device of ['cuda:all', cuda.usable ? 'cuda:0,0' : 'cuda:0,1']) {
      const out = join(dir, device.replace(/[:,]/g, '-'))
      const r = run('fit', chunk, '--clusters', '3', '--out', out, '--device', device, '--iterations', '1', '--temperature', '0.25', '--json')
      if (cuda.usable) {
        expect(r.status, r.stderr).toBe(0)
        expect(JSON.parse(r.stdout).device).toMatch(/^\d+ devices: cuda:0 /)
        continue
      }
      expect(r.status).toBe(1)
      expect(r.stderr.trim().split('\n')).toHaveLength(1)
      expect(r.stderr).toContain('[ERR_DEVICE]')
      expect(existsSync(join(out, 'model.safetensors'))).toBe(false)
    }
    expect(probeDevice('cuda:all').usable).toBe(cuda.usable)
    const bad = run('fit', chunk, '--clusters', '3', '--out', join(dir, 'bad'), '--device', 'cuda:0,')
    expect(bad.status).toBe(1)
    expect(bad.stderr).toContain('device: must be "auto", "cpu", "cuda", "cuda:N", "cuda:all" or a list such as "cuda:0,1", got "cuda:0,"')
  })

  it('--json says which device the fit ran on and why', () => {
    const dir = mkdtempSync(join(tmpdir(), 'sc-why-'))
    const cpu = run('fit', chunk, '--clusters', '3', '--out', join(dir, 'cpu'), '--device', 'cpu', '--iterations', '1', '--temperature', '0.25', '--json')
    expect(cpu.status, cpu.stderr).toBe(0)
    expect(JSON.parse(cpu.stdout)).toMatchObject({ device: 'cpu (asked for)', temperature: 0.25 })
    const auto = run('fit', chunk, '--clusters', '3', '--out', join(dir, 'auto'), '--iterations', '1', '--temperature', '0.25', '--json')
    expect(auto.status, auto.stderr).toBe(0)
    expect(JSON.parse(auto.stdout).device).toMatch(cuda.usable ? /^cuda:0 \(auto: / : /^cpu \(auto: no usable GPU: /)
  })

  it('--temperature takes auto (the fit chooses it and says how) or a number, nothing else', () => {
    const dir = mkdtempSync(join(tmpdir(), 'sc-temp-'))
    const bad = run('fit', chunk, '--clusters', '3', '--out', join(dir, 'bad'), '--temperature', 'warm')
    expect(bad.status).toBe(1)
    expect(bad.stderr).toContain('--temperature')
    const auto = run('fit', chunk, '--clusters', '3', '--out', join(dir, 'auto'), '--temperature', 'auto', '--device', 'cpu', '--iterations', '1', '--json')
    expect(auto.status, auto.stderr).toBe(0)
    const j = JSON.parse(auto.stdout)
    expect(typeof j.temperature).toBe('number')
    expect(typeof j.temperatureRule).toBe('string')
  })

  it('refuses an unknown precision naming the field, and accepts tf32 (a no-op on the CPU)', () => {
    const dir = mkdtempSync(join(tmpdir(), 'sc-prec-'))
    const bad = run('fit', chunk, '--clusters', '3', '--out', join(dir, 'a'), '--precision', 'fp16')
    expect(bad.status).toBe(1)
    expect(bad.stderr).toContain('precision')
    expect(bad.stderr).toContain('[ERR_INVALID_CONFIG]')
    const ok = run('fit', chunk, '--clusters', '3', '--out', join(dir, 'b'), '--precision', 'tf32', '--device', 'cpu', '--iterations', '1', '--temperature', '0.25')
    expect(ok.status).toBe(0)
    expect(existsSync(join(dir, 'b', 'model.safetensors'))).toBe(true)
  })
})
