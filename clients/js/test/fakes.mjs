// Test doubles: a WebSocket the test plays the server of, and a fetch
// answering from a handler.

/** A fresh WebSocket class whose instances the test drives as the server. */
export function fakeSocketClass() {
  return class FakeWebSocket {
    static instances = [];

    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.sent = [];
      this.closedWith = undefined;
      this.onopen = this.onmessage = this.onclose = this.onerror = null;
      FakeWebSocket.instances.push(this);
    }

    static get last() {
      return FakeWebSocket.instances.at(-1);
    }

    // --- the client's side ---
    send(text) {
      if (this.readyState !== 1) throw new Error("not open");
      this.sent.push(JSON.parse(text));
    }

    close(code = 1000) {
      if (this.readyState >= 2) return;
      this.readyState = 2;
      this.closedWith = code;
      setTimeout(() => {
        this.readyState = 3;
        this.onclose?.({ code, reason: "" });
      }, 0);
    }

    // --- the server's side ---
    accept() {
      this.readyState = 1;
      this.onopen?.({});
    }

    push(frame) {
      this.onmessage?.({ data: JSON.stringify(frame) });
    }

    /** The server (or the network) closes the connection. */
    drop(code = 1006, reason = "") {
      this.readyState = 3;
      this.onclose?.({ code, reason });
    }

    frames(type) {
      return this.sent.filter((f) => f.type === type);
    }

    /** Answers the last frame of a type with an ack carrying `data`. */
    ack(type, data = {}) {
      const frame = this.frames(type).at(-1);
      this.push({ type: "ack", channel: frame.channel, data, ref: frame.ref, timestamp: Date.now() });
      return frame;
    }

    error(frame, code, message = code) {
      this.push({ type: "error", channel: frame.channel, data: { code, message }, ref: frame.ref, timestamp: Date.now() });
    }
  };
}

/**
 * A fetch answering from `handler({ method, path, query, body, headers })`,
 * which returns `{ status, body, headers }` (status 200 by default) or throws.
 */
export function fakeFetch(handler) {
  const calls = [];
  const fetch = async (url, init) => {
    const u = new URL(url);
    const call = {
      method: init.method,
      path: u.pathname,
      query: Object.fromEntries(u.searchParams),
      body: init.body ? JSON.parse(init.body) : undefined,
      headers: init.headers,
    };
    calls.push(call);
    const answer = await handler(call);
    const status = answer.status ?? 200;
    const text = answer.body === undefined ? "" : JSON.stringify(answer.body);
    const headers = new Map(Object.entries(answer.headers ?? {}).map(([k, v]) => [k.toLowerCase(), v]));
    return { status, ok: status >= 200 && status < 300, headers: { get: (n) => headers.get(n.toLowerCase()) ?? null }, text: async () => text };
  };
  fetch.calls = calls;
  return fetch;
}

export function message(seq, room = "r1", extra = {}) {
  return {
    id: `m${String(seq).padStart(4, "0")}`,
    room_id: room,
    seq,
    sender_id: "u2",
    content: `message ${seq}`,
    client_msg_id: null,
    timestamp: new Date(1_800_000_000_000 + seq).toISOString(),
    edited_at: null,
    deleted: false,
    ...extra,
  };
}

/** Polls `predicate` until it holds (or fails the test after `timeout` ms). */
export async function until(predicate, timeout = 2000, what = "condition") {
  const start = Date.now();
  while (!predicate()) {
    if (Date.now() - start > timeout) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 1));
  }
}

export const tick = (ms = 5) => new Promise((r) => setTimeout(r, ms));
