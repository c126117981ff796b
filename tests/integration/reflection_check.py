"""Checks that a running defender-plugin serves gRPC server reflection, the way
generic tools (grpcurl, Postman) use it: list the services, then fetch the file
that defines defender.v1.ResponseService. Raw protobuf bytes, so it needs only
python3-grpcio. Usage: reflection_check.py HOST:PORT"""
import sys

import grpc

METHOD = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"


def field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field (payloads here are < 128 bytes)."""
    return bytes([number << 3 | 2, len(payload)]) + payload


def ask(channel: grpc.Channel, request: bytes) -> bytes:
    call = channel.stream_stream(METHOD)  # bytes in, bytes out
    answers = list(call(iter([request]), timeout=10))
    assert len(answers) == 1, answers
    return answers[0]


def main() -> int:
    channel = grpc.insecure_channel(sys.argv[1])
    # ServerReflectionRequest.list_services (field 7) = "".
    services = ask(channel, field(7, b""))
    for name in (b"defender.v1.ResponseService", b"grpc.health.v1.Health"):
        if name not in services:
            print(f"reflection does not list {name.decode()}", file=sys.stderr)
            return 1
    # ServerReflectionRequest.file_containing_symbol (field 4).
    file = ask(channel, field(4, b"defender.v1.ResponseService"))
    if b"defender/v1/response_service.proto" not in file or b"QuarantineFile" not in file:
        print("reflection does not describe defender.v1.ResponseService", file=sys.stderr)
        return 1
    print("reflection: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
