import type { FastifyReply, FastifyRequest } from 'fastify';

/**
 * An AbortSignal that fires when the client goes away before the response is complete,
 * so its generation stops and frees its batch slot at the next step.
 */
export function clientAbortSignal(request: FastifyRequest, reply: FastifyReply): AbortSignal {
  const controller = new AbortController();
  const onClose = () => {
    if (!reply.raw.writableFinished) controller.abort();
  };
  reply.raw.on('close', onClose);
  request.raw.on('aborted', () => controller.abort());
  // The server keeps half-closed connections open so that a probe's GET is still answered
  // (app.ts); a client that shuts its side while its generation runs is taken as gone, as
  // Node takes it by default, or a client that timed out would keep its slot to the end.
  const socket = request.raw.socket;
  const onEnd = () => {
    if (reply.raw.writableFinished) return;
    controller.abort();
    socket.destroy();
  };
  if (socket.readableEnded) onEnd();
  else {
    socket.once('end', onEnd);
    reply.raw.once('close', () => socket.off('end', onEnd));
  }
  return controller.signal;
}
