import assert from "node:assert/strict";
import { test } from "node:test";

import { backoffDelay, closeAction, TokenBucket } from "../dist/backoff.js";

test("backoff: full jitter within [0, min(cap, base * 2^attempt))", () => {
  for (let attempt = 0; attempt < 40; attempt++) {
    const ceiling = Math.min(10_000, 250 * 2 ** attempt);
    assert.equal(backoffDelay(attempt, 250, 10_000, () => 0), 0);
    const top = backoffDelay(attempt, 250, 10_000, () => 0.999999);
    assert.ok(top < ceiling && top >= ceiling - 1, `attempt ${attempt}: ${top} vs ${ceiling}`);
    for (let i = 0; i < 200; i++) {
      const d = backoffDelay(attempt, 250, 10_000);
      assert.ok(Number.isInteger(d) && d >= 0 && d < ceiling, `attempt ${attempt}: ${d}`);
    }
  }
});

test("backoff: the ceiling doubles from the base up to the cap", () => {
  const ceilings = [0, 1, 2, 3, 4, 5, 6].map((a) => backoffDelay(a, 250, 10_000, () => 0.999999) + 1);
  assert.deepEqual(ceilings, [250, 500, 1000, 2000, 4000, 8000, 10_000]);
});

test("backoff: jitter spreads the delays", () => {
  const delays = new Set(Array.from({ length: 100 }, () => backoffDelay(5, 250, 10_000)));
  assert.ok(delays.size > 50);
});

test("close codes: what each one means", () => {
  const expected = {
    1000: "retry",
    1001: "retry",
    1006: "retry",
    1011: "retry",
    1013: "retry",
    4003: "retry",
    4002: "refresh",
    4001: "revoked",
    1002: "failed",
    1003: "failed",
    1007: "failed",
    1008: "failed",
    1009: "failed",
  };
  for (const [code, action] of Object.entries(expected)) assert.equal(closeAction(Number(code)), action, `code ${code}`);
});

test("token bucket: a burst, then one token per 1/rate s", () => {
  let now = 0;
  const bucket = new TokenBucket(20, 3, () => now);
  assert.deepEqual([bucket.take(), bucket.take(), bucket.take()], [0, 0, 0]);
  assert.equal(bucket.take(), 50);
  now += 49;
  assert.equal(bucket.take(), 1);
  now += 1;
  assert.equal(bucket.take(), 0);
  now += 10_000;
  assert.deepEqual([bucket.take(), bucket.take(), bucket.take(), bucket.take() > 0], [0, 0, 0, true]);
});
