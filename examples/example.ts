// The README's TypeScript example: submits a job to a comfygate gateway,
// follows it with WatchRequest to its end and prints the output URLs.
//
//   npm install /path/to/comfygate-client-0.1.0.tgz  # the packed client (clients/typescript/README.md)
//   export COMFYGATE_ADDR=127.0.0.1:9090       # the gateway's gRPC address (the default)
//   export COMFYGATE_DEPLOYMENT=my-deployment  # the RunComfy deployment id
//   export COMFYGATE_API_KEY=...               # when the gateway has --api-keys-file
//   npx tsc && node example.js job.json        # or: npx tsx example.ts job.json
//
// The argument is the deployment's JSON input (RunComfy's submit body), sent
// byte for byte; job.json in the working directory when none is given. It
// prints the request id, one line per state change ("SEQ STATUS") and, once the
// request has succeeded, its output URLs, one a line. The exit status is 0 when
// the request succeeded, 1 when it failed, 2 when it was cancelled, 3 when a
// call failed and 4 for a bad configuration (nothing sent), as the comfygate
// command's.
import { readFileSync } from "node:fs";

import { Code, ConnectError, createGatewayClient, errorInfo, Status, type RequestState } from "@comfygate/client";

/** Prints a failed call's gRPC status and ErrorInfo (see the README's error table). */
function callFailed(call: string, err: unknown): number {
  const e = ConnectError.from(err);
  console.error(`${call}: ${Code[e.code]}: ${e.rawMessage}`); // e.code is the gRPC status code
  const info = errorInfo(e);
  if (info) console.error(`  reason ${info.reason} (domain ${info.domain}), ${JSON.stringify(info.metadata)}`);
  return 3;
}

async function main(): Promise<number> {
  const addr = process.env.COMFYGATE_ADDR || "127.0.0.1:9090";
  const deploymentId = process.env.COMFYGATE_DEPLOYMENT;
  if (!deploymentId) {
    console.error("set COMFYGATE_DEPLOYMENT to the deployment id");
    return 4;
  }
  let inputJson: string;
  try {
    // Text, not JSON.parse + JSON.stringify: a JavaScript number would round
    // a 64-bit seed, the text reaches RunComfy exactly as written.
    inputJson = readFileSync(process.argv[2] ?? "job.json", "utf8");
  } catch (err) {
    console.error(String(err));
    return 4;
  }
  // http:// is plaintext (h2c), as `comfygate --simulate` serves; use
  // https://host:port for a gateway with --tls-cert.
  const client = createGatewayClient(`http://${addr}`, { apiKey: process.env.COMFYGATE_API_KEY });

  let requestId: string;
  try {
    const { request } = await client.submit({ deploymentId, inputJson }, { timeoutMs: 30_000 });
    requestId = request!.requestId;
  } catch (err) {
    return callFailed("submit", err);
  }
  console.log("request", requestId);

  // The stream sends the current state, then every change in seq order, and
  // ends after the final one.
  let last: RequestState | undefined;
  try {
    for await (const { request } of client.watchRequest({ deploymentId, requestId })) {
      last = request!;
      console.log(String(last.seq), `STATUS_${Status[last.status]}`);
    }
  } catch (err) {
    // UNAVAILABLE with the ErrorInfo reason DRAINING: the gateway is shutting
    // down; a new watchRequest with afterEpoch and afterSeq set from the last
    // state resumes on another replica.
    return callFailed("watch", err);
  }

  if (last?.status === Status.SUCCEEDED) {
    for (const url of last.outputUrls) console.log(url);
    return 0;
  }
  if (last?.status === Status.CANCELLED) return 2;
  console.error(`the request failed: ${last?.error?.message ?? "no state"}`);
  return 1;
}

process.exitCode = await main();
