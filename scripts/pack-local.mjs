// `npm run pack:local [-- --out DIR] [--binary FILE]`: packs the release for this machine's
// platform only, as the registry would get it: the root package and this platform's binary
// package, two tarballs a user installs together (`npm install ./soft-cluster-*.tgz`). Builds
// nothing: run `npm run build:dist` (or `build:native`) and `npm run build:ts` first.
// Prints {"root": TARBALL, "platform": TARBALL} on stdout.
import { join, resolve } from 'node:path'
import { parseArgs } from 'node:util'
import { currentPlatform, fail, platformPackages, root, runNpm, stagePlatform, stageRoot } from './packages.mjs'

const { values } = parseArgs({ options: { out: { type: 'string', default: 'pack' }, binary: { type: 'string' } } })
const out = resolve(values.out)
const platform = currentPlatform()
const p = platformPackages().find((x) => x.platform === platform)
if (!p) fail(`pack:local: this machine (${platform}) has no package under npm/: it is not in package.json "napi.targets"`)

const packed = {}
stageRoot(join(out, 'stage', 'root'))
packed.root = join(out, runNpm(['pack', '--pack-destination', out], join(out, 'stage', 'root')).trim().split('\n').pop())
stagePlatform(p, resolve(values.binary ?? join(root, p.binary)), join(out, 'stage', platform))
packed.platform = join(out, runNpm(['pack', '--pack-destination', out], join(out, 'stage', platform)).trim().split('\n').pop())
process.stdout.write(JSON.stringify(packed) + '\n')
