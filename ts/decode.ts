// Token ids back to text for the report: a Hugging Face tokenizer.json (through
// @huggingface/tokenizers), a plain JSON list of token strings, or nothing (ids are shown).
import { readFileSync } from 'node:fs'
import type * as HfTokenizers from '@huggingface/tokenizers' with { 'resolution-mode': 'import' }

// The package is an ES module whose "require" export is a CommonJS build of the same code; its
// types are declared for the import side only, hence the typed require.
// eslint-disable-next-line @typescript-eslint/no-require-imports
const { Tokenizer } = require('@huggingface/tokenizers') as typeof HfTokenizers

/** One token of a window, as text (empty for the bytes of a character that a later token completes). */
export interface TokenPiece {
  text: string
  /** The token is padding or outside the sequence (id -1). */
  missing: boolean
}

export interface TokenDecoder {
  /** How the ids are decoded, for the report's header. */
  readonly description: string
  /** A window of ids (-1 = outside the sequence or padding), one piece per id. */
  window(ids: readonly number[]): TokenPiece[]
  /** One id on its own, e.g. in a list of top tokens. */
  token(id: number): string
}

function fail(flag: string, file: string, problem: string): never {
  throw Object.assign(new Error(`${flag} ${file}: ${problem}`), { code: 'ERR_INVALID_INPUT' })
}

function readJson(flag: string, file: string): unknown {
  let text: string
  try {
    text = readFileSync(file, 'utf8')
  } catch (e) {
    fail(flag, file, `cannot be read (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`)
  }
  try {
    return JSON.parse(text)
  } catch (e) {
    fail(flag, file, `is not JSON (${(e as Error).message})`)
  }
}

const commonPrefixLength = (a: string, b: string): number => {
  let i = 0
  while (i < a.length && i < b.length && a[i] === b[i]) i++
  return i
}

/**
 * Decodes the whole window at once, then maps the text back to tokens: token i owns the characters
 * that the decoding of the first i + 1 tokens settles, beyond those of the first i. So a character
 * split over several tokens (byte-level BPE) renders whole, on the token that completes it, and
 * word-piece joins and spaces come out as the tokenizer's own decoder makes them.
 */
function mapBack(ids: readonly number[], decode: (ids: number[]) => string): TokenPiece[] {
  const real = ids.filter((id) => id >= 0)
  const full = decode(real)
  const pieces: TokenPiece[] = []
  let settled = 0
  let n = 0
  for (const id of ids) {
    if (id < 0) {
      pieces.push({ text: '', missing: true })
      continue
    }
    n++
    const end = n === real.length ? full.length : Math.max(settled, commonPrefixLength(decode(real.slice(0, n)), full))
    pieces.push({ text: full.slice(settled, end), missing: false })
    settled = end
  }
  return pieces
}

/** A decoder from a Hugging Face `tokenizer.json` (`--tokenizer`). */
export function tokenizerDecoder(file: string): TokenDecoder {
  const json = readJson('--tokenizer', file) as { model?: unknown }
  if (typeof json !== 'object' || json === null || typeof json.model !== 'object') fail('--tokenizer', file, 'is not a Hugging Face tokenizer.json (no "model" object)')
  let tokenizer: HfTokenizers.Tokenizer
  try {
    tokenizer = new Tokenizer(json, {})
  } catch (e) {
    fail('--tokenizer', file, `cannot be loaded as a tokenizer (${(e as Error).message.split('\n')[0]})`)
  }
  const decode = (ids: number[]) => tokenizer.decode(ids, { skip_special_tokens: false, clean_up_tokenization_spaces: false })
  return {
    description: `tokenizer ${file}`,
    window: (ids) => mapBack(ids, decode),
    token: (id) => decode([id]),
  }
}

/** Each token's own text, space-separated. */
const spaced = (ids: readonly number[], token: (id: number) => string): TokenPiece[] =>
  ids.map((id, i) => (id < 0 ? { text: '', missing: true } : { text: (i === 0 ? '' : ' ') + token(id), missing: false }))

/** A decoder from a JSON list of token strings, indexed by id (`--vocab`). */
export function vocabDecoder(file: string): TokenDecoder {
  const vocab = readJson('--vocab', file)
  if (!Array.isArray(vocab) || !vocab.every((v) => typeof v === 'string')) fail('--vocab', file, 'must be a JSON list of strings (the token of each id)')
  const token = (id: number) => (id >= 0 && id < vocab.length ? (vocab[id] as string) : `#${id}`)
  return {
    description: `vocabulary ${file}`,
    window: (ids) => spaced(ids, token),
    token,
  }
}

/** Without a tokenizer: the ids themselves. */
export const idDecoder: TokenDecoder = {
  description: 'token ids (no --tokenizer or --vocab given)',
  window: (ids) => spaced(ids, String),
  token: String,
}
