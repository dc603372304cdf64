import { existsSync, realpathSync } from 'node:fs'
import { resolve } from 'node:path'

/**
 * The model file a `merge` or `split` writes: never the input model, and an existing file only
 * with `--overwrite` (the write itself is atomic: a temporary name, then a rename).
 */
export function modelOutput(out: string, input: string, overwrite: boolean | undefined): string {
  const path = resolve(out)
  const same = existsSync(path) && existsSync(input) && realpathSync(path) === realpathSync(input)
  if (same) throw Object.assign(new Error(`--out ${out}: is the input model; write the new model elsewhere`), { code: 'ERR_INVALID_INPUT' })
  if (existsSync(path) && !overwrite) throw Object.assign(new Error(`--out ${out}: exists; pass --overwrite to replace it`), { code: 'ERR_OUTPUT_EXISTS' })
  return path
}

/** Cluster ids as `3,7,12`. */
export function clusterIds(text: string): number[] {
  const ids = text.split(',').map((t) => t.trim())
  if (ids.some((t) => !/^\d+$/.test(t))) throw Object.assign(new Error(`--clusters ${text}: must be cluster ids separated by commas, e.g. 3,7`), { code: 'ERR_INVALID_INPUT' })
  return ids.map(Number)
}
