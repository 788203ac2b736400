/** The exported graphs' inputs and outputs: the names the manifest records and the runtime reads. */
export type Layout = 'fast' | 'standard';

/** Per-layer KV tensor names, as templates with `{layer}`. */
export interface KvNames {
  pastKey: string;
  pastValue: string;
  newKey: string;
  newValue: string;
  /** int8 caches only: per-token, per-head scales. */
  pastKeyScale?: string;
  pastValueScale?: string;
  newKeyScale?: string;
  newValueScale?: string;
}

/** Graph I/O names, recorded in the manifest so the runtime never guesses. */
export interface GraphIo extends KvNames {
  inputs: string[];
  outputs: string[];
}

export const FAST_IO_NAMES = {
  pastKey: 'past_key.{layer}',
  pastValue: 'past_value.{layer}',
  newKey: 'new_key.{layer}',
  newValue: 'new_value.{layer}',
  pastKeyScale: 'past_key_scale.{layer}',
  pastValueScale: 'past_value_scale.{layer}',
  newKeyScale: 'new_key_scale.{layer}',
  newValueScale: 'new_value_scale.{layer}',
} as const;

export const STANDARD_IO_NAMES: KvNames = {
  pastKey: 'past_key_values.{layer}.key',
  pastValue: 'past_key_values.{layer}.value',
  newKey: 'present.{layer}.key',
  newValue: 'present.{layer}.value',
};
