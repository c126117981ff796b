"""Checks defender-plugin's go-plugin AutoMTLS from the outside, with
python3-grpcio as the host: starts the plugin with the magic cookie and
PLUGIN_CLIENT_CERT (certificate A), reads the handshake line, and checks that
  - stdout holds exactly the handshake line, with the plugin's certificate
    (base64 DER, no padding) as the sixth field,
  - a client presenting certificate B (not the one in PLUGIN_CLIENT_CERT), or
    none, is refused,
  - with certificate A: health "plugin" is SERVING, plugin.GRPCStdio/StreamStdio
    stays open and sends nothing, plugin.GRPCController/Shutdown answers, the
    stdio stream then ends with OK and the process exits 0.
Raw protobuf bytes: it needs only python3-grpcio.
Usage: mtls_check.py PLUGIN_BINARY WORK_DIR COOKIE (the plugin's settings in
the environment; WORK_DIR holds a.crt, a.key, b.crt, b.key)."""
import base64
import os
import ssl
import subprocess
import sys
import threading

import grpc

HEALTH = "/grpc.health.v1.Health/Check"
SHUTDOWN = "/plugin.GRPCController/Shutdown"
STDIO = "/plugin.GRPCStdio/StreamStdio"


def fail(message: str) -> None:
    print(f"mtls_check: FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def channel(address: str, root_pem: bytes, work: str, name) -> grpc.Channel:
    key = read(os.path.join(work, f"{name}.key")) if name else None
    cert = read(os.path.join(work, f"{name}.crt")) if name else None
    credentials = grpc.ssl_channel_credentials(root_pem, key, cert)
    # go-plugin hosts check the plugin's certificate for "localhost".
    return grpc.secure_channel(address, credentials,
                               options=[("grpc.ssl_target_name_override", "localhost")])


def health(ch: grpc.Channel, service: bytes) -> bytes:
    # HealthCheckRequest{service} is field 1 (length-delimited).
    request = bytes([0x0A, len(service)]) + service
    return ch.unary_unary(HEALTH)(request, timeout=5)


def main() -> int:
    plugin, work, cookie = sys.argv[1], sys.argv[2], sys.argv[3]
    env = dict(os.environ)
    env.update({
        "DEFENDER_PLUGIN_MAGIC_COOKIE": cookie,
        "PLUGIN_PROTOCOL_VERSIONS": "3,1",
        "PLUGIN_CLIENT_CERT": read(os.path.join(work, "a.crt")).decode(),
    })
    process = subprocess.Popen([plugin], env=env, stdout=subprocess.PIPE,
                               stderr=open(os.path.join(work, "mtls-plugin.log"), "wb"))
    try:
        line = process.stdout.readline().decode()
        fields = line.rstrip("\n").split("|")
        if len(fields) != 6 or fields[:3] != ["1", "1", "tcp"] or fields[4] != "grpc":
            fail(f"handshake line {line!r}")
        if not fields[3].startswith("127.0.0.1:") or fields[5].endswith("="):
            fail(f"address or certificate encoding in {line!r}")
        der = base64.b64decode(fields[5] + "=" * (-len(fields[5]) % 4), validate=True)
        root_pem = ssl.DER_cert_to_PEM_cert(der).encode()
        address = fields[3]

        # Certificate B, and no certificate: refused at the TLS handshake.
        for name in ("b", None):
            try:
                health(channel(address, root_pem, work, name), b"plugin")
                fail(f"a client with {'certificate B' if name else 'no certificate'} got an answer")
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE:
                    fail(f"refusal of {name}: {error.code()} (want UNAVAILABLE)")

        good = channel(address, root_pem, work, "a")
        # HealthCheckResponse{status: SERVING} is 08 01.
        if health(good, b"plugin") != b"\x08\x01":
            fail("health of \"plugin\" is not SERVING")
        if health(good, b"defender.v1.ResponseService") != b"\x08\x01":
            fail("health of defender.v1.ResponseService is not SERVING")

        # StreamStdio: open, nothing sent, ends with OK at Shutdown.
        stdio = good.unary_stream(STDIO)(b"", timeout=30)
        chunks = []
        ended = threading.Event()
        outcome = {}

        def drain():
            try:
                for chunk in stdio:
                    chunks.append(chunk)
                outcome["code"] = grpc.StatusCode.OK
            except grpc.RpcError as error:
                outcome["code"] = error.code()
            ended.set()

        threading.Thread(target=drain, daemon=True).start()
        if ended.wait(1.0):
            fail(f"StreamStdio ended before Shutdown: {outcome}")
        if good.unary_unary(SHUTDOWN)(b"", timeout=5) != b"":
            fail("Shutdown answered something else than Empty")
        if not ended.wait(5.0):
            fail("StreamStdio still open after Shutdown")
        if outcome.get("code") != grpc.StatusCode.OK or chunks:
            fail(f"StreamStdio ended with {outcome.get('code')} after {len(chunks)} chunks")
        code = process.wait(timeout=10)
        if code != 0:
            fail(f"the plugin exited {code} after Shutdown")
        rest = process.stdout.read()
        if rest:
            fail(f"more than the handshake line on stdout: {rest!r}")
    finally:
        if process.poll() is None:
            process.kill()
    print("mtls_check: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
