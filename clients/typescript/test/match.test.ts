import assert from "node:assert/strict";
import { test } from "node:test";

import { match, savedValue, type Json } from "../contract/match.js";

const actual = JSON.parse(`{"content":"Echo: ping","usage":{"total_tokens":"12","estimated":false},
  "attempts":1,"tags":["a","b"],"violations":[{"field":"temperature","description":"0..2"}]}`) as Json;

test("patterns that match", () => {
  for (const p of [
    `{}`,
    `{"content":"Echo: ping"}`,
    `{"usage":{"total_tokens":12}}`,
    `{"usage":{"total_tokens":{"$gt":0,"$lte":"12"}}}`,
    `{"attempts":1.0}`,
    `{"cost_usd":{"$present":false}}`,
    `{"content":{"$present":true,"$contains":"ping","$len":10,"$nonEmpty":true}}`,
    `{"tags":["b"],"violations":[{"field":"temperature"}]}`,
    `{"usage":{"estimated":false}}`,
  ]) {
    assert.equal(match("$", JSON.parse(p) as Json, actual), undefined, p);
  }
});

test("patterns that do not match", () => {
  for (const p of [
    `{"content":"Echo: pong"}`,
    `{"missing":1}`,
    `{"usage":{"total_tokens":13}}`,
    `{"usage":{"total_tokens":{"$gt":12}}}`,
    `{"content":{"$present":false}}`,
    `{"cost_usd":{"$gt":0}}`,
    `{"tags":["c"]}`,
    `{"violations":[{"field":"top_p"}]}`,
    `{"content":{"$unknown":1}}`,
    `{"usage":{"estimated":"false"}}`,
    `{"content":{"$nonEmpty":false}}`,
  ]) {
    assert.notEqual(match("$", JSON.parse(p) as Json, actual), undefined, p);
  }
});

test("values saved for later cases", () => {
  const view = JSON.parse(`{"token":"gptk_1","client":{"name":"c","limits":{"requests_per_minute":1}}}`) as Json;
  assert.equal(savedValue(view, "token"), "gptk_1");
  assert.equal(savedValue(view, "client.name"), "c");
  for (const path of ["missing", "client.missing", "token.deeper", "client.limits.requests_per_minute", "client"]) {
    assert.throws(() => savedValue(view, path), Error, path);
  }
});
