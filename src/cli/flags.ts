import { parseArgs } from 'node:util';
import { z } from 'zod';
import { ConfigError } from '../errors.js';

/**
 * One command-line flag, declared once: its environment variable, default, validation
 * and help. `--help`, validation and the README's configuration table all come from it.
 */
export interface Flag<S extends z.ZodType = z.ZodType> {
  type: 'string' | 'boolean';
  /** Environment variable read when the flag is absent. */
  env?: string;
  /** The value when neither flag nor variable is given, as a user would type it (validated like one). */
  default?: string;
  /** Shown instead of `default` for a default the code works out (e.g. "all cores"). */
  defaultText?: string;
  help: string;
  /** The flag may be given several times; its value is then the list (a variable gives one). */
  multiple?: true;
  schema: S;
}

export type Flags = Record<string, Flag>;
export type FlagValues = Record<string, string | string[] | boolean | undefined>;
export type ConfigOf<F extends Flags> = { [K in keyof F]: z.output<F[K]['schema']> };

/** The zod object validating a command's flags (after defaults are filled in). */
export function flagSchema<F extends Flags>(flags: F): z.ZodType<ConfigOf<F>> {
  const shape: Record<string, z.ZodType> = {};
  for (const [name, f] of Object.entries(flags)) shape[name] = f.schema;
  return z.object(shape) as unknown as z.ZodType<ConfigOf<F>>;
}

/**
 * Parses argv against the flags (unknown flags and stray arguments are errors), then
 * fills absent flags from their environment variables, then from their defaults.
 */
export function parseFlags(flags: Flags, argv: string[], env: NodeJS.ProcessEnv = process.env): FlagValues {
  const options: Record<string, { type: 'string' | 'boolean'; multiple?: boolean }> = { help: { type: 'boolean' } };
  for (const [name, f] of Object.entries(flags)) options[name] = f.multiple ? { type: f.type, multiple: true } : { type: f.type };
  let values: FlagValues;
  try {
    const parsed = parseArgs({ args: argv, options, strict: true, allowPositionals: false });
    values = parsed.values as FlagValues;
  } catch (err) {
    throw new ConfigError((err as Error).message.replace(/^TypeError \[\w+\]: /, ''));
  }
  for (const [name, f] of Object.entries(flags)) {
    if (values[name] !== undefined) continue;
    const raw = f.env ? env[f.env] : undefined;
    if (raw !== undefined && raw !== '') {
      if (f.type === 'boolean') {
        if (!/^(1|0|true|false|yes|no)$/i.test(raw)) throw new ConfigError(`${f.env}=${raw}: expected true or false.`);
        values[name] = /^(1|true|yes)$/i.test(raw);
      } else {
        values[name] = f.multiple ? [raw] : raw;
      }
    } else if (f.type === 'boolean') {
      values[name] = false;
    } else if (f.default !== undefined) {
      values[name] = f.multiple ? [f.default] : f.default;
    }
  }
  return values;
}

/** The default as people read it. */
export function shownDefault(f: Flag): string | undefined {
  return f.defaultText ?? f.default ?? (f.type === 'boolean' ? 'off' : undefined);
}

export function formatHelp(usage: string, description: string, flags: Flags): string {
  const rows = Object.entries(flags).map(([name, f]) => {
    const flag = `--${name}${f.type === 'string' ? ' <value>' : ''}`;
    const shown = shownDefault(f);
    const extra = [shown !== undefined ? `default: ${shown}` : '', f.env ? `env: ${f.env}` : ''].filter(Boolean).join('; ');
    return `  ${flag.padEnd(34)} ${f.help.replace(/`/g, '')}${extra ? ` (${extra})` : ''}`;
  });
  return `Usage: ${usage}\n\n${description}\n\nOptions:\n${rows.join('\n')}\n  ${'--help'.padEnd(34)} Show this help\n`;
}

/** The README's configuration table for a command's flags (a test keeps the README equal to it). */
export function markdownFlagTable(flags: Flags): string {
  const rows = Object.entries(flags).map(([name, f]) => {
    const shown = shownDefault(f);
    return `| \`--${name}${f.type === 'string' ? ' <v>' : ''}\` | ${f.env ? `\`${f.env}\`` : ''} | ${shown ?? 'none'} | ${f.help} |`;
  });
  return ['| flag | environment | default | meaning |', '|---|---|---|---|', ...rows].join('\n');
}

/** Turns a zod failure into a message naming the flag. */
export function describeIssue(path: PropertyKey[], message: string, flags: Flags): string {
  const name = String(path[0] ?? '');
  const f = flags[name];
  const env = f?.env ? ` (or ${f.env})` : '';
  return `invalid value for --${name}${env}: ${message}`;
}

/**
 * A command's flags parsed and validated, or null when `--help` was asked (the help has
 * then been printed).
 */
export function parseCommand<F extends Flags>(flags: F, argv: string[], help: string, env: NodeJS.ProcessEnv = process.env): ConfigOf<F> | null {
  const values = parseFlags(flags, argv, env);
  if (values.help) {
    process.stdout.write(help);
    return null;
  }
  const parsed = flagSchema(flags).safeParse(values);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new ConfigError(describeIssue(issue.path, issue.message, flags));
  }
  return parsed.data;
}

// Value types shared by the commands' flags.
export const wholeNumber = (min: number, max = Number.MAX_SAFE_INTEGER) =>
  z.string().regex(/^\d+$/, 'expected a whole number').transform(Number).pipe(z.number().int().min(min).max(max));

export const seconds = (min: number, max: number) =>
  z
    .string()
    .regex(/^\d+(\.\d+)?$/, 'expected seconds, such as 30 or 0.5')
    .transform(Number)
    .pipe(z.number().min(min).max(max));

export const decimal = z
  .string()
  .regex(/^-?\d+(\.\d+)?$/, 'expected a number')
  .transform(Number);

const UNITS: Record<string, number> = { '': 1, b: 1, kb: 1e3, mb: 1e6, gb: 1e9, kib: 2 ** 10, mib: 2 ** 20, gib: 2 ** 30 };

/** "2GiB", "500MB", "123456", or a fraction like "0.3". */
export function parseSize(text: string): number | null {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(text);
  if (!m) return null;
  const unit = UNITS[m[2].toLowerCase()];
  if (unit === undefined) return null;
  return Number(m[1]) * unit;
}

/** Bytes, or with `allowFraction` also a fraction (≤ 1) of free memory. */
export const size = (allowFraction: boolean) =>
  z.string().transform((s, c) => {
    const v = parseSize(s);
    if (v === null || v <= 0 || (!allowFraction && v < 1) || (v > 1 && !Number.isInteger(v))) {
      c.addIssue({
        code: 'custom',
        message: allowFraction ? 'expected bytes (e.g. 2GiB) or a fraction of free memory (e.g. 0.3)' : 'expected a size such as 4MiB',
      });
      return z.NEVER;
    }
    return v;
  });
