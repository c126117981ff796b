"""defender_plugin: a thin Python client of the defender-plugin gRPC service.

    import defender_plugin
    client = defender_plugin.connect("127.0.0.1:50051")       # plaintext
    client = defender_plugin.connect("plugin:50051", tls_ca="ca.pem", token="...")
    action = client.quarantine_file(machine_id=..., sha1=..., comment="...",
                                    request_id="step-42")
    for a in client.watch_machine_action(action.id):
        print(a.status)

Every call raises defender_plugin.Error (code, message, reason) on failure.
The generated stubs (defender.v1.response_service_pb2[_grpc]) stay usable
directly: client.stub is a ResponseServiceStub; client.pb2 the messages.
"""
import time

import grpc

from defender.v1 import response_service_pb2 as pb2
from defender.v1 import response_service_pb2_grpc as pb2_grpc
from google.rpc import error_details_pb2, status_pb2

__all__ = ["Error", "Client", "connect", "pb2", "FINAL_STATUSES"]

FINAL_STATUSES = frozenset([
    pb2.MACHINE_ACTION_STATUS_SUCCEEDED,
    pb2.MACHINE_ACTION_STATUS_FAILED,
    pb2.MACHINE_ACTION_STATUS_TIMED_OUT,
    pb2.MACHINE_ACTION_STATUS_CANCELLED,
])


class Error(Exception):
    """A failed call: code (grpc.StatusCode), message (str) and reason (the
    google.rpc.ErrorInfo reason from the grpc-status-details-bin trailer, or
    "" when there is none)."""

    def __init__(self, code, message, reason=""):
        self.code = code
        self.message = message
        self.reason = reason
        text = "%s: %s" % (code.name, message)
        if reason:
            text += " (%s)" % reason
        super().__init__(text)

    @classmethod
    def from_rpc_error(cls, err):
        """An Error from a grpc.RpcError (which is also a grpc.Call)."""
        code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
        message = err.details() if hasattr(err, "details") else str(err)
        return cls(code, message or "", _reason(err))


def _reason(err):
    trailers = err.trailing_metadata() if hasattr(err, "trailing_metadata") else None
    for key, value in trailers or ():
        if key != "grpc-status-details-bin":
            continue
        status = status_pb2.Status()
        try:
            status.ParseFromString(value)
        except Exception:  # a malformed trailer is no reason
            return ""
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                return info.reason
    return ""


class _Token(grpc.AuthMetadataPlugin):
    def __init__(self, token):
        self._token = token

    def __call__(self, context, callback):
        callback((("authorization", "Bearer " + self._token),), None)


def _call(fn, request, **kwargs):
    try:
        return fn(request, **kwargs)
    except grpc.RpcError as err:
        raise Error.from_rpc_error(err) from None


class Client:
    """The five calls of defender.v1.ResponseService. tenant="" is the
    plugin's default tenant. Use as a context manager or call close()."""

    def __init__(self, channel, metadata=()):
        self.channel = channel
        self.stub = pb2_grpc.ResponseServiceStub(channel)
        self.pb2 = pb2
        self._metadata = tuple(metadata)

    def close(self):
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def quarantine_file(self, comment, machine_id="", computer_dns_name="", sha1="",
                        sha256="", request_id="", tenant="", timeout=30):
        """QuarantineFile: returns QuarantineFileResponse (its .action is the
        MachineAction). A repeated request_id returns the same action."""
        req = pb2.QuarantineFileRequest(
            machine_id=machine_id, computer_dns_name=computer_dns_name, sha1=sha1,
            sha256=sha256, comment=comment, request_id=request_id, tenant=tenant)
        return _call(self.stub.QuarantineFile, req, timeout=timeout, metadata=self._metadata)

    def get_machine_action(self, id, tenant="", timeout=30):
        req = pb2.GetMachineActionRequest(id=id, tenant=tenant)
        return _call(self.stub.GetMachineAction, req, timeout=timeout, metadata=self._metadata)

    def cancel_machine_action(self, id, comment, tenant="", timeout=30):
        req = pb2.CancelMachineActionRequest(id=id, comment=comment, tenant=tenant)
        return _call(self.stub.CancelMachineAction, req, timeout=timeout,
                     metadata=self._metadata)

    def batch_quarantine_file(self, comment, machine_ids=(), computer_dns_names=(), sha1="",
                              sha256="", request_id="", tenant="", timeout=60):
        req = pb2.BatchQuarantineFileRequest(
            machine_ids=list(machine_ids), computer_dns_names=list(computer_dns_names),
            sha1=sha1, sha256=sha256, comment=comment, request_id=request_id, tenant=tenant)
        return _call(self.stub.BatchQuarantineFile, req, timeout=timeout,
                     metadata=self._metadata)

    def watch_machine_action(self, id, tenant="", reopen=5, backoff=0.5):
        """Yields the MachineAction on every change until its status is final.
        A stream broken with UNAVAILABLE is reopened (up to `reopen` times in
        a row, with growing backoff); other errors raise Error."""
        failures = 0
        req = pb2.WatchMachineActionRequest(id=id, tenant=tenant)
        while True:
            try:
                for action in self.stub.WatchMachineAction(req, metadata=self._metadata):
                    failures = 0
                    yield action
                    if action.status in FINAL_STATUSES:
                        return
                return  # the server ended the stream
            except grpc.RpcError as err:
                if err.code() != grpc.StatusCode.UNAVAILABLE or failures >= reopen:
                    raise Error.from_rpc_error(err) from None
                failures += 1
                time.sleep(backoff * (2 ** (failures - 1)))


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def connect(target, tls_ca=None, tls_cert=None, tls_key=None, tls_server_name=None,
            token=None):
    """A Client for the plugin at target ("host:port"). With tls_ca (a PEM
    file), TLS trusting those CAs; tls_cert/tls_key (PEM files) add a client
    certificate; tls_server_name overrides the name checked. Without tls_ca,
    plaintext (a local sidecar on --insecure-listen); a token then goes as
    metadata too, so keep that to loopback. token: sent as
    "authorization: Bearer <token>"."""
    if (tls_cert is None) != (tls_key is None):
        raise ValueError("tls_cert and tls_key go together")
    options = []
    if tls_server_name:
        options.append(("grpc.ssl_target_name_override", tls_server_name))
    if tls_ca is None:
        if tls_cert or tls_server_name:
            raise ValueError("tls_cert and tls_server_name need tls_ca")
        channel = grpc.insecure_channel(target, options=options)
        metadata = (("authorization", "Bearer " + token),) if token else ()
        return Client(channel, metadata)
    creds = grpc.ssl_channel_credentials(
        root_certificates=_read(tls_ca),
        private_key=_read(tls_key) if tls_key else None,
        certificate_chain=_read(tls_cert) if tls_cert else None)
    if token:
        creds = grpc.composite_channel_credentials(
            creds, grpc.metadata_call_credentials(_Token(token)))
    return Client(grpc.secure_channel(target, creds, options=options))
