import assert from 'node:assert/strict';
import { test } from 'node:test';
import { readTokenizerFiles, VocabularyTable } from './token_vocabulary.js';
import { QwenTokenizer } from './tokenizer.js';

const FIXTURE = new URL('../../../test/fixtures/qwen3-tiny-a/', import.meta.url).pathname;

test("the engine's vocabulary table agrees with the tokenizer on every token's id, bytes and spelling", () => {
  const files = readTokenizerFiles(FIXTURE);
  const table = VocabularyTable.fromFiles(files);
  const tokenizer = new QwenTokenizer(files);
  // The table a worker gets from another thread is the same table.
  const copy = new VocabularyTable(structuredClone(table.data()));
  const vocab = (files.tokenizer.model as { vocab: Record<string, number> }).vocab;
  const spelled = table.byteLevelVocabulary(table.vocabSize + 10);
  assert.equal(spelled.length, table.vocabSize + 10);
  let checked = 0;
  const entries = Object.entries(vocab);
  for (const [piece, id] of entries) {
    if (!table.specialIds.has(id)) assert.equal(spelled[id], piece);
    checked++;
  }
  assert.ok(checked > 150_000);
  // tokenId scans the table (the engine asks it a few times at start): every 500th piece, and the last.
  const sample = entries.filter((_, i) => i % 500 === 0 || i === entries.length - 1);
  for (const [piece, id] of sample) assert.equal(table.tokenId(piece), id, piece);
  assert.deepEqual(copy.byteLevelVocabulary(table.vocabSize), spelled.slice(0, table.vocabSize));
  assert.deepEqual(copy.specialIds, table.specialIds);
  assert.equal(copy.tokenId('assistant'), table.tokenId('assistant'));
  for (const id of table.specialIds) {
    const text = new TextDecoder().decode(table.tokenBytes(id)!);
    assert.equal(table.tokenId(text), tokenizer.tokenId(text));
    assert.equal(tokenizer.decode([id]), text);
    assert.equal(spelled[id], '');
  }
  // Text decodes to the same string from the table's bytes as from the tokenizer.
  const ids = tokenizer.encode('Hello, wörld! 你好 <|im_start|>assistant\n');
  const bytes = ids.flatMap((id) => [...table.tokenBytes(id)!]);
  assert.equal(new TextDecoder().decode(new Uint8Array(bytes)), tokenizer.decode(ids));
  assert.equal(table.tokenBytes(-1), null);
  assert.equal(table.tokenBytes(table.vocabSize), null);
  assert.equal(table.tokenId('no such token, surely'), undefined);
  assert.equal(table.tokenId('constructor'), tokenizer.tokenId('constructor'));
});
