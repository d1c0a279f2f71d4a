// Starts a real comfygate process (--simulate) for the tests, on free loopback
// ports, and stops it again.
import { spawn, execFileSync, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

/** The repository root: this file is clients/typescript/test/gateway.ts. */
const repoRoot = resolve(fileURLToPath(import.meta.url), "../../../..");

export interface Gateway {
  /** gRPC base URL, e.g. "http://127.0.0.1:40123". */
  grpcUrl: string;
  /** HTTP (REST and health) base URL. */
  httpUrl: string;
  /** Everything the gateway logged so far, for failure messages. */
  logs(): string;
  /** Stops the gateway (and removes a binary built for it); safe to call twice. */
  stop(): Promise<void>;
}

/** A loopback port that was free a moment ago. */
async function freePort(): Promise<number> {
  return new Promise((ok, fail) => {
    const srv = createServer();
    srv.once("error", fail);
    srv.listen(0, "127.0.0.1", () => {
      const addr = srv.address();
      srv.close(() => (addr && typeof addr === "object" ? ok(addr.port) : fail(new Error("no port"))));
    });
  });
}

/**
 * The binary to run: $COMFYGATE_BIN when set (clients/test.sh builds it once for
 * both languages), else one built now into a temporary directory. Building
 * once and exec'ing the binary, rather than `go run`, means stop() signals the
 * gateway itself and not a `go` parent that might leave it running.
 */
function gatewayBinary(): { bin: string; cleanup: () => void } {
  const given = process.env.COMFYGATE_BIN;
  if (given) return { bin: given, cleanup: () => {} };
  const dir = mkdtempSync(join(tmpdir(), "comfygate-ts-"));
  const bin = join(dir, "comfygate");
  execFileSync("go", ["build", "-o", bin, "./cmd/comfygate"], { cwd: repoRoot, stdio: "inherit" });
  return { bin, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

export interface GatewayOptions {
  /** More flags for the gateway, e.g. ["--read-rate", "1"]. */
  args?: string[];
  /** How long to wait for /readyz to answer 200. */
  readyTimeoutMs?: number;
}

/** startGateway runs comfygate --simulate and resolves once /readyz answers 200. */
export async function startGateway({ args = [], readyTimeoutMs = 30_000 }: GatewayOptions = {}): Promise<Gateway> {
  const { bin, cleanup } = gatewayBinary();
  const grpcAddr = `127.0.0.1:${await freePort()}`;
  const httpAddr = `127.0.0.1:${await freePort()}`;
  const child: ChildProcess = spawn(bin, ["--simulate", "--grpc-addr", grpcAddr, "--http-addr", httpAddr, ...args], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  let logs = "";
  child.stdout?.on("data", (b: Buffer) => (logs += b.toString()));
  child.stderr?.on("data", (b: Buffer) => (logs += b.toString()));
  const exited = new Promise<void>((ok) => child.once("exit", () => ok()));
  let running = true;
  void exited.then(() => (running = false));
  // If the test process dies without running its hooks, take the gateway along.
  const killOnExit = () => child.kill("SIGKILL");
  process.once("exit", killOnExit);

  const stop = async () => {
    process.removeListener("exit", killOnExit);
    if (running) {
      child.kill("SIGTERM"); // drains in-flight calls, then exits
      const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
      await exited;
      clearTimeout(timer);
    }
    cleanup();
  };

  const httpUrl = `http://${httpAddr}`;
  const deadline = Date.now() + readyTimeoutMs;
  for (;;) {
    if (!running) {
      await stop();
      throw new Error(`gateway exited before it was ready (exit code ${child.exitCode}); logs:\n${logs}`);
    }
    try {
      const resp = await fetch(`${httpUrl}/readyz`);
      await resp.arrayBuffer();
      if (resp.status === 200) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`gateway not ready within ${readyTimeoutMs} ms; logs:\n${logs}`);
    }
    await new Promise((ok) => setTimeout(ok, 50));
  }
  return { grpcUrl: `http://${grpcAddr}`, httpUrl, logs: () => logs, stop };
}
