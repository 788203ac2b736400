#!/usr/bin/env node
/**
 * Puts the chat page together in dist/ui (part of `npm run build`): the page and its
 * stylesheet from ui/, app.js compiled by `tsc -p ui`, and the browser builds of marked
 * and DOMPurify from node_modules, so the page needs no network at run time.
 */
import { copyFileSync, mkdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';

const root = join(dirname(new URL(import.meta.url).pathname), '../..');
const out = join(root, 'dist/ui');
const require = createRequire(join(root, 'package.json'));
mkdirSync(join(out, 'vendor'), { recursive: true });
for (const file of ['index.html', 'style.css']) copyFileSync(join(root, 'ui', file), join(out, file));
// Each package's own entry point locates its directory (neither exports package.json).
copyFileSync(join(dirname(require.resolve('marked')), 'marked.esm.js'), join(out, 'vendor/marked.js'));
copyFileSync(join(dirname(require.resolve('dompurify')), 'purify.es.mjs'), join(out, 'vendor/purify.js'));
