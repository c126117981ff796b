"""Unit tests of defender_plugin's error decoding, token handling and watch
reopening, against a real in-process gRPC server built from the generated
servicer base class. Run with PYTHONPATH holding the generated tree
(clients/python/generate.sh, or <build>/clients/python)."""
from concurrent import futures
import os
import socket
import threading
import time
import unittest

import grpc

import defender_plugin
from defender.v1 import response_service_pb2 as pb2
from defender.v1 import response_service_pb2_grpc as pb2_grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2
import google
import google.protobuf

PENDING = pb2.MACHINE_ACTION_STATUS_PENDING
IN_PROGRESS = pb2.MACHINE_ACTION_STATUS_IN_PROGRESS
SUCCEEDED = pb2.MACHINE_ACTION_STATUS_SUCCEEDED


def details(code, message, reason, metadata=None, retry_seconds=None, unknown_first=False):
    """A serialized google.rpc.Status as the plugin sends it."""
    st = status_pb2.Status(code=code.value[0], message=message)
    if unknown_first:  # a detail the client does not decode comes before the ErrorInfo
        st.details.add().Pack(error_details_pb2.DebugInfo(detail="internal"))
    st.details.add().Pack(error_details_pb2.ErrorInfo(
        reason=reason, domain="defender-plugin", metadata=metadata or {}))
    if retry_seconds is not None:
        st.details.add().Pack(error_details_pb2.RetryInfo(
            retry_delay=duration_pb2.Duration(seconds=retry_seconds, nanos=500000000)))
    return st.SerializeToString()


class _Status(grpc.Status):
    def __init__(self, code, details_text, bin_details):
        self.code = code
        self.details = details_text
        self.trailing_metadata = (("grpc-status-details-bin", bin_details),)


class Servicer(pb2_grpc.ResponseServiceServicer):
    """Answers by the request's sha1 / id, and counts the watch streams."""

    def __init__(self):
        self.watch_calls = 0
        self.metadata = None
        self.watch_done = threading.Event()

    def QuarantineFile(self, request, context):
        self.metadata = dict(context.invocation_metadata())
        if request.sha1 == "bad":
            context.abort_with_status(_Status(
                grpc.StatusCode.INVALID_ARGUMENT, "sha1 is not 40 hex digits",
                details(grpc.StatusCode.INVALID_ARGUMENT, "sha1 is not 40 hex digits",
                        "INVALID_SHA1", metadata={"field": "sha1"}, unknown_first=True)))
        if request.sha1 == "throttled":
            context.abort_with_status(_Status(
                grpc.StatusCode.RESOURCE_EXHAUSTED, "Defender throttled the call",
                details(grpc.StatusCode.RESOURCE_EXHAUSTED, "Defender throttled the call",
                        "DEFENDER_THROTTLED", metadata={"http_status": "429"}, retry_seconds=7)))
        if request.sha1 == "garbage":
            context.abort_with_status(_Status(grpc.StatusCode.INTERNAL, "oops", b"\xff\x00junk"))
        if request.sha1 == "plain":
            context.abort(grpc.StatusCode.NOT_FOUND, "no such machine")
        return pb2.QuarantineFileResponse(action=pb2.MachineAction(id="a1", status=PENDING))

    def CancelMachineAction(self, request, context):
        context.abort_with_status(_Status(
            grpc.StatusCode.FAILED_PRECONDITION, "already final",
            details(grpc.StatusCode.FAILED_PRECONDITION, "already final", "ACTION_ALREADY_FINAL",
                    metadata={"status": "Succeeded"})))

    def BatchQuarantineFile(self, request, context):
        if not request.machine_ids:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no device")
        yield pb2.BatchQuarantineFileResponse(index=0, machine_id=request.machine_ids[0],
                                              action=pb2.MachineAction(id="b0"))
        error = status_pb2.Status()
        error.ParseFromString(details(grpc.StatusCode.NOT_FOUND, "no such machine",
                                      "DEFENDER_NOT_FOUND", metadata={"http_status": "404"}))
        yield pb2.BatchQuarantineFileResponse(index=1, machine_id=request.machine_ids[1],
                                              error=error)

    def WatchMachineAction(self, request, context):
        self.watch_calls += 1
        try:
            if request.id == "flaky":  # breaks once after its first answer
                yield pb2.MachineAction(id=request.id, status=PENDING)
                if self.watch_calls == 1:
                    context.abort(grpc.StatusCode.UNAVAILABLE, "the plugin is shutting down")
                yield pb2.MachineAction(id=request.id, status=IN_PROGRESS)
                yield pb2.MachineAction(id=request.id, status=SUCCEEDED)
            elif request.id == "draining":  # refused once as a draining plugin does
                if self.watch_calls == 1:
                    context.abort(grpc.StatusCode.CANCELLED, "CANCELLED")
                yield pb2.MachineAction(id=request.id, status=SUCCEEDED)
            elif request.id == "cancelled":  # the plugin's own CANCELLED, with details
                context.abort_with_status(_Status(
                    grpc.StatusCode.CANCELLED, "the call was cancelled",
                    details(grpc.StatusCode.CANCELLED, "the call was cancelled", "CANCELLED")))
            elif request.id == "down":
                context.abort(grpc.StatusCode.UNAVAILABLE, "no upstream")
            elif request.id == "unknown":
                context.abort_with_status(_Status(
                    grpc.StatusCode.NOT_FOUND, "no such action",
                    details(grpc.StatusCode.NOT_FOUND, "no such action", "DEFENDER_NOT_FOUND")))
            else:  # "slow": pending until the caller gives up
                yield pb2.MachineAction(id=request.id, status=PENDING)
                while context.is_active():
                    time.sleep(0.02)
        finally:
            self.watch_done.set()


def _server(servicer, address="127.0.0.1:0"):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb2_grpc.add_ResponseServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port(address)
    server.start()
    return server, port


class WrapperTest(unittest.TestCase):
    def setUp(self):
        self.servicer = Servicer()
        self.server, self.port = _server(self.servicer)
        self.client = defender_plugin.connect("127.0.0.1:%d" % self.port, token="tok-123")

    def tearDown(self):
        self.client.close()
        self.server.stop(None)

    def quarantine_error(self, sha1):
        with self.assertRaises(defender_plugin.Error) as cm:
            self.client.quarantine_file(comment="c", machine_id="m", sha1=sha1)
        return cm.exception

    def test_ok_and_token_sent(self):
        resp = self.client.quarantine_file(comment="c", machine_id="m", sha1="ok")
        self.assertEqual(resp.action.id, "a1")
        self.assertEqual(self.servicer.metadata.get("authorization"), "Bearer tok-123")

    def test_no_token_no_authorization(self):
        with defender_plugin.connect("127.0.0.1:%d" % self.port) as client:
            client.quarantine_file(comment="c", machine_id="m", sha1="ok")
        self.assertNotIn("authorization", self.servicer.metadata)

    def test_error_info_decoded(self):
        err = self.quarantine_error("bad")
        self.assertEqual(err.code, grpc.StatusCode.INVALID_ARGUMENT)
        self.assertEqual(err.message, "sha1 is not 40 hex digits")
        self.assertEqual(err.reason, "INVALID_SHA1")  # found past a detail of another type
        self.assertEqual(err.domain, "defender-plugin")
        self.assertEqual(err.metadata, {"field": "sha1"})
        self.assertIsNone(err.retry_delay)
        self.assertEqual(len(err.status.details), 2)
        self.assertEqual(str(err), "INVALID_ARGUMENT: sha1 is not 40 hex digits (INVALID_SHA1)")

    def test_retry_info_decoded(self):
        err = self.quarantine_error("throttled")
        self.assertEqual(err.code, grpc.StatusCode.RESOURCE_EXHAUSTED)
        self.assertEqual(err.reason, "DEFENDER_THROTTLED")
        self.assertEqual(err.retry_delay, 7.5)

    def test_no_details_no_reason(self):
        err = self.quarantine_error("plain")
        self.assertEqual(err.code, grpc.StatusCode.NOT_FOUND)
        self.assertEqual((err.reason, err.domain, err.metadata, err.status), ("", "", {}, None))

    def test_malformed_details_no_reason(self):
        err = self.quarantine_error("garbage")
        self.assertEqual(err.code, grpc.StatusCode.INTERNAL)
        self.assertEqual(err.message, "oops")
        self.assertEqual(err.reason, "")

    def test_cancel_error(self):
        with self.assertRaises(defender_plugin.Error) as cm:
            self.client.cancel_machine_action("a1", "too late")
        self.assertEqual(cm.exception.code, grpc.StatusCode.FAILED_PRECONDITION)
        self.assertEqual(cm.exception.reason, "ACTION_ALREADY_FINAL")
        self.assertEqual(cm.exception.metadata["status"], "Succeeded")

    def test_batch_device_error(self):
        results = list(self.client.batch_quarantine_file("c", machine_ids=["m0", "m1"], sha1="s"))
        self.assertEqual([r.index for r in results], [0, 1])
        self.assertEqual(results[0].action.id, "b0")
        self.assertFalse(results[0].HasField("error"))
        err = defender_plugin.Error.from_status(results[1].error)
        self.assertEqual(err.code, grpc.StatusCode.NOT_FOUND)
        self.assertEqual(err.reason, "DEFENDER_NOT_FOUND")
        self.assertEqual(err.metadata, {"http_status": "404"})

    def test_batch_call_error(self):
        with self.assertRaises(defender_plugin.Error) as cm:
            list(self.client.batch_quarantine_file("c", sha1="s"))
        self.assertEqual(cm.exception.code, grpc.StatusCode.INVALID_ARGUMENT)

    def test_watch_reopens_on_unavailable(self):
        statuses = [a.status for a in self.client.watch_machine_action("flaky", backoff=0.01)]
        # The reopened stream's first answer (PENDING again) is not repeated.
        self.assertEqual(statuses, [PENDING, IN_PROGRESS, SUCCEEDED])
        self.assertEqual(self.servicer.watch_calls, 2)

    def test_watch_reopens_on_a_cancel_without_details(self):
        statuses = [a.status for a in self.client.watch_machine_action("draining", backoff=0.01)]
        self.assertEqual(statuses, [SUCCEEDED])
        self.assertEqual(self.servicer.watch_calls, 2)

    def test_watch_not_reopened_on_the_plugins_own_cancel(self):
        with self.assertRaises(defender_plugin.Error) as cm:
            list(self.client.watch_machine_action("cancelled", backoff=0.01))
        self.assertEqual(cm.exception.code, grpc.StatusCode.CANCELLED)
        self.assertFalse(cm.exception.transient)
        self.assertEqual(self.servicer.watch_calls, 1)

    def test_watch_gives_up_after_reopens(self):
        with self.assertRaises(defender_plugin.Error) as cm:
            list(self.client.watch_machine_action("down", reopen=2, backoff=0.01))
        self.assertEqual(cm.exception.code, grpc.StatusCode.UNAVAILABLE)
        self.assertEqual(cm.exception.message, "no upstream")
        self.assertEqual(self.servicer.watch_calls, 3)

    def test_watch_other_error_not_reopened(self):
        with self.assertRaises(defender_plugin.Error) as cm:
            list(self.client.watch_machine_action("unknown", backoff=0.01))
        self.assertEqual(cm.exception.reason, "DEFENDER_NOT_FOUND")
        self.assertEqual(self.servicer.watch_calls, 1)

    def test_watch_timeout(self):
        seen = []
        with self.assertRaises(defender_plugin.WatchTimeout) as cm:
            for action in self.client.watch_machine_action("slow", timeout=0.3):
                seen.append(action.status)
        self.assertEqual(seen, [PENDING])
        self.assertEqual(cm.exception.code, grpc.StatusCode.DEADLINE_EXCEEDED)
        self.assertEqual(cm.exception.last.status, PENDING)
        # The deadline reached the server: its stream ended too.
        self.assertTrue(self.servicer.watch_done.wait(5))

    def test_watch_stopped_by_caller_cancels_the_stream(self):
        watch = self.client.watch_machine_action("slow")
        self.assertEqual(next(watch).status, PENDING)
        watch.close()
        self.assertTrue(self.servicer.watch_done.wait(5))

    def test_tls_arguments_checked(self):
        with self.assertRaises(ValueError):
            defender_plugin.connect("127.0.0.1:1", tls_cert="c.pem")
        with self.assertRaises(ValueError):
            defender_plugin.connect("127.0.0.1:1", tls_cert="c.pem", tls_key="k.pem")

    def test_pem_given_as_text_or_file(self):
        pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
        self.assertEqual(defender_plugin._pem(pem), pem.encode())
        self.assertEqual(defender_plugin._pem(pem.encode()), pem.encode())
        self.assertEqual(defender_plugin._pem(__file__)[:3], b'"""')


def _non_loopback_address():
    """An address of this machine other than loopback, or None."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks a route
        address = s.getsockname()[0]
    except OSError:
        return None
    finally:
        s.close()
    return None if address.startswith("127.") else address


class TokenNeverInTheClearTest(unittest.TestCase):
    def test_plaintext_token_only_to_loopback(self):
        address = _non_loopback_address()
        if address is None:
            self.skipTest("no address but loopback")
        servicer = Servicer()
        server, port = _server(servicer, "0.0.0.0:0")
        try:
            with defender_plugin.connect("%s:%d" % (address, port), token="tok-123") as client:
                with self.assertRaises(defender_plugin.Error) as cm:
                    client.quarantine_file(comment="c", machine_id="m", sha1="ok", timeout=5)
            self.assertEqual(cm.exception.code, grpc.StatusCode.UNAVAILABLE)
            self.assertIsNone(servicer.metadata)  # nothing reached the server
            with defender_plugin.connect("%s:%d" % (address, port)) as client:  # no token: fine
                client.quarantine_file(comment="c", machine_id="m", sha1="ok", timeout=5)
        finally:
            server.stop(None)


class NamespaceTest(unittest.TestCase):
    def test_google_rpc_beside_the_runtimes_google_protobuf(self):
        # The generated google/ has no __init__.py: google stays a namespace package that
        # spans the tree's google/rpc and python3-protobuf's google/protobuf.
        self.assertIsNone(getattr(google, "__file__", None))
        rpc_dir = os.path.dirname(os.path.dirname(status_pb2.__file__))
        protobuf_dir = os.path.dirname(os.path.dirname(google.protobuf.__file__))
        self.assertNotEqual(rpc_dir, protobuf_dir)
        self.assertIn(rpc_dir, list(google.__path__))
        self.assertIn(protobuf_dir, list(google.__path__))


if __name__ == "__main__":
    unittest.main()
