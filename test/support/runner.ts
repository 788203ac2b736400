import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readManifest } from '../../src/export/manifest.js';
import { FastRunner } from '../../src/runtime/fast_runner.js';
import type { ModelRunner } from '../../src/runtime/model_runner.js';
import { createSession } from '../../src/runtime/session.js';
import { StandardRunner } from '../../src/runtime/standard_runner.js';

export const FIXTURE_DIR = new URL('../../../test/fixtures/qwen3-tiny-a/', import.meta.url).pathname;
export const FIXTURE_REFERENCE = new URL('../../../test/fixtures/qwen3-tiny-a.reference.json', import.meta.url).pathname;

export interface ReferenceCase {
  prompt_ids: number[];
  greedy_ids: number[];
  steps: Array<{ top_ids: number[]; top_logprobs: number[] }>;
}

/** A runner on an export directory, the way the engine builds one. */
export async function openRunner(dir: string, maxSequences = 8): Promise<ModelRunner> {
  const manifest = readManifest(dir);
  const { session } = await createSession(dir, manifest, { device: 'cpu', threads: 1 });
  return manifest.layout === 'fast' ? new FastRunner(session, manifest, maxSequences, 4096) : new StandardRunner(session, manifest, maxSequences);
}

const temporary = new Set<string>();
// One exit listener for them all, however many a test file makes.
process.once('exit', () => {
  for (const dir of temporary) rmSync(dir, { recursive: true, force: true });
});

/** A temporary directory removed when the process exits. */
export function tempDir(prefix = 'qwen3-serve-test-'): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  temporary.add(dir);
  return dir;
}
