// The web app in a real browser against a running cluster, through its
// nginx front: two users in two browser contexts register, talk in a direct
// conversation and in a public room, and see each other live.
//
//   CONFAB_URL=http://127.0.0.1:8080 npm run test:browser
//
// CONFAB_URL          the front (`scripts/cluster.sh up` prints it). Unset: skipped.
// CONFAB_CLUSTER_DIR  the cluster's state directory: the test then reads the
//                     nodes' addresses from it and checks, with each node's
//                     confab_connections_active, that the two users' sockets
//                     are on different nodes.
// CONFAB_CHROMIUM     the browser (default /usr/bin/chromium, Debian's).
// CONFAB_SCREENSHOT   a PNG path: user A's window mid-conversation is saved there.
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { after, before, test } from "node:test";
import { chromium } from "playwright-core";

const url = process.env.CONFAB_URL?.replace(/\/+$/, "");
const executablePath = process.env.CONFAB_CHROMIUM ?? "/usr/bin/chromium";
const WAIT = 15_000;
const PASSWORD = "correct horse battery";
const suffix = Math.random().toString(36).slice(2, 8).padEnd(6, "0");
const nameA = `alice_${suffix}`;
const nameB = `bob_${suffix}`;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `check` until it returns something truthy; fails naming `what` and the last value seen. */
async function until(what, check, timeout = WAIT) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      last = await check();
      if (last) return last;
    } catch (error) {
      last = error instanceof Error ? error.message.split("\n")[0] : error;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what} (last seen: ${JSON.stringify(last)})`);
    await sleep(100);
  }
}

const message = (page, text) => page.getByTestId("message").filter({ has: page.getByTestId("message-content").getByText(text, { exact: true }) });
const roomItem = (page, name) => page.locator(`[data-testid="room-item"][data-room-name="${name}"]`);
const dotOf = (page, username) => page.locator(`[data-testid="member"][data-username="${username}"] [data-testid="presence-dot"]`);

async function seesMessage(page, who, text) {
  await until(`${who} to see "${text}"`, async () => (await message(page, text).count()) === 1);
}

// ----- the nodes behind the front -----

function nodeAddresses() {
  const dir = process.env.CONFAB_CLUSTER_DIR;
  if (!dir || !existsSync(`${dir}/cluster.env`)) return [];
  return readFileSync(`${dir}/cluster.env`, "utf8")
    .split("\n")
    .flatMap((line) => {
      const m = /^NODE_\d+=(.+)$/.exec(line.trim());
      return m ? [m[1]] : [];
    });
}

/** Open WebSocket connections per node, from each node's own /metrics (not reachable through the front). */
async function connectionsPerNode(nodes) {
  return Promise.all(
    nodes.map(async (addr) => {
      const text = await (await fetch(`http://${addr}/metrics`)).text();
      const m = /^confab_connections_active(?:\{[^}]*\})? (\d+)/m.exec(text);
      if (!m) throw new Error(`no confab_connections_active on ${addr}`);
      return Number(m[1]);
    }),
  );
}

/** Waits until exactly `added` sockets more than `baseline` are open, steadily; returns the per-node increase. */
async function settledIncrease(nodes, baseline, added) {
  let previous = "";
  return until(`${added} new socket(s) on the nodes`, async () => {
    const now = await connectionsPerNode(nodes);
    const delta = now.map((n, i) => n - baseline[i]);
    const key = delta.join(",");
    const sum = delta.reduce((a, b) => a + b, 0);
    const steady = key === previous;
    previous = key;
    return sum === added && steady ? delta : null;
  });
}

// ----- the browser -----

let browser;
const pageErrors = [];

async function newUserPage() {
  const context = await browser.newContext({ viewport: { width: 1100, height: 720 } });
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT);
  page.on("pageerror", (error) => pageErrors.push(`${error.message}`));
  page.on("console", (msg) => {
    if (/Content Security Policy|Refused to/.test(msg.text())) pageErrors.push(msg.text());
  });
  page.on("dialog", (dialog) => void dialog.accept());
  return page;
}

async function registerThroughUi(page, name, password = PASSWORD) {
  await page.goto(url);
  await page.getByTestId("auth-mode-register").click();
  await page.getByTestId("auth-username").fill(name);
  await page.getByTestId("auth-email").fill(`${name}@example.com`);
  await page.getByTestId("auth-password").fill(password);
  await page.getByTestId("auth-submit").click();
}

async function connected(page, name) {
  await until(`${name}'s socket to open`, async () => (await page.getByTestId("conn-state").getAttribute("data-state")) === "open");
  assert.equal(await page.getByTestId("me").innerText(), name);
}

before(async () => {
  if (!url) return;
  browser = await chromium.launch({ executablePath, headless: true });
});

after(async () => {
  await browser?.close();
});

test("two users talk through the web app, live, across the cluster's nodes", { skip: !url && "CONFAB_URL is not set" }, async () => {
  const nodes = nodeAddresses();
  // Sockets of earlier tests may still be closing: start from a steady count.
  let previous = "";
  const baseline = nodes.length > 0 ? await until("steady socket counts", async () => {
    const counts = await connectionsPerNode(nodes);
    const steady = counts.join(",") === previous;
    previous = counts.join(",");
    if (!steady) await sleep(400);
    return steady && counts;
  }) : [];

  // The front serves the app at / and the API next to it, as JSON.
  const page = await fetch(`${url}/`);
  assert.equal(page.status, 200);
  assert.match(page.headers.get("content-type") ?? "", /^text\/html/);
  const api = await fetch(`${url}/rooms`);
  assert.equal(api.status, 401);
  assert.equal((await api.json()).error.code, "unauthorized");

  const a = await newUserPage();
  const b = await newUserPage();

  // --- register through the UI; a server refusal is shown as the server worded it ---
  await registerThroughUi(b, nameB, "short");
  await until("the server's validation error on the form", async () => /password/i.test(await b.getByTestId("auth-error").innerText()));
  await b.getByTestId("auth-password").fill(PASSWORD);
  await b.getByTestId("auth-submit").click();
  await connected(b, nameB);
  let nodeB;
  if (nodes.length > 1) nodeB = (await settledIncrease(nodes, baseline, 1)).findIndex((d) => d === 1);

  await registerThroughUi(a, nameA);
  await connected(a, nameA);

  // --- the two sockets are on different nodes (nginx picks; reconnect A until it differs) ---
  if (nodes.length > 1) {
    let delta = await settledIncrease(nodes, baseline, 2);
    for (let attempt = 0; delta[nodeB] !== 1 && attempt < 8; attempt++) {
      console.log(`# both sockets on one node (${delta}): A reconnects`);
      await a.reload();
      await connected(a, nameA);
      delta = await settledIncrease(nodes, baseline, 2);
    }
    assert.equal(delta[nodeB], 1, `both users' sockets are on one node (per-node increase ${delta})`);
    assert.equal(delta.filter((d) => d === 1).length, 2, `per-node increase ${delta}`);
  }

  // --- A finds B and opens a direct conversation ---
  await a.getByTestId("dm-search").fill(nameB.slice(0, 8));
  await a.locator(`[data-testid="dm-result"][data-username="${nameB}"]`).click();
  await until("A's conversation with B", async () => (await a.getByTestId("conv-title").innerText()) === nameB);
  await a.getByTestId("composer-input").fill("hello B, from A");
  const aTypedAt = Date.now();
  await a.getByTestId("composer-send").click();
  await seesMessage(a, "A", "hello B, from A");

  // --- B is notified: the badge and the room's unread count, before opening it ---
  await until("B's notification badge", async () => Number(await b.getByTestId("notif-badge").innerText()) >= 1);
  await until("B's unread count for the conversation with A", async () => (await roomItem(b, nameA).getByTestId("room-unread").innerText()) === "1");
  assert.match(await roomItem(b, nameA).getByTestId("room-last").innerText(), /hello B, from A/);
  assert.equal(await a.getByTestId("seen").count(), 0, "A sees 'seen' before B opened the conversation");

  await roomItem(b, nameA).click();
  await seesMessage(b, "B", "hello B, from A");
  await until("B's badge to clear once the conversation is open", async () => (await b.getByTestId("notif-badge").count()) === 0);

  // --- A sees that B read it ---
  await until("A to see 'Seen'", async () => (await a.getByTestId("seen").innerText()) === "Seen");

  // --- each sees the other online ---
  await until("A to see B online", async () => (await dotOf(a, nameB).getAttribute("data-status")) === "online");
  await until("B to see A online", async () => (await dotOf(b, nameA).getAttribute("data-status")) === "online");

  // --- B types, A sees it; B answers, A sees it live ---
  assert.equal(await a.getByTestId("typing-indicator").innerText(), "");
  await b.getByTestId("composer-input").pressSequentially("hi A", { delay: 30 });
  await until("A to see B typing", async () => (await a.getByTestId("typing-indicator").innerText()) === `${nameB} is typing…`);
  await b.getByTestId("composer-input").fill("hi A, B here");
  await b.getByTestId("composer-send").click();
  await seesMessage(a, "A", "hi A, B here");
  await until("the typing indicator to clear with the message", async () => (await a.getByTestId("typing-indicator").innerText()) === "");

  // --- and the other way: A types, B sees it ---
  assert.equal(await b.getByTestId("typing-indicator").innerText(), "");
  await sleep(aTypedAt + 2100 - Date.now()); // typing is relayed at most once per 2 s
  await a.getByTestId("composer-input").pressSequentially("ok", { delay: 30 });
  await until("B to see A typing", async () => (await b.getByTestId("typing-indicator").innerText()) === `${nameA} is typing…`);
  await a.getByTestId("composer-input").fill("");

  // --- A edits their message; B sees the new text ---
  await message(a, "hello B, from A").getByTestId("msg-edit").click();
  await a.getByTestId("msg-edit-input").fill("hello B (edited)");
  await a.getByTestId("msg-edit-save").click();
  await seesMessage(b, "B", "hello B (edited)");
  assert.equal(await message(b, "hello B (edited)").getByTestId("message-edited").count(), 1);
  assert.equal(await message(b, "hello B, from A").count(), 0);

  // The picture for the docs: A's window, mid-conversation.
  if (process.env.CONFAB_SCREENSHOT) {
    const say = async (page, text) => {
      await page.getByTestId("composer-input").fill(text);
      await page.getByTestId("composer-send").click();
      await seesMessage(page === a ? b : a, "the other side", text);
    };
    await say(a, "Are you coming to the release review at 3?");
    await say(b, "Yes, I'll bring the load test numbers: 0 lost, 0 duplicated.");
    await say(a, "Great. Can you share the latency chart too?");
    await sleep(2100); // typing is relayed at most once per 2 s
    await b.getByTestId("composer-input").pressSequentially("On it", { delay: 40 });
    await until("A to see B typing again", async () => (await a.getByTestId("typing-indicator").innerText()) !== "");
    await until("A to see 'Seen'", async () => (await a.getByTestId("seen").count()) === 1);
    await a.screenshot({ path: process.env.CONFAB_SCREENSHOT });
    await b.getByTestId("composer-input").fill("");
  }

  // --- A deletes a message; B sees it go ---
  await a.getByTestId("composer-input").fill("this one goes away");
  await a.getByTestId("composer-send").click();
  await seesMessage(b, "B", "this one goes away");
  const doomed = await message(b, "this one goes away").getAttribute("data-id");
  await message(a, "this one goes away").getByTestId("msg-delete").click();
  await until("B to see the message deleted", async () => (await b.locator(`[data-testid="message"][data-id="${doomed}"]`).getAttribute("data-deleted")) === "true");
  assert.equal(await message(b, "this one goes away").count(), 0);

  // --- A reloads: the session and the conversation come back from sessionStorage and history ---
  await a.reload();
  await connected(a, nameA);
  assert.equal(await a.getByTestId("auth-form").count(), 0);
  await until("A's conversation with B after the reload", async () => (await a.getByTestId("conv-title").innerText()) === nameB);
  await seesMessage(a, "A after reload", "hello B (edited)");
  await seesMessage(a, "A after reload", "hi A, B here");
  assert.equal(await a.locator(`[data-testid="message"][data-id="${doomed}"]`).getAttribute("data-deleted"), "true");
  await until("A to still see 'Seen'", async () => (await a.getByTestId("seen").innerText()) === "Seen");

  // --- A creates a public room with a long history; B finds it, joins and pages back ---
  const roomName = `lobby-${suffix}`;
  await a.getByTestId("new-room-name").fill(roomName);
  await a.getByTestId("new-room-submit").click();
  await until("A in the new room", async () => (await a.getByTestId("conv-title").innerText()) === `# ${roomName}`);
  const roomId = await a.getByTestId("conversation").getAttribute("data-room-id");
  // The same room name again: the server's 409 is shown as it worded it.
  await a.getByTestId("new-room-name").fill(roomName.toUpperCase());
  await a.getByTestId("new-room-submit").click();
  await until("the room_name_taken error", async () => /taken|exists/i.test(await a.getByTestId("error-message").innerText()));

  // 55 messages over REST with A's session token (the UI is slower at it).
  const posted = await a.evaluate(async (room) => {
    const { tokens } = JSON.parse(sessionStorage.getItem("confab.session"));
    let ok = 0;
    for (let i = 1; i <= 55; i++) {
      const r = await fetch("/messages", {
        method: "POST",
        headers: { Authorization: `Bearer ${tokens.access_token}`, "Content-Type": "application/json" },
        body: JSON.stringify({ room_id: room, content: `backlog ${i}` }),
      });
      if (r.status === 201) ok++;
    }
    return ok;
  }, roomId);
  assert.equal(posted, 55);
  await seesMessage(a, "A", "backlog 55");

  await b.reload();
  await connected(b, nameB);
  await roomItem(b, roomName).click();
  await seesMessage(b, "B", "backlog 55");
  assert.equal(await b.getByTestId("message").count(), 50);
  assert.equal(await message(b, "backlog 1").count(), 0);
  assert.equal(await b.getByTestId("load-older").count(), 1);
  // Scrolled to the top, the list reads the page before.
  await b.getByTestId("messages").evaluate((el) => el.scrollTo(0, 0));
  await seesMessage(b, "B after paging back", "backlog 1");
  assert.equal(await b.getByTestId("message").count(), 55);
  await until("the load-older button to go once history is complete", async () => (await b.getByTestId("load-older").count()) === 0);
  await until("the joined room among B's own", async () => (await b.locator(`[data-testid="my-rooms"] [data-room-name="${roomName}"]`).count()) === 1);

  await a.getByTestId("composer-input").fill("welcome to the room");
  await a.getByTestId("composer-send").click();
  await seesMessage(b, "B", "welcome to the room");
  await until("A to see 'Seen by B'", async () => (await a.getByTestId("seen").innerText()) === `Seen by ${nameB}`);
  // B's receipt made B known to A as a member, with a presence dot.
  await until("A to see B among the room's members, online", async () => (await dotOf(a, nameB).getAttribute("data-status")) === "online");
  await until("B to see A among the room's members, online", async () => (await dotOf(b, nameA).getAttribute("data-status")) === "online");

  assert.deepEqual(pageErrors, [], "errors in the pages");
});
