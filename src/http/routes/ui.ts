import { existsSync } from 'node:fs';
import fastifyStatic from '@fastify/static';
import type { FastifyPluginAsync } from 'fastify';

/** dist/ui, where `npm run build` puts the chat page (scripts/build_ui.ts). */
export const UI_DIR = new URL('../../../ui/', import.meta.url).pathname;

/**
 * The page may load only its own files and talk only to this server: no inline script,
 * no other origin, no framing. Whatever the model writes is shown as text or sanitised
 * markup (ui/app.ts); this is the second wall.
 */
const CSP =
  "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/** The chat page at `/` and its files under `/ui/`. */
export const uiRoutes: FastifyPluginAsync = async (app) => {
  if (!existsSync(UI_DIR)) throw new Error(`the chat page is not built (${UI_DIR}): run npm run build, or start with --no-ui`);
  // This plugin's own routes only (Fastify encapsulates hooks): the page and its files.
  app.addHook('onSend', async (_request, reply) => {
    reply.header('content-security-policy', CSP);
    reply.header('x-content-type-options', 'nosniff');
    reply.header('referrer-policy', 'no-referrer');
  });
  await app.register(fastifyStatic, { root: UI_DIR, prefix: '/ui/', index: false, wildcard: true });
  app.get('/', async (_request, reply) => reply.sendFile('index.html'));
};
