import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, readFileSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { resolveModel } from '../src/engine/model_source.js';
import { GRAPH_REVISION, MANIFEST_FILE, readManifest } from '../src/export/manifest.js';
import { silentProgress } from '../src/util/progress.js';
import { FIXTURE_DIR, tempDir } from './support/runner.js';

test('a checkpoint is exported once into the cache, reused, and exported again when it changes', async () => {
  const work = tempDir();
  const src = join(work, 'ckpt');
  cpSync(FIXTURE_DIR, src, { recursive: true });
  const logs: string[] = [];
  const opts = { model: src, cacheDir: join(work, 'cache'), dtype: 'fp32' as const, layout: 'fast' as const, device: 'cpu' as const, progress: silentProgress, log: (m: string) => logs.push(m) };
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
  // An export directory is served as it is.
  const direct = await resolveModel({ ...opts, model: third.exportDir });
  assert.equal(direct.exportDir, third.exportDir);
  await assert.rejects(resolveModel({ ...opts, model: join(work, 'nowhere') }), /there is no directory .*nowhere, and it is not a Hugging Face repo id/);
});
