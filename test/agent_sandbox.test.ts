import { AssertionError } from 'node:assert';
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { type AgentSessionReport, assertLoopbackOnly, runAgentSession } from './support/agent_sandbox.js';
import { fixtureExport } from './support/engine.js';
import { tempDir } from './support/runner.js';

/** A client is a `node -e` script: the sandbox runs any argv, and node is always here. */
const node = (script: string, ...args: string[]) => [process.execPath, '--input-type=module', '-e', script, ...args];

/** Runs assertLoopbackOnly and returns its message ('' when it passed). */
function loopbackFailure(report: AgentSessionReport): string {
  try {
    assertLoopbackOnly(report);
    return '';
  } catch (err) {
    assert.ok(err instanceof AssertionError);
    return err.message;
  }
}

test('a client fetching https://example.com/ is seen asking DNS for example.com and fails assertLoopbackOnly', async () => {
  const r = await runAgentSession({
    command: node(
      `try { await fetch('https://example.com/'); console.log('reached'); } catch (e) { console.log('failed', e.cause?.code ?? e.message); }`,
    ),
    timeoutMs: 20_000,
  });
  assert.equal(r.exitCode, 0, r.stderr);
  assert.match(r.stdout, /failed ENOTFOUND/);
  assert.ok(
    r.dnsQueries.some((q) => q.name === 'example.com' && (q.type === 'A' || q.type === 'AAAA')),
    JSON.stringify(r.dnsQueries),
  );
  assert.match(loopbackFailure(r), /DNS query (A|AAAA) example\.com/);
});

test('connections by IP address are recorded with their TLS SNI or HTTP Host; loopback names are not violations', async () => {
  const r = await runAgentSession({
    command: node(`
      import tls from 'node:tls';
      import http from 'node:http';
      import dns from 'node:dns/promises';
      const tlsTry = new Promise((res) => {
        const s = tls.connect({ host: '203.0.113.5', port: 443, servername: 'api.example.test' });
        s.on('error', (e) => res('tls ' + e.code)); s.on('close', () => res('tls closed'));
      });
      const httpTry = new Promise((res) => {
        http.get({ host: '2001:db8::7', port: 80, path: '/', headers: { host: 'telemetry.example.test' } }, () => res('http answered'))
          .on('error', (e) => res('http ' + e.code));
      });
      console.log(await tlsTry, await httpTry, (await dns.lookup('localhost')).address);
    `),
    timeoutMs: 20_000,
  });
  assert.equal(r.exitCode, 0, r.stderr);
  assert.deepEqual(
    r.outboundConnections.map((c) => ({ ...c })).sort((a, b) => a.port - b.port),
    [
      { address: '2001:db8::7', port: 80, host: 'telemetry.example.test' },
      { address: '203.0.113.5', port: 443, sni: 'api.example.test' },
    ],
  );
  assert.deepEqual(r.dnsQueries, [], 'localhost comes from /etc/hosts, never DNS');
  const message = loopbackFailure(r);
  assert.match(message, /connection to 203\.0\.113\.5:443 \(TLS SNI api\.example\.test\)/);
  assert.match(message, /connection to \[2001:db8::7\]:80 \(HTTP Host telemetry\.example\.test\)/);
});

test('a client that only talks to {BASE} passes; its exchanges are recorded with bodies and timings, SSE passed through as it streams', async () => {
  const r = await runAgentSession({
    command: node(
      `
      import { readFileSync } from 'node:fs';
      const base = JSON.parse(readFileSync('config.json', 'utf8')).base;
      if (base !== process.env.BASE_URL || base !== process.argv[1]) throw new Error('{BASE} not filled in everywhere');
      const post = await fetch(base + '/v1/echo?x=1', { method: 'POST', headers: { 'content-type': 'application/json', authorization: 'Bearer k' }, body: JSON.stringify({ hello: 'world' }) });
      console.log('echo', post.status, (await post.json()).url);
      const started = Date.now(), arrivals = [];
      const sse = await fetch(base + '/sse?n=3&delay=150');
      for await (const chunk of sse.body) arrivals.push(Date.now() - started);
      console.log('arrivals', JSON.stringify(arrivals));
    `,
      '{BASE}',
    ),
    env: { BASE_URL: '{BASE}' },
    files: { 'config.json': '{"base": "{BASE}"}' },
    timeoutMs: 20_000,
  });
  assert.equal(r.exitCode, 0, r.stderr);
  assertLoopbackOnly(r);
  assert.match(r.baseUrl, /^http:\/\/127\.0\.0\.1:\d+$/);
  assert.match(r.stdout, /echo 200 \/v1\/echo\?x=1/);
  // The client saw the first event long before the last: the proxy does not buffer streams.
  const arrivals = JSON.parse(/arrivals (.*)/.exec(r.stdout)![1]) as number[];
  assert.ok(arrivals.length >= 2 && arrivals.at(-1)! - arrivals[0] >= 200, r.stdout);

  assert.equal(r.exchanges.length, 2);
  const [post, sse] = r.exchanges;
  assert.equal(post.method, 'POST');
  assert.equal(post.path, '/v1/echo?x=1');
  assert.equal(post.requestHeaders.authorization, 'Bearer k');
  assert.deepEqual(post.requestBody, { hello: 'world' });
  assert.equal(post.status, 200);
  assert.equal(JSON.parse(post.responseBody).body, '{"hello":"world"}');
  assert.ok(post.headersMs !== null && post.firstByteMs !== null && post.totalMs !== null && post.headersMs <= post.totalMs);

  assert.equal(sse.method, 'GET');
  assert.equal(sse.requestBody, null);
  assert.equal(sse.responseHeaders['content-type'], 'text/event-stream');
  assert.equal(sse.responseBody, 'data: {"i":0}\n\ndata: {"i":1}\n\ndata: {"i":2}\n\ndata: [DONE]\n\n');
  // Headers at once, the first event after one delay, the end after three: the server's
  // delays bound the later times from below; the headers only need to come first.
  assert.ok(sse.headersMs! <= sse.firstByteMs!, `headers after ${sse.headersMs} ms, first byte after ${sse.firstByteMs} ms`);
  assert.ok(sse.firstByteMs! >= 140, `first byte after ${sse.firstByteMs} ms`);
  assert.ok(sse.totalMs! >= 440, `total ${sse.totalMs} ms`);
  assert.ok(sse.startedMs >= post.startedMs);
});

test('a client over its time limit is killed with its whole process group', async () => {
  const started = Date.now();
  const r = await runAgentSession({
    // The child keeps the group alive after the parent would have gone, and ignores SIGTERM.
    command: node(`
      import { spawn } from 'node:child_process';
      spawn(process.execPath, ['-e', 'process.on("SIGTERM", () => {}); setInterval(() => {}, 1000)'], { stdio: 'inherit' });
      console.log('started'); setInterval(() => {}, 1000);
    `),
    timeoutMs: 1000,
  });
  assert.equal(r.timedOut, true);
  assert.equal(r.exitCode, null);
  assert.equal(r.signal, 'SIGTERM');
  assert.match(r.stdout, /started/);
  assert.ok(Date.now() - started < 15_000, `took ${Date.now() - started} ms`);
});

test('assertLoopbackOnly passes a clean report and ignores loopback names only', () => {
  const base: AgentSessionReport = {
    exitCode: 0,
    signal: null,
    timedOut: false,
    stdout: '',
    stderr: '',
    baseUrl: '',
    exchanges: [],
    dnsQueries: [],
    outboundConnections: [],
    serverLog: '',
    serverExitCode: null,
    timings: { setupMs: 0, serverStartMs: null, agentMs: 0, totalMs: 0 },
  };
  assertLoopbackOnly(base);
  assertLoopbackOnly({
    ...base,
    dnsQueries: [
      { name: 'localhost', type: 'AAAA' },
      { name: 'api.localhost', type: 'A' },
      { name: '1.0.0.127.in-addr.arpa', type: 'PTR' },
    ],
  });
  assert.throws(() => assertLoopbackOnly({ ...base, dnsQueries: [{ name: 'localhost.example.com', type: 'A' }] }), /localhost\.example\.com/);
  assertLoopbackOnly({ ...base, dnsQueries: [{ name: 'statsig.anthropic.com', type: 'A' }] }, { dnsNames: [/\.anthropic\.com$/] });
});

test('an agent against the real server: a streamed chat completion is recorded in full, and nothing left loopback', async () => {
  const model = await fixtureExport('fast');
  const r = await runAgentSession({
    model,
    serverFlags: [
      '--threads',
      '1',
      '--cache-dir',
      tempDir('agent-sandbox-cache-'),
      '--kv-cache-memory',
      '256MiB',
      '--served-model-name',
      'tiny',
      '--no-ui',
    ],
    serverStartTimeoutMs: 120_000,
    command: node(`
      const res = await fetch(process.env.OPENAI_BASE_URL + '/chat/completions', {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: 'Bearer ' + process.env.OPENAI_API_KEY },
        body: JSON.stringify({ model: 'tiny', messages: [{ role: 'user', content: 'Hello' }], max_tokens: 6, temperature: 0, stream: true }),
      });
      const text = await res.text();
      console.log(res.status, res.headers.get('content-type'), text.includes('data: [DONE]'));
    `),
    env: { OPENAI_BASE_URL: '{BASE}/v1', OPENAI_API_KEY: 'unused' },
    timeoutMs: 60_000,
  });
  assert.equal(r.exitCode, 0, r.stderr);
  assert.match(r.stdout, /^200 text\/event-stream.* true$/m);
  assertLoopbackOnly(r);
  const chat = r.exchanges.find((e) => e.path === '/v1/chat/completions');
  assert.ok(chat, JSON.stringify(r.exchanges.map((e) => e.path)));
  assert.equal(chat.status, 200);
  assert.equal((chat.requestBody as { stream: boolean }).stream, true);
  assert.match(chat.responseBody, /^data: \{.*"chat\.completion\.chunk"/);
  assert.match(chat.responseBody, /data: \[DONE\]\n\n$/);
  assert.ok(chat.headersMs! <= chat.firstByteMs! && chat.firstByteMs! <= chat.totalMs!);
  assert.equal(r.serverExitCode, 0, r.serverLog);
  assert.ok(r.timings.serverStartMs! > 0);
});
