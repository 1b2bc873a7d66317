import type { TokenPair } from "./types.js";

/** The part of `fetch`'s request options this client uses. */
export interface HttpRequest {
  method: string;
  headers: Record<string, string>;
  body?: string;
  signal?: AbortSignal;
}

/** The part of `fetch`'s `Response` this client uses. */
export interface HttpResponse {
  readonly status: number;
  readonly ok: boolean;
  readonly headers: { get(name: string): string | null };
  text(): Promise<string>;
}

/** A `fetch` function: the global one, or any compatible implementation. */
export type FetchLike = {
  // Declared as a method so that `typeof fetch` (wider parameters) is accepted.
  bivariant(url: string, init: HttpRequest): Promise<HttpResponse>;
}["bivariant"];

/**
 * A failure, from the server (`code` is the API's error code, `status` the
 * HTTP status, or none for a WebSocket `error` frame) or from the client:
 * `network_error`, `timeout`, `bad_response`, `queue_full`, `closed`.
 */
export class ConfabError extends Error {
  override readonly name = "ConfabError";

  constructor(
    readonly code: string,
    message: string,
    readonly status?: number,
    /** Seconds to wait before trying again, when the server said. */
    readonly retryAfter?: number,
  ) {
    super(message);
  }
}

/** Options for the REST helpers. */
export interface RestOptions {
  /** Defaults to the global `fetch`. */
  fetch?: FetchLike;
  /** Milliseconds before a request is abandoned (default 10000). */
  timeout?: number;
}

export type Query = Record<string, string | number | boolean | undefined>;

/** One REST call: JSON in, JSON out, failures as `ConfabError`. */
export async function request<T>(
  baseUrl: string,
  method: string,
  path: string,
  options: RestOptions & { token?: string; query?: Query; body?: object } = {},
): Promise<T> {
  const fetchFn: FetchLike = options.fetch ?? ((url, init) => globalThis.fetch(url, init));
  let url = baseUrl.replace(/\/+$/, "") + path;
  const params = Object.entries(options.query ?? {}).filter((entry): entry is [string, string | number | boolean] => entry[1] !== undefined);
  if (params.length > 0) url += "?" + params.map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(String(v))}`).join("&");
  const headers: Record<string, string> = { Accept: "application/json" };
  if (options.token !== undefined) headers["Authorization"] = `Bearer ${options.token}`;
  const init: HttpRequest = { method, headers };
  if (options.body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(options.body);
  }
  const controller = typeof AbortController === "function" ? new AbortController() : undefined;
  if (controller) init.signal = controller.signal;
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    controller?.abort();
  }, options.timeout ?? 10_000);
  try {
    const response = await fetchFn(url, init);
    const text = await response.text();
    const body: unknown = text ? parseJson(text) : undefined;
    if (response.ok) return body as T;
    const error = isErrorBody(body) ? body.error : { code: "bad_response", message: `HTTP ${response.status}` };
    const retryAfter = Number(response.headers.get("Retry-After")) || undefined;
    throw new ConfabError(error.code, error.message, response.status, retryAfter);
  } catch (error) {
    if (error instanceof ConfabError) throw error;
    if (timedOut) throw new ConfabError("timeout", `${method} ${path}: no answer in time`);
    throw new ConfabError("network_error", `${method} ${path}: ${error instanceof Error ? error.message : String(error)}`);
  } finally {
    clearTimeout(timer);
  }
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

function isErrorBody(body: unknown): body is { error: { code: string; message: string } } {
  if (typeof body !== "object" || body === null || !("error" in body)) return false;
  const error = body.error;
  return typeof error === "object" && error !== null && "code" in error && typeof error.code === "string";
}

/** `POST /login`: opens a session. `username` may also be the email. */
export function login(baseUrl: string, username: string, password: string, options: RestOptions = {}): Promise<TokenPair> {
  return request<TokenPair>(baseUrl, "POST", "/login", { ...options, body: { username, password } });
}

/** `POST /token/refresh`: the next pair of the same session. A refresh token works once. */
export function refresh(baseUrl: string, refreshToken: string, options: RestOptions = {}): Promise<TokenPair> {
  return request<TokenPair>(baseUrl, "POST", "/token/refresh", { ...options, body: { refresh_token: refreshToken } });
}

/**
 * Supplies access tokens to `connect`. `refresh` is true when the server
 * said the current token expires or expired: return a new one.
 */
export type GetToken = (context: { refresh: boolean }) => string | Promise<string>;

/**
 * A `GetToken` over a token pair: refreshes when asked to or when the access
 * token is about to expire, never twice at once (a refresh token used twice
 * ends the session), and hands each new pair to `onTokens` to keep.
 */
export function tokenRefresher(
  baseUrl: string,
  tokens: TokenPair,
  options: RestOptions & { onTokens?: (tokens: TokenPair) => void; now?: () => number } = {},
): GetToken {
  const now = options.now ?? Date.now;
  let current = tokens;
  let renewAt = renewTime(tokens, now());
  let pending: Promise<string> | undefined;
  return ({ refresh: force }) => {
    if (!force && now() < renewAt) return current.access_token;
    pending ??= refresh(baseUrl, current.refresh_token, options)
      .then((pair) => {
        current = pair;
        renewAt = renewTime(pair, now());
        options.onTokens?.(pair);
        return pair.access_token;
      })
      .finally(() => {
        pending = undefined;
      });
    return pending;
  };
}

/** A minute before expiry, or half the lifetime before for tokens shorter than two minutes. */
function renewTime(tokens: TokenPair, now: number): number {
  const life = tokens.expires_in * 1000;
  return now + life - Math.min(60_000, life / 2);
}
