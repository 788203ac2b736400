import assert from 'node:assert/strict';
import { connect, type Socket } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { fixtureExport } from './support/engine.js';
import { startTestServer, type TestServer, until } from './support/server.js';

describe('test/server_hardening.test', () => {
  // What one careless or hostile client does must not reach the others: each test runs a
  // harmful request next to the server's ordinary work and checks that work goes on.
  let s: TestServer;
  before(async () => {
    s = await startTestServer(await fixtureExport('fast'), [
      '--served-model-name',
      'tiny',
      '--max-model-len',
      '4096',
      '--body-limit',
      '8MiB',
      '--tokenize-timeout',
      '3',
      '--grammar-compile-timeout',
      '2',
      '--request-timeout',
      '2',
      '--headers-timeout',
      '1',
      '--stream-buffer-limit',
      '64KiB',
    ]);
  });
  after(async () => {
    await s.close();
  });

  const post = (path: string, body: unknown) =>
    fetch(`${s.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });

  interface Health {
    status: string;
    running: number;
    grammar?: { state: string; rebuilds: number };
  }
  const health = async () => (await (await fetch(`${s.url}/health`)).json()) as Health;

  /** Polls /health every 20 ms until `done` settles; returns each answer's latency in ms. */
  async function healthLatencies(done: Promise<unknown>): Promise<number[]> {
    let finished = false;
    void done.finally(() => (finished = true));
    const out: number[] = [];
    while (!finished) {
      const t = performance.now();
      const r = await fetch(`${s.url}/health`);
      await r.text();
      assert.equal(r.status, 200);
      out.push(performance.now() - t);
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    return out;
  }

  /** A streamed completion: the time each chunk arrived, as they arrive, until it ends or `signal` stops it. */
  function timedStream(body: Record<string, unknown>, signal: AbortSignal): { times: number[]; done: Promise<void> } {
    const times: number[] = [];
    const done = (async () => {
      const r = await fetch(`${s.url}/v1/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model: 'tiny', stream: true, ...body }),
        signal,
      });
      assert.equal(r.status, 200);
      const decoder = new TextDecoder();
      try {
        for await (const part of r.body!) {
          if (decoder.decode(part as Uint8Array, { stream: true }).includes('data: ')) times.push(performance.now());
        }
      } catch (err) {
        if (!signal.aborted) throw err;
      }
    })();
    return { times, done };
  }

  const maxGap = (times: number[]) => times.slice(1).reduce((m, t, i) => Math.max(m, t - times[i]), 0);

  test('refused grammars in a loop leave structured outputs working and /health truthful', async () => {
    for (let i = 0; i < 100; i++) {
      const r = await post('/v1/completions', { prompt: 'x', max_tokens: 2, guided_grammar: `root ::= u${i}` });
      assert.equal(r.status, 400);
    }
    const ok = await post('/v1/completions', { prompt: 'x', max_tokens: 6, guided_regex: '[a-z]+' });
    assert.equal(ok.status, 200);
    const text = ((await ok.json()) as { choices: Array<{ text: string }> }).choices[0].text;
    assert.match(text, /^[a-z]+$/);
    const h = await health();
    assert.equal(h.status, 'ok');
    assert.equal(h.grammar?.state, 'ready');
  });

  test('a schema that compiles too slowly is a 400 naming the bound, and a running stream never waits for it', async () => {
    const stop = new AbortController();
    const stream = timedStream({ prompt: 'Once upon a time', max_tokens: 4000, ignore_eos: true }, stop.signal);
    await until(async () => (await health()).running === 1 && stream.times.length > 0, 'the stream to run');
    const asked = performance.now();
    const r = await post('/v1/chat/completions', {
      messages: [{ role: 'user', content: 'x' }],
      max_tokens: 4,
      response_format: { type: 'json_schema', json_schema: { name: 'big', schema: { type: 'string', maxLength: 500000 } } },
    });
    assert.equal(r.status, 400);
    const body = (await r.json()) as { error: { message: string; param: string } };
    assert.match(body.error.message, /longer than 2000 ms.*--grammar-compile-timeout/);
    assert.equal(body.error.param, 'response_format');
    const refused = performance.now();
    // The stream runs on past the refusal (so across the whole compile), then is stopped.
    await until(() => stream.times.some((t) => t > refused), 'a chunk after the refusal');
    stop.abort();
    await stream.done;
    const times = stream.times;
    assert.ok(times[0] < asked && refused - asked >= 2000, 'the stream ran through a compile of at least the bound');
    // Before, every stream stalled for the whole compile (18-26 s for this schema).
    assert.ok(maxGap(times) < 1000, `longest gap ${maxGap(times).toFixed(0)} ms`);
    // The grammar engine was replaced and serves again.
    const ok = await post('/v1/completions', { prompt: 'x', max_tokens: 4, guided_choice: ['red', 'blue'] });
    assert.equal(ok.status, 200);
    assert.match(((await ok.json()) as { choices: Array<{ text: string }> }).choices[0].text, /^(red|blue)$/);
  });

  test('a 4 MB prompt tokenizes off the HTTP thread: /health answers meanwhile; past --tokenize-timeout it is a 400', async () => {
    const prompt = 'the quick brown fox jumps over the lazy dog. '.repeat(90_000);
    const big = post('/v1/completions', { prompt, max_tokens: 1 });
    const latencies = await healthLatencies(big);
    const r = await big;
    assert.equal(r.status, 400);
    assert.match(((await r.json()) as { error: { message: string } }).error.message, /tokenized within 3 s|maximum context length/);
    latencies.sort((a, b) => a - b);
    assert.ok(latencies.length >= 5, `${latencies.length} health checks`);
    // Before, /health froze for over a minute; allow for a busy 2-core CI box in the tail.
    assert.ok(latencies[Math.floor(latencies.length / 2)] < 100, `median ${latencies[Math.floor(latencies.length / 2)].toFixed(0)} ms`);
    assert.ok(latencies[latencies.length - 1] < 1000, `slowest ${latencies[latencies.length - 1].toFixed(0)} ms`);
    // Long prompts still tokenize (the thread was replaced after the timeout).
    const fine = await post('/tokenize', { prompt: 'hello world. '.repeat(2000) });
    const answer = (await fine.json()) as { count: number; error?: { message: string } };
    assert.equal(fine.status, 200, answer.error?.message);
    assert.equal(answer.count, 6001);
  });

  /** Sends raw bytes on a new connection; resolves with everything the server answered. */
  function raw(write: (socket: Socket) => void): Promise<string> {
    return new Promise((resolve, reject) => {
      const url = new URL(s.url);
      const socket = connect(Number(url.port), url.hostname);
      let got = '';
      socket.on('data', (d) => (got += d.toString()));
      socket.on('close', () => resolve(got));
      socket.on('error', reject);
      socket.on('connect', () => write(socket));
    });
  }

  function parseResponse(text: string): { status: number; headers: string; body: { error: { message: string; type: string; code: string } } } {
    const [head, body] = text.split('\r\n\r\n');
    return { status: Number(head.split(' ')[1]), headers: head.toLowerCase(), body: JSON.parse(body) };
  }

  test('a trickled body is cut at --request-timeout with a 408 in the envelope', async () => {
    const started = performance.now();
    let timer: NodeJS.Timeout | undefined;
    const answer = await raw((socket) => {
      socket.write(`POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{`);
      timer = setInterval(() => socket.writable && socket.write(' '), 300);
    });
    clearInterval(timer);
    const r = parseResponse(answer);
    assert.equal(r.status, 408);
    assert.equal(r.body.error.code, 'request_timeout');
    assert.match(r.headers, /x-request-id: [\w-]+/);
    assert.ok(performance.now() - started < 10_000);
  });

  test('a client that shuts its side after sending gets its GET answered; a generation it leaves is freed', async () => {
    const request = (path: string, body?: unknown, version = '1.1') => {
      const text = body === undefined ? '' : JSON.stringify(body);
      const head = `${body === undefined ? 'GET' : 'POST'} ${path} HTTP/${version}\r\nHost: x\r\n`;
      return `${head}${body === undefined ? '' : `Content-Type: application/json\r\nContent-Length: ${Buffer.byteLength(text)}\r\n`}\r\n${text}`;
    };
    for (const version of ['1.1', '1.0']) {
      for (const path of ['/health', '/v1/models']) {
        const answer = await raw((socket) => socket.end(request(path, undefined, version)));
        assert.match(answer, /^HTTP\/1\.1 200 /, `GET ${path} over HTTP/${version}`);
      }
    }
    // Requests ended as abandoned (finish reason "abort"), not run to their max_tokens.
    const aborted = async () => {
      const text = await (await fetch(`${s.url}/metrics`)).text();
      return [...text.matchAll(/^qwen3_serve_request_success_total\{[^}]*finished_reason="abort"[^}]*\} (\d+)$/gm)].reduce(
        (n, m) => n + Number(m[1]),
        0,
      );
    };
    // A generation whose client shut its side, streamed or not, is taken as abandoned.
    const chat = { model: 'tiny', messages: [{ role: 'user', content: 'hi' }], max_tokens: 2000, ignore_eos: true };
    for (const stream of [false, true]) {
      const before = await aborted();
      await raw((socket) => socket.end(request('/v1/chat/completions', { ...chat, stream })));
      await until(async () => (await health()).running === 0 && (await aborted()) === before + 1, 'the abandoned generation freed');
    }
    // And a client that goes away while its non-streamed answer is being generated frees its sequence.
    const before = await aborted();
    const url = new URL(s.url);
    const socket = connect(Number(url.port), url.hostname);
    socket.on('error', () => {});
    socket.write(request('/v1/chat/completions', chat));
    await until(async () => (await health()).running === 1, 'the generation running');
    socket.destroy();
    await until(async () => (await health()).running === 0 && (await aborted()) === before + 1, 'the generation freed after the client left');
  });

  test('slow headers, oversized headers, bad URLs and long ids are answered in the envelope with x-request-id', async () => {
    const slow = parseResponse(await raw((socket) => socket.write('GET /health HTTP/1.1\r\nHost: x\r\n')));
    assert.equal(slow.status, 408);
    assert.equal(slow.body.error.type, 'invalid_request_error');
    assert.match(slow.headers, /x-request-id: /);

    const huge = parseResponse(await raw((socket) => socket.write(`GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`)));
    assert.equal(huge.status, 431);
    assert.equal(huge.body.error.code, 'headers_too_large');
    assert.match(huge.headers, /x-request-id: /);

    for (const [path, status] of [
      ['/v1/models/%ff', 400],
      [`/v1/models/${'m'.repeat(600)}`, 414],
      [`/v1/models/${'m'.repeat(200)}`, 404],
    ] as const) {
      const r = await fetch(`${s.url}${path}`);
      assert.equal(r.status, status, path.slice(0, 40));
      assert.ok(r.headers.get('x-request-id'));
      const body = (await r.json()) as { error: { message: string; type: string } };
      assert.equal(typeof body.error.message, 'string');
    }

    const garbage = parseResponse(await raw((socket) => socket.write('NOT HTTP AT ALL\r\n\r\n')));
    assert.equal(garbage.status, 400);
    assert.match(garbage.headers, /x-request-id: /);
  });

  test('a stream the client never reads is cut past --stream-buffer-limit and its sequences freed', async () => {
    const body = JSON.stringify({
      model: 'tiny',
      messages: [{ role: 'user', content: 'hi' }],
      max_tokens: 3000,
      ignore_eos: true,
      n: 8,
      logprobs: true,
      top_logprobs: 20,
      stream: true,
    });
    const url = new URL(s.url);
    const socket = connect(Number(url.port), url.hostname);
    await new Promise((resolve) => socket.on('connect', resolve));
    socket.write(
      `POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
    );
    socket.pause(); // never read: the kernel's buffers fill, then the server's
    const closed = new Promise((resolve) => socket.on('close', resolve));
    let sawRunning = false;
    for (let i = 0; i < 600; i++) {
      const h = await health();
      if (h.running > 0) sawRunning = true;
      else if (sawRunning) break;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    assert.ok(sawRunning, 'the request ran');
    assert.equal((await health()).running, 0, 'its sequences were freed before they finished');
    socket.resume();
    await closed;
  });

  test('/detokenize with no tokens and schemas nested absurdly deep are 400s', async () => {
    const detok = await post('/detokenize', { tokens: [] });
    assert.equal(detok.status, 400);
    const deep = `{"prompt": "x", "max_tokens": 2, "response_format": {"type": "json_schema", "json_schema": {"name": "d", "schema": ${'{"a":'.repeat(10_000)}1${'}'.repeat(10_000)}}}}`;
    for (const path of ['/v1/completions', '/v1/chat/completions']) {
      const r = await fetch(`${s.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: deep });
      assert.equal(r.status, 400);
    }
    let nested: unknown = { type: 'string' };
    for (let i = 0; i < 70; i++) nested = { type: 'array', items: nested };
    const guided = await post('/v1/completions', { prompt: 'x', max_tokens: 2, guided_json: nested });
    assert.equal(guided.status, 400);
    assert.match(((await guided.json()) as { error: { message: string } }).error.message, /nested more than 64 levels/);
  });
});
