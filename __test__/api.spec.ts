// The API's edges a new user meets first: what may be left out (shape, dModel, the file list),
// which arrays it takes and gives, and what its errors say.
import { cpSync, mkdirSync, mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { analyzeSequentialClusters, chunkShape, readChunk, readMemberships, resolveChunks, SequentialSoftClustering } from '../ts'
import { expectError, fixture } from './helpers'

const tmp = (): string => mkdtempSync(join(tmpdir(), 'soft-cluster-api-'))
const centers = [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
const small = (): SequentialSoftClustering => new SequentialSoftClustering({ nClusters: 3, dModel: 3, temperature: 0.2, initialCenters: centers })
const tokens = new Float32Array([0.9, 0.1, 0, 0, 1, 0.2, 0.1, 0.1, 0.9, 0.5, 0.5, 0.1])

describe('the API a new user meets', () => {
  it('takes [T, dModel] rows when shape is left out', () => {
    const model = small()
    const given = model.transform(tokens, { shape: [4, 3] })
    const inferred = model.transform(tokens)
    expect(inferred.indices).toEqual(given.indices)
    expect(inferred.values).toEqual(given.values)
    expectError(() => model.transform(new Float32Array(7)), 'ERR_INVALID_INPUT', 'has 7 values, not a whole number of rows of dModel = 3')
    expectError(() => model.transform(new Float32Array(6), { shape: [2, 1.5, 2] }), 'ERR_INVALID_INPUT', 'got [2, 1.5, 2]')
  })

  it('gives each row its hard label, the argmax of its memberships', () => {
    const out = small().transform(tokens, { shape: [4, 3] })
    const argmax = Array.from({ length: out.nRows }, (_, r) => {
      const row = Array.from(out.memberships!.subarray(r * 3, r * 3 + 3))
      return row.indexOf(Math.max(...row))
    })
    expect(out.labels).toBeInstanceOf(Int32Array)
    expect(Array.from(out.labels)).toEqual(argmax)
    expect(Array.from(out.labels)).toEqual([0, 1, 2, 0])
  })

  it('converts Float64Array and number[] activations the same way everywhere', () => {
    const model = small()
    const want = analyzeSequentialClusters(model, tokens, null, { shape: [4, 3] })
    expect(analyzeSequentialClusters(model, Float64Array.from(tokens), null, { shape: [4, 3] })).toEqual(want)
    expect(analyzeSequentialClusters(model, Array.from(tokens))).toEqual(want)
    expect(model.transform(Float64Array.from(tokens)).values).toEqual(model.transform(tokens).values)
  })

  it('takes token ids as Int32Array, BigInt64Array or numbers, and refuses ones that are not int32', () => {
    const model = small()
    const ids = [5, 7, 5, 9]
    const want = analyzeSequentialClusters(model, tokens, Int32Array.from(ids), { shape: [1, 4, 3], topTokens: 2 })
    expect(want.clusters[0]!.topTokens.map((t) => t.tokenId)).toContain(5)
    expect(analyzeSequentialClusters(model, tokens, BigInt64Array.from(ids.map(BigInt)), { shape: [1, 4, 3], topTokens: 2 })).toEqual(want)
    expect(analyzeSequentialClusters(model, tokens, ids, { shape: [1, 4, 3], topTokens: 2 })).toEqual(want)
    expectError(() => analyzeSequentialClusters(model, tokens, [1, 2, 2 ** 31, 3], { shape: [1, 4, 3] }), 'ERR_INVALID_INPUT', 'tokenIds: value 2147483648 at 2')
  })

  it('gives token ids and memberships indices as Int32Array, like transform', async () => {
    expect(readChunk(fixture('planted_a_f32.npz')).tokenIds).toBeInstanceOf(Int32Array)
    const out = tmp()
    const model = new SequentialSoftClustering({ nClusters: 6, nIterations: 2, temperature: 0.1 })
    await model.fitChunks([fixture('planted_a_f32.npz')], out)
    const file = readMemberships(join(out, 'planted_a_f32.memberships.npz'))
    expect(file.indices).toBeInstanceOf(Int32Array)
    expect(model.transform(readChunk(fixture('planted_a_f32.npz')).activations).indices).toBeInstanceOf(Int32Array)
  })

  it('reads dModel from the first chunk and takes folders and globs, as the CLI does', async () => {
    const folder = join(tmp(), 'chunks')
    mkdirSync(folder)
    cpSync(fixture('planted_a_f32.npz'), join(folder, 'a.npz'))
    cpSync(fixture('planted_b_f16_compressed.npz'), join(folder, 'b.npz'))
    expect(resolveChunks([folder])).toEqual([join(folder, 'a.npz'), join(folder, 'b.npz')])
    expect(chunkShape(join(folder, 'a.npz'))).toEqual([5, 32, 64])

    const model = new SequentialSoftClustering({ nClusters: 6, nIterations: 2, temperature: 0.1 })
    expect(model.config.dModel).toBe(0)
    expect(model.centers).toBeNull()
    const out = tmp()
    await model.fitChunks([folder], out)
    expect(model.config.dModel).toBe(64)
    expect(model.summary!.chunks).toEqual(['a.npz', 'b.npz'])
    const globbed = new SequentialSoftClustering({ nClusters: 6, nIterations: 2, temperature: 0.1 })
    await globbed.fitChunks([join(folder, '*.npz')], tmp())
    expect(globbed.centers).toEqual(model.centers)
  })

  it('names the field and the bound of a bad count', () => {
    expectError(() => new SequentialSoftClustering({ nClusters: -1, dModel: 4 }), 'ERR_INVALID_CONFIG', 'nClusters', 'must be an integer >= 1, got -1')
    expectError(() => new SequentialSoftClustering({ nClusters: -1 }), 'ERR_INVALID_CONFIG', 'nClusters', 'must be an integer >= 1, got -1')
    expectError(() => new SequentialSoftClustering({ nClusters: 2, dModel: 4, nIterations: -2 }), 'ERR_INVALID_CONFIG', 'nIterations', 'must be an integer >= 0, got -2')
    expectError(() => new SequentialSoftClustering({ nClusters: 2, initialCenters: new Float32Array(8) }), 'ERR_INVALID_CONFIG', 'dModel', 'is required')
  })
})
