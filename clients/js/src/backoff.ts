/**
 * Exponential backoff with full jitter: a delay drawn uniformly from
 * [0, min(max, base * 2^attempt)) milliseconds. `attempt` counts from 0.
 */
export function backoffDelay(attempt: number, base: number, max: number, random: () => number = Math.random): number {
  const ceiling = Math.min(max, base * 2 ** Math.min(attempt, 30));
  return Math.floor(random() * ceiling);
}

/** What to do after the socket closed with a code. */
export type CloseAction = "retry" | "refresh" | "revoked" | "failed";

/**
 * Close codes as docs/api.md defines them:
 * - 4001 session revoked: stop, log in again;
 * - 4002 token expired: get a fresh token, then reconnect;
 * - 1002, 1003, 1007, 1008, 1009: the client broke a rule, reconnecting would break it again;
 * - anything else (1001 node shutting down, 1006 connection lost, 1011, 1013 slow consumer,
 *   4003 disconnected by an administrator, ...): reconnect with backoff and resume.
 */
export function closeAction(code: number): CloseAction {
  switch (code) {
    case 4001:
      return "revoked";
    case 4002:
      return "refresh";
    case 1002:
    case 1003:
    case 1007:
    case 1008:
    case 1009:
      return "failed";
    default:
      return "retry";
  }
}

/**
 * A token bucket: `take()` spends one token if there is one, else says how
 * many milliseconds until there will be. Keeps the client under the
 * server's per-connection frame rate, so frames are never refused for it.
 */
export class TokenBucket {
  private tokens: number;
  private updated: number;

  constructor(
    private readonly perSecond: number,
    private readonly burst: number,
    private readonly now: () => number = Date.now,
  ) {
    this.tokens = burst;
    this.updated = now();
  }

  /** 0 when a token was taken; otherwise the wait in ms before one is available. */
  take(): number {
    const now = this.now();
    this.tokens = Math.min(this.burst, this.tokens + ((now - this.updated) * this.perSecond) / 1000);
    this.updated = now;
    if (this.tokens >= 1) {
      this.tokens -= 1;
      return 0;
    }
    return Math.ceil(((1 - this.tokens) * 1000) / this.perSecond - 1e-9);
  }
}
