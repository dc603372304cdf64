// `soft-cluster export`: one JSON file per cluster for other tools (docs/formats.md "Export"), in
// field names close to what Neuronpedia imports from SAEDashboard, so that a converter is a rename.
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { basename, dirname, join, resolve } from 'node:path'
import { analyzeSequentialClusters, type ClusterAnalysis } from '../analysis'
import type { Exemplar, ModelSummary } from '../clustering'
import type { TokenDecoder } from '../decode'
import { analyzeModel } from './analyze'
import { printJson } from './chunks'
import { decoderFor, type ReportCommandOptions } from './report'

export const EXPORT_FORMAT = 'soft-cluster-export'
export const EXPORT_FORMAT_VERSION = 1

/** `report`'s options (model, chunks' metrics, decoding), and what only an export has. */
export interface ExportCommandOptions extends ReportCommandOptions {
  format: string
  /** Put each center (`D` float32 values) in its file as `vector`. */
  vectors?: boolean
  overwrite?: boolean
}

const fail = (message: string, code = 'ERR_INVALID_INPUT'): never => {
  throw Object.assign(new Error(message), { code })
}

/** One exemplar as Neuronpedia's activation record: text pieces and this cluster's memberships. */
function activation(e: Exemplar, decoder: TokenDecoder, chunks: readonly string[], bin: { min: number; max: number; contains: number | null } | null) {
  const pieces = decoder.window(e.tokens)
  // Positions outside the sequence or at padding (no id, no membership) are left out.
  const keep = pieces.map((p, i) => !(p.missing && (e.contextMemberships[i] ?? 0) === 0))
  const tokens = pieces.filter((_, i) => keep[i]).map((p) => p.text)
  const tokenIds = e.tokens.filter((_, i) => keep[i])
  const values = e.contextMemberships.filter((_, i) => keep[i])
  const w = (e.tokens.length - 1) / 2
  const centerTokenIndex = keep.slice(0, w).filter(Boolean).length
  const maxValue = Math.max(...values)
  return {
    tokens,
    tokenIds,
    values,
    maxValue,
    maxValueTokenIndex: values.indexOf(maxValue),
    minValue: Math.min(...values),
    centerTokenIndex,
    value: e.value,
    binMin: bin?.min ?? null,
    binMax: bin?.max ?? null,
    binContains: bin?.contains ?? null,
    dataSource: chunks[e.chunk] ?? null,
    chunk: e.chunk,
    batch: e.batch,
    position: e.position,
  }
}

/** The JSON of cluster `c`. */
export function clusterExport(c: number, summary: ModelSummary, analysis: ClusterAnalysis | null, geometry: ClusterAnalysis, decoder: TokenDecoder, center: Float32Array | null) {
  const s = analysis?.clusters[c]
  const nearest = geometry.clusters[c]!.nearestCenters
  const bins = summary.quantiles[c] ?? []
  const histogram = s?.histogram
  // A bin's share of the cluster's nonzero memberships, when the metrics used the same bins.
  const nonzero = histogram?.reduce((a, b) => a + b, 0) ?? 0
  const contains = (b: number) => (histogram && histogram.length === bins.length && nonzero > 0 ? histogram[b]! / nonzero : null)
  const top = (summary.exemplars[c] ?? []).map((e) => activation(e, decoder, summary.chunks, null))
  const quantiles = bins.flatMap((list, b) => list.map((e) => activation(e, decoder, summary.chunks, { min: b / bins.length, max: (b + 1) / bins.length, contains: contains(b) })))
  return {
    format: EXPORT_FORMAT,
    formatVersion: EXPORT_FORMAT_VERSION,
    index: c,
    mass: s?.mass ?? summary.clusterMass[c]!,
    hardCount: s?.hardCount ?? summary.clusterCount[c]!,
    maxActApprox: top[0]?.value ?? 0,
    frac_nonzero: s?.nonzeroFraction ?? null,
    meanCosine: s?.meanCosine ?? null,
    meanMembership: s?.meanMembership ?? null,
    topkCosSimIndices: nearest.map((n) => n.cluster),
    topkCosSimValues: nearest.map((n) => n.cosine),
    freq_hist_data_bar_heights: histogram ?? [],
    freq_hist_data_bar_values: histogram ? histogram.map((_, b) => (b + 0.5) / histogram.length) : [],
    topTokens: (s?.topTokens ?? []).map((t) => ({ tokenId: t.tokenId, text: decoder.token(t.tokenId), weight: t.weight })),
    liftTokens: (s?.liftTokens ?? []).map((t) => ({ tokenId: t.tokenId, text: decoder.token(t.tokenId), lift: t.lift, weight: t.weight, count: t.count })),
    activations: [...top, ...quantiles],
    ...(center ? { hasVector: true, vector: Array.from(center) } : {}),
  }
}

export const clusterFileName = (c: number): string => `cluster-${String(c).padStart(5, '0')}.json`

/** Whether `dir` holds nothing but an earlier export (its index.json and cluster files): only such a folder is replaced. */
function isEarlierExport(dir: string): boolean {
  try {
    const index = JSON.parse(readFileSync(join(dir, 'index.json'), 'utf8'))
    return index.format === EXPORT_FORMAT && readdirSync(dir).every((f) => f === 'index.json' || /^cluster-\d+\.json$/.test(f))
  } catch {
    return false
  }
}

/** Checks `--out` before any work: a new or empty folder, or (with --overwrite) an earlier export. */
function checkOut(out: string, overwrite: boolean): void {
  if (!existsSync(out)) return
  if (!statSync(out).isDirectory()) fail(`--out ${out}: is a file, not a folder`)
  if (readdirSync(out).length === 0) return
  if (!isEarlierExport(out)) fail(`--out ${out}: is not empty and holds more than an earlier export; give a new or empty folder`)
  if (!overwrite) fail(`--out ${out}: holds an earlier export; give --overwrite to replace it`)
}

/**
 * Writes the export into a staging folder beside `out`, then moves it into place: an earlier
 * export is first renamed aside (and deleted only once the new one is in place; put back if the
 * move fails), so `out` never holds half an export, and never loses the old one for nothing.
 * `out` is checked again just before: the analysis may have taken minutes.
 */
function writeFolder(out: string, overwrite: boolean, files: Iterable<[string, string]>): void {
  const aside = (what: string) => join(dirname(out), `.${basename(out)}.soft-cluster-${what}-${process.pid}`)
  const [staging, old] = [aside('tmp'), aside('old')]
  const io = (e: unknown): never => {
    const err = e as NodeJS.ErrnoException
    if (err.syscall === undefined) throw e // not the file system's: a bug to report as it is
    return fail(`--out ${out}: cannot be written (${err.code ?? err.message})`, 'ERR_IO')
  }
  try {
    rmSync(staging, { recursive: true, force: true })
    mkdirSync(staging, { recursive: true })
    for (const [name, text] of files) writeFileSync(join(staging, name), text)
  } catch (e) {
    rmSync(staging, { recursive: true, force: true })
    io(e)
  }
  try {
    checkOut(out, overwrite)
  } catch (e) {
    rmSync(staging, { recursive: true, force: true })
    throw e
  }
  const replacing = existsSync(out)
  try {
    if (replacing) renameSync(out, old)
    renameSync(staging, out)
  } catch (e) {
    if (replacing && existsSync(old) && !existsSync(out)) renameSync(old, out)
    rmSync(staging, { recursive: true, force: true })
    io(e)
  }
  if (replacing) rmSync(old, { recursive: true, force: true })
}

/** Writes `index.json` and one file per cluster into `options.out`; returns the folder. */
export async function writeExport(chunkSpecs: readonly string[], options: ExportCommandOptions): Promise<{ out: string; files: number }> {
  if (options.format !== 'json') fail(`--format ${options.format}: not a known format (known: json)`)
  const out = resolve(options.out)
  checkOut(out, options.overwrite ?? false)
  const decoder = decoderFor(options)
  try {
    const { model, chunks, analysis } = await analyzeModel(chunkSpecs, options)
    const summary = model.summary!
    const k = model.config.nClusters
    const d = model.config.dModel
    const centers = model.centers!
    // Without chunks, an analysis of no tokens still gives the centers' geometry.
    const geometry = analysis ?? analyzeSequentialClusters(model, new Float32Array(0), null, { shape: [0, d] })
    const exemplars = [...summary.exemplars.flat(), ...summary.quantiles.flat(2)]
    decoder.prepare?.(
      exemplars.map((e) => e.tokens),
      (analysis?.clusters ?? []).flatMap((s) => [...s.topTokens, ...s.liftTokens].map((t) => t.tokenId)),
    )
    const index = {
      format: EXPORT_FORMAT,
      formatVersion: EXPORT_FORMAT_VERSION,
      model: resolve(options.model),
      nClusters: k,
      dModel: d,
      config: model.config,
      chunks: summary.chunks,
      metricsOver: chunks,
      tokensDecodedWith: decoder.description,
      files: Array.from({ length: k }, (_, c) => clusterFileName(c)),
    }
    function* files(): Generator<[string, string]> {
      yield ['index.json', JSON.stringify(index, null, 2) + '\n']
      for (let c = 0; c < k; c++) {
        const center = options.vectors ? centers.subarray(c * d, (c + 1) * d) : null
        yield [clusterFileName(c), JSON.stringify(clusterExport(c, summary, analysis, geometry, decoder, center)) + '\n']
      }
    }
    if (decoder.fallback !== undefined) console.error(`soft-cluster: warning: --tokenizer ${options.tokenizer}: ${decoder.fallback}, so the export holds token ids as text`)
    writeFolder(out, options.overwrite ?? false, files())
    return { out, files: k + 1 }
  } finally {
    decoder.close?.()
  }
}

/** `soft-cluster export --model MODEL [CHUNKS...] --format json --out DIR`. */
export async function exportCommand(chunkSpecs: string[], options: ExportCommandOptions): Promise<void> {
  const { out, files } = await writeExport(chunkSpecs, options)
  if (options.json) return printJson({ out, files })
  console.log(`wrote ${files} files into ${out}: index.json and one cluster-NNNNN.json per cluster`)
}
