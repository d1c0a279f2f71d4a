// End-to-end test of the TypeScript client against a real comfygate process
// running its built-in RunComfy simulator (--simulate), over real gRPC.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { Code, ConnectError } from "@connectrpc/connect";

import { createGatewayClient, Status, type GatewayClient, type RequestState } from "../src/index.js";
import { startGateway, type Gateway } from "./gateway.js";

// Any id of [A-Za-z0-9_-]{1,128} is an active deployment in the simulator.
const deploymentId = "ts-client-test";
const terminal = new Set([Status.SUCCEEDED, Status.FAILED, Status.CANCELLED]);

let gateway: Gateway;
let client: GatewayClient;

before(async () => {
  gateway = await startGateway();
  client = createGatewayClient(gateway.grpcUrl);
});

// Runs also when a test or before() failed, so the gateway never outlives us.
after(async () => {
  await gateway?.stop();
});

test("submit, then watch the request to SUCCEEDED", { timeout: 60_000 }, async () => {
  const submitted = await client.submit({ deploymentId, inputJson: '{"overrides":{}}' });
  const requestId = submitted.request?.requestId ?? "";
  assert.ok(requestId, "Submit returned no request id");
  assert.equal(submitted.request?.status, Status.QUEUED);

  // The stream sends the current state, then every change, and ends after the
  // terminal state; the deadline only guards against a stream that never ends.
  const states: RequestState[] = [];
  for await (const msg of client.watchRequest({ deploymentId, requestId }, { timeoutMs: 45_000 })) {
    assert.ok(msg.request, "WatchRequest sent a message without a request");
    states.push(msg.request);
  }
  const summary = states.map((s) => `${Status[s.status]}@${s.seq}`).join(", ");

  assert.ok(states.length > 0, "WatchRequest ended without sending anything");
  for (const s of states) {
    assert.equal(s.requestId, requestId);
    assert.equal(s.deploymentId, deploymentId);
  }
  // seq is an int64 (bigint here): every message must be a newer version.
  assert.ok(states[0].seq >= 1n, `first seq ${states[0].seq} < 1`);
  for (let i = 1; i < states.length; i++) {
    assert.ok(states[i].seq > states[i - 1].seq, `seq not strictly increasing: ${summary}`);
    // Status values are declared in lifecycle order, so they never go back.
    assert.ok(states[i].status >= states[i - 1].status, `status went backwards: ${summary}`);
  }
  // Only the last message is terminal: the stream ends right after it.
  states.slice(0, -1).forEach((s) => assert.ok(!terminal.has(s.status), `terminal state before the end: ${summary}`));

  const last = states[states.length - 1];
  assert.equal(last.status, Status.SUCCEEDED, `final state: ${summary}`);
  assert.ok(last.outputUrls.length > 0, "succeeded without output URLs");
  for (const u of last.outputUrls) {
    assert.match(new URL(u).protocol, /^https?:$/, `output URL ${u}`);
  }
  assert.ok(last.outputs, "succeeded without outputs");
  assert.ok(last.finishedAt, "succeeded without finished_at");

  // GetResult agrees with the end of the stream.
  const result = await client.getResult({ deploymentId, requestId });
  assert.equal(result.request?.status, Status.SUCCEEDED);
  assert.deepEqual(result.request?.outputUrls, last.outputUrls);
  assert.equal(result.request?.seq, last.seq);
});

/** The gRPC code a call failed with; fails the test when the call succeeded. */
async function codeOf(call: Promise<unknown>): Promise<Code> {
  try {
    await call;
  } catch (err) {
    return ConnectError.from(err).code;
  }
  assert.fail("call succeeded, want an error");
}

test("malformed request id is INVALID_ARGUMENT", async () => {
  const code = await codeOf(client.getStatus({ deploymentId, requestId: "not a valid id!" }));
  assert.equal(Code[code], Code[Code.InvalidArgument]);
});

test("unknown request is NOT_FOUND", async () => {
  const code = await codeOf(client.getStatus({ deploymentId, requestId: "no-such-request" }));
  assert.equal(Code[code], Code[Code.NotFound]);
});
