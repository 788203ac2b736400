/** A stored response and the conversation it ended (for previous_response_id). */
export interface StoredResponse {
  response: Record<string, unknown>;
  /** Chat messages of the conversation through this response's output. */
  messages: unknown[];
  /** The API key's name that created it (null without keys): no other key sees it. */
  owner: string | null;
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

  /** The response `id`, if `owner` (an API key's name, or null) created it. */
  get(id: string, owner: string | null): StoredResponse | undefined {
    const item = this.items.get(id);
    return item && item.owner === owner ? item : undefined;
  }

  delete(id: string, owner: string | null): boolean {
    return this.get(id, owner) !== undefined && this.items.delete(id);
  }
}
