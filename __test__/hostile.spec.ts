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

describe('API misuse is an error, never a crash or a guess', () => {
  it('fitChunks, transformChunks and analyzeChunks refuse a lone string instead of reading one file per character', async () => {
    const { SequentialSoftClustering, analyzeChunks } = await import('../ts')
    const model = new SequentialSoftClustering({ nClusters: 3, dModel: 64, temperature: 0.25 })
    const dir = mkdtempSync(join(tmpdir(), 'sc-str-'))
    for (const call of [
      () => model.fitChunks('abc' as never, dir),
      () => model.transformChunks('abc' as never, dir),
      () => analyzeChunks(model, 'abc' as never),
    ]) {
      await expect(call()).rejects.toMatchObject({ code: 'ERR_INVALID_INPUT', message: expect.stringContaining('chunkPaths: must be an array of paths, got the string "abc"') })
    }
  })

  it('an onProgress that throws rejects fitChunks with its error; the process lives on', async () => {
    const { SequentialSoftClustering } = await import('../ts')
    const model = new SequentialSoftClustering({ nClusters: 3, dModel: 64, temperature: 0.25, nIterations: 2, device: 'cpu' })
    const out = mkdtempSync(join(tmpdir(), 'sc-throw-'))
    let calls = 0
    const boom = new Error('progress handler failed')
    await expect(model.fitChunks([fixture], out, { onProgress: () => { calls++; throw boom } })).rejects.toBe(boom)
    expect(calls).toBe(1)
    // The binding is still usable afterwards.
    const again = new SequentialSoftClustering({ nClusters: 3, dModel: 64, temperature: 0.25, nIterations: 1, device: 'cpu' })
    await expect(again.fitChunks([fixture], join(out, 'again'))).resolves.toHaveLength(1)
  })
})

describe('transformAsync and the caller\'s buffers', () => {
  it('reusing the buffer for the next batch before the first promise resolves changes nothing, and detaching it is safe', async () => {
    const { SequentialSoftClustering, readChunk } = await import('../ts')
    const chunk = readChunk(fixture)
    const [b, s, d] = chunk.shape as [number, number, number]
    const model = new SequentialSoftClustering({ nClusters: 3, dModel: d, temperature: 0.25, device: 'cpu', initialCenters: chunk.activations.slice(0, 3 * d) })
    const want = model.transform(chunk.activations, { shape: [b, s, d] })
    const buffer = chunk.activations.slice()
    const first = model.transformAsync(buffer, { shape: [b, s, d] })
    buffer.fill(1) // the next batch, written into the same buffer at once
    const second = model.transformAsync(buffer, { shape: [b, s, d] })
    expect((await first).values).toEqual(want.values)
    expect((await second).values).not.toEqual(want.values)
    // Detaching (transferring) the buffer while the work runs must not crash the process.
    const detached = new Float32Array(new ArrayBuffer(chunk.activations.byteLength))
    detached.set(chunk.activations)
    const pending = model.transformAsync(detached, { shape: [b, s, d] })
    structuredClone(detached.buffer, { transfer: [detached.buffer] })
    expect(detached.byteLength).toBe(0)
    expect((await pending).values).toEqual(want.values)
  })
})

describe('error texts name what the user gave', () => {
  it('report --out under a path that is a file names --out, in one line', () => {
    const dir = mkdtempSync(join(tmpdir(), 'sc-enotdir-'))
    const chunk = join(dir, 'a.npz')
    copyFileSync(fixture, chunk)
    expect(run('fit', chunk, '--clusters', '3', '--out', join(dir, 'out'), '--temperature', '0.25', '--iterations', '1', '--device', 'cpu').status).toBe(0)
    const out = join(chunk, 'r.html') // a.npz is a file, not a folder
    const r = run('report', '--model', join(dir, 'out', 'model.safetensors'), '--out', out)
    expect(r.status).toBe(1)
    expect(r.stderr.trim().split('\n')).toHaveLength(1)
    expect(r.stderr).toContain(`--out ${out}: cannot be written (ENOTDIR)`)
    expect(r.stderr).toContain('[ERR_IO]')
  })
})
