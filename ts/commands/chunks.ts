import { existsSync, readdirSync, statSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { globSync } from 'tinyglobby'

/** Files, directories (their `*.npz`, sorted by name) and globs, expanded in the order given. */
export function resolveChunks(specs: readonly string[]): string[] {
  const out: string[] = []
  for (const spec of specs) {
    if (existsSync(spec) && statSync(spec).isDirectory()) {
      const files = readdirSync(spec).filter((n) => n.endsWith('.npz') && !n.endsWith('.memberships.npz')).sort()
      if (files.length === 0) throw Object.assign(new Error(`${spec}: directory holds no .npz chunk files`), { code: 'ERR_INVALID_INPUT' })
      out.push(...files.map((n) => resolve(join(spec, n))))
    } else if (existsSync(spec)) {
      out.push(resolve(spec))
    } else {
      const matches = globSync(spec, { absolute: true, onlyFiles: true }).sort()
      if (matches.length === 0) throw Object.assign(new Error(`${spec}: no such file, directory or matching glob`), { code: 'ERR_IO' })
      out.push(...matches)
    }
  }
  return out
}
