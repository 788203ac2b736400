import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ModelFormatError } from '../errors.js';
import { readJsonFile } from './config.js';

/** What a model is served for: chat and completions, embeddings, or reranking. */
export type ModelTask = 'chat' | 'embed' | 'rerank';
export const MODEL_TASKS: readonly ModelTask[] = ['chat', 'embed', 'rerank'];

export interface DetectedTask {
  task: ModelTask;
  /** Where the checkpoint says so, for the start log (null: nothing said, chat assumed). */
  evidence: string | null;
}

/** The `pipeline_tag` of a model card's YAML front matter (README.md), if it has one. */
export function pipelineTag(readme: string): string | null {
  const front = /^---\r?\n([\s\S]*?)\r?\n---/.exec(readme);
  if (!front) return null;
  const line = /^pipeline_tag:\s*["']?([\w-]+)["']?\s*$/m.exec(front[1]);
  return line ? line[1] : null;
}

/**
 * Reads the job a checkpoint does from what ships with it: sentence-transformers' modules.json
 * with last-token pooling is an embedding model (Qwen3-Embedding), a model card tagged
 * `text-ranking` a reranker (Qwen3-Reranker); anything else is a chat model.
 */
export function detectTask(modelDir: string): DetectedTask {
  const modules = join(modelDir, 'modules.json');
  if (existsSync(modules)) {
    const list = readJsonFile(modules);
    const types = Array.isArray(list) ? list.map((m) => String((m as { type?: unknown }).type ?? '')) : [];
    const pooling = (list as Array<{ type?: string; path?: string }>).find((m) => String(m.type).endsWith('.Pooling'));
    if (pooling) {
      const cfgPath = join(modelDir, pooling.path ?? '1_Pooling', 'config.json');
      const cfg = existsSync(cfgPath) ? (readJsonFile(cfgPath) as Record<string, unknown>) : {};
      if (cfg.pooling_mode_lasttoken !== true) throw new ModelFormatError(`${cfgPath}: only last-token pooling (Qwen3-Embedding's) is supported.`);
      if (!types.some((t) => t.endsWith('.Normalize')))
        throw new ModelFormatError(`${modules}: embeddings without the Normalize module are not supported (Qwen3-Embedding normalizes).`);
      return { task: 'embed', evidence: 'modules.json: last-token pooling, normalized' };
    }
  }
  const readme = join(modelDir, 'README.md');
  if (existsSync(readme) && pipelineTag(readFileSync(readme, 'utf8')) === 'text-ranking') {
    return { task: 'rerank', evidence: 'README.md: pipeline_tag text-ranking' };
  }
  return { task: 'chat', evidence: null };
}

/**
 * The token id a tokenizer's post-processor appends to a single text (Qwen3-Embedding's
 * appends `<|endoftext|>`), or null: tokenizer.json's TemplateProcessing, as the Hugging Face
 * tokenizers library applies it with add_special_tokens.
 */
export function appendedSpecialToken(tokenizerJson: unknown): number | null {
  return templateEnd((tokenizerJson as { post_processor?: unknown }).post_processor);
}

interface PostProcessor {
  type?: string;
  processors?: unknown[];
  single?: unknown[];
  special_tokens?: Record<string, { ids?: number[] }>;
}

function templateEnd(processor: unknown): number | null {
  const post = processor as PostProcessor | null | undefined;
  // A Sequence of processors (ByteLevel, then the template) ends as its last template does.
  if (post?.type === 'Sequence' && Array.isArray(post.processors)) {
    for (const p of [...post.processors].reverse()) {
      const id = templateEnd(p);
      if (id !== null) return id;
    }
    return null;
  }
  if (post?.type !== 'TemplateProcessing' || !Array.isArray(post.single)) return null;
  const last = post.single[post.single.length - 1] as { SpecialToken?: { id?: string } } | undefined;
  const name = last?.SpecialToken?.id;
  if (!name) return null;
  return post.special_tokens?.[name]?.ids?.[0] ?? null;
}
