import assert from 'node:assert/strict';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { QwenTokenizer } from './tokenizer.js';

const FIXTURE = new URL('../../../test/fixtures/qwen3-tiny-a/', import.meta.url).pathname;

test('folders whose tokenizer files say the same share one tokenizer; another chat template or config gets its own', () => {
  const root = mkdtempSync(join(tmpdir(), 'qwen3-tok-'));
  try {
    /** A model folder with the fixture's tokenizer.json and its config, changed by `edit`. */
    const folder = (name: string, edit: (config: Record<string, unknown>) => void = () => {}, template?: string) => {
      const dir = join(root, name);
      mkdirSync(dir);
      copyFileSync(join(FIXTURE, 'tokenizer.json'), join(dir, 'tokenizer.json'));
      const config = JSON.parse(readFileSync(join(FIXTURE, 'tokenizer_config.json'), 'utf8')) as Record<string, unknown>;
      edit(config);
      writeFileSync(join(dir, 'tokenizer_config.json'), JSON.stringify(config));
      if (template !== undefined) writeFileSync(join(dir, 'chat_template.jinja'), template);
      return dir;
    };
    const a = QwenTokenizer.fromDir(folder('a'));
    assert.equal(QwenTokenizer.fromDir(folder('b')), a, 'the same files give the same instance');
    const templated = QwenTokenizer.fromDir(folder('c', undefined, '{{ messages }}'));
    assert.notEqual(templated, a);
    assert.equal(templated.files.config.chat_template, '{{ messages }}');
    const configured = QwenTokenizer.fromDir(folder('d', (c) => (c.model_max_length = 7)));
    assert.notEqual(configured, a);
    assert.equal(configured.files.config.model_max_length, 7);
    assert.deepEqual(configured.encode('Hello, world'), a.encode('Hello, world'));
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
