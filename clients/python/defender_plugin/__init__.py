"""defender_plugin: a thin Python client of the defender-plugin gRPC service.

    import defender_plugin
    client = defender_plugin.connect("127.0.0.1:50051")       # plaintext
    client = defender_plugin.connect("plugin:50051", tls_ca="ca.pem", token="...")
    action = client.quarantine_file(machine_id=..., sha1=..., comment="...",
                                    request_id="step-42").action
    for a in client.watch_machine_action(action.id, timeout=600):
        print(defender_plugin.status_name(a.status))

Every call raises defender_plugin.Error on failure: code (grpc.StatusCode),
message, and the google.rpc.ErrorInfo (reason, domain, metadata) and RetryInfo
the plugin sends in the grpc-status-details-bin trailer.
The generated stubs (defender.v1.response_service_pb2[_grpc]) stay usable
directly: client.stub is a ResponseServiceStub on the same channel; client.pb2
(and defender_plugin.pb2) the messages. They come from clients/python/generate.sh
or the CMake build (<build>/clients/python), which also copies this package.
"""
import time

import grpc

from defender.v1 import response_service_pb2 as pb2
from defender.v1 import response_service_pb2_grpc as pb2_grpc
from google.rpc import error_details_pb2, status_pb2

__all__ = ["Error", "WatchTimeout", "Client", "connect", "pb2", "FINAL_STATUSES", "status_name"]

# The statuses after which an action never changes (response_service.proto).
FINAL_STATUSES = frozenset([
    pb2.MACHINE_ACTION_STATUS_SUCCEEDED,
    pb2.MACHINE_ACTION_STATUS_FAILED,
    pb2.MACHINE_ACTION_STATUS_TIMED_OUT,
    pb2.MACHINE_ACTION_STATUS_CANCELLED,
])

_DETAILS_KEY = "grpc-status-details-bin"
_CODES = {code.value[0]: code for code in grpc.StatusCode}


def status_name(status):
    """The enum name of a MachineActionStatus ("MACHINE_ACTION_STATUS_SUCCEEDED"),
    or its number for a value these stubs do not know yet."""
    try:
        return pb2.MachineActionStatus.Name(status)
    except ValueError:
        return str(status)


class Error(Exception):
    """A failed call.

    code: the grpc.StatusCode (code.name is "INVALID_ARGUMENT" and so on).
    message: the status message.
    reason, domain, metadata: the google.rpc.ErrorInfo's ("INVALID_SHA1",
      "defender-plugin", {"field": "sha1"}); "", "" and {} without one.
    retry_delay: seconds from a google.rpc.RetryInfo (throttled), else None.
    status: the whole decoded google.rpc.Status, or None.
    """

    def __init__(self, code, message, reason="", status=None):
        self.code = code
        self.message = message
        self.reason = reason
        self.domain = ""
        self.metadata = {}
        self.retry_delay = None
        self.status = status
        for detail in status.details if status is not None else ():
            info = error_details_pb2.ErrorInfo()
            retry = error_details_pb2.RetryInfo()
            if not self.reason and detail.Unpack(info):
                self.reason, self.domain, self.metadata = info.reason, info.domain, dict(info.metadata)
            elif self.retry_delay is None and detail.Unpack(retry):
                self.retry_delay = retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9
        text = "%s: %s" % (code.name, message)
        if self.reason:
            text += " (%s)" % self.reason
        super().__init__(text)

    @property
    def transient(self):
        """True when the same call may simply be made again: UNAVAILABLE, and a
        CANCELLED the plugin did not answer itself (no details: gRPC refusing a
        call that reached a draining plugin). A watch may always be reopened; a
        quarantine repeated only with the same request_id."""
        return (self.code == grpc.StatusCode.UNAVAILABLE or
                (self.code == grpc.StatusCode.CANCELLED and self.status is None))

    @classmethod
    def from_rpc_error(cls, err):
        """An Error from a grpc.RpcError (which is also a grpc.Call)."""
        code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
        message = err.details() if hasattr(err, "details") else str(err)
        return cls(code, message or "", status=_status_details(err))

    @classmethod
    def from_status(cls, status):
        """An Error from a google.rpc.Status: a batch device's `error`."""
        return cls(_CODES.get(status.code, grpc.StatusCode.UNKNOWN), status.message, status=status)


class WatchTimeout(Error):
    """watch_machine_action's own timeout passed before the action was final.
    last: the last MachineAction seen, or None."""

    def __init__(self, message, last):
        self.last = last
        super().__init__(grpc.StatusCode.DEADLINE_EXCEEDED, message)


def _status_details(err):
    """The google.rpc.Status in the error's trailers, or None (absent or malformed)."""
    trailers = err.trailing_metadata() if hasattr(err, "trailing_metadata") else None
    for key, value in trailers or ():
        if key == _DETAILS_KEY:
            status = status_pb2.Status()
            try:
                status.ParseFromString(value)
            except Exception:  # a malformed trailer carries no details
                return None
            return status
    return None


def _call(fn, request, **kwargs):
    try:
        return fn(request, **kwargs)
    except grpc.RpcError as err:
        raise Error.from_rpc_error(err) from None


class Client:
    """The five calls of defender.v1.ResponseService. tenant="" is the
    plugin's default tenant; timeout is the call's deadline in seconds. Use as
    a context manager or call close()."""

    def __init__(self, channel):
        self.channel = channel
        self.stub = pb2_grpc.ResponseServiceStub(channel)
        self.pb2 = pb2

    def close(self):
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def quarantine_file(self, comment, machine_id="", computer_dns_name="", sha1="",
                        sha256="", request_id="", tenant="", timeout=30):
        """QuarantineFile: returns QuarantineFileResponse (its .action is the
        MachineAction). A repeated request_id returns the same action, so a call
        that failed with UNAVAILABLE may be repeated with the same id."""
        req = pb2.QuarantineFileRequest(
            machine_id=machine_id, computer_dns_name=computer_dns_name, sha1=sha1,
            sha256=sha256, comment=comment, request_id=request_id, tenant=tenant)
        return _call(self.stub.QuarantineFile, req, timeout=timeout)

    def get_machine_action(self, id, tenant="", timeout=30):
        """GetMachineAction: the action's current state."""
        req = pb2.GetMachineActionRequest(id=id, tenant=tenant)
        return _call(self.stub.GetMachineAction, req, timeout=timeout)

    def cancel_machine_action(self, id, comment, tenant="", timeout=30):
        """CancelMachineAction: the cancelled action; a final one is
        FAILED_PRECONDITION with reason ACTION_ALREADY_FINAL."""
        req = pb2.CancelMachineActionRequest(id=id, comment=comment, tenant=tenant)
        return _call(self.stub.CancelMachineAction, req, timeout=timeout)

    def batch_quarantine_file(self, comment, machine_ids=(), computer_dns_names=(), sha1="",
                              sha256="", request_id="", tenant="", timeout=600):
        """BatchQuarantineFile: yields one BatchQuarantineFileResponse per device
        as each completes. A device that failed has `error` set
        (Error.from_status(result.error) reads it); an invalid request as a
        whole raises Error."""
        req = pb2.BatchQuarantineFileRequest(
            machine_ids=list(machine_ids), computer_dns_names=list(computer_dns_names),
            sha1=sha1, sha256=sha256, comment=comment, request_id=request_id, tenant=tenant)
        call = self.stub.BatchQuarantineFile(req, timeout=timeout)
        try:
            yield from call
        except grpc.RpcError as err:
            raise Error.from_rpc_error(err) from None
        finally:
            call.cancel()  # no-op once done; stops the devices not yet sent if the caller stops

    def watch_machine_action(self, id, tenant="", timeout=None, reopen=5, backoff=0.5):
        """Yields the MachineAction now and on every change, until its status is
        final. A stream broken with UNAVAILABLE (a plugin restarting or draining,
        a lost connection; see Error.transient) is reopened, up to `reopen`
        times in a row without news, after pauses of `backoff` seconds doubling; a reopened stream's
        first answer is not yielded again when it is the last one seen. Other
        errors raise Error. timeout (seconds) bounds the whole watch: then
        WatchTimeout (an Error with code DEADLINE_EXCEEDED)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        req = pb2.WatchMachineActionRequest(id=id, tenant=tenant)
        failures = 0
        last = None
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise WatchTimeout("machine action %s is not final after %g s" % (id, timeout), last)
            call = self.stub.WatchMachineAction(req, timeout=left)
            try:
                for action in call:
                    if action != last:
                        failures = 0
                        last = action
                        yield action
                    if action.status in FINAL_STATUSES:
                        return
                err = Error(grpc.StatusCode.UNAVAILABLE, "the watch ended before the action was final")
            except grpc.RpcError as rpc_err:
                err = Error.from_rpc_error(rpc_err)
                # Our deadline: gRPC's own DEADLINE_EXCEEDED carries no details (the
                # plugin's always do), and the clock says so unless they disagree slightly.
                ours = err.code == grpc.StatusCode.DEADLINE_EXCEEDED and err.status is None
                if deadline is not None and (ours or time.monotonic() >= deadline):
                    raise WatchTimeout("machine action %s is not final after %g s" % (id, timeout),
                                       last) from None
                if not err.transient:
                    raise err from None
            finally:
                call.cancel()  # no-op once the stream ended; stops it if the caller stops
            if failures >= reopen:
                raise err
            failures += 1
            pause = backoff * 2 ** (failures - 1)
            if deadline is not None:
                pause = min(pause, max(0.0, deadline - time.monotonic()))
            time.sleep(pause)


def _pem(value):
    """PEM bytes from a file name, or from the PEM itself (bytes, or a str
    holding "-----BEGIN", as a SOAR asset's text field does)."""
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str) and "-----BEGIN" in value:
        return value.encode()
    with open(value, "rb") as f:
        return f.read()


def connect(target, tls_ca=None, tls_cert=None, tls_key=None, tls_server_name=None,
            token=None, options=()):
    """A Client for the plugin at target ("host:port", or "unix:/path").

    tls_ca: TLS, trusting these PEM CAs; tls_cert/tls_key add a client
    certificate (mutual TLS); tls_server_name overrides the name checked in the
    plugin's certificate. Each is a file name or the PEM itself. Without tls_ca,
    plaintext (the plugin on loopback, a sidecar, --insecure-listen).
    token: the bearer token of an --authz caller, sent as "authorization:
    Bearer <token>". gRPC sends it over TLS, or over plaintext only to a
    loopback address or a unix socket (local credentials); any other plaintext
    target then fails with UNAVAILABLE ("Endpoint is neither UDS or TCP
    loopback address"), so a token never crosses the network in the clear.
    options: more gRPC channel arguments, (key, value) pairs.
    """
    if (tls_cert is None) != (tls_key is None):
        raise ValueError("tls_cert and tls_key go together")
    options = list(options)
    if tls_server_name:
        options.append(("grpc.ssl_target_name_override", tls_server_name))
    if tls_ca is None:
        if tls_cert or tls_server_name:
            raise ValueError("tls_cert and tls_server_name need tls_ca")
        if not token:
            return Client(grpc.insecure_channel(target, options=options))
        creds = grpc.local_channel_credentials(
            grpc.LocalConnectionType.UDS if target.startswith("unix:")
            else grpc.LocalConnectionType.LOCAL_TCP)
    else:
        creds = grpc.ssl_channel_credentials(
            root_certificates=_pem(tls_ca), private_key=_pem(tls_key),
            certificate_chain=_pem(tls_cert))
    if token:
        creds = grpc.composite_channel_credentials(creds, grpc.access_token_call_credentials(token))
    return Client(grpc.secure_channel(target, creds, options=options))
