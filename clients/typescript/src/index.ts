// Client for comfygate's gRPC API, built on Connect-ES.
//
// createGrpcTransport speaks the real gRPC protocol over HTTP/2 (not gRPC-Web
// or the Connect protocol), so it talks to the gateway's gRPC listener exactly
// as a Go or Python gRPC client would.
import { createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";

import { GatewayService } from "./gen/comfygate/v1/gateway_pb.js";

export * from "./gen/comfygate/v1/gateway_pb.js";
export { errorInfo, retryDelayMs, type ErrorInfo } from "./errors.js";
// Calls fail with a ConnectError whose code is the gRPC status code: exported
// here so that callers need no direct dependency on @connectrpc/connect.
export { Code, ConnectError } from "@connectrpc/connect";

/** A typed client for comfygate.v1.GatewayService. */
export type GatewayClient = Client<typeof GatewayService>;

export interface GatewayClientOptions {
  /**
   * An API key, sent as "Authorization: Bearer KEY" on every call; needed when
   * the gateway runs with --api-keys-file.
   */
  apiKey?: string;
  /** More interceptors, run after the one that adds the API key. */
  interceptors?: Interceptor[];
}

/**
 * createGatewayClient connects to a gateway's gRPC listener.
 *
 * @param baseUrl the gRPC address as a URL: "http://127.0.0.1:9090" for
 *   plaintext (h2c), "https://gateway.example" when the gateway serves TLS.
 */
export function createGatewayClient(
  baseUrl: string,
  options: GatewayClientOptions = {},
): GatewayClient {
  const interceptors: Interceptor[] = [];
  if (options.apiKey) {
    const auth = `Bearer ${options.apiKey}`;
    interceptors.push((next) => (req) => {
      req.header.set("authorization", auth);
      return next(req);
    });
  }
  interceptors.push(...(options.interceptors ?? []));
  return createClient(GatewayService, createGrpcTransport({ baseUrl, interceptors }));
}
