import { createHash } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { MANIFEST_FILE, type Manifest } from '../export/manifest.js';
import type { KvBlockLayout } from '../runtime/kv_block_pool.js';
import ort from '../runtime/ort.js';

/** Raised whenever the block files' contents or naming change, so older files are foreign. */
const DISK_FORMAT = 'qwen3-serve prefix block 1';

/**
 * What a prefix-cache block on disk may be used by: a SHA-256 over the export (its
 * manifest, which names the checkpoint's files by hash, the dtypes, the KV layout and the
 * exporter's version, plus its graph and its weights' size), the block layout, the chunk
 * grid, and what runs the graph (ONNX Runtime's version, the device, the threads). Keys
 * and values computed under any other of these may differ in their last bits, so a block
 * file from elsewhere is never served.
 */
export function blockFingerprint(o: {
  modelDir: string;
  manifest: Manifest;
  device: string;
  threads: number;
  layout: KvBlockLayout;
  gridSignature: string;
}): Buffer {
  const hash = createHash('sha256');
  const part = (name: string, value: string | Uint8Array) => {
    hash.update(`${name}\0${typeof value === 'string' ? value.length : value.byteLength}\0`);
    hash.update(value);
  };
  part('format', DISK_FORMAT);
  part('manifest', readFileSync(join(o.modelDir, MANIFEST_FILE)));
  part('graph', readFileSync(join(o.modelDir, o.manifest.model)));
  const data = join(o.modelDir, o.manifest.externalData);
  part('weights', String(statSync(data, { throwIfNoEntry: false })?.size ?? -1));
  part('runtime', `${ort.env.versions.node};${o.device};threads=${o.threads}`);
  part('layout', JSON.stringify(o.layout));
  part('grid', o.gridSignature);
  return hash.digest();
}
