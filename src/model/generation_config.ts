import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { readJsonFile } from './config.js';

/** Sampling defaults and stop ids from a checkpoint's generation_config.json. */
export interface GenerationConfig {
  eosTokenIds: number[];
  temperature: number | null;
  topP: number | null;
  topK: number | null;
  minP: number | null;
  repetitionPenalty: number | null;
}

/** Qwen3's end ids (<|im_end|>, <|endoftext|>) when a checkpoint says nothing. */
const QWEN3_EOS = [151645, 151643];

function num(v: unknown): number | null {
  return typeof v === 'number' && Number.isFinite(v) ? v : null;
}

export function readGenerationConfig(dir: string): GenerationConfig {
  const path = join(dir, 'generation_config.json');
  const raw = existsSync(path) ? (readJsonFile(path) as Record<string, unknown>) : {};
  const eos = raw.eos_token_id;
  const eosTokenIds = Array.isArray(eos) ? eos.filter((x): x is number => typeof x === 'number') : typeof eos === 'number' ? [eos] : QWEN3_EOS;
  return {
    eosTokenIds: eosTokenIds.length > 0 ? eosTokenIds : QWEN3_EOS,
    temperature: num(raw.temperature),
    topP: num(raw.top_p),
    topK: num(raw.top_k),
    minP: num(raw.min_p),
    repetitionPenalty: num(raw.repetition_penalty),
  };
}
