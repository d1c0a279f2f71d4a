"""comfygate.errors against the error details a real comfygate process
(--simulate) sends: RetryInfo with a per-tenant rate limit, ErrorInfo DRAINING
when the gateway shuts down under an open watch.

Run with Debian's interpreter, as test_gateway.py:
    /usr/bin/python3 -m unittest discover -s clients/python/tests -v
"""

import threading
import unittest

import grpc

from test_gateway import Gateway  # also puts clients/python first on sys.path

from comfygate.errors import error_info, retry_delay  # noqa: E402
from comfygate.v1 import gateway_pb2 as pb  # noqa: E402
from comfygate.v1 import gateway_pb2_grpc as pb_grpc  # noqa: E402

DEPLOYMENT_ID = "py-errors-test"


def start(test, args=()):
    """A gateway and a stub for it, both closed when the test ends."""
    gateway = Gateway(args)
    test.addCleanup(gateway.stop)
    channel = grpc.insecure_channel(gateway.grpc_addr)
    test.addCleanup(channel.close)
    return gateway, pb_grpc.GatewayServiceStub(channel)


class ErrorDetailsTest(unittest.TestCase):
    def test_rate_limited_read_has_retry_info(self):
        # One read, then one a second: the second read at once is refused.
        _, stub = start(self, ["--read-rate", "1", "--read-burst", "1"])
        req = pb.GetStatusRequest(deployment_id=DEPLOYMENT_ID, request_id="no-such-request")

        with self.assertRaises(grpc.RpcError) as first:
            stub.GetStatus(req, timeout=10)
        self.assertEqual(first.exception.code(), grpc.StatusCode.NOT_FOUND, first.exception.details())
        # A request's NOT_FOUND carries no details at all.
        self.assertIsNone(error_info(first.exception))
        self.assertIsNone(retry_delay(first.exception))

        with self.assertRaises(grpc.RpcError) as limited:
            stub.GetStatus(req, timeout=10)
        self.assertEqual(limited.exception.code(), grpc.StatusCode.RESOURCE_EXHAUSTED, limited.exception.details())
        delay = retry_delay(limited.exception)
        self.assertIsNotNone(delay)
        self.assertTrue(0 < delay <= 1, delay)
        self.assertIsNone(error_info(limited.exception))

    def test_watch_ended_by_shutdown_has_error_info_draining(self):
        gateway, stub = start(self)
        submitted = stub.Submit(pb.SubmitRequest(deployment_id=DEPLOYMENT_ID, input_json='{"overrides":{}}'), timeout=10)
        stream = stub.WatchRequest(
            pb.WatchRequestRequest(deployment_id=DEPLOYMENT_ID, request_id=submitted.request.request_id), timeout=45)
        seen, stopper = None, None
        with self.assertRaises(grpc.RpcError) as ended:
            for msg in stream:
                # The job queues for about a second, so the first state is not final.
                self.assertNotEqual(msg.request.status, pb.STATUS_SUCCEEDED, "finished before the gateway stopped")
                seen = msg.request
                if stopper is None:
                    # SIGTERM: the gateway drains, ending every watch.
                    stopper = threading.Thread(target=gateway.stop)
                    stopper.start()
        if stopper is not None:
            stopper.join()
        err = ended.exception
        self.assertEqual(err.code(), grpc.StatusCode.UNAVAILABLE, err.details())
        info = error_info(err)
        self.assertIsNotNone(info, err.details())
        self.assertEqual(info.reason, "DRAINING")
        self.assertEqual(info.domain, "comfygate")
        # The position to resume from, on another replica, with after_epoch and after_seq.
        self.assertEqual(info.metadata.get("last_seq"), str(seen.seq))
        self.assertEqual(info.metadata.get("last_epoch"), str(seen.epoch))
        self.assertIsNone(retry_delay(err))


if __name__ == "__main__":
    unittest.main()
