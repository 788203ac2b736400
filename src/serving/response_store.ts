/** A stored response and the conversation it ended (for previous_response_id). */
export interface StoredResponse {
  response: Record<string, unknown>;
  /** Chat messages of the conversation through this response's output. */
  messages: unknown[];
}

/**
 * Responses kept for `previous_response_id`, retrieve and delete: the newest `limit`, the
 * oldest dropped first (an evicted id is then unknown, a 404). Memory only: a restart
 * forgets them, as a replica behind a load balancer may not hold another's.
 */
export class ResponseStore {
  private readonly items = new Map<string, StoredResponse>();

  constructor(readonly limit: number) {}

  put(id: string, item: StoredResponse): void {
    if (this.limit === 0) return;
    this.items.delete(id);
    this.items.set(id, item);
    while (this.items.size > this.limit) this.items.delete(this.items.keys().next().value!);
  }

  get(id: string): StoredResponse | undefined {
    return this.items.get(id);
  }

  delete(id: string): boolean {
    return this.items.delete(id);
  }
}
