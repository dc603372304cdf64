#!/usr/bin/env node
// Peer benchmark: the two npm k-means libraries (ml-kmeans, skmeans) on a data sample, called as
// a subprocess by benches/harness.py.
//
//   node benches/js_peers.mjs --data FILE.f32 --shape N,D --clusters K --iterations I --seed S
//                             [--peers ml-kmeans,skmeans] [--max-rows R] [--init random|kmeans++]
//
// FILE.f32: raw little-endian float32, row-major [N, D], rows already unit-normalized. If N > R
// (default 20000) only the first R rows are read and used. Each peer runs plain (hard,
// squared-Euclidean) k-means -- on unit rows that ranks like cosine -- for at most I iterations,
// stopping early only at an exact fixed point (the centers did not move at all).
// --init (default random): random = each library's seeded pick of K distinct data rows;
// kmeans++ = each library's own k-means++ (ml-kmeans 'kmeans++', skmeans 'kmpp'). Both k-means++
// implementations are far too slow for K in the hundreds (ml-kmeans: > 15 min for N=20000, D=768,
// K=256 without finishing; skmeans recomputes all N x (centers so far) distances and sorts N
// per new center), hence the default.
//
// stdout: ONE JSON line
//   {"peers": [{"impl", "rows", "dim", "clusters", "max_iterations", "seed", "init",
//               "seconds",               // wall seconds of the library call(s): init + iterations
//               "init_seconds",          // the initialization alone; null when not separable
//               "iterations",            // iterations actually run
//               "seconds_per_iteration", // (seconds - init_seconds) / iterations
//               "convert_seconds",       // Float32Array -> number[][] (NOT in "seconds")
//               "converged",             // stopped before I at an exact fixed point
//               "labels": [rows ints], "centers": [[K x D numbers]],
//               "peak_rss_mib",          // process maxRSS right after this peer (process-wide peak)
//               "note"},
//              ...]}
//   a peer that throws or is not installed gives {"impl", "error"} instead; the others still run.
// Diagnostics go to stderr only.

import { openSync, readSync, closeSync, fstatSync } from 'node:fs';
import { endianness } from 'node:os';
import { performance } from 'node:perf_hooks';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const KNOWN = ['ml-kmeans', 'skmeans'];
const DEFAULT_MAX_ROWS = 20000;

function usage(msg) {
  process.stderr.write(
    `js_peers: ${msg}\nusage: node benches/js_peers.mjs --data FILE.f32 --shape N,D --clusters K ` +
      `--iterations I --seed S [--peers ml-kmeans,skmeans] [--max-rows R] [--init random|kmeans++]\n`,
  );
  process.exit(2);
}

function parseArgs(argv) {
  const a = {};
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i];
    if (!k.startsWith('--')) usage(`unexpected argument ${k}`);
    const eq = k.indexOf('=');
    if (eq >= 0) a[k.slice(2, eq)] = k.slice(eq + 1);
    else {
      if (i + 1 >= argv.length) usage(`missing value for ${k}`);
      a[k.slice(2)] = argv[++i];
    }
  }
  const allowed = new Set(['data', 'shape', 'clusters', 'iterations', 'seed', 'peers', 'max-rows', 'init']);
  for (const k of Object.keys(a)) if (!allowed.has(k)) usage(`unknown option --${k}`);
  for (const k of ['data', 'shape', 'clusters', 'iterations', 'seed']) {
    if (a[k] === undefined) usage(`--${k} is required`);
  }
  const int = (name, v, min) => {
    if (!/^-?\d+$/.test(String(v))) usage(`--${name} must be an integer, got ${v}`);
    const n = Number(v);
    if (!Number.isSafeInteger(n) || n < min) usage(`--${name} must be an integer >= ${min}`);
    return n;
  };
  const shape = a.shape.split(',');
  if (shape.length !== 2) usage(`--shape must be N,D, got ${a.shape}`);
  const init = a.init ?? 'random';
  if (init !== 'random' && init !== 'kmeans++') usage(`--init must be random or kmeans++, got ${init}`);
  const peers = (a.peers ?? KNOWN.join(',')).split(',').map((s) => s.trim()).filter(Boolean);
  return {
    data: a.data,
    n: int('shape N', shape[0], 1),
    d: int('shape D', shape[1], 1),
    k: int('clusters', a.clusters, 1),
    iterations: int('iterations', a.iterations, 1),
    seed: int('seed', a.seed, 0),
    maxRows: int('max-rows', a['max-rows'] ?? DEFAULT_MAX_ROWS, 1),
    init,
    peers,
  };
}

/** Reads the first `rows` rows of a raw LE float32 [n, d] file (checks the file size). */
function readRows(file, n, d, rows) {
  if (endianness() !== 'LE') throw new Error('js_peers: big-endian hosts are not supported');
  const fd = openSync(file, 'r');
  try {
    const size = fstatSync(fd).size;
    if (size !== n * d * 4) {
      throw new Error(`${file}: ${size} bytes, expected N*D*4 = ${n}*${d}*4 = ${n * d * 4}`);
    }
    const out = new Float32Array(rows * d);
    const bytes = new Uint8Array(out.buffer);
    let off = 0;
    while (off < bytes.length) {
      const got = readSync(fd, bytes, off, Math.min(bytes.length - off, 1 << 30), off);
      if (got <= 0) throw new Error(`${file}: short read at byte ${off}`);
      off += got;
    }
    return out;
  } finally {
    closeSync(fd);
  }
}

/** Float32Array [rows, d] -> number[][] (what both libraries take). */
function toArrays(flat, rows, d) {
  const data = new Array(rows);
  for (let i = 0; i < rows; i++) data[i] = Array.from(flat.subarray(i * d, (i + 1) * d));
  return data;
}

/** Seeded PRNG in [0, 1) (mulberry32), used to seed skmeans, which only calls Math.random. */
function mulberry32(seed) {
  let s = seed >>> 0;
  return function random() {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function plainCenters(centers, k, d) {
  if (!Array.isArray(centers) || centers.length !== k) {
    throw new Error(`library returned ${centers?.length} centers, expected ${k}`);
  }
  return centers.map((c, j) => {
    if (c.length !== d) throw new Error(`center ${j} has ${c.length} values, expected ${d}`);
    const row = new Array(d);
    for (let h = 0; h < d; h++) {
      const v = Number(c[h]);
      if (!Number.isFinite(v)) throw new Error(`center ${j} holds a non-finite value (${c[h]})`);
      row[h] = v;
    }
    return row;
  });
}

function plainLabels(labels, rows, k) {
  if (labels.length !== rows) throw new Error(`library returned ${labels.length} labels, expected ${rows}`);
  const out = new Array(rows);
  for (let i = 0; i < rows; i++) {
    const l = labels[i];
    if (!Number.isInteger(l) || l < 0 || l >= k) throw new Error(`label ${i} is ${l}, not in [0, ${k})`);
    out[i] = l;
  }
  return out;
}

const COMMON_NOTE =
  'The library holds the data as JS number[][] (8-byte doubles plus per-row array overhead), so only ' +
  'a sample fits: at most --max-rows rows (the first rows of the file) are used. ' +
  'Labels are the assignments of the last iteration (made against the centers before its update); ' +
  'centers are the updated centers after it. peak_rss_mib is the process-wide peak so far ' +
  '(includes the earlier peers and the data arrays); run one peer per process for a clean figure.';

// ---------------------------------------------------------------------------------------------
// ml-kmeans 7.0.1

async function runMlKmeans(data, opt) {
  const { kmeans } = await import('ml-kmeans');
  const method = opt.init; // 'random' | 'kmeans++': ml-kmeans' own names
  // kmeans() computes its initial centers inside the call, with the package's own
  // `random(data, K, seed)` / `kmeanspp(data, K, options)` (ml-kmeans/lib/initialization.js, not
  // in its "exports" map). To time the initialization apart from the iterations, call that same
  // function first, with the arguments kmeans() would give it, and pass the centers in as
  // `initialization`: the result is identical to kmeans(data, K, { initialization: method, seed })
  // (checked on test data). If the file cannot be loaded, let kmeans() do it (init_seconds null,
  // the init then amortized into seconds_per_iteration).
  let initFn = null;
  try {
    const url = new URL('./initialization.js', import.meta.resolve('ml-kmeans'));
    const lib = await import(url.href);
    const fn = method === 'kmeans++' ? lib.kmeanspp : lib.random;
    if (typeof fn === 'function') {
      initFn = method === 'kmeans++' ? (d, k, o) => fn(d, k, o) : (d, k, o) => fn(d, k, o.seed);
    }
  } catch {
    initFn = null;
  }
  const options = {
    initialization: method,
    maxIterations: opt.iterations,
    // converged <=> every center moved by squared distance <= tolerance: 0 stops only at an exact
    // fixed point (where more iterations would change nothing).
    tolerance: 0,
    seed: opt.seed,
    // distanceFunction: left at its default, squaredEuclidean from ml-distance-euclidean.
  };
  const t0 = performance.now();
  let initSeconds = null;
  if (initFn) {
    // random() returns references to data rows; kmeans() never writes into its centers.
    options.initialization = initFn(data, opt.k, { ...options });
    initSeconds = (performance.now() - t0) / 1000;
  }
  const result = kmeans(data, opt.k, options);
  const seconds = (performance.now() - t0) / 1000;
  const iterations = Number.isInteger(result.iterations) ? result.iterations : opt.iterations;
  return {
    seconds,
    init_seconds: initSeconds,
    iterations,
    seconds_per_iteration: (seconds - (initSeconds ?? 0)) / iterations,
    converged: Boolean(result.converged) && iterations < opt.iterations,
    labels: plainLabels(result.clusters, data.length, opt.k),
    centers: plainCenters(result.centroids, opt.k, data[0].length),
    note:
      `kmeans(data, K, { initialization: '${method}', seed: ${opt.seed}, maxIterations: I, ` +
      `tolerance: 0, distanceFunction: default squaredEuclidean }). ` +
      (initFn
        ? `init_seconds: the package's own ${method === 'kmeans++' ? 'kmeanspp(data, K, { seed })' : 'random(data, K, seed)'} ` +
          '(lib/initialization.js) called first and its centers passed as initialization -- ' +
          'identical to what kmeans() computes inside; seconds = init + iterations. '
        : 'init_seconds unknown: the init ran inside kmeans() and is amortized into ' +
          'seconds_per_iteration. ') +
      (method === 'random' ? "'random' init = K distinct rows (ml-random, seeded); its 'kmeans++' " +
        'is too slow for K in the hundreds (> 15 min at N=20000, D=768, K=256). ' : '') +
      'tolerance 0: stops early only when no center moves at all. ' +
      COMMON_NOTE,
  };
}

// ---------------------------------------------------------------------------------------------
// skmeans 0.11.3

function runSkmeans(data, opt) {
  const skmeans = require('skmeans');
  // skmeans(data, k, centroids?, iterations?, distance?) only takes randomness from Math.random,
  // so it is seeded by swapping in a seeded PRNG for the duration of the call.
  // centroids: null = its default init, K distinct random rows (negligible cost); "kmpp" = its
  // k-means++, which recomputes every point's distance to every chosen center for each new center
  // and sorts all N points each round, O(K^2 N D + K N log N): far too slow for K in the hundreds.
  // distance: left undefined -> its built-in eudist (squared Euclidean, no sqrt).
  const initial = opt.init === 'kmeans++' ? 'kmpp' : null;
  const realRandom = Math.random;
  Math.random = mulberry32(opt.seed);
  let result, seconds;
  try {
    const t0 = performance.now();
    result = skmeans(data, opt.k, initial, opt.iterations);
    seconds = (performance.now() - t0) / 1000;
  } finally {
    Math.random = realRandom;
  }
  // Its `it` is (maxit - remaining): equal to I when the cap was hit, but one short when it
  // converged early (the converging pass does not decrement the counter; checked by counting
  // distance calls).
  const it = Number(result.it);
  const iterations =
    Number.isInteger(it) && it >= 0 ? (it >= opt.iterations ? opt.iterations : it + 1) : opt.iterations;
  return {
    seconds,
    init_seconds: initial === null ? 0 : null,
    iterations,
    seconds_per_iteration: seconds / iterations,
    converged: iterations < opt.iterations,
    labels: plainLabels(result.idxs, data.length, opt.k),
    centers: plainCenters(result.centroids, opt.k, data[0].length),
    note:
      `skmeans(data, K, ${initial === null ? 'null' : '"kmpp"'}, I) with Math.random replaced by a ` +
      `seeded PRNG (mulberry32, seed ${opt.seed}) during the call. ` +
      (initial === null
        ? 'Default init = K distinct random rows (negligible cost, inside seconds; init_seconds ' +
          'reported as 0); its "kmpp" k-means++ is O(K^2 N D), infeasible for large K. '
        : 'Init "kmpp" (its k-means++, O(K^2 N D)) runs inside the call: init_seconds unknown, ' +
          'amortized into seconds_per_iteration. ') +
      'Default distance eudist (squared Euclidean). No tolerance option: it stops early only when ' +
      "the centers are exactly unchanged. An empty cluster's center becomes the zero vector. " +
      'iterations derived from its "it" (which undercounts by one on early convergence). ' +
      COMMON_NOTE,
  };
}

// ---------------------------------------------------------------------------------------------

async function main() {
  const opt = parseArgs(process.argv.slice(2));
  const rows = Math.min(opt.n, opt.maxRows);
  const flat = readRows(opt.data, opt.n, opt.d, rows);
  const peers = [];
  for (const name of opt.peers) {
    const base = { impl: name };
    try {
      if (!KNOWN.includes(name)) throw new Error(`unknown peer ${name} (known: ${KNOWN.join(', ')})`);
      if (opt.k > rows) throw new Error(`K = ${opt.k} exceeds the ${rows} rows used`);
      // Fresh arrays for each peer (skmeans' default init keeps references to data rows).
      const tc = performance.now();
      let data = toArrays(flat, rows, opt.d);
      const convertSeconds = (performance.now() - tc) / 1000;
      process.stderr.write(`js_peers: ${name}: ${rows} x ${opt.d}, K=${opt.k}, I=${opt.iterations}\n`);
      const r = name === 'ml-kmeans' ? await runMlKmeans(data, opt) : runSkmeans(data, opt);
      data = null;
      const peakRssMib = process.resourceUsage().maxRSS / 1024;
      process.stderr.write(
        `js_peers: ${name}: ${r.seconds.toFixed(3)} s, ${r.iterations} it, ` +
          `${r.seconds_per_iteration.toFixed(3)} s/it, peak RSS ${peakRssMib.toFixed(0)} MiB\n`,
      );
      peers.push({
        ...base,
        rows,
        dim: opt.d,
        clusters: opt.k,
        max_iterations: opt.iterations,
        seed: opt.seed,
        init: opt.init,
        seconds: r.seconds,
        init_seconds: r.init_seconds,
        iterations: r.iterations,
        seconds_per_iteration: r.seconds_per_iteration,
        convert_seconds: convertSeconds,
        converged: r.converged,
        peak_rss_mib: peakRssMib,
        note: r.note,
        labels: r.labels,
        centers: r.centers,
      });
    } catch (e) {
      const msg =
        e && e.code === 'ERR_MODULE_NOT_FOUND' || e?.code === 'MODULE_NOT_FOUND'
          ? `${name} is not installed (npm install): ${e.message}`
          : String(e?.message ?? e);
      process.stderr.write(`js_peers: ${name}: error: ${msg}\n`);
      peers.push({ ...base, error: msg });
    }
  }
  process.stdout.write(JSON.stringify({ peers }) + '\n');
}

main().catch((e) => {
  process.stderr.write(`js_peers: ${e?.message ?? e}\n`);
  process.exit(1);
});
