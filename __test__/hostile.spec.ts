import { spawn, spawnSync } from 'node:child_process'
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs'
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

describe('one run per output folder, never a mix of two (case 4)', () => {
  const fitInto = (out: string, k: number, ...more: string[]) => run('fit', fixture, '--clusters', String(k), '--out', out, '--temperature', '0.25', '--iterations', '2', '--device', 'cpu', ...more)
  const files = (dir: string) => Object.fromEntries(readdirSync(dir).sort().map((n) => [n, readFileSync(join(dir, n)).toString('base64')]))

  it('a second fit into a folder holding a fit is refused and changes nothing; --overwrite replaces it', () => {
    const out = join(mkdtempSync(join(tmpdir(), 'sc-twice-')), 'out')
    expect(fitInto(out, 3).status).toBe(0)
    const before = files(out)
    expect(Object.keys(before)).toEqual(['model.safetensors', 'planted_a_f32.memberships.npz', 'soft-cluster-run.json'])
    const again = fitInto(out, 4)
    expect(again.status).toBe(1)
    expect(again.stderr).toMatch(/holds the outputs of an earlier fit run .*--overwrite.*\[ERR_OUTPUT_EXISTS\]\n$/)
    expect(files(out)).toEqual(before)
    const transform = run('transform', '--model', join(out, 'model.safetensors'), fixture, '--out', out, '--overwrite')
    expect(transform.stderr).toContain('would replace or delete model.safetensors, which is one of its inputs')
    expect(files(out)).toEqual(before)
    const replaced = fitInto(out, 4, '--overwrite', '--json')
    expect(replaced.status, replaced.stderr).toBe(0)
    expect(JSON.parse(readFileSync(join(out, 'soft-cluster-run.json'), 'utf8')).files).toEqual(['model.safetensors', 'planted_a_f32.memberships.npz'])
    expect(files(out)['model.safetensors']).not.toEqual(before['model.safetensors'])
  })

  it('a run into a folder another run is using is refused at once, naming it; after a kill, --resume goes on', async () => {
    const out = join(mkdtempSync(join(tmpdir(), 'sc-busy-')), 'out')
    const long = spawn(process.execPath, [BIN, 'fit', fixture, '--clusters', '3', '--out', out, '--temperature', '0.25', '--iterations', '1000000', '--tol', '0', '--device', 'cpu'])
    try {
      const deadline = Date.now() + 20_000
      while (!existsSync(join(out, 'checkpoint.safetensors')) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50))
      const other = fitInto(out, 4, '--overwrite')
      expect(other.status).toBe(1)
      expect(other.stderr).toContain(`in use by soft-cluster fit, process ${long.pid}, started`)
      expect(other.stderr).toContain('[ERR_BUSY]')
    } finally {
      long.kill('SIGKILL')
      await new Promise((r) => long.once('exit', r))
    }
    // The killed fit's lock is gone with its process; its checkpoint is resumed (with other
    // iterations: the config must match, so this is refused naming the difference) or replaced.
    const resumed = fitInto(out, 3, '--resume')
    expect(resumed.stderr).toContain('nIterations')
    const replaced = fitInto(out, 3, '--overwrite')
    expect(replaced.status, replaced.stderr).toBe(0)
    expect(readdirSync(out).sort()).toEqual(['model.safetensors', 'planted_a_f32.memberships.npz', 'soft-cluster-run.json'])
  })
})

describe('a small hostile file cannot exhaust the machine (case 9)', () => {
  it('--max-chunk-bytes refuses a larger array before reading it, naming the limit; setMaxChunkBytes does the same in TS', async () => {
    const out = join(mkdtempSync(join(tmpdir(), 'sc-limit-')), 'out')
    const r = run('fit', fixture, '--clusters', '3', '--out', out, '--max-chunk-bytes', '1000', '--device', 'cpu')
    expect(r.status).toBe(1)
    expect(r.stderr).toMatch(/planted_a_f32\.npz: activations: decodes to \d+ bytes, more than the 1000 bytes one array may take here \(--max-chunk-bytes\) \[ERR_BAD_CHUNK\]\n$/)
    expect(existsSync(out)).toBe(false)
    const { readChunk, setMaxChunkBytes } = await import('../ts')
    setMaxChunkBytes(1000)
    try {
      expect(() => readChunk(fixture)).toThrow(/more than the 1000 bytes/)
    } finally {
      setMaxChunkBytes(null)
    }
    expect(readChunk(fixture).activations.length).toBeGreaterThan(1000 / 4)
    expect(() => setMaxChunkBytes(0)).toThrow(/maxChunkBytes: must be a whole number of bytes >= 1/)
  })
})

describe('wrong error texts (case 16)', () => {
  it('a chunk whose file name is not valid UTF-8 is named as such, not as a missing file', () => {
    const dir = mkdtempSync(join(tmpdir(), 'sc-utf8-'))
    // "b\xff.npz": a Latin-1 name, as an old archive may hold.
    writeFileSync(Buffer.concat([Buffer.from(join(dir, 'b')), Buffer.from([0xff]), Buffer.from('.npz')]), readFileSync(fixture))
    const r = run('fit', dir, '--clusters', '3', '--out', join(dir, 'out'), '--device', 'cpu')
    expect(r.status).toBe(1)
    expect(r.stderr).toContain(`${join(dir, 'b\uFFFD.npz')}: the file name is not valid UTF-8`)
    expect(r.stderr).toContain('[ERR_INVALID_INPUT]')
  })
})

// What the attack found sound stays sound.
describe('the attack’s passing cases', () => {
  it('a fit killed by SIGTERM resumes to the model of an uninterrupted fit', async () => {
    const { SequentialSoftClustering } = await import('../ts')
    const dir = mkdtempSync(join(tmpdir(), 'sc-term-'))
    const args = (out: string) => ['fit', fixture, '--clusters', '4', '--out', out, '--temperature', '0.1', '--iterations', '400', '--tol', '0', '--device', 'cpu']
    expect(run(...args(join(dir, 'whole'))).status).toBe(0)
    const out = join(dir, 'cut')
    const child = spawn(process.execPath, [BIN, ...args(out)])
    const deadline = Date.now() + 20_000
    while (!existsSync(join(out, 'checkpoint.safetensors')) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20))
    child.kill('SIGTERM')
    await new Promise((r) => child.once('exit', r))
    expect(existsSync(join(out, 'model.safetensors')), 'killed before it finished').toBe(false)
    const resumed = run(...args(out), '--resume')
    expect(resumed.status, resumed.stderr).toBe(0)
    const [a, b] = await Promise.all([SequentialSoftClustering.load(join(dir, 'whole', 'model.safetensors')), SequentialSoftClustering.load(join(out, 'model.safetensors'))])
    expect(Buffer.from(b.centers!.buffer).equals(Buffer.from(a.centers!.buffer))).toBe(true)
  })

  it('a thousand chunk files under ulimit -n 64: files are opened one or two at a time', () => {
    const dir = mkdtempSync(join(tmpdir(), 'sc-many-'))
    const chunks = join(dir, 'chunks')
    mkdirSync(chunks)
    const bytes = readFileSync(fixture)
    for (let i = 0; i < 1000; i++) writeFileSync(join(chunks, `c${String(i).padStart(4, '0')}.npz`), bytes)
    const out = join(dir, 'out')
    const r = spawnSync('bash', ['-c', `ulimit -n 64; exec "${process.execPath}" "${BIN}" fit "${chunks}" --clusters 3 --out "${out}" --iterations 1 --temperature 0.25 --device cpu`], { encoding: 'utf8' })
    expect(r.status, r.stderr).toBe(0)
    expect(readdirSync(out).filter((n) => n.endsWith('.memberships.npz'))).toHaveLength(1000)
  }, 120_000)

  it('3000 concurrent transformAsync calls each get their own memberships', async () => {
    const { SequentialSoftClustering } = await import('../ts')
    const model = new SequentialSoftClustering({ nClusters: 4, dModel: 8, temperature: 0.2, initialCenters: Float32Array.from({ length: 32 }, (_, i) => Math.sin(i + 1)) })
    const inputs = Array.from({ length: 3000 }, (_, c) => Float32Array.from({ length: 16 }, (_, i) => Math.cos(c * 16 + i)))
    const results = await Promise.all(inputs.map((a) => model.transformAsync(a, { shape: [2, 8] })))
    results.forEach((r, c) => expect(Array.from(r.memberships!)).toEqual(Array.from(model.transform(inputs[c]!, { shape: [2, 8] }).memberships!)))
  })
})
