import type { FastifyInstance } from 'fastify';
import { InvalidRequestError } from '../errors.js';
import { nestingDepth } from '../util/nesting.js';

/** JSON bodies nested deeper than this are refused before any recursive code walks them. */
export const MAX_BODY_DEPTH = 128;

/** JSON bodies: any parse failure (syntax, absurd nesting) is the client's 400. */
export function parseJsonBodies(app: FastifyInstance): void {
  app.removeContentTypeParser('application/json');
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (_req, body, done) => {
    if (body === '' || body === undefined) {
      done(new InvalidRequestError('The request body is empty; expected JSON.', { code: 'invalid_json' }), undefined);
      return;
    }
    let parsed: unknown;
    try {
      parsed = JSON.parse(body as string);
    } catch (err) {
      done(new InvalidRequestError(`The body is not valid JSON: ${(err as Error).message}`, { code: 'invalid_json' }), undefined);
      return;
    }
    if (nestingDepth(parsed, MAX_BODY_DEPTH) > MAX_BODY_DEPTH) {
      done(new InvalidRequestError(`The body is nested more than ${MAX_BODY_DEPTH} levels deep.`, { code: 'invalid_json' }), undefined);
      return;
    }
    done(null, parsed);
  });
}
