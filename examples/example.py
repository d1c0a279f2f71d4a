#!/usr/bin/env python3
"""The README's Python example: submits a job to a comfygate gateway, follows it
with WatchRequest to its end and prints the output URLs.

    pip install ./clients/python               # the comfygate package (grpcio, protobuf)
    export COMFYGATE_ADDR=127.0.0.1:9090       # the gateway's gRPC address (the default)
    export COMFYGATE_DEPLOYMENT=my-deployment  # the RunComfy deployment id
    export COMFYGATE_API_KEY=...               # when the gateway has --api-keys-file
    python3 examples/example.py examples/job.json

The argument is the deployment's JSON input (RunComfy's submit body), sent byte
for byte; job.json beside this file when none is given. It prints the request
id, one line per state change ("SEQ STATUS") and, once the request has
succeeded, its output URLs, one a line. The exit status is 0 when the request
succeeded, 1 when it failed, 2 when it was cancelled, 3 when a call failed and
4 for a bad configuration (nothing sent), as the comfygate command's.
"""

import os
import sys
from pathlib import Path

import grpc

from comfygate.errors import error_info
from comfygate.v1 import gateway_pb2 as pb
from comfygate.v1 import gateway_pb2_grpc as pb_grpc


def call_failed(call, err):
    """Prints a failed call's gRPC status and ErrorInfo (see the README's error table)."""
    print("%s: %s: %s" % (call, err.code().name, err.details()), file=sys.stderr)
    info = error_info(err)
    if info is not None:
        print("  reason %s (domain %s), %s" % (info.reason, info.domain, info.metadata), file=sys.stderr)
    return 3


def main():
    addr = os.environ.get("COMFYGATE_ADDR") or "127.0.0.1:9090"
    deployment = os.environ.get("COMFYGATE_DEPLOYMENT")
    if not deployment:
        print("set COMFYGATE_DEPLOYMENT to the deployment id", file=sys.stderr)
        return 4
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("job.json")
    try:
        # Text, not json.load + json.dumps: the input reaches RunComfy exactly
        # as written.
        input_json = path.read_text(encoding="utf-8")
    except OSError as err:
        print(err, file=sys.stderr)
        return 4
    key = os.environ.get("COMFYGATE_API_KEY")
    metadata = [("authorization", "Bearer " + key)] if key else None

    # Plaintext, as `comfygate --simulate` serves; a gateway with --tls-cert
    # needs grpc.secure_channel(addr, grpc.ssl_channel_credentials()) instead.
    with grpc.insecure_channel(addr) as channel:
        stub = pb_grpc.GatewayServiceStub(channel)
        try:
            submitted = stub.Submit(
                pb.SubmitRequest(deployment_id=deployment, input_json=input_json),
                metadata=metadata, timeout=30)
        except grpc.RpcError as err:
            return call_failed("submit", err)
        request_id = submitted.request.request_id
        print("request", request_id, flush=True)

        # The stream sends the current state, then every change in seq order,
        # and ends after the final one.
        last = None
        try:
            for msg in stub.WatchRequest(
                    pb.WatchRequestRequest(deployment_id=deployment, request_id=request_id),
                    metadata=metadata):
                last = msg.request
                print(last.seq, pb.Status.Name(last.status), flush=True)
        except grpc.RpcError as err:
            # UNAVAILABLE with the ErrorInfo reason DRAINING: the gateway is
            # shutting down; a new WatchRequest with after_epoch and after_seq
            # set from the last state resumes on another replica.
            return call_failed("watch", err)

    if last is not None and last.status == pb.STATUS_SUCCEEDED:
        for url in last.output_urls:
            print(url)
        return 0
    if last is not None and last.status == pb.STATUS_CANCELLED:
        return 2
    print("the request failed: %s" % (last.error.message if last is not None else "no state"), file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
