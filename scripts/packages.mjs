// The npm packages of a release, as `pack-local.mjs` and `publish.mjs` build them: the root
// package (TypeScript, CLI, loader, demo data) and one package per platform holding its binary
// (npm/<platform>/, made by `napi create-npm-dirs`). Both scripts stage the root package the same
// way, so what a local pack installs is what the registry gets.
import { copyFileSync, cpSync, existsSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { execFileSync } from 'node:child_process'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

export const root = resolve(dirname(fileURLToPath(import.meta.url)), '..')
const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm'

export const readJson = (path) => JSON.parse(readFileSync(path, 'utf8'))

export function fail(message) {
  process.stderr.write(`${message}\n`)
  process.exit(1)
}

/** Every platform package: `{ dir, name, binary }` (binary: the `.node` file it must hold). */
export function platformPackages() {
  const npmDir = join(root, 'npm')
  return readdirSync(npmDir).sort().map((platform) => {
    const dir = join(npmDir, platform)
    const pkg = readJson(join(dir, 'package.json'))
    return { platform, dir, name: pkg.name, version: pkg.version, binary: pkg.main, pkg }
  })
}

/** `linux-x64-gnu`, `darwin-arm64`, ...: napi-rs's name for the platform this runs on. */
export function currentPlatform() {
  const { platform, arch } = process
  if (platform === 'linux') {
    const glibc = process.report?.getReport()?.header?.glibcVersionRuntime
    return `linux-${arch}-${glibc ? 'gnu' : 'musl'}`
  }
  if (platform === 'win32') return `win32-${arch}-msvc`
  return `${platform}-${arch}`
}

/**
 * Copies what the root package publishes into `stageDir`, with `optionalDependencies` (the
 * platform packages, for a release) and a manifest that has no
 * `prepare` script: that script builds from source in a clone, while a published package ships
 * built files (and npm warns about packages with install-time scripts).
 */
export function stageRoot(stageDir, optionalDependencies = undefined) {
  const pkg = readJson(join(root, 'package.json'))
  for (const needed of ['dist/index.js', 'dist/cli.js', 'index.js']) {
    if (!existsSync(join(root, needed))) fail(`${needed} is missing: run \`npm run build:ts\` (and build the binary) first`)
  }
  rmSync(stageDir, { recursive: true, force: true })
  mkdirSync(stageDir, { recursive: true })
  for (const entry of [...pkg.files, 'README.md', 'LICENSE']) {
    const from = join(root, entry)
    if (!existsSync(from)) fail(`${entry} (in package.json "files") is missing`)
    cpSync(from, join(stageDir, entry), { recursive: true })
  }
  delete pkg.scripts.prepare
  if (optionalDependencies) pkg.optionalDependencies = optionalDependencies
  writeFileSync(join(stageDir, 'package.json'), JSON.stringify(pkg, null, 2) + '\n')
  return pkg
}

/** Copies a platform package with its binary into `stageDir`. */
export function stagePlatform(p, binaryPath, stageDir) {
  if (!existsSync(binaryPath)) fail(`${binaryPath} is missing: build it first (\`npm run build:dist\`)`)
  rmSync(stageDir, { recursive: true, force: true })
  mkdirSync(stageDir, { recursive: true })
  copyFileSync(join(p.dir, 'package.json'), join(stageDir, 'package.json'))
  copyFileSync(join(p.dir, 'README.md'), join(stageDir, 'README.md'))
  copyFileSync(binaryPath, join(stageDir, p.binary))
}

/** `npm <args>` in `cwd`, its stdout returned, its stderr passed through; no lifecycle scripts. */
export function runNpm(args, cwd) {
  return execFileSync(npm, [...args, '--ignore-scripts'], { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] })
}
