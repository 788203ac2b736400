import assert from 'node:assert/strict';
import { cpSync, readFileSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { GRAPH_REVISION, MANIFEST_FILE, readManifest } from '../src/export/manifest.js';
import { resolveModel } from '../src/export/model_source.js';
import { silentProgress } from '../src/util/progress.js';
import { FIXTURE_DIR, tempDir } from './support/runner.js';

test('a checkpoint is exported once into the cache, reused, and exported again when it changes', async () => {
  const work = tempDir();
  const src = join(work, 'ckpt');
  cpSync(FIXTURE_DIR, src, { recursive: true });
  const logs: string[] = [];
  const opts = {
    model: src,
    cacheDir: join(work, 'cache'),
    dtype: 'fp32' as const,
    layout: 'fast' as const,
    device: 'cpu' as const,
    progress: silentProgress,
    log: (m: string) => logs.push(m),
  };
  const first = await resolveModel(opts);
  assert.match(logs.join('\n'), /exporting/);
  logs.length = 0;
  const second = await resolveModel(opts);
  assert.equal(second.exportDir, first.exportDir);
  assert.match(logs.join('\n'), /using the cached export/);
  // A changed source file (same size, new mtime) makes the cache stale.
  const gen = join(src, 'generation_config.json');
  writeFileSync(gen, readFileSync(gen, 'utf8').replace('0.6', '0.7'));
  utimesSync(gen, new Date(), new Date(Date.now() + 5000));
  logs.length = 0;
  const third = await resolveModel(opts);
  assert.match(logs.join('\n'), /exporting/);
  assert.equal(readManifest(third.exportDir).layout, 'fast');
  // An export written by an older exporter (another graph revision) is redone too.
  const manifestPath = join(third.exportDir, MANIFEST_FILE);
  const manifest = JSON.parse(readFileSync(manifestPath, 'utf8'));
  delete manifest.exporter.graphRevision;
  writeFileSync(manifestPath, JSON.stringify(manifest));
  logs.length = 0;
  await resolveModel(opts);
  assert.match(logs.join('\n'), /exporting/);
  assert.equal(readManifest(third.exportDir).exporter.graphRevision, GRAPH_REVISION);
  // Another KV cache type is another export, beside the default one.
  const int4Opts = { ...opts, dtype: 'int4' as const };
  const int4Default = await resolveModel(int4Opts);
  const int4Fp32Kv = await resolveModel({ ...int4Opts, kvDtype: 'fp32' });
  assert.notEqual(int4Fp32Kv.exportDir, int4Default.exportDir);
  assert.equal(readManifest(int4Default.exportDir).kvDtype, 'float16');
  assert.equal(readManifest(int4Fp32Kv.exportDir).kvDtype, 'float32');
  // An export directory is served as it is.
  const direct = await resolveModel({ ...opts, model: third.exportDir });
  assert.equal(direct.exportDir, third.exportDir);
  await assert.rejects(
    resolveModel({ ...opts, model: join(work, 'nowhere') }),
    /there is no directory .*nowhere, and it is not a Hugging Face repo id/,
  );
});

test('--device auto exports for the GPU (fp16) when CUDA can run, for the CPU (fp32) otherwise; an explicit device or dtype wins', async () => {
  const { resolveExportTarget } = await import('../src/export/model_source.js');
  const { cudaUsable } = await import('../src/runtime/session.js');
  const withCuda = [{ name: 'cpu' }, { name: 'cuda' }];
  assert.equal(cudaUsable(withCuda, true), true);
  assert.equal(cudaUsable(withCuda, false), false, 'listed but its provider library is not installed');
  assert.equal(cudaUsable([{ name: 'cpu' }], true), false);
  const pick = (device: 'auto' | 'cuda' | 'cpu', dtype: 'fp32' | 'fp16' | 'int4' | undefined, usable: boolean) => {
    const t = resolveExportTarget(device, dtype, usable);
    return `${t.dtype}/${t.device}`;
  };
  assert.equal(pick('auto', undefined, cudaUsable(withCuda, true)), 'fp16/cuda');
  assert.match(resolveExportTarget('auto', undefined, true).note!, /fp16 for the GPU/);
  assert.equal(pick('auto', undefined, false), 'fp32/cpu');
  assert.equal(pick('auto', 'int4', true), 'int4/cuda');
  assert.equal(pick('auto', 'int4', false), 'int4/cpu');
  assert.equal(pick('auto', 'fp32', true), 'fp32/cpu');
  assert.equal(pick('cpu', undefined, true), 'fp32/cpu');
  assert.equal(pick('cuda', undefined, false), 'fp16/cuda');
  assert.equal(pick('cuda', 'int4', false), 'int4/cuda');
});
