// errorInfo and retryDelayMs against the error details a real comfygate
// process (--simulate) sends: RetryInfo with a per-tenant rate limit, ErrorInfo
// DRAINING when the gateway shuts down under an open watch.
import assert from "node:assert/strict";
import { test } from "node:test";

import { Code, ConnectError, createGatewayClient, errorInfo, retryDelayMs, Status } from "../src/index.js";
import { startGateway } from "./gateway.js";

const deploymentId = "ts-errors-test";

/** The error a call failed with; fails the test when the call succeeded. */
async function errorOf(call: Promise<unknown>): Promise<ConnectError> {
  try {
    await call;
  } catch (err) {
    return ConnectError.from(err);
  }
  assert.fail("the call succeeded");
}

test("a read over the tenant's rate limit: RESOURCE_EXHAUSTED with RetryInfo", { timeout: 60_000 }, async (t) => {
  // One read, then one a second: the second read at once is refused.
  const gateway = await startGateway({ args: ["--read-rate", "1", "--read-burst", "1"] });
  t.after(() => gateway.stop());
  const client = createGatewayClient(gateway.grpcUrl);
  const requestId = "no-such-request";

  const first = await errorOf(client.getStatus({ deploymentId, requestId }));
  assert.equal(first.code, Code.NotFound, first.message);
  // A request's NOT_FOUND carries no details at all.
  assert.equal(errorInfo(first), undefined);
  assert.equal(retryDelayMs(first), undefined);

  const limited = await errorOf(client.getStatus({ deploymentId, requestId }));
  assert.equal(limited.code, Code.ResourceExhausted, limited.message);
  const delay = retryDelayMs(limited);
  assert.ok(delay !== undefined && delay > 0 && delay <= 1000, `retry delay ${delay} ms`);
  assert.equal(errorInfo(limited), undefined);
});

test("a watch open when the gateway shuts down: UNAVAILABLE with ErrorInfo DRAINING", { timeout: 60_000 }, async (t) => {
  const gateway = await startGateway();
  t.after(() => gateway.stop());
  const client = createGatewayClient(gateway.grpcUrl);
  const { request } = await client.submit({ deploymentId, inputJson: '{"overrides":{}}' });
  const requestId = request!.requestId;

  let seen: { seq: bigint; epoch: bigint } | undefined;
  let stopping: Promise<void> | undefined;
  const err = await errorOf(
    (async () => {
      for await (const msg of client.watchRequest({ deploymentId, requestId }, { timeoutMs: 45_000 })) {
        const state = msg.request!;
        // The job queues for about a second, so the first state is not final.
        assert.notEqual(state.status, Status.SUCCEEDED, "the request finished before the gateway stopped");
        seen = { seq: state.seq, epoch: state.epoch };
        stopping ??= gateway.stop(); // SIGTERM: the gateway drains, ending every watch
      }
    })(),
  );
  await stopping;
  assert.equal(err.code, Code.Unavailable, err.message);
  const info = errorInfo(err);
  assert.ok(info, `no ErrorInfo in ${err.message}`);
  assert.equal(info.reason, "DRAINING");
  assert.equal(info.domain, "comfygate");
  // The position to resume from, on another replica, with after_epoch and after_seq.
  assert.ok(seen);
  assert.equal(info.metadata.last_seq, String(seen.seq));
  assert.equal(info.metadata.last_epoch, String(seen.epoch));
});
