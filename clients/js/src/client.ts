import { backoffDelay, closeAction, TokenBucket } from "./backoff.js";
import { Emitter } from "./emitter.js";
import { ConfabError, request, type FetchLike, type GetToken, type Query } from "./rest.js";
import { RoomStream, recheckDelay } from "./room.js";
import type {
  ClientFrame,
  Envelope,
  Json,
  MemberChange,
  Message,
  MessageChange,
  MessagePage,
  Notification,
  Presence,
  ReadCursors,
  Receipt,
  RoomChange,
  Typing,
} from "./types.js";

/** Where the connection is. `closed`, `revoked` and `failed` are final. */
export type ConnectionState = "connecting" | "open" | "reconnecting" | "closed" | "revoked" | "failed";

/** A `state` event: the new state and, after a socket closed, its close code and reason. */
export interface StateChange {
  state: ConnectionState;
  code?: number;
  reason?: string;
}

/** Every event a `Client` emits, with its payload. */
export interface ClientEvents {
  /** A message of a joined room: each exactly once, in seq order. */
  message: Message;
  message_updated: MessageChange;
  message_deleted: MessageChange;
  typing: Typing;
  presence: Presence;
  receipt: Receipt;
  notification: Notification;
  room_added: RoomChange;
  room_removed: RoomChange;
  member_added: MemberChange;
  member_updated: MemberChange;
  member_removed: MemberChange;
  state: StateChange;
  /** A failure no promise could report: an unanswered `error` frame, a refused rejoin, a failed history read. */
  error: ConfabError;
}

// Declared as a method so that both the DOM's and the `ws` package's event types fit.
type Handler<E> = { bivariant(event: E): void }["bivariant"];

/** The part of the WebSocket API this client uses (browsers, Node 22+, the `ws` package). */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: Handler<unknown> | null;
  onmessage: Handler<{ data: unknown }> | null;
  onclose: Handler<{ code: number; reason: string }> | null;
  onerror: Handler<unknown> | null;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;

export interface ConnectOptions {
  /** The server's base URL, `https://chat.example.com` (or its `wss://…/ws` address). */
  url: string;
  /** An access token; without `getToken` the client stops (`failed`) when it expires. */
  token?: string;
  /** Supplies access tokens, before each connection and when the server says the token expires. */
  getToken?: GetToken;
  /** A WebSocket class; defaults to the global one (browsers, Node 22+). On Node 20 pass `ws`'s. */
  WebSocket?: WebSocketConstructor;
  /** Defaults to the global `fetch`. */
  fetch?: FetchLike;
  /** Reconnect backoff in ms: full jitter over base * 2^attempt, capped (default 250 and 10000). */
  reconnect?: { baseDelay?: number; maxDelay?: number };
  /** Most unacknowledged sends at once; `send` rejects with `queue_full` beyond (default 1000). */
  maxQueue?: number;
  /** Frames per second this client sends at most, and its burst (default 20 and 20: under the server's default limit). */
  frameRate?: { perSecond: number; burst: number };
  /** ms of silence before a `ping`, and to wait for an answer before reconnecting (default 25000 and 10000; 0 turns pings off). */
  pingInterval?: number;
  pingTimeout?: number;
  /** ms before a REST request is abandoned (default 10000). */
  requestTimeout?: number;
}

export interface HistoryOptions {
  /** A message id: the newest `limit` messages older than it. */
  before?: string;
  /** A seq: the oldest `limit` messages after it. */
  after_seq?: number;
  /** 1–200, default 50. */
  limit?: number;
}

/** A frame waiting for its `ack`. */
interface Call {
  frame: ClientFrame;
  resolve(data: unknown): void;
  reject(error: ConfabError): void;
  /** Sent again on the next connection if the current one drops (else settled with `undefined`). */
  resend: boolean;
  /** The `ref` of its transmission on the current connection. */
  ref: number | undefined;
}

interface JoinedRoom {
  stream: RoomStream;
  /** The current connection's join was acknowledged. */
  joined: boolean;
  waiters: Array<{ resolve(): void; reject(error: ConfabError): void }>;
}

const TYPING_INTERVAL = 2000;
/** A connection open this long resets the backoff. */
const STABLE_AFTER = 5000;

/** Connects to Confab. The connection opens (and reopens) in the background; watch `state`. */
export function connect(options: ConnectOptions): Client {
  return new Client(options);
}

export class Client extends Emitter<ClientEvents> {
  private currentState: ConnectionState = "connecting";
  private readonly httpUrl: string;
  private readonly wsUrl: string;
  private readonly WS: WebSocketConstructor;
  private socket: WebSocketLike | undefined;
  private opened = false;
  private openedAt = 0;
  private lastFrameAt = 0;
  private attempt = 0;
  private token: string | undefined;
  private tokenRequest: Promise<string> | undefined;
  private needRefresh = false;
  private probeNext = false;
  private nextRef = 1;
  private readonly calls: Call[] = [];
  private readonly byRef = new Map<number, Call>();
  private readonly rooms = new Map<string, JoinedRoom>();
  private readonly joinRefs = new Map<number, string>();
  private readonly typedAt = new Map<string, number>();
  private outgoing: string[] = [];
  private bucket: TokenBucket;
  private flushTimer: ReturnType<typeof setTimeout> | undefined;
  private readonly timers = new Set<ReturnType<typeof setTimeout>>();

  constructor(private readonly options: ConnectOptions) {
    super();
    if (options.token === undefined && options.getToken === undefined) throw new TypeError("connect: give `token` or `getToken`");
    const WS = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!WS) throw new TypeError("connect: no global WebSocket here; pass one, e.g. `WebSocket` from the `ws` package");
    this.WS = WS;
    const base = options.url.replace(/\/+$/, "");
    if (/^wss?:/i.test(base)) {
      const root = base.replace(/\/ws$/, "");
      this.httpUrl = root.replace(/^ws/i, "http");
      this.wsUrl = `${root}/ws`;
    } else {
      this.httpUrl = base;
      this.wsUrl = `${base.replace(/^http/i, "ws")}/ws`;
    }
    this.token = options.token;
    this.bucket = this.newBucket();
    queueMicrotask(() => {
      this.emit("state", { state: "connecting" });
      void this.open();
    });
  }

  /** The connection's state. */
  get state(): ConnectionState {
    return this.currentState;
  }

  /** The last seq delivered in a joined room: persist it to resume there with `join(room, { afterSeq })`. */
  lastSeq(room: string): number | undefined {
    return this.rooms.get(room)?.stream.lastSeq;
  }

  /**
   * Subscribes to a room (joining it if public) and resolves once the server
   * acknowledged. From then on every message of the room after `afterSeq`
   * (default: the newest one now) is emitted once, in seq order, across
   * reconnects. Offline, the join happens when the connection opens.
   */
  async join(room: string, options: { afterSeq?: number } = {}): Promise<void> {
    this.assertUsable();
    let after = options.afterSeq;
    if (!this.rooms.has(room) && after === undefined) {
      const newest = await this.history(room, { limit: 1 });
      after = newest.messages.at(-1)?.seq ?? 0;
    }
    this.assertUsable();
    const existing = this.rooms.get(room);
    if (existing?.joined) return;
    return new Promise<void>((resolve, reject) => {
      if (existing) {
        existing.waiters.push({ resolve, reject });
        return;
      }
      const stream = new RoomStream(room, after ?? 0, {
        deliver: (message) => this.emit("message", message),
        fetchAfter: (afterSeq) => this.history(room, { after_seq: afterSeq, limit: 200 }),
        wait: (attempt) => new Promise((done) => this.later(this.backoff(attempt), done)),
        recheck: (attempt) => new Promise((done) => this.later(recheckDelay(attempt), done)),
        onError: (error) => this.emit("error", asConfabError(error)),
      });
      this.rooms.set(room, { stream, joined: false, waiters: [{ resolve, reject }] });
      if (this.opened) this.sendJoin(room);
    });
  }

  /** Unsubscribes from a room (membership stays): its messages are no longer emitted. */
  async leave(room: string): Promise<void> {
    const joined = this.rooms.get(room);
    if (!joined) return;
    this.dropRoom(room, new ConfabError("left", "the room was left before the join completed"));
    if (this.opened) await this.call({ type: "leave_channel", channel: room }, false);
  }

  /**
   * Sends a message; resolves with it as stored (with its seq). It carries a
   * random `client_msg_id` (or the one given) and is sent again on every new
   * connection until acknowledged: the server stores it once. Offline, it
   * waits in a queue of at most `maxQueue` sends.
   */
  send(room: string, content: string, options: { clientMsgId?: string } = {}): Promise<Message> {
    if (this.isFinal()) return Promise.reject(this.finalError());
    const queued = this.calls.filter((c) => c.frame.type === "send_message").length;
    if (queued >= (this.options.maxQueue ?? 1000)) {
      return Promise.reject(new ConfabError("queue_full", `${queued} messages are already waiting to be sent`));
    }
    const frame: ClientFrame = {
      type: "send_message",
      channel: room,
      data: { content, client_msg_id: options.clientMsgId ?? randomId() },
    };
    return this.call(frame, true) as Promise<Message>;
  }

  /** Tells the room you are typing; sent at most once per 2 s per room, only while joined. Returns whether it was sent. */
  typing(room: string): boolean {
    if (!this.opened || !this.rooms.get(room)?.joined) return false;
    const now = Date.now();
    if (now - (this.typedAt.get(room) ?? -Infinity) < TYPING_INTERVAL) return false;
    if (this.outgoing.length > 0 || this.bucket.take() > 0) return false;
    this.typedAt.set(room, now);
    this.write(JSON.stringify({ type: "user_typing", channel: room }));
    return true;
  }

  /** Moves your read (and delivery) cursor in a room up to a message. */
  markRead(room: string, messageId: string): Promise<ReadCursors> {
    return this.rest<ReadCursors>("POST", `/rooms/${encodeURIComponent(room)}/read`, { body: { message_id: messageId } });
  }

  /** Sets your presence status (kept across connections; offline, sent on connecting). */
  setStatus(status: "online" | "away" | "busy"): Promise<Presence> {
    if (this.isFinal()) return Promise.reject(this.finalError());
    return this.call({ type: "set_status", data: { status } }, true) as Promise<Presence>;
  }

  /** A page of a room's history, in seq order (`GET /messages`). */
  history(room: string, options: HistoryOptions = {}): Promise<MessagePage> {
    return this.rest<MessagePage>("GET", "/messages", { query: { room_id: room, ...options } });
  }

  /** Closes the connection for good; unacknowledged sends reject with `closed`. */
  close(): void {
    this.finish("closed", 1000, "closed by the client");
  }

  // ----- connection -----

  private async open(): Promise<void> {
    if (this.isFinal()) return;
    if (this.probeNext) {
      this.probeNext = false;
      await this.probe();
      if (this.isFinal()) return;
    }
    let token: string;
    try {
      token = await this.fetchToken(this.needRefresh);
    } catch (error) {
      if (this.isFinal()) return;
      const e = asConfabError(error);
      // A refresh the server refused (reused or unknown refresh token, banned user) needs a new login.
      if (e.status === 401 || e.status === 403) return this.finish("revoked", undefined, e.message);
      if (e.code === "token_expired") return this.finish("failed", 4002, e.message);
      this.emit("error", e);
      return this.scheduleReconnect();
    }
    if (this.isFinal()) return;
    let ws: WebSocketLike;
    try {
      ws = new this.WS(`${this.wsUrl}?token=${encodeURIComponent(token)}`);
    } catch (error) {
      return this.finish("failed", undefined, asConfabError(error).message);
    }
    this.socket = ws;
    this.opened = false;
    ws.onopen = () => this.onOpen(ws);
    ws.onmessage = (event) => this.onFrame(ws, event.data);
    ws.onclose = (event) => this.onClose(ws, event.code, event.reason);
    ws.onerror = () => {}; // a close event follows
  }

  private onOpen(ws: WebSocketLike): void {
    if (ws !== this.socket) return;
    this.opened = true;
    this.openedAt = this.lastFrameAt = Date.now();
    this.bucket = this.newBucket();
    // Rejoins first (each from its last seq), then whatever waited for a connection, in order.
    for (const room of this.rooms.keys()) this.sendJoin(room);
    for (const call of this.calls) this.transmit(call);
    this.heartbeat(ws);
    this.setState("open");
  }

  private onClose(ws: WebSocketLike, code: number, reason: string): void {
    if (ws !== this.socket) return;
    const wasOpen = this.opened;
    this.resetConnection();
    if (this.isFinal()) return;
    if (!wasOpen) {
      // Refused before the upgrade (a 401 looks like any network failure): ask REST why.
      this.probeNext = this.token !== undefined;
    } else if (Date.now() - this.openedAt >= STABLE_AFTER) {
      this.attempt = 0;
    }
    const action = wasOpen ? closeAction(code) : "retry";
    if (action === "revoked" || action === "failed") return this.finish(action, code, reason);
    if (action === "refresh") {
      if (!this.options.getToken) return this.finish("failed", code, reason);
      this.needRefresh = true;
    }
    this.setState("reconnecting", code, reason);
    this.scheduleReconnect();
  }

  /** Forgets the socket and everything tied to it; unacknowledged calls wait for the next one. */
  private resetConnection(): void {
    const ws = this.socket;
    this.socket = undefined;
    this.opened = false;
    if (ws) {
      // `onerror` stays: the `ws` package throws an error event that has no listener.
      ws.onopen = ws.onmessage = ws.onclose = null;
      if (ws.readyState < 2) {
        try {
          ws.close(1000);
        } catch {
          // already closing
        }
      }
    }
    this.outgoing = [];
    this.byRef.clear();
    this.joinRefs.clear();
    for (const room of this.rooms.values()) room.joined = false;
    for (const call of [...this.calls]) {
      call.ref = undefined;
      if (!call.resend) {
        this.remove(call);
        call.resolve(undefined);
      }
    }
  }

  private scheduleReconnect(): void {
    this.later(this.backoff(this.attempt++), () => void this.open());
  }

  private backoff(attempt: number): number {
    const r = this.options.reconnect ?? {};
    return backoffDelay(attempt, r.baseDelay ?? 250, r.maxDelay ?? 10_000);
  }

  /** After a connection failed before opening: a revoked session or a dead token says so over REST. */
  private async probe(): Promise<void> {
    try {
      await request(this.httpUrl, "GET", "/users/me", this.restOptions(this.token === undefined ? {} : { token: this.token }));
    } catch (error) {
      const e = asConfabError(error);
      if (e.code === "session_revoked") this.finish("revoked", undefined, e.message);
      else if (e.status === 401) {
        if (this.options.getToken) this.needRefresh = true;
        else this.finish("failed", undefined, e.message);
      }
    }
  }

  private fetchToken(refresh: boolean): Promise<string> {
    const getToken = this.options.getToken;
    if (!getToken) {
      if (refresh || this.token === undefined) return Promise.reject(new ConfabError("token_expired", "the access token expired and no getToken was given"));
      return Promise.resolve(this.token);
    }
    this.tokenRequest ??= Promise.resolve()
      .then(() => getToken({ refresh }))
      .then((token) => {
        this.token = token;
        this.needRefresh = false;
        return token;
      })
      .finally(() => {
        this.tokenRequest = undefined;
      });
    return this.tokenRequest;
  }

  /** A `ping` after `pingInterval` of silence; no frame within `pingTimeout` after it means the connection is dead. */
  private heartbeat(ws: WebSocketLike): void {
    const interval = this.options.pingInterval ?? 25_000;
    if (interval <= 0) return;
    const timeout = this.options.pingTimeout ?? 10_000;
    const check = (): void => {
      if (ws !== this.socket) return;
      const idle = Date.now() - this.lastFrameAt;
      if (idle < interval) return void this.later(interval - idle, check);
      this.enqueue(JSON.stringify({ type: "ping" }));
      const pingedAt = Date.now();
      this.later(timeout, () => {
        if (ws !== this.socket) return;
        if (this.lastFrameAt >= pingedAt) return check();
        this.onClose(ws, 4000, "no answer to ping");
      });
    };
    this.later(interval, check);
  }

  private finish(state: "closed" | "revoked" | "failed", code?: number, reason?: string): void {
    if (this.isFinal()) return;
    this.currentState = state;
    this.resetConnection();
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
    if (this.flushTimer !== undefined) clearTimeout(this.flushTimer);
    this.flushTimer = undefined;
    const error = this.finalError(reason);
    for (const call of this.calls.splice(0)) call.reject(error);
    for (const room of [...this.rooms.keys()]) this.dropRoom(room, error, true);
    this.emitState(code, reason);
  }

  private setState(state: ConnectionState, code?: number, reason?: string): void {
    if (state === this.currentState) return;
    this.currentState = state;
    this.emitState(code, reason);
  }

  private emitState(code: number | undefined, reason: string | undefined): void {
    const change: StateChange = { state: this.currentState };
    if (code !== undefined) change.code = code;
    if (reason !== undefined) change.reason = reason;
    this.emit("state", change);
  }

  private isFinal(): boolean {
    return this.currentState === "closed" || this.currentState === "revoked" || this.currentState === "failed";
  }

  private assertUsable(): void {
    if (this.isFinal()) throw this.finalError();
  }

  private finalError(reason?: string): ConfabError {
    switch (this.currentState) {
      case "revoked":
        return new ConfabError("session_revoked", reason ?? "the session ended: log in again");
      case "failed":
        return new ConfabError("connection_failed", reason ?? "the connection failed for good");
      default:
        return new ConfabError("closed", reason ?? "the client was closed");
    }
  }

  // ----- frames out -----

  private call(frame: ClientFrame, resend: boolean): Promise<unknown> {
    return new Promise((resolve, reject) => {
      const call: Call = { frame, resolve, reject, resend, ref: undefined };
      this.calls.push(call);
      if (this.opened) this.transmit(call);
    });
  }

  private transmit(call: Call): void {
    if (!this.opened || call.ref !== undefined) return;
    call.ref = this.nextRef++;
    this.byRef.set(call.ref, call);
    this.enqueue(JSON.stringify({ ...call.frame, ref: call.ref }));
  }

  private remove(call: Call): void {
    const i = this.calls.indexOf(call);
    if (i >= 0) this.calls.splice(i, 1);
    if (call.ref !== undefined) this.byRef.delete(call.ref);
  }

  private sendJoin(room: string): void {
    const joined = this.rooms.get(room);
    if (!joined || !this.opened) return;
    const ref = this.nextRef++;
    this.joinRefs.set(ref, room);
    const frame: ClientFrame = { type: "join_channel", channel: room, data: { after_seq: joined.stream.lastSeq } };
    this.enqueue(JSON.stringify({ ...frame, ref }));
  }

  /** Frames go out no faster than `frameRate`, in order. */
  private enqueue(text: string): void {
    this.outgoing.push(text);
    this.flush();
  }

  private flush(): void {
    if (this.flushTimer !== undefined) return;
    for (let next = this.outgoing[0]; next !== undefined && this.opened; next = this.outgoing[0]) {
      const wait = this.bucket.take();
      if (wait > 0) {
        this.flushTimer = setTimeout(() => {
          this.flushTimer = undefined;
          this.flush();
        }, wait);
        return;
      }
      this.outgoing.shift();
      this.write(next);
    }
  }

  private write(text: string): void {
    try {
      this.socket?.send(text);
    } catch {
      // The socket is closing; its close event reconnects and everything unacknowledged is sent again.
    }
  }

  private newBucket(): TokenBucket {
    const rate = this.options.frameRate ?? { perSecond: 20, burst: 20 };
    return new TokenBucket(rate.perSecond, rate.burst);
  }

  // ----- frames in -----

  private onFrame(ws: WebSocketLike, data: unknown): void {
    if (ws !== this.socket) return;
    this.lastFrameAt = Date.now();
    const frame = parseFrame(data);
    if (!frame) return;
    const payload = frame.data;
    switch (frame.type) {
      case "ack":
      case "error":
        return this.onReply(frame);
      case "message": {
        if (!isMessage(payload)) return;
        this.rooms.get(payload.room_id)?.stream.push(payload);
        return;
      }
      case "message_updated":
      case "message_deleted":
        if (isMessage(payload)) this.emit(frame.type, { message: payload, by: frame.user_id ?? "", timestamp: frame.timestamp ?? Date.now() });
        return;
      case "user_typing":
        if (frame.channel && isObject(payload) && typeof payload["user_id"] === "string") {
          this.emit("typing", { room_id: frame.channel, user_id: payload["user_id"] });
        }
        return;
      case "room_removed":
        if (isObject(payload) && typeof payload["room_id"] === "string") {
          this.dropRoom(payload["room_id"], new ConfabError("forbidden", "removed from the room"));
        }
        return this.relay(frame);
      case "token_expiring":
        return void this.renewToken(ws);
      default:
        return this.relay(frame);
    }
  }

  /** Events passed to the application as the server sent them. */
  private relay(frame: Envelope): void {
    if (!isObject(frame.data)) return;
    switch (frame.type) {
      case "presence":
      case "receipt":
      case "notification":
      case "room_added":
      case "room_removed":
      case "member_added":
      case "member_updated":
      case "member_removed":
        // The protocol's payload for this type; TypeScript cannot pair a union of keys with their payloads.
        this.emit(frame.type, frame.data as never);
    }
  }

  private onReply(frame: Envelope): void {
    const ref = typeof frame.ref === "number" ? frame.ref : -1;
    const error = frame.type === "error" ? errorOf(frame.data) : undefined;
    const room = this.joinRefs.get(ref);
    if (room !== undefined) {
      this.joinRefs.delete(ref);
      return this.onJoinReply(room, error);
    }
    const call = this.byRef.get(ref);
    if (!call) {
      if (error) this.emit("error", error);
      return;
    }
    if (!error) {
      this.remove(call);
      return call.resolve(frame.data);
    }
    if (error.code === "rate_limited" || error.code === "unavailable") {
      // Not processed: send it again later on this connection.
      this.byRef.delete(ref);
      call.ref = undefined;
      const wait = error.code === "rate_limited" ? retryAfterMs(error) : this.backoff(2);
      this.later(wait, () => this.transmit(call));
      return;
    }
    this.remove(call);
    call.reject(error);
  }

  private onJoinReply(room: string, error: ConfabError | undefined): void {
    const joined = this.rooms.get(room);
    if (!joined) return;
    if (!error) {
      joined.joined = true;
      for (const waiter of joined.waiters.splice(0)) waiter.resolve();
      return;
    }
    const ws = this.socket;
    const retry = (wait: number): void => this.later(wait, () => ws === this.socket && this.sendJoin(room));
    if (error.code === "too_far_behind") {
      // Read the backlog over REST, then join from its end.
      joined.stream.catchUp().then(
        () => retry(0),
        (e: unknown) => {
          this.emit("error", asConfabError(e));
          retry(this.backoff(3));
        },
      );
    } else if (error.code === "rate_limited") {
      retry(retryAfterMs(error));
    } else if (error.code === "unavailable" || error.code === "internal") {
      retry(this.backoff(3));
    } else if (this.dropRoom(room, error) === 0) {
      this.emit("error", error);
    }
  }

  /** Stops a room's delivery and rejects its pending joins; how many there were. */
  private dropRoom(room: string, error: ConfabError, final = false): number {
    const joined = this.rooms.get(room);
    if (!joined) return 0;
    joined.stream.stop();
    if (!final) this.rooms.delete(room);
    const waiters = joined.waiters.splice(0);
    for (const waiter of waiters) waiter.reject(error);
    return waiters.length;
  }

  private async renewToken(ws: WebSocketLike): Promise<void> {
    if (!this.options.getToken) return;
    try {
      const token = await this.fetchToken(true);
      if (ws === this.socket) await this.call({ type: "refresh", data: { access_token: token } }, false);
    } catch (error) {
      // The socket closes with 4002 at expiry and the reconnect asks for a token again.
      this.emit("error", asConfabError(error));
    }
  }

  // ----- REST -----

  private restOptions<T extends object>(extra: T): T & { fetch?: FetchLike; timeout?: number } {
    const options: T & { fetch?: FetchLike; timeout?: number } = { ...extra };
    if (this.options.fetch) options.fetch = this.options.fetch;
    if (this.options.requestTimeout !== undefined) options.timeout = this.options.requestTimeout;
    return options;
  }

  /** A REST call with the current token; one refresh and retry when the server says it expired. */
  private async rest<T>(method: string, path: string, extra: { query?: Query; body?: object }): Promise<T> {
    const token = this.token ?? (await this.fetchToken(false));
    try {
      return await request<T>(this.httpUrl, method, path, this.restOptions({ ...extra, token }));
    } catch (error) {
      if (!(error instanceof ConfabError) || error.code !== "unauthorized" || !this.options.getToken) throw error;
      const fresh = await this.fetchToken(true);
      return request<T>(this.httpUrl, method, path, this.restOptions({ ...extra, token: fresh }));
    }
  }

  // ----- timers -----

  private later(ms: number, fn: () => void): void {
    if (this.isFinal()) return;
    const timer = setTimeout(() => {
      this.timers.delete(timer);
      fn();
    }, ms);
    this.timers.add(timer);
  }
}

function isObject(value: unknown): value is { [key: string]: Json } {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function isMessage(value: unknown): value is Message {
  return isObject(value) && typeof value["id"] === "string" && typeof value["room_id"] === "string" && typeof value["seq"] === "number";
}

function parseFrame(data: unknown): Envelope | undefined {
  let text: string;
  if (typeof data === "string") text = data;
  else if (data instanceof ArrayBuffer || ArrayBuffer.isView(data)) text = new TextDecoder().decode(data);
  else return undefined;
  try {
    const value: unknown = JSON.parse(text);
    return isObject(value) && typeof value["type"] === "string" ? (value as unknown as Envelope) : undefined;
  } catch {
    return undefined;
  }
}

function errorOf(data: Json | undefined): ConfabError {
  const code = isObject(data) && typeof data["code"] === "string" ? data["code"] : "unknown";
  const message = isObject(data) && typeof data["message"] === "string" ? data["message"] : "the server refused the frame";
  return new ConfabError(code, message);
}

/** "rate limit exceeded, retry in 2 s" → 2000 (1000 when it does not say). */
function retryAfterMs(error: ConfabError): number {
  const match = /retry in (\d+) s/.exec(error.message);
  return (match ? Number(match[1]) : 1) * 1000;
}

function asConfabError(error: unknown): ConfabError {
  if (error instanceof ConfabError) return error;
  return new ConfabError("client_error", error instanceof Error ? error.message : String(error));
}

function randomId(): string {
  const bytes = new Uint8Array(16);
  globalThis.crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}
