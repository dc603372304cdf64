// The compiled addon, through the loader napi-rs generates (it picks the prebuilt binary for this
// platform, or the one built from source in the package root).
// eslint-disable-next-line @typescript-eslint/no-require-imports
import native = require('../index.js')

export = native
