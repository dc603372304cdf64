import { SequentialSoftClustering } from '../clustering'
import { printJson } from './chunks'

export interface TreeCommandOptions {
  model: string
  json?: boolean
}

/** `soft-cluster tree --model M`: the linkage table of the clusters' tree, one merge per line. */
export async function treeCommand(options: TreeCommandOptions): Promise<void> {
  const model = await SequentialSoftClustering.load(options.model)
  const { linkage, order } = model.hierarchy()
  const k = model.config.nClusters
  if (options.json) return printJson({ nClusters: k, linkage, order })
  console.log(`tree of ${k} clusters (scipy linkage rows: a b distance clusters; ids >= ${k} are the groups of earlier rows)`)
  linkage.forEach((row, i) => console.log(`${k + i}: ${row[0]} ${row[1]} ${row[2]!.toFixed(4)} ${row[3]}`))
}
