// REST calls the SDK has no helper for, and the session kept in
// sessionStorage. The app is served by the same front as the API, so every
// path is relative to this page's origin.
import { ConfabError, login, tokenRefresher, type GetToken, type Message, type TokenPair } from "confab-client";

export const baseUrl = location.origin;

export interface Profile {
  id: string;
  username: string;
  display_name: string | null;
}

export interface Room {
  id: string;
  name: string;
  type: "public" | "private" | "direct";
  created_by: string;
  created_at: string;
  role: "owner" | "moderator" | "member" | null;
  unread_count: number | null;
  last_message: Message | null;
  peer: { id: string; username: string } | null;
}

export interface Member {
  user_id: string;
  username: string;
  role: string;
  read_up_to: string | null;
}

export interface NotificationItem {
  id: string;
  type: string;
  title: string;
  message: string;
  data: { room_id?: string };
  timestamp: string;
  read: boolean;
}

type Query = Record<string, string | number | undefined>;

/** One call: JSON in and out; a failure is a `ConfabError` with the server's code and message. */
async function call<T>(method: string, path: string, token: string | undefined, query?: Query, body?: unknown): Promise<T> {
  const params = new URLSearchParams();
  for (const [k, v] of Object.entries(query ?? {})) if (v !== undefined) params.set(k, String(v));
  const url = baseUrl + path + (params.size > 0 ? `?${params}` : "");
  const headers: Record<string, string> = { Accept: "application/json" };
  if (token) headers["Authorization"] = `Bearer ${token}`;
  const init: RequestInit = { method, headers };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response: Response;
  try {
    response = await fetch(url, init);
  } catch {
    throw new ConfabError("network_error", "The server cannot be reached. Check your connection and try again.");
  }
  const text = await response.text();
  let data: unknown;
  try {
    data = text ? JSON.parse(text) : undefined;
  } catch {
    data = undefined;
  }
  if (response.ok) return data as T;
  const error = (data as { error?: { code?: unknown; message?: unknown } } | undefined)?.error;
  const code = typeof error?.code === "string" ? error.code : "bad_response";
  const message = typeof error?.message === "string" ? error.message : `The server answered ${response.status}.`;
  throw new ConfabError(code, message, response.status);
}

export function register(username: string, email: string, password: string): Promise<Profile> {
  return call<Profile>("POST", "/register", undefined, undefined, { username, email, password });
}

// ----- the session -----

export interface Session {
  tokens: TokenPair;
  /** When `tokens` were issued (ms): a restored pair's access token is that much older. */
  issuedAt: number;
  me: Profile;
}

const KEY = "confab.session";

export function loadSession(): Session | null {
  try {
    const raw = sessionStorage.getItem(KEY);
    const session = raw ? (JSON.parse(raw) as Session) : null;
    return session?.tokens?.refresh_token && session.me?.id ? session : null;
  } catch {
    return null;
  }
}

function saveSession(session: Session): void {
  sessionStorage.setItem(KEY, JSON.stringify(session));
}

export function clearSession(): void {
  sessionStorage.removeItem(KEY);
}

/** Logs in, reads the account and keeps both in sessionStorage. */
export async function signIn(username: string, password: string): Promise<Session> {
  const tokens = await login(baseUrl, username, password);
  const me = await call<Profile>("GET", "/users/me", tokens.access_token);
  const session = { tokens, issuedAt: Date.now(), me };
  saveSession(session);
  return session;
}

/** REST with the session's tokens: refreshed by the SDK's `tokenRefresher`, every new pair stored. */
export class Api {
  readonly getToken: GetToken;

  constructor(session: Session) {
    // The refresher counts the access token's life from now: give it what is left.
    const age = Math.floor((Date.now() - session.issuedAt) / 1000);
    const tokens = { ...session.tokens, expires_in: Math.max(0, session.tokens.expires_in - age) };
    this.getToken = tokenRefresher(baseUrl, tokens, {
      onTokens: (pair) => saveSession({ ...session, tokens: pair, issuedAt: Date.now() }),
    });
  }

  async req<T>(method: string, path: string, options: { query?: Query; body?: unknown } = {}): Promise<T> {
    const token = await this.getToken({ refresh: false });
    try {
      return await call<T>(method, path, token, options.query, options.body);
    } catch (error) {
      if (!(error instanceof ConfabError) || error.code !== "unauthorized") throw error;
      const fresh = await this.getToken({ refresh: true });
      return call<T>(method, path, fresh, options.query, options.body);
    }
  }
}
