// The error details the gateway attaches to a gRPC status, decoded from a
// ConnectError: google.rpc.ErrorInfo (why RunComfy or the gateway refused)
// and google.rpc.RetryInfo (when to retry a RESOURCE_EXHAUSTED call). The two
// messages are small and stable, so they are read here with the protobuf
// runtime's wire reader rather than shipping googleapis' generated code.
import { ConnectError } from "@connectrpc/connect";
import { BinaryReader } from "@bufbuild/protobuf/wire";

/** google.rpc.ErrorInfo: the machine-readable cause of an error. */
export interface ErrorInfo {
  /**
   * UPSTREAM_<code> (RunComfy's error code), UPSTREAM_HTTP_<status>,
   * UPSTREAM_UNAVAILABLE, UPSTREAM_TIMEOUT or UPSTREAM_NO_ANSWER in the domain
   * "runcomfy.net"; DRAINING, UPSTREAM_NO_ANSWER or BODY_TOO_LARGE in the
   * domain "comfygate".
   */
  reason: string;
  /** "runcomfy.net" for RunComfy's answers, "comfygate" for the gateway's own. */
  domain: string;
  /** e.g. http_status, upstream_code, job_may_exist, last_seq, last_epoch. */
  metadata: Record<string, string>;
}

/** The raw details of an error received from the gateway. */
function incomingDetails(err: unknown): { type: string; value: Uint8Array }[] {
  const details = ConnectError.from(err).details;
  return details.filter((d): d is { type: string; value: Uint8Array } => "value" in d && d.value instanceof Uint8Array);
}

/**
 * errorInfo returns the google.rpc.ErrorInfo detail of an error from a call
 * (any value a call threw), or undefined when it has none: a request's
 * NOT_FOUND, for one, never carries details.
 */
export function errorInfo(err: unknown): ErrorInfo | undefined {
  const detail = incomingDetails(err).find((d) => d.type === "google.rpc.ErrorInfo");
  if (!detail) return undefined;
  const info: ErrorInfo = { reason: "", domain: "", metadata: {} };
  const r = new BinaryReader(detail.value);
  while (r.pos < r.len) {
    const [field, wireType] = r.tag();
    if (field === 1) info.reason = r.string();
    else if (field === 2) info.domain = r.string();
    else if (field === 3) {
      // map<string, string>: each entry is a message {1: key, 2: value}.
      const entry = new BinaryReader(r.bytes());
      let key = "";
      let value = "";
      while (entry.pos < entry.len) {
        const [f, wt] = entry.tag();
        if (f === 1) key = entry.string();
        else if (f === 2) value = entry.string();
        else entry.skip(wt);
      }
      info.metadata[key] = value;
    } else r.skip(wireType);
  }
  return info;
}

/**
 * retryDelayMs returns the google.rpc.RetryInfo delay of an error, in
 * milliseconds, or undefined when it has none. RESOURCE_EXHAUSTED errors (a
 * per-tenant limit of the gateway, or RunComfy rate limiting) carry it.
 */
export function retryDelayMs(err: unknown): number | undefined {
  const detail = incomingDetails(err).find((d) => d.type === "google.rpc.RetryInfo");
  if (!detail) return undefined;
  let seconds = 0n;
  let nanos = 0;
  const r = new BinaryReader(detail.value);
  while (r.pos < r.len) {
    const [field, wireType] = r.tag();
    if (field !== 1) {
      r.skip(wireType);
      continue;
    }
    // retry_delay: a google.protobuf.Duration {1: seconds, 2: nanos}.
    const d = new BinaryReader(r.bytes());
    while (d.pos < d.len) {
      const [f, wt] = d.tag();
      if (f === 1) seconds = BigInt(d.int64());
      else if (f === 2) nanos = d.int32();
      else d.skip(wt);
    }
  }
  return Number(seconds) * 1000 + nanos / 1e6;
}
