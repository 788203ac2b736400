import assert from 'node:assert/strict';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { test } from 'node:test';
import { resolveModel } from '../src/export/model_source.js';
import { downloadFromHub } from '../src/model/hub.js';
import { silentProgress } from '../src/util/progress.js';
import { FIXTURE_DIR, tempDir } from './support/runner.js';

/** A small stand-in for the Hub on 127.0.0.1: model info, resolve URLs, Range, auth, one cut-off transfer. */
async function fakeHub(opts: { token?: string; cutOnce?: string } = {}) {
  const files = readdirSync(FIXTURE_DIR);
  const seen: Array<{ url: string; range?: string; auth?: string }> = [];
  let cut = opts.cutOnce;
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    seen.push({ url: req.url ?? '', range: req.headers.range, auth: req.headers.authorization });
    if (opts.token && req.headers.authorization !== `Bearer ${opts.token}`) {
      res.writeHead(401).end('{"error":"unauthorized"}');
      return;
    }
    const info = /^\/api\/models\/test-org\/tiny\/revision\/main$/.exec(req.url ?? '');
    if (info) {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(
        JSON.stringify({
          id: 'test-org/tiny',
          siblings: [...files, 'README.md', 'pytorch_model.bin'].map((f) => ({
            rfilename: f,
            size: files.includes(f) ? statSync(join(FIXTURE_DIR, f)).size : 10,
          })),
        }),
      );
      return;
    }
    const m = /^\/test-org\/tiny\/resolve\/main\/(.+)$/.exec(req.url ?? '');
    if (!m || !files.includes(m[1])) {
      res.writeHead(404).end();
      return;
    }
    const data = readFileSync(join(FIXTURE_DIR, m[1]));
    const range = /^bytes=(\d+)-$/.exec(req.headers.range ?? '');
    const start = range ? Number(range[1]) : 0;
    const body = data.subarray(start);
    res.writeHead(range ? 206 : 200, {
      'content-length': body.length,
      ...(range ? { 'content-range': `bytes ${start}-${data.length - 1}/${data.length}` } : {}),
    });
    if (cut === m[1]) {
      // Send half, then drop the connection: the client must resume with a Range request.
      cut = undefined;
      res.write(body.subarray(0, body.length >> 1), () => res.destroy());
      return;
    }
    res.end(body);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, seen, close: () => new Promise<void>((r) => server.close(() => r())) };
}

test('a Hub download fetches only checkpoint files, sends HF_TOKEN, and resumes a cut-off transfer', async () => {
  const hub = await fakeHub({ token: 'hf_secret', cutOnce: 'model.safetensors' });
  try {
    const cacheDir = tempDir();
    const dir = await downloadFromHub({
      repo: 'test-org/tiny',
      cacheDir,
      endpoint: hub.url,
      token: 'hf_secret',
      progress: silentProgress,
      log: () => {},
      attempts: 3,
    });
    for (const f of readdirSync(FIXTURE_DIR)) assert.deepEqual(readFileSync(join(dir, f)), readFileSync(join(FIXTURE_DIR, f)), f);
    assert.ok(!readdirSync(dir).includes('README.md') && !readdirSync(dir).includes('pytorch_model.bin'));
    const resumed = hub.seen.filter((r) => r.url.endsWith('/model.safetensors'));
    assert.equal(resumed.length, 2, 'one cut-off request, one resumed');
    assert.match(resumed[1].range ?? '', /^bytes=\d+-$/);
    assert.ok(Number(/\d+/.exec(resumed[1].range!)![0]) > 0);
    assert.ok(hub.seen.every((r) => r.auth === 'Bearer hf_secret'));
    // A second call reuses the complete download without asking the Hub.
    const before = hub.seen.length;
    const again = await downloadFromHub({
      repo: 'test-org/tiny',
      cacheDir,
      endpoint: hub.url,
      token: 'hf_secret',
      progress: silentProgress,
      log: () => {},
    });
    assert.equal(again, dir);
    assert.equal(hub.seen.length, before);
  } finally {
    await hub.close();
  }
});

test('--model org/name goes through HF_ENDPOINT, then exports; bad tokens and missing repos are clear errors', async () => {
  const hub = await fakeHub({ token: 'tok' });
  const saved = { endpoint: process.env.HF_ENDPOINT, token: process.env.HF_TOKEN };
  try {
    process.env.HF_ENDPOINT = hub.url;
    process.env.HF_TOKEN = 'tok';
    const cacheDir = tempDir();
    const r = await resolveModel({
      model: 'test-org/tiny',
      cacheDir,
      dtype: 'fp32',
      layout: 'fast',
      device: 'cpu',
      progress: silentProgress,
      log: () => {},
    });
    assert.equal(r.name, 'test-org/tiny');
    assert.ok(readdirSync(r.exportDir).includes('model.onnx'));
    process.env.HF_TOKEN = 'wrong';
    await assert.rejects(
      resolveModel({
        model: 'test-org/tiny',
        cacheDir: tempDir(),
        dtype: 'fp32',
        layout: 'fast',
        device: 'cpu',
        progress: silentProgress,
        log: () => {},
      }),
      /refused test-org\/tiny \(401\): set HF_TOKEN/,
    );
    process.env.HF_TOKEN = 'tok';
    await assert.rejects(
      resolveModel({
        model: 'test-org/absent',
        cacheDir: tempDir(),
        dtype: 'fp32',
        layout: 'fast',
        device: 'cpu',
        progress: silentProgress,
        log: () => {},
      }),
      /has no model test-org\/absent/,
    );
  } finally {
    process.env.HF_ENDPOINT = saved.endpoint;
    process.env.HF_TOKEN = saved.token;
    if (saved.endpoint === undefined) delete process.env.HF_ENDPOINT;
    if (saved.token === undefined) delete process.env.HF_TOKEN;
    await hub.close();
  }
});
