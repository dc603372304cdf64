// `node scripts/publish.mjs [--dry-run]`: publishes a release from built files (the release job;
// CI runs it with --dry-run on every push). Expects every platform binary in its npm/<platform>/
// folder (`napi artifacts` puts them there) and dist/ built. Publishes each platform package,
// then the root package with those packages as optionalDependencies, all with lifecycle scripts
// off: nothing is built here. Provenance comes from NPM_CONFIG_PROVENANCE, as npm reads it.
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { fail, platformPackages, readJson, root, runNpm, stageRoot } from './packages.mjs'

const { values } = parseArgs({ options: { 'dry-run': { type: 'boolean', default: false } } })
const dryRun = values['dry-run'] ? ['--dry-run'] : []
const rootPkg = readJson(join(root, 'package.json'))
const url = rootPkg.repository?.url
if (!url) fail('package.json has no repository.url: the registry refuses a publish with provenance without it')
// Provenance ties the package to the repository the workflow runs in; they must be the same.
const running = process.env.GITHUB_REPOSITORY
if (running && !url.toLowerCase().includes(`github.com/${running.toLowerCase()}`)) {
  fail(`package.json repository.url ${url} is not this repository (github.com/${running}): fix it in package.json and npm/*/package.json`)
}

const platforms = platformPackages()
const targets = rootPkg.napi?.targets ?? []
if (platforms.length !== targets.length) fail(`npm/ holds ${platforms.length} platform packages, package.json napi.targets names ${targets.length}: run \`npx napi create-npm-dirs\``)
for (const p of platforms) {
  if (p.version !== rootPkg.version) fail(`${p.dir}/package.json: version ${p.version}, the root package is ${rootPkg.version}`)
  if (p.pkg.repository?.url !== url) fail(`${p.dir}/package.json: repository.url ${p.pkg.repository?.url}, the root package has ${url}`)
  if (!existsSync(join(p.dir, p.binary))) fail(`${join(p.dir, p.binary)} is missing: download the build artifacts and run \`npm run artifacts\``)
}

for (const p of platforms) {
  process.stderr.write(`publishing ${p.name}@${p.version}${dryRun.length ? ' (dry run)' : ''}\n`)
  runNpm(['publish', '--access', 'public', ...dryRun], p.dir)
}
const optional = Object.fromEntries(platforms.map((p) => [p.name, p.version]))
const staged = join(root, 'pack', 'stage', 'release')
stageRoot(staged, optional)
process.stderr.write(`publishing ${rootPkg.name}@${rootPkg.version}${dryRun.length ? ' (dry run)' : ''}\n`)
runNpm(['publish', '--access', 'public', ...dryRun], staged)
