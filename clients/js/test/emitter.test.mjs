import assert from "node:assert/strict";
import { test } from "node:test";

import { Emitter } from "../dist/emitter.js";

class Events extends Emitter {
  fire(event, payload) {
    this.emit(event, payload);
  }
}

test("on returns an unsubscribe function; once fires once", () => {
  const e = new Events();
  const seen = [];
  const off = e.on("a", (x) => seen.push(["on", x]));
  e.once("a", (x) => seen.push(["once", x]));
  e.fire("a", 1);
  e.fire("a", 2);
  off();
  e.fire("a", 3);
  e.fire("b", 4);
  assert.deepEqual(seen, [["on", 1], ["once", 1], ["on", 2]]);
});

test("a throwing handler does not stop the others; its error is rethrown on its own", () => {
  const e = new Events();
  const seen = [];
  e.on("a", () => {
    throw new Error("boom");
  });
  e.on("a", (x) => seen.push(x));
  const queued = [];
  const original = globalThis.queueMicrotask;
  globalThis.queueMicrotask = (fn) => queued.push(fn);
  try {
    e.fire("a", 1);
  } finally {
    globalThis.queueMicrotask = original;
  }
  assert.deepEqual(seen, [1]);
  assert.equal(queued.length, 1);
  assert.throws(queued[0], { message: "boom" });
});
