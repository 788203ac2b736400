import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { ModelFormatError } from '../errors.js';
import { appendedSpecialToken, detectTask, pipelineTag } from './task.js';

describe('src/model/task.test', () => {
  const root = mkdtempSync(join(tmpdir(), 'qwen3-task-'));
  after(() => rmSync(root, { recursive: true, force: true }));

  function checkpoint(name: string, files: Record<string, string>): string {
    const dir = join(root, name);
    for (const [file, text] of Object.entries(files)) {
      mkdirSync(join(dir, file, '..'), { recursive: true });
      writeFileSync(join(dir, file), text);
    }
    mkdirSync(dir, { recursive: true });
    return dir;
  }

  const modules = (pooling: boolean, normalize: boolean) =>
    JSON.stringify([
      { idx: 0, name: '0', path: '', type: 'sentence_transformers.models.Transformer' },
      ...(pooling ? [{ idx: 1, name: '1', path: '1_Pooling', type: 'sentence_transformers.models.Pooling' }] : []),
      ...(normalize ? [{ idx: 2, name: '2', path: '2_Normalize', type: 'sentence_transformers.models.Normalize' }] : []),
    ]);

  test('sentence-transformers files with last-token pooling make an embedding model', () => {
    const dir = checkpoint('embed', { 'modules.json': modules(true, true), '1_Pooling/config.json': '{"pooling_mode_lasttoken": true}' });
    assert.deepEqual(detectTask(dir).task, 'embed');
  });

  test('other pooling, or no Normalize module, is refused rather than served wrongly', () => {
    const mean = checkpoint('mean', { 'modules.json': modules(true, true), '1_Pooling/config.json': '{"pooling_mode_mean_tokens": true}' });
    assert.throws(() => detectTask(mean), ModelFormatError);
    const raw = checkpoint('raw', { 'modules.json': modules(true, false), '1_Pooling/config.json': '{"pooling_mode_lasttoken": true}' });
    assert.throws(() => detectTask(raw), /Normalize/);
  });

  test("a model card's pipeline_tag text-ranking makes a reranker; nothing said is chat", () => {
    const card = '---\nlicense: apache-2.0\nbase_model:\n- Qwen/Qwen3-0.6B-Base\npipeline_tag: text-ranking\n---\n# Qwen3-Reranker\n';
    assert.equal(pipelineTag(card), 'text-ranking');
    assert.equal(pipelineTag('# no front matter\npipeline_tag: text-ranking\n'), null);
    assert.equal(detectTask(checkpoint('rerank', { 'README.md': card })).task, 'rerank');
    assert.equal(detectTask(checkpoint('chat', { 'README.md': '---\npipeline_tag: text-generation\n---\n' })).task, 'chat');
    assert.equal(detectTask(checkpoint('bare', {})).task, 'chat');
  });

  test("the token a tokenizer's template post-processor appends, also inside a Sequence", () => {
    const template = {
      type: 'TemplateProcessing',
      single: [{ Sequence: { id: 'A', type_id: 0 } }, { SpecialToken: { id: '<|endoftext|>', type_id: 0 } }],
      special_tokens: { '<|endoftext|>': { id: '<|endoftext|>', ids: [151643], tokens: ['<|endoftext|>'] } },
    };
    assert.equal(appendedSpecialToken({ post_processor: template }), 151643);
    assert.equal(appendedSpecialToken({ post_processor: { type: 'Sequence', processors: [{ type: 'ByteLevel' }, template] } }), 151643);
    assert.equal(appendedSpecialToken({ post_processor: { type: 'ByteLevel' } }), null);
    assert.equal(appendedSpecialToken({ post_processor: { ...template, single: [{ Sequence: { id: 'A', type_id: 0 } }] } }), null);
  });
});
