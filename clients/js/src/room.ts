import type { Message, MessagePage } from "./types.js";

/** What a room stream needs from its client. */
export interface RoomStreamHooks {
  /** Hands one message to the application. */
  deliver(message: Message): void;
  /** `GET /messages?room_id=…&after_seq=…`. */
  fetchAfter(afterSeq: number): Promise<MessagePage>;
  /** Resolves after the backoff delay for the given failed attempt (0, 1, ...). */
  wait(attempt: number): Promise<void>;
  /** A history read failed (it is retried). */
  onError(error: unknown): void;
}

/**
 * One room's messages, delivered to the application once each and in seq
 * order, whatever the socket brings: duplicates (seq at or below the last
 * delivered) are dropped; a message beyond a gap is held while the gap is
 * read from history over REST. Seqs that history does not have either were
 * skipped by the server (seqs may skip) and are not waited for.
 */
export class RoomStream {
  private readonly held = new Map<number, Message>();
  private filling = false;
  private stopped = false;

  constructor(
    readonly room: string,
    /** The last seq delivered (or the point to resume after). */
    public lastSeq: number,
    private readonly hooks: RoomStreamHooks,
  ) {}

  /** A message from the socket, live or replayed. */
  push(message: Message): void {
    if (this.stopped || message.seq <= this.lastSeq || this.held.has(message.seq)) return;
    if (message.seq === this.lastSeq + 1) {
      this.accept(message);
      this.drain();
      return;
    }
    this.held.set(message.seq, message);
    if (!this.filling) void this.fill();
  }

  /** Messages waiting for a gap before them to be filled. */
  get heldCount(): number {
    return this.held.size;
  }

  /** Reads history after the last seq to its end, delivering it (for a replay the server refused as too long). */
  async catchUp(): Promise<void> {
    for (;;) {
      const page = await this.hooks.fetchAfter(this.lastSeq);
      if (this.stopped) return;
      for (const m of page.messages) if (m.seq > this.lastSeq) this.accept(m);
      this.drain();
      if (!page.has_more || page.messages.length === 0) return;
    }
  }

  /** Stops delivering (the room was left). */
  stop(): void {
    this.stopped = true;
    this.held.clear();
  }

  private accept(message: Message): void {
    this.lastSeq = message.seq;
    this.hooks.deliver(message);
  }

  private drain(): void {
    for (const seq of this.held.keys()) if (seq <= this.lastSeq) this.held.delete(seq);
    for (let next = this.held.get(this.lastSeq + 1); next; next = this.held.get(this.lastSeq + 1)) {
      this.held.delete(next.seq);
      this.accept(next);
    }
  }

  private async fill(): Promise<void> {
    this.filling = true;
    let failures = 0;
    try {
      while (!this.stopped) {
        this.drain();
        if (this.held.size === 0) return;
        let page: MessagePage;
        try {
          page = await this.hooks.fetchAfter(this.lastSeq);
          failures = 0;
        } catch (error) {
          this.hooks.onError(error);
          await this.hooks.wait(failures++);
          continue;
        }
        if (this.stopped || this.held.size === 0) return;
        // Held messages may have come in meanwhile: fill only below the lowest.
        const target = Math.min(...this.held.keys());
        for (const m of page.messages) {
          if (m.seq >= target) break;
          if (m.seq > this.lastSeq) this.accept(m);
        }
        const complete = !page.has_more || page.messages.some((m) => m.seq >= target);
        if (complete && this.lastSeq < target) {
          // History has nothing more before `target`: those seqs were skipped.
          const next = this.held.get(target);
          if (next) {
            this.held.delete(target);
            this.accept(next);
          }
        }
      }
    } finally {
      this.filling = false;
    }
  }
}
