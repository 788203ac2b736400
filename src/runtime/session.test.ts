import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { fixtureExport } from '../../test/support/engine.js';
import { tempDir } from '../../test/support/runner.js';
import { readManifest } from '../export/manifest.js';
import { createSession, cudaProviderInstalled, providerPlan, sessionOptions } from './session.js';

test('provider plan: explicit devices are taken as asked; auto tries CUDA only for CUDA-capable exports with the provider installed', () => {
  const fp16 = { kvDtype: 'float16', layout: 'fast' } as const;
  const fp32 = { kvDtype: 'float32', layout: 'fast' } as const;
  const standard = { kvDtype: 'float32', layout: 'standard' } as const;
  assert.deepEqual(providerPlan('cpu', fp16, true), { order: ['cpu'], cpuReason: null });
  assert.deepEqual(providerPlan('cuda', fp32, false), { order: ['cuda'], cpuReason: null }, 'an explicit cuda fails loudly rather than falling back');
  assert.deepEqual(providerPlan('auto', fp16, true), { order: ['cuda', 'cpu'], cpuReason: null });
  assert.deepEqual(providerPlan('auto', standard, true).order, ['cuda', 'cpu']);
  const notInstalled = providerPlan('auto', fp16, false);
  assert.deepEqual(notInstalled.order, ['cpu']);
  assert.match(notInstalled.cpuReason ?? '', /CUDA provider is not installed.*ONNXRUNTIME_NODE_INSTALL=cuda12/);
  const cpuExport = providerPlan('auto', fp32, true);
  assert.deepEqual(cpuExport.order, ['cpu']);
  assert.match(cpuExport.cpuReason ?? '', /exported for the CPU \(float32 KV cache\).*--dtype fp16/);
});

test('sessions stop their pool threads spinning when a run returns, on either provider', () => {
  for (const ep of ['cpu', 'cuda'] as const) {
    const o = sessionOptions(ep, 2);
    assert.deepEqual(o.extra, { session: { force_spinning_stop: '1' } });
    assert.equal(o.intraOpNumThreads, 2);
  }
});

test("the CUDA provider counts as installed when its library sits in onnxruntime-node's bin folder", {
  skip: !['linux', 'win32'].includes(process.platform) && 'no CUDA provider on this platform',
}, () => {
  const root = tempDir('qwen3-serve-ort-');
  mkdirSync(join(root, 'bin', 'napi-v6', process.platform, process.arch), { recursive: true });
  assert.equal(cudaProviderInstalled(root), false, 'the CPU-only package');
  assert.equal(cudaProviderInstalled(join(root, 'missing')), false);
  const lib = process.platform === 'win32' ? 'onnxruntime_providers_cuda.dll' : 'libonnxruntime_providers_cuda.so';
  writeFileSync(join(root, 'bin', 'napi-v6', process.platform, process.arch, lib), '');
  assert.equal(cudaProviderInstalled(root), true);
});

// The rest needs a host where CUDA cannot run (CI, and this project's CPU installs).
const cudaHere = cudaProviderInstalled() && 'the CUDA provider is installed here';

test('auto on a CPU host: runs on the CPU and says why, CUDA never tried', { skip: cudaHere }, async () => {
  const dir = await fixtureExport('fast', 'int4');
  const manifest = readManifest(dir);
  assert.equal(manifest.kvDtype, 'float16', 'an int4 export is CUDA-capable, so auto would try CUDA if installed');
  const r = await createSession(dir, manifest, { device: 'auto', threads: 1 });
  assert.equal(r.device, 'cpu');
  assert.equal(r.cudaFailed, false);
  assert.match(r.fallbackReason ?? '', /not installed/);
  await r.session.release();
});

test('auto falls back to the CPU when the CUDA provider fails to load, and an explicit cuda fails', { skip: cudaHere }, async () => {
  const dir = await fixtureExport('fast', 'int4');
  const manifest = readManifest(dir);
  // Claim the provider is installed: ONNX Runtime then really tries CUDA here, and fails.
  const r = await createSession(dir, manifest, { device: 'auto', threads: 1, cudaInstalled: true });
  assert.equal(r.device, 'cpu');
  assert.equal(r.cudaFailed, true);
  assert.match(r.fallbackReason ?? '', /^CUDA execution provider unavailable: /);
  assert.ok(r.session.inputNames.includes('input_ids'), 'the CPU session holds the model');
  await r.session.release();
  await assert.rejects(createSession(dir, manifest, { device: 'cuda', threads: 1 }));
});
