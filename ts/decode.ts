// Token ids back to text for the report: a Hugging Face tokenizer.json (through
// @huggingface/tokenizers), a plain JSON list of token strings, or nothing (ids are shown).
// A tokenizer.json's decoder is code from the file (its regexes can backtrack for ever), so it runs
// in a worker thread under a time limit, past which the ids are shown.
import { readFileSync } from 'node:fs'
import { MessageChannel, type MessagePort, receiveMessageOnPort, Worker } from 'node:worker_threads'
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
  /**
   * Decodes these windows and ids ahead, at once (what a page will ask `window` and `token` for):
   * a decoder that can fall back then does so for the page as a whole.
   */
  prepare?(windows: readonly (readonly number[])[], ids: readonly number[]): void
  /** Set once the decoder has given up and shows ids instead: why (a tokenizer's decoding ran out of time). */
  readonly fallback?: string
  /** Stops the decoder's worker thread, if it has one (a later call starts another). */
  close?(): void
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

/** The characters `a` and `b` start with in common. (A function declaration: the worker's source holds its text.) */
function commonPrefixLength(a: string, b: string): number {
  let i = 0
  while (i < a.length && i < b.length && a[i] === b[i]) i++
  return i
}

/** Tokens of context that `mapBack` decodes each token with, at least, on each side. */
export const DECODE_CONTEXT = 8

/**
 * Maps a window's decoded text back to its tokens: token i owns the characters that decoding the
 * tokens up to and including it settles, beyond those that the tokens before it settled. So a
 * character split over several tokens (byte-level BPE) renders whole, on the token that completes
 * it, and word-piece joins and spaces come out as the tokenizer's own decoder makes them.
 *
 * "Settled" is measured against a local decode, not the whole window's, so that the cost is linear
 * in the window: the tokens go in blocks of 2 context + 1, and a block's tokens are mapped against
 * the decode of the block with `context` tokens each side (token i: the common prefix of that
 * decode and the decode from the same first token to i). Every token thus has at least `context`
 * tokens each side; for a decoder whose output near a token depends only on nearby tokens
 * (byte-level BPE, where a character spans at most 4 tokens; WordPiece; Metaspace) the pieces are
 * those of the same rule against the whole window, and a window of at most 2 context + 1 tokens
 * (the default exemplar window) is mapped against its whole decode. (A function declaration that
 * uses nothing outside itself but `commonPrefixLength`: the worker's source holds its text.)
 */
export function mapBack(ids: readonly number[], decode: (ids: number[]) => string, context: number): TokenPiece[] {
  const real = ids.filter((id) => id >= 0)
  const texts: string[] = []
  const block = 2 * context + 1
  for (let first = 0; first < real.length; first += block) {
    const from = Math.max(0, first - context)
    const to = Math.min(real.length, first + block + context)
    const local = decode(real.slice(from, to))
    let settled = from === first ? 0 : commonPrefixLength(decode(real.slice(from, first)), local)
    for (let i = first; i < Math.min(real.length, first + block); i++) {
      const end = i + 1 === to ? local.length : Math.max(settled, commonPrefixLength(decode(real.slice(from, i + 1)), local))
      texts.push(local.slice(settled, end))
      settled = end
    }
  }
  let k = 0
  return ids.map((id) => (id < 0 ? { text: '', missing: true } : { text: texts[k++]!, missing: false }))
}

/** What the report asks the worker to decode at once. */
interface DecodeRequest {
  windows: number[][]
  tokens: number[]
}

/** The worker's answer: the text of each piece of each window and of each token, or why it failed. */
type DecodeReply = { windows: string[][]; tokens: string[] } | { error: string }

/**
 * The decoding worker's body; its source is this function's text (with `commonPrefixLength` and
 * `mapBack`), so it must use nothing else from this module. It loads the tokenizer and answers each
 * request on its port, then raises the shared flag the calling thread waits on.
 */
function decodeWorkerMain(): void {
  const { workerData } = require('node:worker_threads') as typeof import('node:worker_threads')
  const { tokenizers, json, port, signal, context } = workerData as { tokenizers: string; json: string; port: import('node:worker_threads').MessagePort; signal: Int32Array; context: number }
  const { Tokenizer } = require(tokenizers) as typeof HfTokenizers
  let decode: ((ids: number[]) => string) | Error
  try {
    const tokenizer = new Tokenizer(JSON.parse(json), {})
    decode = (ids) => tokenizer.decode(ids, { skip_special_tokens: false, clean_up_tokenization_spaces: false })
  } catch (e) {
    // Every request is answered with the error (the calling thread has loaded it once already).
    decode = e instanceof Error ? e : new Error(String(e))
  }
  port.on('message', (request: DecodeRequest) => {
    let reply: DecodeReply
    try {
      if (decode instanceof Error) throw decode
      const d = decode
      reply = {
        windows: request.windows.map((ids) => mapBack(ids, d, context).map((piece) => piece.text)),
        tokens: request.tokens.map((id) => d([id])),
      }
    } catch (e) {
      reply = { error: String((e as Error)?.message ?? e).split('\n')[0]! }
    }
    port.postMessage(reply)
    Atomics.store(signal, 0, 1)
    Atomics.notify(signal, 0)
  })
}

const WORKER_SOURCE = `'use strict';\n${commonPrefixLength}\n${mapBack}\n${decodeWorkerMain}\ndecodeWorkerMain();\n`

/** The default of `TokenizerDecoderOptions.timeout`, in seconds. */
export const DEFAULT_DECODE_TIMEOUT = 30

export interface TokenizerDecoderOptions {
  /**
   * Seconds that all the decoding may take together (30 by default). It runs in a worker thread;
   * past the limit the worker is stopped and every id is shown as itself (`fallback` says why).
   */
  timeout?: number
}

/**
 * Decoding in a worker thread, called synchronously: each request waits (Atomics.wait) at most
 * what is left of the time limit; past it the worker is terminated and `request` returns null.
 */
class BoundedDecoding {
  private worker: Worker | null = null
  private port: MessagePort | null = null
  private readonly signal = new Int32Array(new SharedArrayBuffer(4))
  private leftMs: number
  timedOut = false

  constructor(
    private readonly json: string,
    private readonly limitMs: number,
  ) {
    this.leftMs = limitMs
  }

  private start(): MessagePort {
    if (this.port) return this.port
    const { port1, port2 } = new MessageChannel()
    this.worker = new Worker(WORKER_SOURCE, {
      eval: true,
      workerData: { tokenizers: require.resolve('@huggingface/tokenizers'), json: this.json, port: port2, signal: this.signal, context: DECODE_CONTEXT },
      transferList: [port2],
      // Whatever the tokenizer's code prints is dropped: stdout may be the command's JSON.
      stdout: true,
      stderr: true,
    })
    this.worker.stdout.resume()
    this.worker.stderr.resume()
    this.worker.unref()
    this.port = port1
    return port1
  }

  /** The worker's answer, or null when the time limit ran out (then and from then on). */
  request(request: DecodeRequest): DecodeReply | null {
    if (this.timedOut) return null
    const port = this.start()
    Atomics.store(this.signal, 0, 0)
    port.postMessage(request)
    const began = performance.now()
    Atomics.wait(this.signal, 0, 0, Math.max(0, this.leftMs))
    this.leftMs -= performance.now() - began
    const answer = receiveMessageOnPort(port)
    if (answer === undefined) {
      this.timedOut = true
      this.close()
      return null
    }
    return answer.message as DecodeReply
  }

  close(): void {
    this.port?.close()
    void this.worker?.terminate()
    this.port = null
    this.worker = null
  }

  get limitSeconds(): number {
    return this.limitMs / 1000
  }
}

/** A decoder from a Hugging Face `tokenizer.json` (`--tokenizer`), decoding in a worker thread under a time limit. */
export function tokenizerDecoder(file: string, options: TokenizerDecoderOptions = {}): TokenDecoder {
  const timeout = options.timeout ?? DEFAULT_DECODE_TIMEOUT
  if (typeof timeout !== 'number' || !(timeout > 0)) {
    throw Object.assign(new Error(`--decode-timeout ${String(timeout)}: must be a number of seconds > 0`), { code: 'ERR_INVALID_INPUT' })
  }
  let text: string
  try {
    text = readFileSync(file, 'utf8')
  } catch (e) {
    fail('--tokenizer', file, `cannot be read (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`)
  }
  let json: { model?: unknown }
  try {
    json = JSON.parse(text) as { model?: unknown }
  } catch (e) {
    fail('--tokenizer', file, `is not JSON (${(e as Error).message})`)
  }
  if (typeof json !== 'object' || json === null || typeof json.model !== 'object') fail('--tokenizer', file, 'is not a Hugging Face tokenizer.json (no "model" object)')
  // Loaded here once, for its errors; the worker loads it again to decode.
  try {
    new Tokenizer(json, {})
  } catch (e) {
    fail('--tokenizer', file, `cannot be loaded as a tokenizer (${(e as Error).message.split('\n')[0]})`)
  }
  const decoding = new BoundedDecoding(text, timeout * 1000)
  const windows = new Map<string, string[]>()
  const tokens = new Map<number, string>()
  /** Decodes what is not known yet, in one request; false once the time limit has run out. */
  const ask = (wanted: readonly (readonly number[])[], ids: readonly number[]): boolean => {
    const request: DecodeRequest = { windows: [], tokens: [] }
    const keys = new Set<string>()
    for (const w of wanted) {
      const key = w.join(',')
      if (!windows.has(key) && !keys.has(key)) {
        keys.add(key)
        request.windows.push([...w])
      }
    }
    request.tokens = [...new Set(ids.filter((id) => !tokens.has(id)))]
    if (request.windows.length === 0 && request.tokens.length === 0) return true
    const reply = decoding.request(request)
    if (reply === null) return false
    if ('error' in reply) fail('--tokenizer', file, `cannot decode the token ids (${reply.error})`)
    request.windows.forEach((w, k) => windows.set(w.join(','), reply.windows[k]!))
    request.tokens.forEach((id, k) => tokens.set(id, reply.tokens[k]!))
    return true
  }
  const fallback = () => (decoding.timedOut ? `the tokenizer's decoder took over ${decoding.limitSeconds} s` : undefined)
  return {
    get description() {
      const why = fallback()
      return why === undefined ? `tokenizer ${file}` : `token ids (${why}: ${file})`
    },
    get fallback() {
      return fallback()
    },
    prepare: (wanted, ids) => {
      ask(wanted, ids)
    },
    window: (ids) => (ask([ids], []) ? windows.get(ids.join(','))!.map((text, k) => ({ text, missing: ids[k]! < 0 })) : idDecoder.window(ids)),
    token: (id) => (ask([], [id]) ? tokens.get(id)! : idDecoder.token(id)),
    close: () => decoding.close(),
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
