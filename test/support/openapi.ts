import { readFileSync } from 'node:fs';
import { Ajv2020 } from 'ajv/dist/2020.js';

/**
 * Validators for OpenAI's published response schemas (test/fixtures/openai-openapi: the
 * components of OpenAI's OpenAPI document our endpoints answer with).
 */
const doc = JSON.parse(readFileSync(new URL('../../../test/fixtures/openai-openapi/openai-openapi.subset.json', import.meta.url), 'utf8')) as Record<
  string,
  unknown
>;
/** OpenAPI 3.0's `nullable: true` means "or null": rewritten as JSON Schema's anyOf. */
function denull(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(denull);
  if (v === null || typeof v !== 'object') return v;
  const { nullable, ...rest } = v as Record<string, unknown>;
  const out = Object.fromEntries(Object.entries(rest).map(([k, x]) => [k, denull(x)]));
  return nullable === true ? { anyOf: [out, { type: 'null' }] } : out;
}

/** A validator over `schemas`; vendor keywords are not JSON Schema (accepted), formats are not checked. */
function validatorOf(schemas: unknown): (name: string, value: unknown) => void {
  const ajv = new Ajv2020({ strict: false, validateFormats: false, allErrors: false });
  ajv.addSchema({ ...(schemas as object), $id: 'openai.json' });
  return (name, value) => {
    const validate = ajv.getSchema(`openai.json#/components/schemas/${name}`);
    if (!validate) throw new Error(`no schema ${name}`);
    if (!validate(value)) {
      const e = validate.errors?.[0];
      throw new Error(`not a valid ${name}: ${e?.instancePath} ${e?.message} ${JSON.stringify(e?.params)}\n${JSON.stringify(value).slice(0, 600)}`);
    }
  };
}

/** Throws, naming the schema and the first error, unless `value` is a valid `name`. */
export const assertOpenAI = validatorOf(denull(doc));

/** OpenAI's request schemas list overlapping alternatives under oneOf (a message is both an EasyInputMessage and an InputMessage); its API takes any that fits. */
function anyOfAlternatives(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(anyOfAlternatives);
  if (v === null || typeof v !== 'object') return v;
  return Object.fromEntries(Object.entries(v as Record<string, unknown>).map(([k, x]) => [k === 'oneOf' ? 'anyOf' : k, anyOfAlternatives(x)]));
}

/** Throws unless `value` is a valid request body `name` (`CreateResponse`, `CreateChatCompletionRequest`). */
export const assertOpenAIRequest = validatorOf(anyOfAlternatives(denull(doc)));
