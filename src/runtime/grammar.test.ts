import assert from 'node:assert/strict';
import { test } from 'node:test';
import { InvalidRequestError } from '../errors.js';
import { QwenTokenizer } from '../text/tokenizer.js';
import { GrammarCompiler, type GrammarRequest } from './grammar.js';

const FIXTURE = new URL('../../../test/fixtures/qwen3-tiny-a/', import.meta.url).pathname;
const tokenizer = QwenTokenizer.fromDir(FIXTURE);
const V = 151936;
const EOS = tokenizer.tokenId('<|im_end|>')!;
const compilerPromise = GrammarCompiler.create(tokenizer.byteLevelVocabulary(V), [EOS]);
const choice = (choices: string[]): GrammarRequest => ({ param: 'guided_choice', spec: { type: 'choice', choices } });

test('a constraint allows exactly the tokens that continue the grammar, then only the stop token', async () => {
  const compiler = await compilerPromise;
  const c = await compiler.constraint(choice(['yes', 'no']), [EOS]);
  const logits = new Float32Array(V);
  const allowed = await c.mask(logits);
  const open = [...logits.keys()].filter((id) => logits[id] === 0);
  assert.equal(open.length, allowed);
  // Every allowed token's text is a prefix of a choice, and the whole choices are there.
  const text = (id: number) => new TextDecoder().decode(tokenizer.tokenBytes(id)!);
  for (const id of open) assert.ok('yes'.startsWith(text(id)) || 'no'.startsWith(text(id)), JSON.stringify(text(id)));
  for (const word of ['yes', 'no', 'y', 'n']) assert.ok(open.includes(tokenizer.tokenId(word)!), word);
  assert.ok(c.accept(tokenizer.tokenId('no')!));
  const after = new Float32Array(V);
  assert.equal(await c.mask(after), 1, 'only the stop token is left');
  assert.equal(after[EOS], 0);
  assert.ok(!c.terminated);
  assert.ok(c.accept(EOS));
  assert.ok(c.terminated);
  c.dispose();
  c.dispose(); // twice is safe
});

test('compiled grammars are kept for repeats, a bounded number, and matchers outlive their eviction', async () => {
  const compiler = await compilerPromise;
  const first = await compiler.constraint(choice(['a0']), [EOS]);
  for (let i = 1; i < 40; i++) (await compiler.constraint(choice([`a${i}`]), [EOS])).dispose();
  assert.equal(compiler.keptCount, 32);
  // The first grammar was evicted (disposed); its matcher still works.
  const logits = new Float32Array(V);
  assert.ok((await first.mask(logits)) > 0);
  assert.ok(first.accept(tokenizer.tokenId('a')!));
  first.dispose();
});

test('a spec xgrammar refuses is a 400 with its reason, and compiling goes on', async () => {
  const compiler = await compilerPromise;
  await assert.rejects(
    compiler.constraint({ param: 'response_format', spec: { type: 'json_schema', schema: '{"type": "objectx"}' } }, [EOS]),
    (err: unknown) => {
      assert.ok(err instanceof InvalidRequestError);
      assert.equal(err.param, 'response_format');
      assert.match(err.message, /Unsupported type "objectx"/);
      return true;
    },
  );
  await assert.rejects(compiler.constraint({ param: 'guided_grammar', spec: { type: 'ebnf', grammar: 'root ::= (' } }, [EOS]), /EBNF parser error/);
  const ok = await compiler.constraint({ param: 'response_format', spec: { type: 'json_object' } }, [EOS]);
  const logits = new Float32Array(V);
  await ok.mask(logits);
  assert.equal(logits[tokenizer.tokenId('{')!], 0);
  assert.equal(logits[tokenizer.tokenId('[')!], -Infinity);
  ok.dispose();
});

test('a spec no text can satisfy is a 400, not an empty answer', async () => {
  const compiler = await compilerPromise;
  for (const schema of [{ $ref: '#' }, { $ref: '#/$defs/a', $defs: { a: { $ref: '#/$defs/b' }, b: { $ref: '#/$defs/a' } } }]) {
    await assert.rejects(
      compiler.constraint({ param: 'response_format', spec: { type: 'json_schema', schema: JSON.stringify(schema) } }, [EOS]),
      (err: unknown) => err instanceof InvalidRequestError && err.param === 'response_format' && /accepts no output/.test(err.message),
    );
  }
  // A schema that can be met still compiles next to them.
  (await compiler.constraint({ param: 'response_format', spec: { type: 'json_schema', schema: '{"type": "integer"}' } }, [EOS])).dispose();
});

test('JSON whitespace: compact is one line in json.dumps spacing, any allows whitespace between tokens', async () => {
  const schema: GrammarRequest = {
    param: 'response_format',
    spec: { type: 'json_schema', schema: '{"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}' },
  };
  const space = tokenizer.encode(' ')[0];
  const newline = tokenizer.encode('\n')[0];
  const allowedAfter = async (compiler: GrammarCompiler, text: string) => {
    const c = await compiler.constraint(schema, [EOS]);
    for (const id of tokenizer.encode(text)) assert.ok(c.accept(id), `${text}: token ${id}`);
    const logits = new Float32Array(V);
    await c.mask(logits);
    c.dispose();
    return (id: number) => logits[id] === 0;
  };
  const compact = await compilerPromise;
  const any = await GrammarCompiler.create(tokenizer.byteLevelVocabulary(V), [EOS], 'any');
  const compactOpen = await allowedAfter(compact, '{');
  const anyOpen = await allowedAfter(any, '{');
  assert.ok(!compactOpen(space) && !compactOpen(newline), 'compact: nothing between { and the key');
  assert.ok(anyOpen(space) && anyOpen(newline), 'any: whitespace after {');
  const compactColon = await allowedAfter(compact, '{"a":');
  assert.ok(compactColon(space) && !compactColon(tokenizer.encode('1')[0]), 'compact: ": " as json.dumps writes it');
});

test('a hundred refused grammars leave the compiler working (refusals abort only its throwaway parser)', async () => {
  const compiler = await compilerPromise;
  for (let i = 0; i < 100; i++) {
    await assert.rejects(
      compiler.constraint({ param: 'guided_grammar', spec: { type: 'ebnf', grammar: `root ::= u${i}` } }, [EOS]),
      /EBNF parser error/,
    );
  }
  // A schema too deep for xgrammar's stack fails in the parser too.
  let deep: Record<string, unknown> = { type: 'string' };
  for (let i = 0; i < 70; i++) deep = { type: 'object', properties: { a: deep }, required: ['a'] };
  await assert.rejects(
    compiler.constraint({ param: 'guided_json', spec: { type: 'json_schema', schema: JSON.stringify(deep) } }, [EOS]),
    InvalidRequestError,
  );
  assert.equal(compiler.broken, null);
  const c = await compiler.constraint({ param: 'guided_regex', spec: { type: 'regex', pattern: '[a-z]+' } }, [EOS]);
  const logits = new Float32Array(V);
  assert.ok((await c.mask(logits)) > 0);
  assert.equal(logits[tokenizer.tokenId('abc')!], 0);
  assert.equal(logits[tokenizer.tokenId('1')!], -Infinity);
  c.dispose();
});
