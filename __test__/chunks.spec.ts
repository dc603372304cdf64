import { describe, expect, it } from 'vitest'
import { readChunk, readChunkAsync, readNpy } from '../ts'
import { expectError, fixture } from './helpers'

describe('readChunk', () => {
  it('reads the numpy fixtures: dtypes, masks and token ids', () => {
    const a = readChunk(fixture('planted_a_f32.npz'))
    expect(a.shape).toEqual([5, 32, 64])
    expect(a.dtype).toBe('float32')
    expect(a.activations).toBeInstanceOf(Float32Array)
    expect(a.activations[64 + 2]).toBe(Math.fround(-0.03298173472285271))
    expect(a.attentionMask!.reduce((s, v) => s + v, 0)).toBe(137)
    expect(a.tokenIds!.reduce((s, v) => s + v, 0n)).toBe(37977n)

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
