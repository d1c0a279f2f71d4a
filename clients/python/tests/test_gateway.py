"""End-to-end test of the Python stubs against a real comfygate process.

Starts the gateway with its built-in RunComfy simulator (--simulate) on free
loopback ports, talks to it over real gRPC, and stops it afterwards, also when a
test fails. Uses $COMFYGATE_BIN when set (clients/test.sh builds the binary once
for all clients), else builds one with `go build`.

Run with Debian's interpreter, which has python3-grpcio and python3-protobuf:
    /usr/bin/python3 -m unittest discover -s clients/python/tests -v
"""

import atexit
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import grpc

CLIENT_DIR = Path(__file__).resolve().parents[1]  # clients/python
REPO_ROOT = CLIENT_DIR.parents[1]
sys.path.insert(0, str(CLIENT_DIR))

from comfygate.v1 import gateway_pb2 as pb  # noqa: E402
from comfygate.v1 import gateway_pb2_grpc as pb_grpc  # noqa: E402

# Any id of [A-Za-z0-9_-]{1,128} is an active deployment in the simulator.
DEPLOYMENT_ID = "py-client-test"
TERMINAL = {pb.STATUS_SUCCEEDED, pb.STATUS_FAILED, pb.STATUS_CANCELLED}


def free_addr():
    """A loopback address whose port was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return "127.0.0.1:%d" % s.getsockname()[1]


class Gateway:
    """A running `comfygate --simulate`; stop() is safe to call twice."""

    def __init__(self, args=(), ready_timeout=30.0):
        self._tmp = tempfile.mkdtemp(prefix="comfygate-py-")
        self._log_path = os.path.join(self._tmp, "gateway.log")
        self._proc = None
        # Registered before anything can fail, so a half-started gateway is
        # still stopped; atexit covers an interpreter that exits without
        # running unittest's cleanups.
        atexit.register(self.stop)
        binary = os.environ.get("COMFYGATE_BIN")
        if not binary:
            # Build once and exec the binary rather than `go run`: stop() then
            # signals the gateway itself, not a `go` parent.
            binary = os.path.join(self._tmp, "comfygate")
            subprocess.run(["go", "build", "-o", binary, "./cmd/comfygate"], cwd=REPO_ROOT, check=True)
        self.grpc_addr, self.http_addr = free_addr(), free_addr()
        with open(self._log_path, "wb") as log:  # a file, so a chatty gateway never blocks on a full pipe
            self._proc = subprocess.Popen(
                [binary, "--simulate", "--grpc-addr", self.grpc_addr, "--http-addr", self.http_addr, *args],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )
        self._wait_ready(ready_timeout)

    def _wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        url = "http://%s/readyz" % self.http_addr
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError("gateway exited with %d before it was ready; logs:\n%s"
                                   % (self._proc.returncode, self.logs()))
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass  # not listening yet, or not ready (urlopen raises on 503)
            if time.monotonic() > deadline:
                raise RuntimeError("gateway not ready within %ss; logs:\n%s" % (timeout, self.logs()))
            time.sleep(0.05)

    def logs(self):
        try:
            with open(self._log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def stop(self):
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()  # SIGTERM: drains in-flight calls, then exits
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        shutil.rmtree(self._tmp, ignore_errors=True)


class GatewayTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.gateway = Gateway()
        # Class cleanups run even when setUpClass or a test fails.
        cls.addClassCleanup(cls.gateway.stop)
        cls.channel = grpc.insecure_channel(cls.gateway.grpc_addr)
        cls.addClassCleanup(cls.channel.close)
        cls.stub = pb_grpc.GatewayServiceStub(cls.channel)

    def test_submit_then_watch_to_succeeded(self):
        submitted = self.stub.Submit(
            pb.SubmitRequest(deployment_id=DEPLOYMENT_ID, input_json='{"overrides":{}}'), timeout=10)
        request_id = submitted.request.request_id
        self.assertTrue(request_id, "Submit returned no request id")
        self.assertEqual(submitted.request.status, pb.STATUS_QUEUED)

        # The stream sends the current state, then every change, and ends after
        # the terminal state; the deadline only guards against one that never ends.
        stream = self.stub.WatchRequest(
            pb.WatchRequestRequest(deployment_id=DEPLOYMENT_ID, request_id=request_id), timeout=45)
        states = [msg.request for msg in stream]
        summary = ", ".join("%s@%d" % (pb.Status.Name(s.status), s.seq) for s in states)

        self.assertTrue(states, "WatchRequest ended without sending anything")
        for s in states:
            self.assertEqual(s.request_id, request_id)
            self.assertEqual(s.deployment_id, DEPLOYMENT_ID)
        self.assertGreaterEqual(states[0].seq, 1, summary)
        for prev, cur in zip(states, states[1:]):
            self.assertGreater(cur.seq, prev.seq, "seq not strictly increasing: " + summary)
            # Status values are declared in lifecycle order, so they never go back.
            self.assertGreaterEqual(cur.status, prev.status, "status went backwards: " + summary)
        # Only the last message is terminal: the stream ends right after it.
        for s in states[:-1]:
            self.assertNotIn(s.status, TERMINAL, "terminal state before the end: " + summary)

        last = states[-1]
        self.assertEqual(last.status, pb.STATUS_SUCCEEDED, "final state: " + summary)
        self.assertTrue(last.output_urls, "succeeded without output URLs")
        for url in last.output_urls:
            self.assertIn(urllib.parse.urlparse(url).scheme, ("http", "https"), url)
        self.assertTrue(last.HasField("outputs"), "succeeded without outputs")
        self.assertTrue(last.HasField("finished_at"), "succeeded without finished_at")

        # GetResult agrees with the end of the stream.
        result = self.stub.GetResult(
            pb.GetResultRequest(deployment_id=DEPLOYMENT_ID, request_id=request_id), timeout=10)
        self.assertEqual(result.request.status, pb.STATUS_SUCCEEDED)
        self.assertEqual(list(result.request.output_urls), list(last.output_urls))
        self.assertEqual(result.request.seq, last.seq)

    def assert_code(self, code, call, *args, **kwargs):
        with self.assertRaises(grpc.RpcError) as cm:
            call(*args, **kwargs)
        self.assertEqual(cm.exception.code(), code, cm.exception.details())

    def test_malformed_request_id_is_invalid_argument(self):
        self.assert_code(grpc.StatusCode.INVALID_ARGUMENT, self.stub.GetStatus,
                         pb.GetStatusRequest(deployment_id=DEPLOYMENT_ID, request_id="not a valid id!"),
                         timeout=10)

    def test_unknown_request_is_not_found(self):
        self.assert_code(grpc.StatusCode.NOT_FOUND, self.stub.GetStatus,
                         pb.GetStatusRequest(deployment_id=DEPLOYMENT_ID, request_id="no-such-request"),
                         timeout=10)


if __name__ == "__main__":
    unittest.main()
