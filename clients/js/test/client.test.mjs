import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { connect } from "../dist/index.js";
import { recheckDelay } from "../dist/room.js";
import { fakeFetch, fakeSocketClass, message, tick, until } from "./fakes.mjs";

/**
 * A client on a fake socket. `history` is the server's store per room;
 * `rest` may answer a REST call first (return undefined to fall through).
 */
function setup({ history = {}, rest, ...options } = {}) {
  const WS = fakeSocketClass();
  const fetch = fakeFetch((call) => {
    const answer = rest?.(call);
    if (answer) return answer;
    if (call.method === "GET" && call.path === "/messages") {
      const all = history[call.query.room_id] ?? [];
      const limit = Number(call.query.limit ?? 50);
      if (call.query.after_seq !== undefined) {
        const after = all.filter((m) => m.seq > Number(call.query.after_seq));
        return { body: { messages: after.slice(0, limit), has_more: after.length > limit } };
      }
      return { body: { messages: all.slice(-limit), has_more: all.length > limit } };
    }
    if (call.path === "/users/me") return { body: { id: "u1" } };
    return { status: 404, body: { error: { code: "not_found", message: "no such endpoint" } } };
  });
  const client = connect({
    url: "http://chat.test",
    token: "t1",
    WebSocket: WS,
    fetch,
    reconnect: { baseDelay: 2, maxDelay: 8 },
    pingInterval: 0,
    frameRate: { perSecond: 10_000, burst: 10_000 },
    ...options,
  });
  const log = [];
  const states = [];
  const errors = [];
  client.on("message", (m) => log.push(m.seq));
  client.on("state", (s) => states.push(s.state));
  client.on("error", (e) => errors.push(e));
  return { client, WS, fetch, log, states, errors, history };
}

/** Waits for the client's next socket and opens it. */
async function opened(WS, count) {
  await until(() => WS.instances.length >= count, 2000, `socket #${count}`);
  const ws = WS.instances[count - 1];
  ws.accept();
  return ws;
}

/** Joins room r1 (newest seq in history: `after`) and acks the join. */
async function joined(t, room = "r1") {
  const joining = t.client.join(room);
  await until(() => t.WS.instances.length >= 1, 2000, "a socket");
  const ws = t.WS.last;
  if (ws.readyState === 0) ws.accept();
  await until(() => ws.frames("join_channel").some((f) => f.channel === room), 2000, "join frame");
  ws.ack("join_channel", { room_id: room });
  await joining;
  return ws;
}

describe("connection", () => {
  test("opens on /ws with the token, then reports open", async () => {
    const t = setup();
    const ws = await opened(t.WS, 1);
    assert.equal(ws.url, "ws://chat.test/ws?token=t1");
    await until(() => t.client.state === "open");
    assert.deepEqual(t.states, ["connecting", "open"]);
    t.client.close();
    assert.equal(t.client.state, "closed");
    assert.equal(ws.closedWith, 1000);
  });

  test("https and wss URLs map to each other", async () => {
    const t = setup({ url: "https://chat.example.com/" });
    await until(() => t.WS.instances.length === 1);
    assert.equal(t.WS.last.url, "wss://chat.example.com/ws?token=t1");
    t.client.close();
    const u = setup({ url: "wss://chat.example.com/ws" });
    await until(() => u.WS.instances.length === 1);
    assert.equal(u.WS.last.url, "wss://chat.example.com/ws?token=t1");
    await u.client.history("r1");
    assert.equal(u.fetch.calls[0].headers.Authorization, "Bearer t1");
    u.client.close();
  });

  for (const code of [1001, 1006, 1011, 1013, 4003]) {
    test(`close ${code}: reconnects`, async () => {
      const t = setup();
      const first = await opened(t.WS, 1);
      first.drop(code);
      assert.equal(t.client.state, "reconnecting");
      await opened(t.WS, 2);
      await until(() => t.client.state === "open");
      t.client.close();
    });
  }

  test("close 4001: stops as revoked and rejects pending sends", async () => {
    const t = setup();
    const ws = await opened(t.WS, 1);
    const sending = t.client.send("r1", "hi");
    await until(() => ws.frames("send_message").length === 1);
    ws.drop(4001, "session_revoked");
    await assert.rejects(sending, { code: "session_revoked" });
    assert.equal(t.client.state, "revoked");
    await tick(30);
    assert.equal(t.WS.instances.length, 1);
    await assert.rejects(t.client.send("r1", "again"), { code: "session_revoked" });
  });

  for (const code of [1002, 1003, 1007, 1008, 1009]) {
    test(`close ${code}: stops as failed`, async () => {
      const t = setup();
      const ws = await opened(t.WS, 1);
      ws.drop(code);
      assert.equal(t.client.state, "failed");
      await tick(30);
      assert.equal(t.WS.instances.length, 1);
    });
  }

  test("close 4002: gets a fresh token, then reconnects with it", async () => {
    const asked = [];
    const t = setup({
      token: undefined,
      getToken: ({ refresh }) => {
        asked.push(refresh);
        return refresh ? "fresh" : "t1";
      },
    });
    const ws = await opened(t.WS, 1);
    ws.drop(4002, "token_expired");
    const second = await opened(t.WS, 2);
    assert.equal(second.url, "ws://chat.test/ws?token=fresh");
    assert.deepEqual(asked, [false, true]);
    t.client.close();
  });

  test("close 4002 without getToken: stops as failed", async () => {
    const t = setup();
    (await opened(t.WS, 1)).drop(4002);
    assert.equal(t.client.state, "failed");
    assert.deepEqual(t.states, ["connecting", "open", "failed"]);
    await tick(30);
    assert.equal(t.WS.instances.length, 1);
  });

  test("refused before opening with a revoked session: stops as revoked", async () => {
    const t = setup({
      rest: (call) => (call.path === "/users/me" ? { status: 401, body: { error: { code: "session_revoked", message: "log in again" } } } : undefined),
    });
    await until(() => t.WS.instances.length === 1);
    t.WS.last.drop(1006);
    await until(() => t.client.state === "revoked");
    assert.equal(t.WS.instances.length, 1);
  });

  test("refused before opening with an expired token: refreshes it", async () => {
    const t = setup({
      token: undefined,
      getToken: ({ refresh }) => (refresh ? "fresh" : "stale"),
      rest: (call) =>
        call.path === "/users/me" && call.headers.Authorization === "Bearer stale"
          ? { status: 401, body: { error: { code: "unauthorized", message: "expired" } } }
          : undefined,
    });
    await until(() => t.WS.instances.length === 1);
    t.WS.last.drop(1006);
    const second = await opened(t.WS, 2);
    assert.equal(second.url, "ws://chat.test/ws?token=fresh");
    t.client.close();
  });

  test("token_expiring: asks for a fresh token and sends refresh", async () => {
    const asked = [];
    const t = setup({
      token: undefined,
      getToken: ({ refresh }) => {
        asked.push(refresh);
        return refresh ? "t2" : "t1";
      },
    });
    const ws = await opened(t.WS, 1);
    ws.push({ type: "token_expiring", data: { expires_in: 60 }, timestamp: Date.now() });
    await until(() => ws.frames("refresh").length === 1);
    assert.deepEqual(ws.frames("refresh")[0].data, { access_token: "t2" });
    assert.deepEqual(asked, [false, true]);
    ws.ack("refresh", { expires_in: 900 });
    // A later REST call carries the new token.
    await t.client.history("r1");
    assert.equal(t.fetch.calls.at(-1).headers.Authorization, "Bearer t2");
    t.client.close();
  });

  test("no answer to a ping: reconnects", async () => {
    const t = setup({ pingInterval: 20, pingTimeout: 20 });
    const ws = await opened(t.WS, 1);
    await until(() => ws.frames("ping").length === 1);
    await opened(t.WS, 2);
    t.client.close();
  });

  test("pongs keep the connection", async () => {
    const t = setup({ pingInterval: 15, pingTimeout: 30 });
    const ws = await opened(t.WS, 1);
    for (let i = 1; i <= 3; i++) {
      await until(() => ws.frames("ping").length === i);
      ws.push({ type: "pong", data: null, timestamp: Date.now() });
    }
    assert.equal(t.WS.instances.length, 1);
    t.client.close();
  });

  test("backoff grows while reconnects fail, within the cap", async () => {
    const t = setup({ reconnect: { baseDelay: 4, maxDelay: 16 } });
    await opened(t.WS, 1);
    t.WS.last.drop(1006);
    const times = [];
    for (let n = 2; n <= 7; n++) {
      await until(() => t.WS.instances.length >= n);
      times.push(Date.now());
      t.WS.last.drop(1006); // fails before opening
    }
    const gaps = times.slice(1).map((x, i) => x - times[i]);
    // Full jitter over at most 16 ms, plus the probe and timer slack.
    for (const gap of gaps) assert.ok(gap < 16 + 50, `gap ${gap}`);
    t.client.close();
  });
});

describe("rooms", () => {
  test("join resumes after the newest stored seq", async () => {
    const t = setup({ history: { r1: [message(1), message(2), message(3)] } });
    const ws = await opened(t.WS, 1);
    const joining = t.client.join("r1");
    await until(() => ws.frames("join_channel").length === 1);
    assert.deepEqual(ws.frames("join_channel")[0].data, { after_seq: 3 });
    ws.ack("join_channel", { room_id: "r1" });
    await joining;
    assert.equal(t.client.lastSeq("r1"), 3);
    t.client.close();
  });

  test("join with afterSeq replays from there; joining offline waits for the connection", async () => {
    const t = setup();
    const joining = t.client.join("r1", { afterSeq: 41 });
    const ws = await opened(t.WS, 1);
    await until(() => ws.frames("join_channel").length === 1);
    assert.deepEqual(ws.frames("join_channel")[0].data, { after_seq: 41 });
    ws.ack("join_channel");
    await joining;
    for (const seq of [42, 43]) ws.push({ type: "message", channel: "r1", data: message(seq) });
    assert.deepEqual(t.log, [42, 43]);
    t.client.close();
  });

  test("duplicates and old seqs are dropped; order is kept", async () => {
    const t = setup();
    const ws = await joined(t);
    for (const seq of [1, 2, 2, 3, 1, 3, 4]) ws.push({ type: "message", channel: "r1", data: message(seq) });
    assert.deepEqual(t.log, [1, 2, 3, 4]);
    t.client.close();
  });

  test("a live gap is filled from history before later messages", async () => {
    const t = setup();
    const ws = await joined(t);
    ws.push({ type: "message", channel: "r1", data: message(1) });
    ws.push({ type: "message", channel: "r1", data: message(2) });
    t.history.r1 = [1, 2, 3, 4, 5, 6].map((s) => message(s));
    ws.push({ type: "message", channel: "r1", data: message(5) });
    ws.push({ type: "message", channel: "r1", data: message(6) });
    ws.push({ type: "message", channel: "r1", data: message(5) });
    assert.deepEqual(t.log, [1, 2]);
    await until(() => t.log.length === 6);
    assert.deepEqual(t.log, [1, 2, 3, 4, 5, 6]);
    const gapRead = t.fetch.calls.find((c) => c.query.after_seq === "2");
    assert.ok(gapRead, "history read after seq 2");
    t.client.close();
  });

  test("seqs history does not have were skipped: not waited for", async () => {
    const t = setup();
    const ws = await joined(t);
    t.history.r1 = [message(1), message(3), message(4)];
    ws.push({ type: "message", channel: "r1", data: message(1) });
    ws.push({ type: "message", channel: "r1", data: message(3) });
    await until(() => t.log.length === 2);
    ws.push({ type: "message", channel: "r1", data: message(4) });
    assert.deepEqual(t.log, [1, 3, 4]);
    t.client.close();
  });

  test("a hole history stops short of is read again until its message comes", async () => {
    const t = setup();
    const ws = await joined(t);
    // 2 is being stored late: the server's page stops before the hole.
    t.history.r1 = [message(1)];
    ws.push({ type: "message", channel: "r1", data: message(1) });
    ws.push({ type: "message", channel: "r1", data: message(3) });
    await until(() => t.fetch.calls.filter((c) => c.query.after_seq === "1").length >= 2);
    assert.deepEqual(t.log, [1], "3 waits for 2");
    t.history.r1 = [1, 2, 3].map((s) => message(s));
    await until(() => t.log.length === 3);
    assert.deepEqual(t.log, [1, 2, 3]);
    t.client.close();
  });

  test("recheck delays double from 250 ms to 2 s", () => {
    assert.deepEqual([0, 1, 2, 3, 4, 20].map(recheckDelay), [250, 500, 1000, 2000, 2000, 2000]);
  });

  test("a failed history read is retried", async () => {
    let failures = 2;
    const history = { r1: [1, 2, 3].map((s) => message(s)) };
    const t = setup({
      history,
      rest: (call) => (call.query.after_seq === "1" && failures-- > 0 ? { status: 503, body: { error: { code: "unavailable", message: "down" } } } : undefined),
    });
    const ws = await opened(t.WS, 1);
    const joining = t.client.join("r1", { afterSeq: 0 });
    await until(() => ws.frames("join_channel").length === 1);
    ws.ack("join_channel");
    await joining;
    ws.push({ type: "message", channel: "r1", data: message(1) });
    ws.push({ type: "message", channel: "r1", data: message(3) });
    await until(() => t.log.length === 3);
    assert.deepEqual(t.log, [1, 2, 3]);
    assert.equal(t.errors.length, 2);
    t.client.close();
  });

  test("after a drop, rejoins from the last seq and drops replayed duplicates", async () => {
    const t = setup();
    const first = await joined(t);
    for (const seq of [1, 2, 3]) first.push({ type: "message", channel: "r1", data: message(seq) });
    first.drop(1013);
    const second = await opened(t.WS, 2);
    await until(() => second.frames("join_channel").length === 1);
    assert.deepEqual(second.frames("join_channel")[0].data, { after_seq: 3 });
    second.ack("join_channel");
    for (const seq of [3, 4, 5]) second.push({ type: "message", channel: "r1", data: message(seq) });
    assert.deepEqual(t.log, [1, 2, 3, 4, 5]);
    t.client.close();
  });

  test("too_far_behind: catches up over REST, then joins from the end", async () => {
    const history = { r1: Array.from({ length: 450 }, (_, i) => message(i + 1)) };
    const t = setup({ history });
    const ws = await opened(t.WS, 1);
    const joining = t.client.join("r1", { afterSeq: 0 });
    await until(() => ws.frames("join_channel").length === 1);
    ws.error(ws.frames("join_channel")[0], "too_far_behind");
    await until(() => ws.frames("join_channel").length === 2);
    assert.deepEqual(ws.frames("join_channel")[1].data, { after_seq: 450 });
    ws.ack("join_channel");
    await joining;
    assert.equal(t.log.length, 450);
    assert.deepEqual(t.log.slice(0, 3), [1, 2, 3]);
    t.client.close();
  });

  test("a refused join rejects; room_removed stops the room", async () => {
    const t = setup();
    const ws = await opened(t.WS, 1);
    const refused = t.client.join("private", { afterSeq: 0 });
    await until(() => ws.frames("join_channel").length === 1);
    ws.error(ws.frames("join_channel")[0], "forbidden", "not a member");
    await assert.rejects(refused, { code: "forbidden" });
    assert.equal(t.client.lastSeq("private"), undefined);

    await joined(t);
    const removed = [];
    t.client.on("room_removed", (r) => removed.push(r));
    ws.push({ type: "room_removed", channel: "r1", data: { room_id: "r1", by: "u9" } });
    ws.push({ type: "message", channel: "r1", data: message(1) });
    assert.deepEqual(removed, [{ room_id: "r1", by: "u9" }]);
    assert.deepEqual(t.log, []);
    t.client.close();
  });

  test("leave unsubscribes", async () => {
    const t = setup();
    const ws = await joined(t);
    const leaving = t.client.leave("r1");
    await until(() => ws.frames("leave_channel").length === 1);
    ws.ack("leave_channel", { room_id: "r1" });
    await leaving;
    ws.push({ type: "message", channel: "r1", data: message(1) });
    assert.deepEqual(t.log, []);
    t.client.close();
  });
});

describe("sending", () => {
  test("resolves with the stored message from its ack", async () => {
    const t = setup();
    const ws = await opened(t.WS, 1);
    const sending = t.client.send("r1", "hello");
    await until(() => ws.frames("send_message").length === 1);
    const frame = ws.frames("send_message")[0];
    assert.equal(frame.channel, "r1");
    assert.equal(frame.data.content, "hello");
    assert.match(frame.data.client_msg_id, /^[0-9a-f]{32}$/);
    const stored = message(7, "r1", { content: "hello", client_msg_id: frame.data.client_msg_id });
    ws.ack("send_message", stored);
    assert.deepEqual(await sending, stored);
    t.client.close();
  });

  test("acks and errors are matched by ref, in any order", async () => {
    const t = setup();
    const ws = await opened(t.WS, 1);
    const a = t.client.send("r1", "a");
    const b = t.client.send("r1", " ");
    await until(() => ws.frames("send_message").length === 2);
    const [fa, fb] = ws.frames("send_message");
    assert.notEqual(fa.ref, fb.ref);
    ws.error(fb, "validation_failed", "content: must not be blank");
    ws.push({ type: "ack", channel: "r1", data: message(1, "r1", { content: "a" }), ref: fa.ref });
    assert.equal((await a).content, "a");
    await assert.rejects(b, { code: "validation_failed", message: "content: must not be blank" });
    t.client.close();
  });

  test("an unacked send is sent again after a reconnect, with the same client_msg_id", async () => {
    const t = setup();
    const first = await opened(t.WS, 1);
    const sending = t.client.send("r1", "once");
    await until(() => first.frames("send_message").length === 1);
    const id = first.frames("send_message")[0].data.client_msg_id;
    first.drop(1006);
    const second = await opened(t.WS, 2);
    await until(() => second.frames("send_message").length === 1);
    assert.equal(second.frames("send_message")[0].data.client_msg_id, id);
    second.ack("send_message", message(9, "r1", { client_msg_id: id }));
    assert.equal((await sending).client_msg_id, id);
    const third = (first.drop(1006), second);
    assert.equal(third.frames("send_message").length, 1, "the old socket's close is ignored");
    t.client.close();
  });

  test("the client_msg_id may be given", async () => {
    const t = setup();
    const ws = await opened(t.WS, 1);
    void t.client.send("r1", "x", { clientMsgId: "c-17" }).catch(() => {});
    await until(() => ws.frames("send_message").length === 1);
    assert.equal(ws.frames("send_message")[0].data.client_msg_id, "c-17");
    t.client.close();
  });

  test("offline sends queue up to maxQueue, then go out in order", async () => {
    const t = setup({ maxQueue: 3 });
    const sends = ["a", "b", "c"].map((c) => t.client.send("r1", c));
    await assert.rejects(t.client.send("r1", "d"), { code: "queue_full" });
    const ws = await opened(t.WS, 1);
    await until(() => ws.frames("send_message").length === 3);
    assert.deepEqual(ws.frames("send_message").map((f) => f.data.content), ["a", "b", "c"]);
    for (const [i, f] of ws.frames("send_message").entries()) ws.push({ type: "ack", data: message(i + 1), ref: f.ref });
    await Promise.all(sends);
    // Acked sends leave the queue.
    void t.client.send("r1", "e").catch(() => {});
    t.client.close();
  });

  test("rate_limited: sent again later, same client_msg_id", async () => {
    const t = setup();
    const ws = await opened(t.WS, 1);
    const sending = t.client.send("r1", "slow down");
    await until(() => ws.frames("send_message").length === 1);
    const first = ws.frames("send_message")[0];
    ws.error(first, "rate_limited", "rate limit exceeded, retry in 0 s");
    await until(() => ws.frames("send_message").length === 2);
    const again = ws.frames("send_message")[1];
    assert.equal(again.data.client_msg_id, first.data.client_msg_id);
    assert.notEqual(again.ref, first.ref);
    ws.ack("send_message", message(1));
    await sending;
    t.client.close();
  });

  test("close() rejects what is still waiting", async () => {
    const t = setup();
    const sending = t.client.send("r1", "never");
    t.client.close();
    await assert.rejects(sending, { code: "closed" });
    await tick(20);
    assert.equal(t.WS.instances.length, 0);
  });

  test("frames are paced to frameRate", async () => {
    const t = setup({ frameRate: { perSecond: 50, burst: 2 } });
    const ws = await opened(t.WS, 1);
    for (let i = 0; i < 5; i++) void t.client.send("r1", `m${i}`).catch(() => {});
    await tick(0);
    assert.equal(ws.frames("send_message").length, 2);
    await until(() => ws.frames("send_message").length === 5, 1000);
    t.client.close();
  });
});

describe("events and helpers", () => {
  test("typing is sent at most once per 2 s per room", async () => {
    const t = setup();
    const ws = await joined(t);
    assert.equal(t.client.typing("r1"), true);
    assert.equal(t.client.typing("r1"), false);
    assert.equal(t.client.typing("other"), false, "not joined");
    assert.deepEqual(ws.frames("user_typing"), [{ type: "user_typing", channel: "r1" }]);
    t.client.close();
  });

  test("server events reach their handlers", async () => {
    const t = setup();
    const ws = await joined(t);
    const seen = {};
    for (const e of ["typing", "presence", "receipt", "notification", "room_added", "member_added", "message_updated", "message_deleted"]) {
      t.client.on(e, (p) => (seen[e] = p));
    }
    ws.push({ type: "user_typing", channel: "r1", user_id: "u2", data: { user_id: "u2" } });
    ws.push({ type: "presence", user_id: "u2", data: { user_id: "u2", status: "away", last_seen: null } });
    ws.push({ type: "receipt", channel: "r1", data: { room_id: "r1", user_id: "u2", status: "read", message_id: "m1", seq: 1 } });
    ws.push({ type: "notification", data: { id: "n1", type: "new_message", title: "t", message: "m", data: {}, timestamp: "x" } });
    ws.push({ type: "room_added", channel: "r2", data: { room_id: "r2", by: "u2" } });
    ws.push({ type: "member_added", channel: "r1", data: { room_id: "r1", user_id: "u3", role: "member", joined_at: "x", delivered_up_to: null, read_up_to: null, by: "u2" } });
    ws.push({ type: "message_updated", channel: "r1", user_id: "u2", timestamp: 5, data: message(1, "r1", { content: "edited" }) });
    ws.push({ type: "message_deleted", channel: "r1", user_id: "u4", timestamp: 6, data: message(1, "r1", { content: null, deleted: true }) });
    assert.deepEqual(seen.typing, { room_id: "r1", user_id: "u2" });
    assert.equal(seen.presence.status, "away");
    assert.equal(seen.receipt.status, "read");
    assert.equal(seen.notification.id, "n1");
    assert.equal(seen.room_added.room_id, "r2");
    assert.equal(seen.member_added.user_id, "u3");
    assert.deepEqual([seen.message_updated.by, seen.message_updated.message.content, seen.message_updated.timestamp], ["u2", "edited", 5]);
    assert.equal(seen.message_deleted.message.deleted, true);
    t.client.close();
  });

  test("an error frame nobody waits for is an error event", async () => {
    const t = setup();
    const ws = await opened(t.WS, 1);
    ws.push({ type: "error", channel: "r1", data: { code: "forbidden", message: "join the room before typing in it" } });
    assert.equal(t.errors[0].code, "forbidden");
    t.client.close();
  });

  test("setStatus waits for the connection, then resolves with the presence", async () => {
    const t = setup();
    const setting = t.client.setStatus("busy");
    const ws = await opened(t.WS, 1);
    await until(() => ws.frames("set_status").length === 1);
    assert.deepEqual(ws.frames("set_status")[0].data, { status: "busy" });
    ws.ack("set_status", { user_id: "u1", status: "busy", last_seen: null });
    assert.equal((await setting).status, "busy");
    t.client.close();
  });

  test("markRead and history use REST with the token", async () => {
    const t = setup({
      history: { r1: [message(1), message(2)] },
      rest: (call) =>
        call.path === "/rooms/r1/read" ? { body: { room_id: "r1", delivered_up_to: call.body.message_id, read_up_to: call.body.message_id } } : undefined,
    });
    const cursors = await t.client.markRead("r1", "m0002");
    assert.equal(cursors.read_up_to, "m0002");
    const page = await t.client.history("r1", { after_seq: 1, limit: 10 });
    assert.deepEqual(page.messages.map((m) => m.seq), [2]);
    const call = t.fetch.calls.at(-1);
    assert.deepEqual(call.query, { room_id: "r1", after_seq: "1", limit: "10" });
    assert.equal(call.headers.Authorization, "Bearer t1");
    t.client.close();
  });

  test("a REST call refused as unauthorized refreshes the token once", async () => {
    const t = setup({
      token: undefined,
      getToken: ({ refresh }) => (refresh ? "fresh" : "stale"),
      rest: (call) =>
        call.headers.Authorization === "Bearer stale" ? { status: 401, body: { error: { code: "unauthorized", message: "expired" } } } : undefined,
    });
    const page = await t.client.history("r1");
    assert.deepEqual(page.messages, []);
    assert.equal(t.fetch.calls.at(-1).headers.Authorization, "Bearer fresh");
    t.client.close();
  });
});
