import { parseArgs } from 'node:util';
import type { z } from 'zod';
import { ConfigError } from '../errors.js';

/** One command-line flag, with the environment variable that can set it instead. */
export interface FlagSpec {
  name: string;
  type: 'string' | 'boolean';
  help: string;
  /** Environment variable read when the flag is absent. */
  env?: string;
  /** Shown in --help; the zod schema applies the real default. */
  default?: string;
}

export type FlagValues = Record<string, string | boolean | undefined>;

/**
 * Parses argv against the specs (unknown flags and stray arguments are errors), then
 * fills absent flags from their environment variables.
 */
export function parseFlags(specs: FlagSpec[], argv: string[], env: NodeJS.ProcessEnv = process.env): FlagValues {
  const options: Record<string, { type: 'string' | 'boolean' }> = { help: { type: 'boolean' } };
  for (const s of specs) options[s.name] = { type: s.type };
  let values: FlagValues;
  try {
    const parsed = parseArgs({ args: argv, options, strict: true, allowPositionals: false });
    values = parsed.values as FlagValues;
  } catch (err) {
    throw new ConfigError((err as Error).message.replace(/^TypeError \[\w+\]: /, ''));
  }
  for (const s of specs) {
    if (values[s.name] !== undefined || !s.env) continue;
    const raw = env[s.env];
    if (raw === undefined || raw === '') continue;
    if (s.type === 'boolean') {
      if (!/^(1|0|true|false|yes|no)$/i.test(raw)) throw new ConfigError(`${s.env}=${raw}: expected true or false.`);
      values[s.name] = /^(1|true|yes)$/i.test(raw);
    } else {
      values[s.name] = raw;
    }
  }
  return values;
}

export function formatHelp(usage: string, description: string, specs: FlagSpec[]): string {
  const rows = specs.map((s) => {
    const flag = `--${s.name}${s.type === 'string' ? ' <value>' : ''}`;
    const extra = [s.default !== undefined ? `default: ${s.default}` : '', s.env ? `env: ${s.env}` : ''].filter(Boolean).join('; ');
    return `  ${flag.padEnd(34)} ${s.help}${extra ? ` (${extra})` : ''}`;
  });
  return `Usage: ${usage}\n\n${description}\n\nOptions:\n${rows.join('\n')}\n  ${'--help'.padEnd(34)} Show this help\n`;
}

/** Turns a zod failure into a message naming the flag. */
export function describeIssue(path: PropertyKey[], message: string, specs: FlagSpec[]): string {
  const name = String(path[0] ?? '');
  const spec = specs.find((s) => s.name === name);
  const env = spec?.env ? ` (or ${spec.env})` : '';
  return `invalid value for --${name}${env}: ${message}`;
}

/**
 * A command's flags parsed and validated: the schema's output, or null when `--help` was
 * asked (the help has then been printed).
 */
export function parseCommand<S extends z.ZodType>(specs: FlagSpec[], schema: S, argv: string[], help: string, env: NodeJS.ProcessEnv = process.env): z.infer<S> | null {
  const flags = parseFlags(specs, argv, env);
  if (flags.help) {
    process.stdout.write(help);
    return null;
  }
  const parsed = schema.safeParse(flags);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new ConfigError(describeIssue(issue.path, issue.message, specs));
  }
  return parsed.data;
}
