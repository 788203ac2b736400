#!/usr/bin/env node
/** The exporter on its own: `npm run export -- --model <dir> --out <dir> …` (same as `qwen3-serve export`). */
import { main } from '../src/cli.js';

process.exitCode = await main(['export', ...process.argv.slice(2)]);
