import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import OpenAI from 'openai';
import { fixtureExport } from './support/engine.js';
import { keysFile, startTestServer, type TestServer } from './support/server.js';

describe('test/server_fairness.test', () => {
  // Two keys competing for one server on the test model: key A sends 40 requests at once,
  // then key B sends 4. The scheduler admits round robin over keys with requests waiting,
  // so while B has one waiting, A gets at most one admission before it: B's 4 start after
  // at most A's running ones (every batch slot, --max-num-seqs 4) and 4 more, before A's
  // last 30. A's own max_queued refuses A's surplus with 429s naming it; B gets none.

  const A = 'sk-team-a-0123456789';
  const B = 'sk-team-b-0123456789';
  let s: TestServer;

  before(async () => {
    const file = keysFile([
      { name: 'team-a', key: A, limits: { max_queued: 34 } },
      { name: 'team-b', key: B },
    ]);
    s = await startTestServer(await fixtureExport('fast'), ['--served-model-name', 'tiny', '--max-num-seqs', '4', '--api-keys-file', file], A);
  });
  after(async () => {
    await s?.close();
  });

  test('key B is served fairly next to key A: its requests start before A’s last 30, A’s surplus gets 429s naming max_queued, B gets none', async (t) => {
    const starts: string[] = [];
    const client = (key: string) => new OpenAI({ baseURL: `${s.url}/v1`, apiKey: key, maxRetries: 0, timeout: 300_000 });
    /** One streamed request; resolves when the server accepted it (or refused it), with its run to the end. */
    const send = async (key: string, tag: string) => {
      const stream = await client(key).completions.create({
        model: 'tiny',
        prompt: `Request ${tag}: count to a hundred.`,
        max_tokens: 48,
        temperature: 0,
        stream: true,
        ignore_eos: true,
      } as never);
      const run = (async () => {
        let first = true;
        for await (const chunk of stream as unknown as AsyncIterable<OpenAI.Completion>) {
          // The first token: prompts prefill one at a time in admission order, so this is the order requests started in.
          if (first && chunk.choices[0]?.text !== undefined) {
            starts.push(tag);
            first = false;
          }
        }
      })();
      return { run };
    };
    const aSending = Promise.allSettled(Array.from({ length: 40 }, (_, i) => send(A, `A${i}`)));
    // A stream's headers come with its first token, so A's requests are known to be in the
    // engine (or refused) by the server's own counts: B comes once all 40 are.
    const count = (text: string, re: RegExp) => [...text.matchAll(re)].reduce((sum, m) => sum + Number(m[1]), 0);
    for (let i = 0; ; i++) {
      assert.ok(i < 600, "A's requests did not all reach the engine");
      const text = await (await fetch(`${s.url}/metrics`)).text();
      const inEngine = count(text, /^qwen3_serve_num_requests_(?:waiting|running)\{[^}]*\} (\d+)$/gm);
      const done = count(text, /^qwen3_serve_api_key_(?:request_success|rate_limited)_total\{api_key="team-a"[^}]*\} (\d+)$/gm);
      if (inEngine + done === 40) break;
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    const bSent = await Promise.allSettled(Array.from({ length: 4 }, (_, i) => send(B, `B${i}`)));
    const aSent = await aSending;
    const accepted = [...aSent, ...bSent].flatMap((r) => (r.status === 'fulfilled' ? [r.value.run] : []));
    await Promise.all(accepted);

    const aRefused = aSent.flatMap((r) => (r.status === 'rejected' ? [r.reason as unknown] : []));
    const aAccepted = aSent.length - aRefused.length;
    assert.ok(aRefused.length > 0, 'A reached its queue limit');
    for (const err of aRefused) {
      assert.ok(err instanceof OpenAI.RateLimitError, String(err));
      assert.equal(err.param, 'max_queued');
      assert.match(err.message, /API key 'team-a': max_queued 34/);
      assert.ok(Number(err.headers.get('retry-after')) >= 1);
    }
    assert.ok(
      bSent.every((r) => r.status === 'fulfilled'),
      'B was refused nothing',
    );
    assert.equal(starts.length, aAccepted + 4);
    const lastB = Math.max(...['B0', 'B1', 'B2', 'B3'].map((t) => starts.indexOf(t)));
    const aBefore = starts.slice(0, lastB).filter((tag) => tag.startsWith('A')).length;
    t.diagnostic(`start order: ${starts.join(' ')}`);
    // The bound: A's running requests when B came (all 4 slots), then one per B request.
    assert.ok(aBefore <= 4 + 4, `${aBefore} of A's started before B's last: ${starts.join(' ')}`);
    assert.ok(aAccepted - aBefore >= 30, `only ${aAccepted - aBefore} of A's started after B's last`);
    const metrics = await (await fetch(`${s.url}/metrics`)).text();
    assert.match(
      metrics,
      new RegExp(`^qwen3_serve_api_key_rate_limited_total\\{api_key="team-a",limit="max_queued",model="tiny"\\} ${aRefused.length}$`, 'm'),
    );
  });
});
