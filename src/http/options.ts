/** What the HTTP layer needs to know of the server's settings. */
export interface HttpOptions {
  /** Prefix cache scope: `key` gives each API key blocks of its own, `shared` shares them all. */
  prefixCacheScope: 'shared' | 'key';
  /** Allowed CORS origins; ['*'] for any, [] to disable CORS. */
  corsOrigins: string[];
  /** A keep-alive comment is written to a stream idle this long. */
  keepAliveMs: number;
  bodyLimit: number;
  /** Milliseconds to receive a whole request, its headers, and between requests on a kept-alive connection. */
  requestTimeoutMs: number;
  headersTimeoutMs: number;
  idleTimeoutMs: number;
  /** Bytes of a stream a client may leave unread before the request is aborted. */
  streamBufferLimit: number;
  /** Serve the chat page at `/`. */
  ui: boolean;
}
