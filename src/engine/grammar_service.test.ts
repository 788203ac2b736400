import assert from 'node:assert/strict';
import { test } from 'node:test';
import { InvalidRequestError } from '../errors.js';
import { QwenTokenizer } from '../text/tokenizer.js';
import { GrammarService, MAX_GRAMMAR_DEPTH, type RemoteConstraint } from './grammar_service.js';

const FIXTURE = new URL('../../../test/fixtures/qwen3-tiny-a/', import.meta.url).pathname;
const tokenizer = QwenTokenizer.fromDir(FIXTURE);
const V = 151936;
const EOS = tokenizer.tokenId('<|im_end|>')!;

function service(compileTimeoutMs: number): GrammarService {
  return new GrammarService({
    vocabulary: tokenizer.byteLevelVocabulary(V),
    stopTokenIds: [EOS],
    whitespace: 'compact',
    compileTimeoutMs,
    onProgress: () => {},
  });
}

/** The constraint's mask once the grammar thread has sent it. */
async function maskOf(c: RemoteConstraint): Promise<Float32Array> {
  for (let i = 0; i < 2000 && !c.ready; i++) await new Promise((r) => setTimeout(r, 5));
  assert.ok(c.ready, 'the mask arrives');
  const logits = new Float32Array(V);
  c.mask(logits);
  return logits;
}

const allowed = (logits: Float32Array, text: string) => logits[tokenizer.tokenId(text)!] === 0;

test('a compile over the time bound is a 400 naming it; the thread is replaced and live matchers go on where they were', async () => {
  const grammars = service(1500);
  try {
    const choice = await grammars.open({ param: 'guided_choice', spec: { type: 'choice', choices: ['yes please', 'no thanks'] } }, [EOS]);
    assert.ok(allowed(await maskOf(choice), 'yes'));
    choice.accept(tokenizer.tokenId('no')!);
    const afterNo = await maskOf(choice);
    assert.ok(!allowed(afterNo, 'yes') && allowed(afterNo, 'Ġthanks'), 'after "no" only " thanks" continues');

    const started = performance.now();
    const slow = { param: 'guided_json', spec: { type: 'json_schema' as const, schema: '{"type": "string", "maxLength": 500000}' } };
    await assert.rejects(grammars.open(slow, [EOS]), (err: unknown) => {
      assert.ok(err instanceof InvalidRequestError);
      assert.match(err.message, /longer than 1500 ms.*--grammar-compile-timeout/);
      return true;
    });
    assert.ok(performance.now() - started < 10_000);
    assert.equal(grammars.stats().rebuilds, 1);
    // Sent again, it is refused at once instead of holding the thread once more.
    const again = performance.now();
    await assert.rejects(grammars.open(slow, [EOS]), /longer than 1500 ms/);
    assert.ok(performance.now() - again < 500);

    // The matcher was rebuilt in the new thread with "no" replayed.
    const replayed = await maskOf(choice);
    assert.deepEqual(replayed, afterNo);
    choice.accept(tokenizer.tokenId('Ġthanks')!);
    const end = await maskOf(choice);
    assert.equal(end[EOS], 0);
    assert.equal(end.filter((x) => x === 0).length, 1, 'only the stop token is left');
    choice.dispose();
    assert.equal(grammars.stats().state, 'ready');
  } finally {
    await grammars.shutdown();
  }
});

test('specs too deep or too large are refused before they reach xgrammar', async () => {
  const grammars = service(5000);
  try {
    let deep: unknown = { type: 'string' };
    for (let i = 0; i < MAX_GRAMMAR_DEPTH; i++) deep = { type: 'array', items: deep };
    await assert.rejects(
      grammars.open({ param: 'response_format', spec: { type: 'json_schema', schema: JSON.stringify(deep) } }, [EOS]),
      /nested more than 64 levels/,
    );
    await assert.rejects(
      grammars.open({ param: 'guided_grammar', spec: { type: 'ebnf', grammar: `root ::= "${'a'.repeat(300_000)}"` } }, [EOS]),
      /at most 262144/,
    );
    assert.equal(grammars.stats().rebuilds, 0);
  } finally {
    await grammars.shutdown();
  }
});
