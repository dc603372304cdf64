import { realpathSync, renameSync, rmSync, writeFileSync } from 'node:fs'
import { basename, dirname, join, resolve } from 'node:path'
import { analyzeSequentialClusters, type ClusterAnalysis } from '../analysis'
import { idDecoder, tokenizerDecoder, vocabDecoder, type TokenDecoder } from '../decode'
import { renderReport } from '../report'
import { analyzeModel } from './analyze'
import { resolveChunks } from '../chunks'
import { printJson } from './chunks'

export interface ReportCommandOptions {
  model: string
  out: string
  tokenizer?: string
  vocab?: string
  /** Seconds the tokenizer's decoding may take for the whole report (`--decode-timeout`, 30); past them, ids are shown. */
  decodeTimeout?: number
  topTokens?: number
  sample?: number
  seed?: number
  liftSmoothing?: number
  progress?: boolean
  json?: boolean
}

export function decoderFor(options: { tokenizer?: string; vocab?: string; decodeTimeout?: number }): TokenDecoder {
  if (options.tokenizer && options.vocab) throw Object.assign(new Error('--tokenizer and --vocab: give one of them, not both'), { code: 'ERR_INVALID_INPUT' })
  if (options.tokenizer) return tokenizerDecoder(options.tokenizer, { timeout: options.decodeTimeout })
  if (options.vocab) return vocabDecoder(options.vocab)
  return idDecoder
}

/** Writes a file under a temporary name, then renames it into place. */
function writeAtomically(path: string, text: string): void {
  const tmp = join(dirname(path), `.${basename(path)}.soft-cluster-tmp-${process.pid}`)
  try {
    writeFileSync(tmp, text)
    renameSync(tmp, path)
  } catch (e) {
    try {
      rmSync(tmp, { force: true })
    } catch {
      // Nothing was written there (the folder is not one): the first error is the one to report.
    }
    const err = e as NodeJS.ErrnoException
    throw Object.assign(new Error(`--out ${path}: cannot be written (${err.code ?? err.message})`), { code: 'ERR_IO' })
  }
}

/** The file a path names, links followed (the path itself when it does not exist yet). */
function sameFileKey(path: string): string {
  try {
    return realpathSync(path)
  } catch {
    return resolve(path)
  }
}

/** Refuses an `--out` that is the model or one of the chunks: the report must never replace an input. */
function checkOutIsNotAnInput(out: string, inputs: readonly string[]): void {
  const target = sameFileKey(out)
  const hit = inputs.find((input) => sameFileKey(input) === target)
  if (hit !== undefined) {
    throw Object.assign(new Error(`--out ${out}: is the input ${hit}; write the report to another path`), { code: 'ERR_INVALID_INPUT' })
  }
}

/** Renders the report and writes it to `options.out`; returns its absolute path. */
export async function writeReport(chunkSpecs: readonly string[], options: ReportCommandOptions): Promise<string> {
  const decoder = decoderFor(options)
  try {
    const out = resolve(options.out)
    checkOutIsNotAnInput(out, [options.model, ...resolveChunks(chunkSpecs)])
    const { model, chunks, analysis } = await analyzeModel(chunkSpecs, options)
    // Without chunks, an analysis of no tokens still gives the centers' geometry.
    const geometry: ClusterAnalysis = analysis ?? analyzeSequentialClusters(model, new Float32Array(0), null, { shape: [0, model.config.dModel] })
    const html = renderReport({ modelPath: options.model, config: model.config, summary: model.summary!, analysis: geometry, chunks, decoder, tree: model.hierarchy(), centers: model.centers! })
    if (decoder.fallback !== undefined) {
      console.error(`soft-cluster: warning: --tokenizer ${options.tokenizer}: ${decoder.fallback}, so the report shows token ids (--decode-timeout SECONDS gives it longer)`)
    }
    writeAtomically(out, html)
    return out
  } finally {
    decoder.close?.()
  }
}

/** `soft-cluster report --model MODEL [CHUNKS...] [--tokenizer tokenizer.json] --out report.html`. */
export async function reportCommand(chunkSpecs: string[], options: ReportCommandOptions): Promise<void> {
  const out = await writeReport(chunkSpecs, options)
  if (options.json) return printJson({ report: out })
  console.log(`wrote ${out}: open it in a browser (it needs no network)`)
}
