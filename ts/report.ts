// `soft-cluster report`: one self-contained HTML page (no network at view time), a dashboard that
// scales to large K. The overview's table is rendered here (escaped); the data of every cluster is
// embedded compressed (ts/report-data.ts) and the page's script (ts/report-client.ts) renders the
// plots (Plotly's cartesian bundle, inlined), the index, search and one cluster at a time.
import { readFileSync } from 'node:fs'
import type { ClusterAnalysis } from './analysis'
import type { Hierarchy, ModelSummary } from './clustering'
import type { ResolvedConfig } from './config'
import type { TokenDecoder } from './decode'
import { reportClient } from './report-client'
import { buildReportData, dataElements, decodeDetailBlock } from './report-data'

export interface ReportInput {
  modelPath: string
  config: ResolvedConfig
  summary: ModelSummary
  /** Metrics over `chunks`; without chunks, only its center geometry is used. */
  analysis: ClusterAnalysis
  /** The chunk files the metrics were computed on (may be empty). */
  chunks: readonly string[]
  decoder: TokenDecoder
  /** The tree over the clusters: the dendrogram, and the order of the clusters on the page. */
  tree: Hierarchy
  /** The model's unit centers, `[K, D]` row-major. */
  centers: Float32Array
}

/** One line per merge, split, update or refit since the fit. */
function operationLines(summary: ModelSummary): string[] {
  return summary.operations.map((o) => {
    switch (o.op) {
      case 'merge':
        return `merge of clusters ${o.clusters.join(', ')} into ${o.mapping[o.clusters[0]!]} (now ${o.nClusters} clusters)${o.iterations ? `, then ${o.iterations} passes` : ''}`
      case 'split':
        return `split of cluster ${o.clusters[0]} into ${o.nClusters - o.mapping.length + 1} (now ${o.nClusters} clusters), then ${o.iterations} passes`
      case 'update':
        return `update with ${o.chunks.length} chunks (${o.chunks.join(', ')}), ${o.iterations} passes`
      default:
        return `${o.op} on ${o.chunks.length} chunks, ${o.iterations} passes`
    }
  })
}

const ESCAPES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }
export const escapeHtml = (s: string): string => s.replace(/[&<>"']/g, (c) => ESCAPES[c]!)

/** A script's source, safe to inline: `</script` cannot end the element early. */
const inlineScript = (source: string): string => source.replace(/<\/(script)/gi, '<\\/$1')

const fmt = (v: number | null | undefined, digits = 3): string => (v === null || v === undefined || !Number.isFinite(v) ? '–' : v.toFixed(digits))

function plotlySource(): string {
  return readFileSync(require.resolve('plotly.js-cartesian-dist-min'), 'utf8')
}

const table = (rows: [string, string][]): string =>
  `<table class="kv">${rows.map(([k, v]) => `<tr><th>${escapeHtml(k)}</th><td>${escapeHtml(v)}</td></tr>`).join('')}</table>`

const STYLE = `
body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1100px;padding:1em 2em;color:#222}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ccc;margin-top:2em}
header{display:flex;gap:1.5em;align-items:baseline;flex-wrap:wrap} header h1{margin:0 1em 0 0;font-size:1.6em}
#search{width:22em;padding:3px 6px} #search-results ol{margin:.3em 0;padding-left:1.5em;columns:2} .why{color:#777;font-size:90%}
table.kv th{text-align:left;font-weight:500;color:#555;padding-right:1em} table.kv td{font-variant-numeric:tabular-nums}
table.index{border-collapse:collapse;width:100%} table.index td,table.index th{padding:2px 8px;border-bottom:1px solid #eee;text-align:left}
.index-controls{display:flex;gap:1em;align-items:center;margin:.5em 0}
.plots{display:grid;grid-template-columns:1fr 1fr;gap:1em} .plot{min-height:320px} .plot.wide{grid-column:1/3}
.row{display:flex;gap:2em;align-items:flex-start} .hist{width:420px;min-height:220px;height:220px}
nav.cluster-nav{display:flex;gap:1.5em;padding:.4em 0;border-bottom:1px solid #ddd} nav.cluster-nav .off{color:#bbb}
section.cluster h3{font-size:1.3em;margin:.5em 0}
ol.exemplars{padding-left:1.5em} ol.exemplars li{margin:.3em 0}
.val{display:inline-block;width:3.5em;color:#555;font-variant-numeric:tabular-nums}
.ctx{font-family:ui-monospace,monospace;white-space:pre-wrap;unicode-bidi:isolate} .tok{border-radius:2px;unicode-bidi:isolate}
/* A token's own direction controls (U+202E ...) stay inside it: isolate every piece of text that comes from the data. */
code,.where,td,li{unicode-bidi:isolate}
ul.bins{list-style:none;padding-left:0} .range{display:inline-block;font-weight:600;color:#555;margin-top:.4em}
.tok.center{outline:2px solid #a33;font-weight:700} .where{color:#888;font-size:85%;margin-left:1em}
code{background:#f3f3f3;padding:0 3px;border-radius:2px;white-space:pre}
.note{color:#a33}
`

/** The report page: the overview's table rendered here, everything else by the page's script from the embedded data. */
export function renderReport(input: ReportInput): string {
  const { analysis, summary, config } = input
  const hasTokens = analysis.overall.nTokens > 0
  const k = analysis.nClusters
  const data = buildReportData({ summary, analysis, decoder: input.decoder, tree: input.tree, contextWindow: config.contextWindow, centers: input.centers })
  const o = analysis.overall
  const last = summary.history[summary.history.length - 1]
  const overview: [string, string][] = [
    ['model', input.modelPath],
    ['clusters × dModel', `${k} × ${config.dModel}`],
    ['temperature / min membership', `${typeof config.temperature === 'number' ? Number(config.temperature.toPrecision(3)) : config.temperature} / ${config.minMembership}${config.temperatureRule ? ` (temperature ${config.temperatureRule})` : ''}`],
    ['fitted on', `${summary.chunks.length} chunks, ${summary.history.length} iterations${last ? `, final objective ${fmt(last.objective, 4)}` : ''}`],
    // After buildReportData: it is what decoded the page, and says here whether it fell back to ids.
    ['tokens decoded with', input.decoder.description],
  ]
  const operations = operationLines(summary)
  if (operations.length > 0) overview.push(['operations since the fit', operations.join('; ')])
  if (hasTokens) {
    overview.push(
      ['metrics over', `${input.chunks.length} chunks, ${o.nTokens} tokens${o.skipped ? ` (${o.skipped} all-zero skipped)` : ''}`],
      ['normalized partition entropy', fmt(o.partitionEntropy)],
      ['partition coefficient', fmt(o.partitionCoefficient)],
      ['nonzero memberships per token', fmt(o.meanNonzeroPerToken, 2)],
      ['spherical Xie-Beni index', fmt(o.xieBeni, 4)],
      [`cosine silhouette (sample of ${o.silhouetteSample})`, fmt(o.silhouette)],
      ['twin center pairs (cosine > 0.99)', String(o.twins)],
    )
  } else {
    overview.push(['metrics', 'none: pass CHUNKS to compute them (mass and counts below are the model’s)'])
  }
  return `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>soft-cluster report: ${escapeHtml(input.modelPath)}</title><style>${STYLE}</style></head>
<body>
<header><h1>soft-cluster report</h1><a href="#overview">Overview</a>
<input id="search" type="search" disabled placeholder="Search: cluster id (123, c123) or token text" aria-label="Search clusters by id or token text"></header>
<div id="search-results"></div>
<p id="route-note" class="note"></p>
<section id="overview"><h2>Overview</h2>${table(overview)}
<div class="plots"><div id="plot-mass" class="plot wide"></div><div id="plot-tree" class="plot wide"></div><div id="plot-similarity" class="plot"></div><div id="plot-map" class="plot"></div></div>
<h3>Clusters</h3>
<div class="index-controls"><label>Sort by <select id="index-sort"></select></label><button id="index-prev" type="button">← previous page</button><span id="index-range"></span><button id="index-next" type="button">next page →</button></div>
<table class="index"><thead><tr><th>cluster</th><th>mass (rank)</th><th>mean cosine</th><th>mean nonzero membership</th><th>${hasTokens ? 'top tokens' : 'best exemplar tokens'}</th></tr></thead><tbody id="index-rows"></tbody></table>
<p class="why">Keys: j / → next cluster, k / ← previous (in the index's order), Esc the overview, / search.</p></section>
<section id="cluster-view" hidden></section>
${dataElements(data)}
<script>${inlineScript(plotlySource())}</script>
<script>${inlineScript(`${decodeDetailBlock.toString()}\n(${reportClient.toString()})()`)}</script>
</body></html>
`
}
