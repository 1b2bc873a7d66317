// Integration test against a running Confab cluster, through its nginx front.
//
//   CONFAB_URL          the front, e.g. http://127.0.0.1:8080 (unset: the test is skipped)
//   CONFAB_CLUSTER_CTL  a shell command prefix that takes `kill-node N`,
//                       `start-node N` and `restart-redis` (unset: no faults are injected)
//   CONFAB_NODES        how many nodes the cluster has (default 2)
//
// Two users each run a client in one room. User A sends 200 messages over
// about 10 s; meanwhile the node a client is connected to is killed and
// started again, then Redis is restarted. At the end every client's log
// must hold every acknowledged message exactly once, in seq order, and
// match the room's history over REST.

import assert from "node:assert/strict";
import { exec } from "node:child_process";
import { randomBytes } from "node:crypto";
import { test } from "node:test";

import { connect, login, tokenRefresher } from "../dist/index.js";

const BASE = process.env.CONFAB_URL?.replace(/\/+$/, "");
const CTL = process.env.CONFAB_CLUSTER_CTL;
const NODES = Number(process.env.CONFAB_NODES ?? 2);
const MESSAGES = 200;
const SEND_EVERY_MS = 50;

if (!BASE) console.log("integration: CONFAB_URL is not set; skipping (see README.md, Testing)");

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function until(predicate, timeout, what) {
  const start = Date.now();
  while (!predicate()) {
    if (Date.now() - start > timeout) throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
    await sleep(20);
  }
}

function ctl(args, log) {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    exec(`${CTL} ${args}`, { timeout: 120_000 }, (error, stdout, stderr) => {
      log(`cluster ${args}: ${error ? "failed" : "done"} in ${Date.now() - started} ms`);
      if (error) reject(new Error(`${CTL} ${args}: ${error.message}\n${stdout}${stderr}`));
      else resolve();
    });
  });
}

async function api(method, path, body, token) {
  const headers = { "Content-Type": "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(BASE + path, { method, headers, body: body && JSON.stringify(body) });
  const text = await response.text();
  if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${text}`);
  return text ? JSON.parse(text) : undefined;
}

/** A user with a client whose application log records every message it is handed. */
async function participant(name, WebSocket) {
  const suffix = randomBytes(4).toString("hex");
  const username = `sdk_${name}_${suffix}`;
  const password = "correct horse battery";
  await api("POST", "/register", { username, email: `${username}@example.com`, password });
  const tokens = await login(BASE, username, password);
  const p = { username, tokens, log: [], drops: 0, states: [], errors: [], historyReads: 0 };
  // Counts the client's history reads (gap fills), passing everything through.
  const countingFetch = (url, init) => {
    if (url.includes("/messages?") && url.includes("after_seq=")) p.historyReads++;
    return fetch(url, init);
  };
  const client = connect({ url: BASE, getToken: tokenRefresher(BASE, tokens), WebSocket, fetch: countingFetch });
  p.client = client;
  client.on("message", (m) => p.log.push(m));
  client.on("state", (s) => {
    p.states.push(s.code === undefined ? s.state : `${s.state}(${s.code})`);
    if (s.state === "reconnecting") p.drops++;
  });
  client.on("error", (e) => p.errors.push(`${e.code}: ${e.message}`));
  return p;
}

/** `start-node N`, tried again while the killed process is still being reaped ("already running"). */
async function startNode(n, log) {
  for (let attempt = 1; ; attempt++) {
    try {
      return await ctl(`start-node ${n}`, log);
    } catch (error) {
      if (attempt >= 10 || !/already running/.test(error.message)) throw error;
      await sleep(1000);
    }
  }
}

/** Kills the node (at least) one client is connected to; its number. */
async function killAClientsNode(clients, log) {
  for (let n = 1; n <= NODES; n++) {
    const before = clients.map((c) => c.drops);
    await ctl(`kill-node ${n}`, log);
    try {
      await until(() => clients.some((c, i) => c.drops > before[i]), 2000, "a client to drop");
      return n;
    } catch {
      log(`no client was on node ${n}`);
      if (n < NODES) await startNode(n, log);
    }
  }
  throw new Error(`killing each of the ${NODES} nodes dropped no client`);
}

test("no message lost or duplicated across a node crash and a Redis restart", { skip: !BASE && "CONFAB_URL is not set", timeout: 300_000 }, async (t) => {
  const log = (line) => t.diagnostic(line);
  const WebSocket = globalThis.WebSocket ?? (await import("ws")).WebSocket;
  const a = await participant("a", WebSocket);
  const b = await participant("b", WebSocket);
  const clients = [a, b];
  let killed;
  try {
    const room = await api("POST", "/rooms", { name: `sdk-${randomBytes(4).toString("hex")}`, type: "public" }, a.tokens.access_token);
    await Promise.all(clients.map((c) => c.client.join(room.id)));
    log(`room ${room.id}; both clients joined`);

    // Faults, on a schedule running alongside the sends.
    const faults = (async () => {
      if (!CTL) return log("CONFAB_CLUSTER_CTL is not set: no faults injected");
      await sleep(2500);
      killed = await killAClientsNode(clients, log);
      log(`killed node ${killed}; drops so far: a=${a.drops} b=${b.drops}`);
      await sleep(1500);
      await startNode(killed, log);
      killed = undefined;
      await sleep(1000);
      await ctl("restart-redis", log);
    })();
    faults.catch(() => {}); // awaited below

    const sends = [];
    for (let i = 0; i < MESSAGES; i++) {
      sends.push(a.client.send(room.id, `message ${i}`));
      await sleep(SEND_EVERY_MS);
    }
    await faults;
    const acked = await Promise.all(sends);
    log(`all ${MESSAGES} sends acknowledged`);

    const ids = new Set(acked.map((m) => m.id));
    assert.equal(ids.size, MESSAGES, "each send acknowledged with its own message");
    for (const c of clients) {
      // A client missing messages is reported below, with the counts.
      const all = () => ids.size === new Set(c.log.map((m) => m.id).filter((id) => ids.has(id))).size;
      await until(all, 30_000, `${c.username} to receive every message`).catch((e) => log(e.message));
    }
    await sleep(500); // anything late would be a duplicate

    // The room's history, over REST.
    const history = [];
    for (let after = 0; ; ) {
      const page = await b.client.history(room.id, { after_seq: after, limit: 200 });
      history.push(...page.messages);
      if (!page.has_more || page.messages.length === 0) break;
      after = page.messages.at(-1).seq;
    }
    const stored = history.filter((m) => m.sender_id === acked[0].sender_id);
    assert.equal(stored.length, MESSAGES, "stored once each (client_msg_id dedupe)");
    assert.equal(new Set(stored.map((m) => m.client_msg_id)).size, MESSAGES);
    assert.deepEqual(new Set(history.map((m) => m.id)), ids, "history holds exactly the acknowledged messages");

    for (const c of clients) {
      const seqs = c.log.map((m) => m.seq);
      const lost = [...ids].filter((id) => !c.log.some((m) => m.id === id)).length;
      const duplicated = c.log.length - new Set(c.log.map((m) => m.id)).size;
      log(`${c.username}: ${c.log.length} delivered, ${lost} lost, ${duplicated} duplicated, ${c.drops} reconnect(s), ${c.historyReads} history read(s); states ${c.states.join(" → ")}`);
      if (c.errors.length) log(`${c.username} errors: ${c.errors.slice(0, 5).join("; ")}${c.errors.length > 5 ? " …" : ""}`);
      assert.equal(lost, 0, `${c.username} lost messages`);
      assert.equal(duplicated, 0, `${c.username} got duplicates`);
      assert.ok(seqs.every((s, i) => i === 0 || s > seqs[i - 1]), `${c.username}'s log is in seq order`);
      assert.deepEqual(c.log.map((m) => m.id), history.map((m) => m.id), `${c.username}'s log is the room's history`);
    }
    if (CTL) assert.ok(a.drops + b.drops > 0, "the node crash dropped a client");
  } finally {
    for (const c of clients) c.client.close();
    if (killed !== undefined) await startNode(killed, log).catch(() => {});
  }
});
