// k6 version of the fan-out scenario against Confab (see README.md here).
//
// ROOMS public rooms, SUBSCRIBERS WebSocket subscribers in each, PUBLISHERS
// publishers (spread over the rooms) sending RATE messages per second in all
// for DURATION seconds. Every message carries `LT|<publisher>|<seq>|<sent_ms>|`
// padded to PAYLOAD bytes; subscribers measure latency from sent_ms and count
// deliveries and duplicates. Lost = expected - delivered, printed at the end.
//
//   confab token --jwt-secret "$CONFAB_JWT_SECRET" --count 60 > tokens.txt
//   k6 run -e BASE_URLS=http://127.0.0.1:8081,http://127.0.0.1:8082 \
//          -e TOKENS=$PWD/tokens.txt loadtest/k6/fanout.js
//
// Tokens needed: 1 (room owner) + ROOMS * SUBSCRIBERS + PUBLISHERS.

import http from "k6/http";
import ws from "k6/ws";
import exec from "k6/execution";
import { check, fail } from "k6";
import { Counter, Trend } from "k6/metrics";

const ROOMS = intEnv("ROOMS", 2);
const SUBSCRIBERS = intEnv("SUBSCRIBERS", 25); // per room
const PUBLISHERS = intEnv("PUBLISHERS", 2); // in all
const RATE = Number(__ENV.RATE || 20); // messages per second, all publishers
const DURATION = intEnv("DURATION", 20); // seconds of publishing
const PAYLOAD = intEnv("PAYLOAD", 100); // bytes of content
const SETTLE = intEnv("SETTLE", 10); // seconds for subscribers to join first
const GRACE = intEnv("GRACE", 3); // seconds for in-flight messages at the end

const BASE_URLS = (__ENV.BASE_URLS || "http://127.0.0.1:8080").split(",").map((u) => u.trim().replace(/\/$/, ""));
if (!__ENV.TOKENS) {
  throw new Error("set TOKENS to a file from `confab token --jwt-secret S --count N` (see README.md)");
}
// Lines of `user_id username token`.
const TOKENS = open(__ENV.TOKENS)
  .split("\n")
  .map((l) => l.trim().split(/\s+/))
  .filter((f) => f.length === 3)
  .map((f) => f[2]);
const NEEDED = 1 + ROOMS * SUBSCRIBERS + PUBLISHERS;
if (TOKENS.length < NEEDED) {
  throw new Error(`${__ENV.TOKENS} has ${TOKENS.length} tokens; this run needs ${NEEDED}`);
}

const latency = new Trend("fanout_latency", true);
const published = new Counter("fanout_published");
const acked = new Counter("fanout_acked");
const refused = new Counter("fanout_refused");
const expected = new Counter("fanout_expected");
const delivered = new Counter("fanout_delivered");
const duplicated = new Counter("fanout_duplicated");
const joinFailures = new Counter("fanout_join_failures");

export const options = {
  setupTimeout: "60s",
  summaryTrendStats: ["avg", "min", "med", "max", "p(90)", "p(99)"],
  scenarios: {
    subscribers: {
      executor: "per-vu-iterations",
      exec: "subscriber",
      vus: ROOMS * SUBSCRIBERS,
      iterations: 1,
      maxDuration: `${SETTLE + DURATION + GRACE + 30}s`,
    },
    publishers: {
      executor: "per-vu-iterations",
      exec: "publisher",
      vus: PUBLISHERS,
      iterations: 1,
      startTime: `${SETTLE}s`,
      maxDuration: `${DURATION + GRACE + 30}s`,
    },
  },
  thresholds: {
    // Report-only for losses (counted below); fail on broken joins.
    fanout_join_failures: ["count==0"],
    checks: ["rate==1"],
  },
};

function intEnv(name, dflt) {
  const v = __ENV[name];
  return v === undefined || v === "" ? dflt : parseInt(v, 10);
}

function base(idx) {
  return BASE_URLS[idx % BASE_URLS.length];
}

function wsUrl(idx, token) {
  return `${base(idx).replace(/^http/, "ws")}/ws?token=${token}`;
}

function auth(token) {
  return { headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" } };
}

export function setup() {
  const owner = TOKENS[0];
  const run = Math.floor(Math.random() * 0xffffffff).toString(16);
  const rooms = [];
  for (let r = 0; r < ROOMS; r++) {
    const res = http.post(`${base(0)}/rooms`, JSON.stringify({ name: `k6-${run}-${r}`, type: "public" }), auth(owner));
    if (!check(res, { "room created": (x) => x.status === 200 || x.status === 201 })) {
      fail(`creating a room failed: ${res.status} ${res.body}`);
    }
    rooms.push(res.json("id"));
  }
  return { rooms };
}

export function subscriber(data) {
  const idx = exec.scenario.iterationInTest;
  const room = data.rooms[idx % ROOMS];
  const token = TOKENS[1 + idx];
  const holdMs = (SETTLE + DURATION + GRACE + 1) * 1000;
  const seen = new Set();
  let joined = false;

  const res = ws.connect(wsUrl(idx, token), {}, (socket) => {
    socket.on("open", () => {
      socket.send(JSON.stringify({ type: "join_channel", channel: room, ref: 1 }));
    });
    socket.on("message", (raw) => {
      const msg = JSON.parse(raw);
      if (msg.type === "message") {
        const parts = String(msg.data && msg.data.content).split("|");
        if (parts[0] !== "LT") return;
        const key = `${parts[1]}|${parts[2]}`;
        if (seen.has(key)) {
          duplicated.add(1);
          return;
        }
        seen.add(key);
        delivered.add(1);
        latency.add(Date.now() - Number(parts[3]));
      } else if (msg.type === "ack" && !joined) {
        joined = true;
      } else if (msg.type === "error" && !joined) {
        joinFailures.add(1);
        socket.close();
      }
    });
    socket.on("error", (e) => console.error(`subscriber ${idx}: ${e.error()}`));
    socket.setTimeout(() => {
      if (!joined) joinFailures.add(1);
      socket.close();
    }, holdMs);
  });
  check(res, { "subscriber connected": (r) => r && r.status === 101 });
}

export function publisher(data) {
  const idx = exec.scenario.iterationInTest;
  const room = data.rooms[idx % ROOMS];
  const token = TOKENS[1 + ROOMS * SUBSCRIBERS + idx];
  // Sending needs membership; subscribers of a public room only listen.
  const join = http.post(`${base(0)}/rooms/${room}/join`, null, auth(token));
  check(join, { "publisher joined the room": (r) => r.status >= 200 && r.status < 300 });

  const intervalMs = (1000 * PUBLISHERS) / RATE;
  const count = Math.floor((DURATION * 1000) / intervalMs);
  // Subscribers per room: publisher i's room gets SUBSCRIBERS each message.
  let seq = 0;
  let pending = 0;

  // The next node after the subscribers', so messages cross the bus.
  const res = ws.connect(wsUrl(idx + 1, token), {}, (socket) => {
    socket.on("open", () => {
      socket.setInterval(() => {
        if (seq >= count) return;
        seq += 1;
        let content = `LT|${idx}|${seq}|${Date.now()}|`;
        if (content.length < PAYLOAD) content += "x".repeat(PAYLOAD - content.length);
        socket.send(JSON.stringify({ type: "send_message", channel: room, data: { content }, ref: seq }));
        pending += 1;
        published.add(1);
        expected.add(SUBSCRIBERS);
      }, intervalMs);
    });
    socket.on("message", (raw) => {
      const msg = JSON.parse(raw);
      if (msg.type === "ack") {
        pending -= 1;
        acked.add(1);
      } else if (msg.type === "error") {
        pending -= 1;
        refused.add(1);
      }
    });
    socket.on("error", (e) => console.error(`publisher ${idx}: ${e.error()}`));
    socket.setTimeout(() => socket.close(), (DURATION + GRACE) * 1000);
  });
  check(res, { "publisher connected": (r) => r && r.status === 101 });
  if (pending > 0) console.warn(`publisher ${idx}: ${pending} messages unacknowledged at close`);
}

function metric(data, name, stat) {
  const m = data.metrics[name];
  return m && m.values[stat] !== undefined ? m.values[stat] : 0;
}

export function handleSummary(data) {
  const exp = metric(data, "fanout_expected", "count");
  const got = metric(data, "fanout_delivered", "count");
  const summary = {
    target: "confab",
    scenario: "fanout",
    tool: "k6",
    params: { rooms: ROOMS, subscribers: SUBSCRIBERS, publishers: PUBLISHERS, rate: RATE, duration: DURATION, payload: PAYLOAD },
    published: metric(data, "fanout_published", "count"),
    accepted: metric(data, "fanout_acked", "count"),
    refused: metric(data, "fanout_refused", "count"),
    expected: exp,
    delivered: got,
    lost: Math.max(0, exp - got),
    duplicated: metric(data, "fanout_duplicated", "count"),
    join_failures: metric(data, "fanout_join_failures", "count"),
    delivered_per_sec: got / DURATION,
    latency_ms: {
      p50: metric(data, "fanout_latency", "med"),
      p90: metric(data, "fanout_latency", "p(90)"),
      p99: metric(data, "fanout_latency", "p(99)"),
      max: metric(data, "fanout_latency", "max"),
    },
  };
  const l = summary.latency_ms;
  const text =
    `\nfan-out (k6): ${ROOMS} rooms x ${SUBSCRIBERS} subscribers, ${PUBLISHERS} publishers, ${RATE} msgs/s, ${DURATION} s\n` +
    `published ${summary.published} (acked ${summary.accepted}, refused ${summary.refused}), ` +
    `expected ${exp}, delivered ${got}, lost ${summary.lost}, dup ${summary.duplicated}, ` +
    `join failures ${summary.join_failures}\n` +
    `latency ms: p50 ${l.p50.toFixed(1)}  p90 ${l.p90.toFixed(1)}  p99 ${l.p99.toFixed(1)}  max ${l.max.toFixed(1)} ` +
    `(millisecond clock)\n`;
  const out = { stdout: text };
  out[__ENV.SUMMARY || "k6-fanout-summary.json"] = JSON.stringify(summary, null, 2);
  return out;
}
