// Shared by the specs: fixture paths and the float64 reference of docs/algorithm.md "Memberships", written the plain way.
import { spawnSync } from 'node:child_process'
import { join } from 'node:path'
import { expect } from 'vitest'

export const fixture = (name: string): string => join(__dirname, '..', 'fixtures', name)

/** The membership formula (docs/algorithm.md "Memberships") for one activation row, in float64 (JS numbers). */
export function referenceRow(a: ArrayLike<number>, centers: ArrayLike<number>, k: number, temperature: number, minMembership: number): number[] {
  const d = a.length
  let norm = 0
  for (let j = 0; j < d; j++) norm += a[j]! * a[j]!
  norm = Math.sqrt(norm)
  const s: number[] = []
  for (let c = 0; c < k; c++) {
    let dot = 0
    for (let j = 0; j < d; j++) dot += (a[j]! / norm) * centers[c * d + j]!
    s.push(dot / temperature)
  }
  const max = Math.max(...s)
  const e = s.map((v) => Math.exp(v - max))
  const sum = e.reduce((x, y) => x + y, 0)
  const p = e.map((v) => v / sum)
  let argmax = 0
  p.forEach((v, c) => {
    if (v > p[argmax]!) argmax = c
  })
  const kept = p.map((v, c) => (v < minMembership && c !== argmax ? 0 : v))
  const total = kept.reduce((x, y) => x + y, 0)
  return kept.map((v) => v / total)
}

/** True when float rounding may legitimately flip a decision (an entry at the threshold). */
export function ambiguous(a: ArrayLike<number>, centers: ArrayLike<number>, k: number, temperature: number, minMembership: number): boolean {
  if (minMembership === 0) return false
  return referenceRow(a, centers, k, temperature, 0).some((p) => Math.abs(p - minMembership) < 1e-5)
}

/** Asserts that a thrown error carries `code` and mentions every needle. */
export function expectError(fn: () => unknown, code: string, ...needles: string[]): Error & { code: string } {
  let caught: unknown
  try {
    fn()
  } catch (e) {
    caught = e
  }
  if (!(caught instanceof Error)) throw new Error(`expected an Error with code ${code}, got ${String(caught)}`)
  const err = caught as Error & { code: string }
  if (err.code !== code) throw new Error(`expected code ${code}, got ${err.code}: ${err.message}`)
  for (const n of needles) {
    if (!err.message.includes(n)) throw new Error(`message ${JSON.stringify(err.message)} should mention ${JSON.stringify(n)}`)
  }
  return err
}

/** Writes a little-endian float32 `.npy` file (what `np.save` writes for a C-ordered array). */
export function writeNpy(path: string, data: Float32Array, shape: readonly number[]): void {
  let header = `{'descr': '<f4', 'fortran_order': False, 'shape': (${shape.join(', ')}${shape.length === 1 ? ',' : ''}), }`
  header += ' '.repeat(64 - ((10 + header.length + 1) % 64)) + '\n'
  const head = Buffer.alloc(10)
  head.write('\x93NUMPY', 0, 'latin1')
  head.writeUInt8(1, 6)
  head.writeUInt8(0, 7)
  head.writeUInt16LE(header.length, 8)
  require('node:fs').writeFileSync(path, Buffer.concat([head, Buffer.from(header, 'latin1'), Buffer.from(data.buffer, data.byteOffset, data.byteLength)]))
}

/** A seeded uniform generator in [0, 1) (mulberry32), and a standard normal from it. */
export function seeded(seed: number): { uniform: () => number; normal: () => number } {
  let a = seed >>> 0
  const uniform = (): number => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
  const normal = (): number => Math.sqrt(-2 * Math.log(1 - uniform())) * Math.cos(2 * Math.PI * uniform())
  return { uniform, normal }
}

/** The command line as a user runs it: `node bin/soft-cluster.js ARGS...`. */
export const runCli = (...args: string[]) => spawnSync(process.execPath, [join(__dirname, '..', 'bin', 'soft-cluster.js'), ...args], { encoding: 'utf8' })

/** A failed run: non-zero exit and exactly one line on stderr that mentions every needle. */
export function expectFailure(r: ReturnType<typeof runCli>, ...needles: string[]): void {
  expect(r.status, r.stderr).not.toBe(0)
  const lines = r.stderr.trim().split('\n')
  expect(lines, r.stderr).toHaveLength(1)
  for (const n of needles) expect(lines[0]).toContain(n)
}
