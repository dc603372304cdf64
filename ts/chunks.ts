// Chunk specs as users give them: files, folders of chunk files, and globs, expanded the same way
// by the CLI and the API.
import { existsSync, readdirSync, statSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { globSync } from 'tinyglobby'
import * as native from './native'

/** Our own outputs, never chunks: directories and globs pass over them. */
const isOutput = (name: string): boolean => name.endsWith('.memberships.npz')

/** A file a folder of chunks is searched for (the extensions the core reads). */
const extensions = native.chunkExtensions().map((e) => `.${e}`)
const isChunkName = (name: string): boolean => extensions.some((e) => name.toLowerCase().endsWith(e)) && !isOutput(name)

/**
 * A path Node.js read from a file name or an argument that is not valid UTF-8 holds U+FFFD
 * where the bytes were; no file has that name, so say why instead of "no such file".
 */
const notUtf8 = (path: string): Error =>
  Object.assign(new Error(`${path}: the file name is not valid UTF-8 (shown with \uFFFD), which Node.js cannot open; rename the file`), { code: 'ERR_INVALID_INPUT' })

/**
 * Files, directories (their chunk files: `.npz`, `.safetensors`, `.npy`, sorted by name) and globs (sorted), expanded in the order
 * given; directories and globs skip `*.memberships.npz`.
 */
export function resolveChunks(specs: readonly string[]): string[] {
  const out: string[] = []
  for (const spec of specs) {
    if (existsSync(spec) && statSync(spec).isDirectory()) {
      const files = readdirSync(spec).filter(isChunkName).sort()
      const unreadable = files.find((n) => n.includes('\uFFFD') && !existsSync(join(spec, n)))
      if (unreadable !== undefined) throw notUtf8(join(spec, unreadable))
      if (files.length === 0) throw Object.assign(new Error(`${spec}: directory holds no chunk files (${extensions.join(', ')})`), { code: 'ERR_INVALID_INPUT' })
      out.push(...files.map((n) => resolve(join(spec, n))))
    } else if (existsSync(spec)) {
      out.push(resolve(spec))
    } else {
      const matches = globSync(spec, { absolute: true, onlyFiles: true }).filter((p) => !isOutput(p)).sort()
      if (matches.length === 0 && spec.includes('\uFFFD')) throw notUtf8(spec)
      if (matches.length === 0) throw Object.assign(new Error(`${spec}: no such file, directory or matching glob`), { code: 'ERR_IO' })
      out.push(...matches)
    }
  }
  return out
}

/** `[B, S, D]` of a chunk file, from its header alone (no data is read). */
export function chunkShape(path: string): [number, number, number] {
  const [b, s, d] = native.chunkShape(path)
  return [b!, s!, d!]
}
