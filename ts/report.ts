// `soft-cluster report`: one self-contained HTML page (no network at view time). Plots are drawn
// by Plotly (its cartesian bundle, inlined); every number comes from the core's analysis or the
// model file; every piece of text is escaped here.
import { readFileSync } from 'node:fs'
import type { ClusterAnalysis } from './analysis'
import type { Hierarchy, ModelSummary } from './clustering'
import type { ResolvedConfig } from './config'
import type { TokenDecoder } from './decode'

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

/** JSON that can sit inside a <script> element whatever the strings hold. */
const scriptJson = (value: unknown): string => JSON.stringify(value).replace(/</g, '\\u003c').replace(/\u2028/g, '\\u2028').replace(/\u2029/g, '\\u2029')

/** A script's source, safe to inline: `</script` cannot end the element early. */
const inlineScript = (source: string): string => source.replace(/<\/(script)/gi, '<\\/$1')

const fmt = (v: number | null | undefined, digits = 3): string => (v === null || v === undefined || !Number.isFinite(v) ? '–' : v.toFixed(digits))

function plotlySource(): string {
  return readFileSync(require.resolve('plotly.js-cartesian-dist-min'), 'utf8')
}

const table = (rows: [string, string][]): string =>
  `<table class="kv">${rows.map(([k, v]) => `<tr><th>${escapeHtml(k)}</th><td>${escapeHtml(v)}</td></tr>`).join('')}</table>`

/** One exemplar: its context, each token shaded by its membership in the cluster. */
function exemplarHtml(input: ReportInput, e: ModelSummary['exemplars'][number][number]): string {
  const w = input.config.contextWindow
  const pieces = input.decoder.window(e.tokens)
  const spans = pieces
    .map((piece, i) => {
      const p = e.contextMemberships[i] ?? 0
      // -1 is padding or outside the sequence (membership 0), or a real token of a chunk without
      // token_ids (membership > 0): that one is shown as a box.
      if (piece.missing && p === 0) return ''
      if (piece.missing) piece.text = i === 0 ? '□' : ' □'
      const cls = i === w ? 'tok center' : 'tok'
      const title = piece.missing ? `no token id, membership ${p.toFixed(3)}` : `token id ${e.tokens[i]}, membership ${p.toFixed(3)}`
      return `<span class="${cls}" style="background:rgba(230,120,20,${Math.min(1, p).toFixed(3)})" title="${escapeHtml(title)}">${escapeHtml(piece.text)}</span>`
    })
    .join('')
  const where = `${input.summary.chunks[e.chunk] ?? `chunk ${e.chunk}`} · seq ${e.batch} · pos ${e.position}`
  return `<li><span class="val">${e.value.toFixed(3)}</span><span class="ctx">${spans}</span><span class="where">${escapeHtml(where)}</span></li>`
}

function clusterSection(input: ReportInput, c: number): string {
  const s = input.analysis.clusters[c]!
  const hasTokens = input.analysis.overall.nTokens > 0
  const mass = hasTokens ? s.mass : input.summary.clusterMass[c]!
  const rows: [string, string][] = [
    ['mass', fmt(mass, 1)],
    ['hard count', String(hasTokens ? s.hardCount : input.summary.clusterCount[c])],
    ['nearest center', s.nearestCenter === null ? '–' : `${s.nearestCenter} (cos ${fmt(s.nearestCenterCosine)})`],
  ]
  if (hasTokens) {
    rows.push(
      ['mean cosine to center', fmt(s.meanCosine)],
      ['max membership', fmt(s.maxMembership)],
      ['mean nonzero membership', fmt(s.meanMembership)],
      ['tokens with nonzero membership', `${(100 * s.nonzeroFraction).toFixed(1)}%`],
    )
  }
  const top = s.topTokens.length
    ? `<p class="top">Top tokens: ${s.topTokens.map((t) => `<code title="id ${t.tokenId}, weight ${t.weight.toFixed(2)}">${escapeHtml(input.decoder.token(t.tokenId))}</code>`).join(' ')}</p>`
    : ''
  const exemplars = input.summary.exemplars[c] ?? []
  const list = exemplars.length ? `<ol class="exemplars">${exemplars.map((e) => exemplarHtml(input, e)).join('')}</ol>` : '<p>No exemplars.</p>'
  const histogram = hasTokens ? `<div class="plot hist" data-cluster="${c}"></div>` : ''
  return `<section class="cluster" id="cluster-${c}"><h3>cluster ${c}</h3><div class="row">${table(rows)}${histogram}</div>${top}<h4>Exemplars</h4>${list}${rangeHtml(input, c)}</section>`
}

/** Examples across the range of the cluster's memberships: a sample per bin, highest bin first. */
function rangeHtml(input: ReportInput, c: number): string {
  const bins = input.summary.quantiles[c] ?? []
  const n = bins.length
  const parts = bins
    .map((list, b) => ({ list, b }))
    .filter(({ list }) => list.length > 0)
    .reverse()
    .map(({ list, b }) => `<li class="bin"><span class="range">${(b / n).toFixed(1)}–${((b + 1) / n).toFixed(1)}</span><ol class="exemplars">${list.map((e) => exemplarHtml(input, e)).join('')}</ol></li>`)
  return parts.length ? `<details class="quantiles"><summary>Across the range of memberships (a sample per bin)</summary><ul class="bins">${parts.join('')}</ul></details>` : ''
}

const STYLE = `
body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1100px;padding:1em 2em;color:#222}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ccc;margin-top:2em}
table.kv th{text-align:left;font-weight:500;color:#555;padding-right:1em} table.kv td{font-variant-numeric:tabular-nums}
table.index{border-collapse:collapse;width:100%} table.index td,table.index th{padding:2px 8px;border-bottom:1px solid #eee;text-align:left}
.plots{display:grid;grid-template-columns:1fr 1fr;gap:1em} .plot{min-height:320px} .plot.wide{grid-column:1/3}
.row{display:flex;gap:2em;align-items:flex-start} .hist{width:420px;min-height:220px;height:220px}
section.cluster{border-top:1px solid #ddd;padding-top:.5em;margin-top:1.5em}
ol.exemplars{padding-left:1.5em} ol.exemplars li{margin:.3em 0}
.val{display:inline-block;width:3.5em;color:#555;font-variant-numeric:tabular-nums}
.ctx{font-family:ui-monospace,monospace;white-space:pre-wrap;unicode-bidi:isolate} .tok{border-radius:2px;unicode-bidi:isolate}
/* A token's own direction controls (U+202E ...) stay inside it: isolate every piece of text that comes from the data. */
code,.where,td{unicode-bidi:isolate}
ul.bins{list-style:none;padding-left:0} .range{display:inline-block;font-weight:600;color:#555;margin-top:.4em}
.tok.center{outline:2px solid #a33;font-weight:700} .where{color:#888;font-size:85%;margin-left:1em}
code{background:#f3f3f3;padding:0 3px;border-radius:2px;white-space:pre}
`

const CLIENT = `
(function () {
  var data = JSON.parse(document.getElementById('report-data').textContent);
  var cfg = { displaylogo: false, responsive: true };
  var labels = data.order.map(function (c) { return 'c' + c; });
  Plotly.newPlot('plot-mass', [{ type: 'bar', x: labels, y: data.order.map(function (c) { return data.mass[c]; }),
    hovertext: data.order.map(function (c) { return data.hover[c]; }), marker: { color: '#e67814' } }],
    { title: { text: 'Cluster mass (sum of memberships), largest first' }, xaxis: { type: 'category' }, margin: { t: 40 } }, cfg);
  var treeLabels = data.tree.order.map(function (c) { return 'c' + c; });
  Plotly.newPlot('plot-similarity', [{ type: 'heatmap', x: treeLabels, y: treeLabels, colorscale: 'RdBu', zmin: -1, zmax: 1,
    z: data.tree.order.map(function (j) { return data.tree.order.map(function (l) { return data.similarity[j][l]; }); }) }],
    { title: { text: 'Center-to-center cosine similarity, in the order of the tree' }, xaxis: { type: 'category' }, yaxis: { type: 'category', autorange: 'reversed' }, margin: { t: 40 } }, cfg);
  // The dendrogram: one U per merge, as scipy draws it (leaf i of the order at x = 10 i + 5).
  var xs = [], ys = [];
  data.tree.icoord.forEach(function (ix, i) { xs.push(ix[0], ix[1], ix[2], ix[3], null); var d = data.tree.dcoord[i]; ys.push(d[0], d[1], d[2], d[3], null); });
  Plotly.newPlot('plot-tree', [{ type: 'scatter', mode: 'lines', x: xs, y: ys, line: { color: '#4a78b0', width: 1 }, hoverinfo: 'skip' }],
    { title: { text: 'Tree of the clusters (average linkage on cosine distance, weighted by mass)' }, showlegend: false, margin: { t: 40, b: 60 },
      xaxis: { tickvals: data.tree.order.map(function (_, i) { return 10 * i + 5; }), ticktext: treeLabels, tickangle: -90, zeroline: false },
      yaxis: { title: { text: '1 - cosine' }, rangemode: 'tozero' } }, cfg);
  var maxMass = Math.max.apply(null, data.mass.concat([1e-12]));
  Plotly.newPlot('plot-map', [{ type: 'scatter', mode: 'markers+text', x: data.map.map(function (p) { return p[0]; }), y: data.map.map(function (p) { return p[1]; }),
    text: data.mass.map(function (_, c) { return 'c' + c; }), textposition: 'top center', hovertext: data.hover, hoverinfo: 'text',
    marker: { size: data.mass.map(function (m) { return 8 + 30 * Math.sqrt(m / maxMass); }), color: '#e67814', opacity: 0.7 } }],
    { title: { text: 'Centers on their first two principal components (' + data.variance + ' of variance)' }, xaxis: { title: { text: 'PC 1' } }, yaxis: { title: { text: 'PC 2' } }, margin: { t: 40 } }, cfg);
  function histogram(el) {
    var c = Number(el.getAttribute('data-cluster'));
    var bins = data.histograms[c];
    var x = bins.map(function (_, b) { return (b / bins.length).toFixed(2) + '–' + ((b + 1) / bins.length).toFixed(2); });
    Plotly.newPlot(el, [{ type: 'bar', x: x, y: bins, marker: { color: '#4a78b0' } }],
      { title: { text: 'Nonzero memberships', font: { size: 12 } }, xaxis: { type: 'category', tickangle: -45 }, yaxis: { title: { text: 'tokens' } }, margin: { t: 30, b: 70, l: 50, r: 10 } }, { displaylogo: false, staticPlot: true });
    el.setAttribute('data-drawn', '1');
  }
  var pending = Array.prototype.slice.call(document.querySelectorAll('.hist'));
  var io = new IntersectionObserver(function (entries) {
    entries.forEach(function (e) { if (e.isIntersecting && !e.target.getAttribute('data-drawn')) { histogram(e.target); io.unobserve(e.target); } });
  }, { rootMargin: '400px' });
  pending.forEach(function (el) { io.observe(el); });
  document.body.setAttribute('data-ready', '1');
})();
`

/** The report page. */
export function renderReport(input: ReportInput): string {
  const { analysis, summary, config } = input
  const hasTokens = analysis.overall.nTokens > 0
  const k = analysis.nClusters
  const mass = hasTokens ? analysis.clusters.map((s) => s.mass) : summary.clusterMass
  const order = mass.map((m, c) => [m, c] as const).sort((a, b) => b[0] - a[0] || a[1] - b[1]).map(([, c]) => c)
  const treeOrder = input.tree.order
  // Everything the page shows decoded, asked for at once: a tokenizer's decoding runs under a time
  // limit, and past it the whole page shows ids (and the overview says why), not half of it.
  const exemplars = [...summary.exemplars.flat(), ...summary.quantiles.flat(2)]
  input.decoder.prepare?.(
    exemplars.map((e) => e.tokens),
    [...analysis.clusters.flatMap((s) => s.topTokens.map((t) => t.tokenId)), ...exemplars.map((e) => e.tokens[config.contextWindow] ?? -1)],
  )
  const topText = (c: number) => analysis.clusters[c]!.topTokens.slice(0, 5).map((t) => input.decoder.token(t.tokenId)).join(' ')
  const exemplarText = (c: number) => (summary.exemplars[c] ?? []).slice(0, 3).map((e) => input.decoder.token(e.tokens[config.contextWindow] ?? -1)).join(' ')
  const hover: string[] = []
  for (let c = 0; c < k; c++) hover[c] = `cluster ${c}: mass ${mass[c]!.toFixed(1)}<br>${escapeHtml(hasTokens ? `top: ${topText(c)}` : `exemplars: ${exemplarText(c)}`)}`
  const data = {
    order,
    mass,
    hover,
    similarity: analysis.centerSimilarity,
    map: analysis.centerMap,
    variance: `${(100 * (analysis.centerMapVariance[0] + analysis.centerMapVariance[1])).toFixed(0)}%`,
    histograms: analysis.clusters.map((s) => s.histogram),
    tree: { order: treeOrder, icoord: input.tree.icoord, dcoord: input.tree.dcoord },
  }
  const o = analysis.overall
  const last = summary.history[summary.history.length - 1]
  const overview: [string, string][] = [
    ['model', input.modelPath],
    ['clusters × dModel', `${k} × ${config.dModel}`],
    ['temperature / min membership', `${typeof config.temperature === 'number' ? Number(config.temperature.toPrecision(3)) : config.temperature} / ${config.minMembership}${config.temperatureRule ? ` (temperature ${config.temperatureRule})` : ''}`],
    ['fitted on', `${summary.chunks.length} chunks, ${summary.history.length} iterations${last ? `, final objective ${fmt(last.objective, 4)}` : ''}`],
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
  const rank = new Map(order.map((c, r) => [c, r + 1]))
  const index = `<table class="index"><tr><th>cluster</th><th>mass (rank)</th><th>${hasTokens ? 'top tokens' : 'best exemplar tokens'}</th></tr>${treeOrder
    .map((c) => `<tr><td><a href="#cluster-${c}">cluster ${c}</a></td><td>${mass[c]!.toFixed(1)} (#${rank.get(c)})</td><td>${escapeHtml(hasTokens ? topText(c) : exemplarText(c))}</td></tr>`)
    .join('')}</table>`
  return `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>soft-cluster report: ${escapeHtml(input.modelPath)}</title><style>${STYLE}</style></head>
<body>
<h1>soft-cluster report</h1>
<section id="overview"><h2>Overview</h2>${table(overview)}
<div class="plots"><div id="plot-mass" class="plot wide"></div><div id="plot-tree" class="plot wide"></div><div id="plot-similarity" class="plot"></div><div id="plot-map" class="plot"></div></div>
<h3>Clusters, in the order of the tree</h3>${index}</section>
<section id="clusters"><h2>Clusters, in the order of the tree</h2>
${treeOrder.map((c) => clusterSection(input, c)).join('\n')}
</section>
<script type="application/json" id="report-data">${scriptJson(data)}</script>
<script>${inlineScript(plotlySource())}</script>
<script>${CLIENT}</script>
</body></html>
`
}
