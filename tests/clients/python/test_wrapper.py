"""Unit tests of defender_plugin's error decoding and watch reopening, against
a real in-process gRPC server built from the generated servicer base class.
Run with PYTHONPATH holding the generated tree (clients/python/generate.sh)."""
from concurrent import futures
import unittest

import grpc

import defender_plugin
from defender.v1 import response_service_pb2 as pb2
from defender.v1 import response_service_pb2_grpc as pb2_grpc
from google.rpc import error_details_pb2, status_pb2
import google.protobuf  # the runtime's google namespace still imports


def details(code, message, reason):
    st = status_pb2.Status(code=code.value[0], message=message)
    st.details.add().Pack(error_details_pb2.ErrorInfo(reason=reason, domain="defender.v1"))
    return st.SerializeToString()


class Servicer(pb2_grpc.ResponseServiceServicer):
    def __init__(self):
        self.watch_calls = 0
        self.metadata = None

    def QuarantineFile(self, request, context):
        self.metadata = dict(context.invocation_metadata())
        if request.sha1 == "bad":
            context.abort_with_status(_Status(
                grpc.StatusCode.INVALID_ARGUMENT, "sha1 is not 40 hex digits",
                details(grpc.StatusCode.INVALID_ARGUMENT, "sha1 is not 40 hex digits",
                        "INVALID_SHA1")))
        if request.sha1 == "garbage":
            context.abort_with_status(_Status(grpc.StatusCode.INTERNAL, "oops", b"\xff\x00junk"))
        if request.sha1 == "plain":
            context.abort(grpc.StatusCode.NOT_FOUND, "no such machine")
        return pb2.QuarantineFileResponse(action=pb2.MachineAction(id="a1"))

    def WatchMachineAction(self, request, context):
        self.watch_calls += 1
        yield pb2.MachineAction(id=request.id, status=pb2.MACHINE_ACTION_STATUS_PENDING)
        if self.watch_calls == 1:
            context.abort(grpc.StatusCode.UNAVAILABLE, "upstream went away")
        yield pb2.MachineAction(id=request.id, status=pb2.MACHINE_ACTION_STATUS_SUCCEEDED)


class _Status(grpc.Status):
    def __init__(self, code, details_text, bin_details):
        self.code = code
        self.details = details_text
        self.trailing_metadata = (("grpc-status-details-bin", bin_details),)


class WrapperTest(unittest.TestCase):
    def setUp(self):
        self.servicer = Servicer()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        pb2_grpc.add_ResponseServiceServicer_to_server(self.servicer, self.server)
        port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        self.client = defender_plugin.connect("127.0.0.1:%d" % port, token="tok-123")

    def tearDown(self):
        self.client.close()
        self.server.stop(None)

    def test_ok_and_token_sent(self):
        resp = self.client.quarantine_file(comment="c", machine_id="m", sha1="ok")
        self.assertEqual(resp.action.id, "a1")
        self.assertEqual(self.servicer.metadata.get("authorization"), "Bearer tok-123")

    def test_error_info_reason_decoded(self):
        with self.assertRaises(defender_plugin.Error) as cm:
            self.client.quarantine_file(comment="c", machine_id="m", sha1="bad")
        self.assertEqual(cm.exception.code, grpc.StatusCode.INVALID_ARGUMENT)
        self.assertEqual(cm.exception.message, "sha1 is not 40 hex digits")
        self.assertEqual(cm.exception.reason, "INVALID_SHA1")
        self.assertIn("INVALID_ARGUMENT", str(cm.exception))

    def test_no_details_no_reason(self):
        with self.assertRaises(defender_plugin.Error) as cm:
            self.client.quarantine_file(comment="c", machine_id="m", sha1="plain")
        self.assertEqual(cm.exception.code, grpc.StatusCode.NOT_FOUND)
        self.assertEqual(cm.exception.reason, "")

    def test_malformed_details_no_reason(self):
        with self.assertRaises(defender_plugin.Error) as cm:
            self.client.quarantine_file(comment="c", machine_id="m", sha1="garbage")
        self.assertEqual(cm.exception.code, grpc.StatusCode.INTERNAL)
        self.assertEqual(cm.exception.reason, "")

    def test_watch_reopens_on_unavailable(self):
        statuses = [a.status for a in self.client.watch_machine_action("a1", backoff=0.01)]
        self.assertEqual(statuses[-1], pb2.MACHINE_ACTION_STATUS_SUCCEEDED)
        self.assertEqual(self.servicer.watch_calls, 2)


if __name__ == "__main__":
    unittest.main()
