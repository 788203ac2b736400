import { statSync } from 'node:fs';
import { freemem } from 'node:os';
import { join } from 'node:path';
import { ConfigError } from '../errors.js';
import type { Manifest } from '../export/manifest.js';

// What the weights and the KV cache will take, checked against the memory there is before a session loads anything.

/** Bytes of an export's weights: its graph and external data files, which the session holds in memory. */
export function weightBytes(exportDir: string, manifest: Manifest): number {
  return statSync(join(exportDir, manifest.model)).size + statSync(join(exportDir, manifest.externalData)).size;
}

/** Memory this process may still take: what the OS reports available, within any cgroup limit. */
export function availableBytes(): number {
  return typeof process.availableMemory === 'function' ? process.availableMemory() : freemem();
}

const mib = (bytes: number) => `${Math.ceil(bytes / 2 ** 20)} MiB`;

/**
 * Refuses a model that cannot fit, naming the numbers: its weights alone past the memory
 * available, or its weights plus a KV cache budget given in bytes (`kvSetting` > 1; a
 * fraction is taken from what is left after loading, so only the weights are checked).
 * The CUDA provider holds weights in GPU memory, which this does not see.
 */
export function checkFits(weights: number, kvSetting: number, available: number, device: 'cpu' | 'cuda'): void {
  if (device === 'cuda') return;
  if (weights > available) {
    throw new ConfigError(
      `the model's weights take ${mib(weights)}, more than the ${mib(available)} of memory available: use a smaller --dtype (int4 takes about a sixth of fp32) or a machine with more memory.`,
    );
  }
  if (kvSetting > 1 && weights + kvSetting > available) {
    throw new ConfigError(
      `the model's weights (${mib(weights)}) and the KV cache (--kv-cache-memory, ${mib(kvSetting)}) take ${mib(weights + kvSetting)}, more than the ${mib(available)} of memory available: lower --kv-cache-memory to at most ${mib(Math.max(0, available - weights))}.`,
    );
  }
}
