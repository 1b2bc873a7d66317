import assert from "node:assert/strict";
import { test } from "node:test";

import { ConfabError, login, refresh, tokenRefresher } from "../dist/index.js";
import { request } from "../dist/rest.js";
import { fakeFetch } from "./fakes.mjs";

const pair = (n, expires_in = 900) => ({
  access_token: `a${n}`,
  token_type: "Bearer",
  expires_in,
  refresh_token: `r${n}`,
  refresh_expires_in: 2_592_000,
  session_id: "s1",
});

test("login and refresh post their bodies and return the pair", async () => {
  const fetch = fakeFetch((call) => ({ body: call.path === "/login" ? pair(1) : pair(2) }));
  assert.deepEqual(await login("http://chat.test/", "alice", "correct horse", { fetch }), pair(1));
  assert.deepEqual(await refresh("http://chat.test", "r1", { fetch }), pair(2));
  assert.deepEqual(
    fetch.calls.map((c) => [c.method, c.path, c.body]),
    [
      ["POST", "/login", { username: "alice", password: "correct horse" }],
      ["POST", "/token/refresh", { refresh_token: "r1" }],
    ],
  );
});

test("errors carry the API's code, status and Retry-After", async () => {
  const fetch = fakeFetch(() => ({
    status: 429,
    headers: { "Retry-After": "12" },
    body: { error: { code: "rate_limited", message: "rate limit exceeded, retry in 12 s" } },
  }));
  const error = await login("http://chat.test", "a", "b", { fetch }).catch((e) => e);
  assert.ok(error instanceof ConfabError);
  assert.deepEqual([error.code, error.status, error.retryAfter, error.message], [
    "rate_limited",
    429,
    12,
    "rate limit exceeded, retry in 12 s",
  ]);
});

test("a body that is not the API's error shape, a network failure, a timeout", async () => {
  const html = fakeFetch(() => ({ status: 502 }));
  await assert.rejects(request("http://x", "GET", "/rooms", { fetch: html }), { code: "bad_response", status: 502 });
  const down = async () => {
    throw new TypeError("fetch failed");
  };
  await assert.rejects(request("http://x", "GET", "/rooms", { fetch: down }), { code: "network_error" });
  const hang = (_url, init) =>
    new Promise((_, reject) => init.signal.addEventListener("abort", () => reject(new Error("aborted"))));
  await assert.rejects(request("http://x", "GET", "/rooms", { fetch: hang, timeout: 10 }), { code: "timeout" });
});

test("query parameters are encoded; undefined ones left out; 204 is undefined", async () => {
  const fetch = fakeFetch(() => ({ status: 204 }));
  const result = await request("http://x", "GET", "/messages", { fetch, token: "t", query: { room_id: "a b", before: undefined, limit: 5 } });
  assert.equal(result, undefined);
  assert.deepEqual(fetch.calls[0].query, { room_id: "a b", limit: "5" });
  assert.equal(fetch.calls[0].headers.Authorization, "Bearer t");
});

test("tokenRefresher: cached while fresh, one refresh at a time, renewed before expiry", async () => {
  let now = 0;
  let n = 1;
  const kept = [];
  const fetch = fakeFetch(async () => {
    await new Promise((r) => setTimeout(r, 5));
    return { body: pair(++n) };
  });
  const getToken = tokenRefresher("http://x", pair(1), { fetch, now: () => now, onTokens: (p) => kept.push(p.refresh_token) });
  assert.equal(await getToken({ refresh: false }), "a1");
  const [x, y] = await Promise.all([getToken({ refresh: true }), getToken({ refresh: true })]);
  assert.deepEqual([x, y], ["a2", "a2"]);
  assert.equal(fetch.calls.length, 1, "a refresh token is used once");
  assert.deepEqual(fetch.calls[0].body, { refresh_token: "r1" });
  now += 839_000;
  assert.equal(await getToken({ refresh: false }), "a2");
  now += 2_000; // within a minute of expiry
  assert.equal(await getToken({ refresh: false }), "a3");
  assert.deepEqual(fetch.calls[1].body, { refresh_token: "r2" });
  assert.deepEqual(kept, ["r2", "r3"]);
});
