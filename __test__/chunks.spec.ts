import { execFileSync, spawnSync } from 'node:child_process'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { readChunk, readChunkAsync, readMemberships, readNpy } from '../ts'
import { expectError, fixture } from './helpers'

describe('readChunk', () => {
  it('reads the numpy fixtures: dtypes, masks and token ids', () => {
    const a = readChunk(fixture('planted_a_f32.npz'))
    expect(a.shape).toEqual([5, 32, 64])
    expect(a.dtype).toBe('float32')
    expect(a.activations).toBeInstanceOf(Float32Array)
    expect(a.activations[64 + 2]).toBe(Math.fround(-0.03298173472285271))
    expect(a.attentionMask!.reduce((s, v) => s + v, 0)).toBe(137)
    expect(a.tokenIds).toBeInstanceOf(Int32Array)
    expect(a.tokenIds!.reduce((s, v) => s + v, 0)).toBe(37977)

    const b = readChunk(fixture('planted_b_f16_compressed.npz'))
    expect([b.shape, b.dtype]).toEqual([[3, 32, 64], 'float16'])
    expect(Array.from(b.activations).reduce((s, v) => s + v, 0)).toBeCloseTo(279.5231394767761, 9)
    expect(b.attentionMask!.reduce((s, v) => s + v, 0)).toBe(78)

    const flat = readChunk(fixture('flat_2d_f64.npz'))
    expect([flat.shape, flat.dtype, flat.attentionMask, flat.tokenIds]).toEqual([[1, 32, 64], 'float64', undefined, undefined])
  })

  it('reads Fortran-ordered arrays in logical order, and the legal edge cases', async () => {
    const f = await readChunkAsync(fixture('bad/fortran_order.npz'))
    expect(f.activations[64 + 2]).toBe(Math.fround(-0.03298173472285271))
    expect(f.activations[f.activations.length - 1]).toBe(Math.fround(-1.5185787677764893))
    expect(readChunk(fixture('bad/empty_batch.npz')).shape).toEqual([0, 32, 64])
    expect(readChunk(fixture('bad/all_masked.npz')).attentionMask!.every((v) => v === 0)).toBe(true)
  })

  it.each([
    ['bad_npy_header.npz', 'activations', 'header'],
    ['missing_activations.npz', 'activations', 'missing'],
    ['mask_shape_mismatch.npz', 'attention_mask', '[2, 10]'],
    ['token_shape_mismatch.npz', 'token_ids', '[1, 32]'],
    ['not_a_zip.npz', '(archive)', 'zip'],
    ['truncated.npz', '(archive)', 'zip'],
    ['object_pickle.npz', 'activations', 'pickled'],
    ['one_dim.npz', 'activations', 'rank 1'],
    ['string_activations.npz', 'activations', '<U1'],
  ])('refuses bad/%s naming the file, %s and the problem', async (name, array, problem) => {
    const path = fixture(`bad/${name}`)
    expectError(() => readChunk(path), 'ERR_BAD_CHUNK', path, array, problem)
    await expect(readChunkAsync(path)).rejects.toMatchObject({ code: 'ERR_BAD_CHUNK', message: expect.stringContaining(path) })
  })

  it('refuses a missing file with ERR_IO', () => {
    expectError(() => readChunk(fixture('nope.npz')), 'ERR_IO', 'nope.npz')
  })

  it('reads .npy centers', () => {
    const c = readNpy(fixture('planted_init_centers.npy'))
    expect(c.shape).toEqual([6, 64])
    expect(c.data.length).toBe(6 * 64)
  })
})

describe('chunks in other formats, written by the Python libraries users have (issue 14)', () => {
  const python = process.env.SOFT_CLUSTER_PYTHON ?? 'python3'
  const hasLibraries = spawnSync(python, ['-c', 'import numpy, safetensors'], { encoding: 'utf8' }).status === 0
  // CI installs numpy and safetensors (SOFT_CLUSTER_PYTHON): there the test must run.
  it.skipIf(!hasLibraries && !process.env.SOFT_CLUSTER_PYTHON)('safetensors (safetensors.numpy) and .npy (numpy.save) fit like the .npz they came from', async () => {
    const { SequentialSoftClustering } = await import('../ts')
    const dir = mkdtempSync(join(tmpdir(), 'sc-formats-'))
    const source = join(__dirname, '..', 'examples', 'minilm', 'minilm_000.npz')
    execFileSync(python, [join(__dirname, '..', 'scripts', 'write_formats.py'), source, dir])
    const bin = join(__dirname, '..', 'bin', 'soft-cluster.js')
    const fitOne = (chunk: string, out: string, ...more: string[]) => {
      const r = spawnSync(process.execPath, [bin, 'fit', chunk, '--clusters', '6', '--out', out, '--temperature', '0.05', '--device', 'cpu', '--json', ...more], { encoding: 'utf8' })
      expect(r.status, r.stderr).toBe(0)
      return JSON.parse(r.stdout) as { model: string; memberships: string[] }
    }
    const centers = async (model: string) => (await SequentialSoftClustering.load(model)).centers!
    const ref = fitOne(source, join(dir, 'o_npz'))
    const want = await centers(ref.model)
    const wantValues = readMemberships(ref.memberships[0]!).values
    // The folder holds minilm_000.safetensors, minilm_000_hook.safetensors (two float tensors
    // would be ambiguous across files: fitted one by one here) and minilm_000.npy.
    for (const [file, more] of [['minilm_000.safetensors', []], ['minilm_000_hook.safetensors', ['--key', 'blocks.3.hook_resid_post']]] as const) {
      const got = fitOne(join(dir, file), join(dir, `o_${file}`), ...more)
      const c = await centers(got.model)
      expect(Math.max(...Array.from(c, (v, i) => Math.abs(v - want[i]!)))).toBeLessThan(1e-5)
      const values = readMemberships(got.memberships[0]!).values
      expect(values.length).toBe(wantValues.length)
      expect(Math.max(...Array.from(values, (v, i) => Math.abs(v - wantValues[i]!)))).toBeLessThan(1e-4)
    }
    // .npy holds no mask: compared with the same tokens all real (the demo chunks have no padding).
    const npy = fitOne(join(dir, 'minilm_000.npy'), join(dir, 'o_npy'))
    const c = await centers(npy.model)
    expect(Math.max(...Array.from(c, (v, i) => Math.abs(v - want[i]!)))).toBeLessThan(1e-5)
    // A pickled file is refused with how to convert it.
    writeFileSync(join(dir, 'acts.pt'), 'not really a pickle')
    const r = spawnSync(process.execPath, [bin, 'fit', join(dir, 'acts.pt'), '--clusters', '6', '--out', join(dir, 'o_pt')], { encoding: 'utf8' })
    expect(r.status).toBe(1)
    expect(r.stderr).toContain('never loads (unpickling can run code); convert it with `from safetensors.torch import save_file')
  })

  const hasDatasets = spawnSync(python, ['-c', 'import datasets'], { encoding: 'utf8' }).status === 0
  it.skipIf(!hasDatasets && !process.env.SOFT_CLUSTER_PYTHON)('a Hugging Face datasets folder as SAELens caches it (save_to_disk, Array2D, two shards) fits like the .npz', async () => {
    const { SequentialSoftClustering } = await import('../ts')
    const dir = mkdtempSync(join(tmpdir(), 'sc-arrow-'))
    const source = join(__dirname, '..', 'examples', 'minilm', 'minilm_000.npz')
    execFileSync(python, [join(__dirname, '..', 'scripts', 'write_formats.py'), source, dir], { stdio: ['ignore', 'ignore', 'pipe'] })
    const bin = join(__dirname, '..', 'bin', 'soft-cluster.js')
    const fitOne = (chunk: string, out: string) => {
      const r = spawnSync(process.execPath, [bin, 'fit', chunk, '--clusters', '6', '--out', out, '--temperature', '0.05', '--device', 'cpu', '--json'], { encoding: 'utf8' })
      expect(r.status, r.stderr).toBe(0)
      return JSON.parse(r.stdout) as { model: string; memberships: string[]; chunks: string[] }
    }
    const ref = fitOne(source, join(dir, 'o_npz'))
    const got = fitOne(join(dir, 'minilm_000_dataset'), join(dir, 'o_arrow'))
    expect(got.chunks.map((c) => c.split('/').pop())).toEqual(['data-00000-of-00002.arrow', 'data-00001-of-00002.arrow'])
    const [a, b] = await Promise.all([SequentialSoftClustering.load(ref.model), SequentialSoftClustering.load(got.model)])
    expect(Math.max(...Array.from(b.centers!, (v, i) => Math.abs(v - a.centers![i]!)))).toBeLessThan(1e-5)
    const want = readMemberships(ref.memberships[0]!).values
    const values = got.memberships.flatMap((m) => Array.from(readMemberships(m).values))
    expect(values.length).toBe(want.length)
    expect(Math.max(...values.map((v, i) => Math.abs(v - want[i]!)))).toBeLessThan(1e-4)
    // The exemplars carry the dataset's token ids.
    expect(b.summary!.exemplars.flat().map((e) => e.tokens)).toEqual(a.summary!.exemplars.flat().map((e) => e.tokens))
  })
})
