#!/usr/bin/env node
/** Regenerates README.md's configuration table from the serve flags: `npm run docs:flags`. */
import { updateReadme } from '../src/cli/readme_flags.js';

updateReadme(new URL('../../README.md', import.meta.url).pathname);
