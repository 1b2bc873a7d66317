import type { Message, MessagePage } from "./types.js";

/** What a room stream needs from its client. */
export interface RoomStreamHooks {
  /** Hands one message to the application. */
  deliver(message: Message): void;
  /** `GET /messages?room_id=…&after_seq=…`. */
  fetchAfter(afterSeq: number): Promise<MessagePage>;
  /** Resolves after the backoff delay for the given failed attempt (0, 1, ...). */
  wait(attempt: number): Promise<void>;
  /** Resolves after the delay before reading a hole that may still fill again (`recheckDelay`). */
  recheck(attempt: number): Promise<void>;
  /** A history read failed (it is retried). */
  onError(error: unknown): void;
}

/**
 * One room's messages, delivered to the application once each and in seq
 * order, whatever the socket brings: duplicates (seq at or below the last
 * delivered) are dropped; a message beyond a gap is held while the gap is
 * read from history over REST. A catch-up page never shows a hole that may
 * still fill (docs/api.md, "Seqs that skip"): the seqs it lacks below its
 * last message are gone for good and skipped; a page that stops short of
 * the held message means a message is still being stored, and the gap is
 * read again a little later.
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
    let rechecks = 0;
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
        let reached = false;
        for (const m of page.messages) {
          if (m.seq >= target) {
            reached = true;
            break;
          }
          // Seqs the page lacks below this one will never be stored.
          if (m.seq > this.lastSeq) this.accept(m);
        }
        if (reached && this.lastSeq < target) {
          // Nothing more before `target` will ever be stored.
          const next = this.held.get(target);
          if (next) {
            this.held.delete(target);
            this.accept(next);
          }
          rechecks = 0;
        } else if (!reached && !page.has_more) {
          // The page stopped at a hole that may still fill: a message
          // stored late. Ask again shortly; the server settles it within
          // its `seq_void_after_ms`.
          await this.hooks.recheck(rechecks++);
        }
      }
    } finally {
      this.filling = false;
    }
  }
}

/** The delay before the `attempt`-th re-read (0, 1, ...) of a hole that may still fill: 250 ms, doubling to 2 s. */
export function recheckDelay(attempt: number): number {
  return Math.min(250 * 2 ** Math.min(attempt, 3), 2000);
}
