#!/usr/bin/python3
"""quarantine_and_watch: a SOAR playbook step. Quarantines a file on a device
through the defender-plugin, then watches the action until it is final.

  quarantine_and_watch.py (--machine ID | --host NAME) (--sha1 HASH | --sha256 HASH)
      --comment TEXT [--request-id ID] [--tenant NAME] [--timeout-seconds N]
      [--target HOST:PORT] [--tls-ca FILE [--tls-cert FILE --tls-key FILE]
      [--tls-server-name NAME]] [--token-file FILE]

Prints one JSON object per line: {"event":"submitted","action_id",...,"request_id",...},
{"event":"status",...} for each status seen, {"event":"final",...}. Exit codes:
0 final and succeeded; 1 final but not succeeded (failed, cancelled, timed out);
2 usage error (before any call); 3 RPC error (stderr: "quarantine_and_watch: CODE:
message [reason]"); 4 not final after --timeout-seconds.
The request id (default: a new UUID, printed) makes a retried step safe: pass it
again with --request-id and the plugin returns the same action.
Needs PYTHONPATH to hold the generated tree (clients/python/generate.sh, or
<build>/clients/python).
"""
import argparse
import json
import os
import re
import sys
import time
import uuid

import defender_plugin
from defender_plugin import pb2

PROG = "quarantine_and_watch"


class _Usage(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        print("%s: %s" % (PROG, message), file=sys.stderr)
        sys.exit(2)


def parse(argv):
    p = _Usage(prog=PROG, description="Quarantine a file, then watch the action until final.")
    p.add_argument("--target", default=os.environ.get("DEFENDER_PLUGIN_TARGET", "127.0.0.1:50051"),
                   metavar="HOST:PORT", help="the plugin [$DEFENDER_PLUGIN_TARGET] (%(default)s)")
    p.add_argument("--tls-ca", default=os.environ.get("DEFENDER_PLUGIN_CA"), metavar="FILE",
                   help="TLS, trusting these PEM CAs [$DEFENDER_PLUGIN_CA]; without: plaintext")
    p.add_argument("--tls-cert", metavar="FILE", help="client certificate (mutual TLS)")
    p.add_argument("--tls-key", metavar="FILE", help="its private key")
    p.add_argument("--tls-server-name", metavar="NAME", help="name to check the certificate for")
    p.add_argument("--token-file", metavar="FILE",
                   help='send "authorization: Bearer <its content>" (never printed)')
    p.add_argument("--tenant", default="", metavar="NAME", help="configured tenant (default: the default)")
    p.add_argument("--machine", default="", metavar="ID", help="Defender device id (40 hex)")
    p.add_argument("--host", default="", metavar="NAME", help="or the device's computerDnsName")
    p.add_argument("--sha1", default="", metavar="HASH", help="SHA-1 of the file")
    p.add_argument("--sha256", default="", metavar="HASH", help="or its SHA-256")
    p.add_argument("--comment", default="", metavar="TEXT", help="recorded with the action (required)")
    p.add_argument("--request-id", default="", metavar="ID",
                   help="idempotency key (default: a new UUID, printed)")
    p.add_argument("--timeout-seconds", type=float, default=600, metavar="N",
                   help="give up watching after N seconds (%(default)g)")
    a = p.parse_args(argv)
    if bool(a.machine) == bool(a.host):
        p.error("exactly one of --machine or --host is required")
    if a.machine and not re.fullmatch(r"[0-9a-fA-F]{40}", a.machine):
        p.error("--machine must be 40 hex digits")
    if bool(a.sha1) == bool(a.sha256):
        p.error("exactly one of --sha1 or --sha256 is required")
    if not a.comment:
        p.error("--comment is required")
    if (a.tls_cert is None) != (a.tls_key is None):
        p.error("--tls-cert and --tls-key go together")
    if (a.tls_cert or a.tls_server_name) and not a.tls_ca:
        p.error("--tls-cert and --tls-server-name need --tls-ca")
    if a.timeout_seconds <= 0:
        p.error("--timeout-seconds must be positive")
    return a


def emit(**fields):
    """One event line, compact like defenderctl watch and the Go example."""
    print(json.dumps(fields, separators=(",", ":")), flush=True)


def rpc_error(err):
    text = "%s: %s: %s" % (PROG, err.code.name, err.message)
    if err.reason:
        text += " [%s]" % err.reason
    print(text, file=sys.stderr)
    return 3


def status_name(action):
    return defender_plugin.status_name(action.status)


def main(argv):
    a = parse(argv)
    token = None
    if a.token_file:
        try:
            with open(a.token_file) as f:
                token = f.read().strip()
        except (OSError, UnicodeDecodeError) as e:
            print("%s: --token-file: %s" % (PROG, getattr(e, "strerror", None) or "not text"),
                  file=sys.stderr)
            return 2
        if not token:
            print("%s: --token-file is empty" % PROG, file=sys.stderr)
            return 2
    request_id = a.request_id or str(uuid.uuid4())
    try:
        client = defender_plugin.connect(a.target, tls_ca=a.tls_ca, tls_cert=a.tls_cert,
                                         tls_key=a.tls_key, tls_server_name=a.tls_server_name,
                                         token=token)
    except (OSError, ValueError) as e:
        print("%s: %s" % (PROG, e), file=sys.stderr)
        return 2

    # Retrying UNAVAILABLE (err.transient) is safe: the plugin deduplicates by request id.
    for attempt in range(5):
        try:
            resp = client.quarantine_file(
                comment=a.comment, machine_id=a.machine, computer_dns_name=a.host,
                sha1=a.sha1, sha256=a.sha256, request_id=request_id, tenant=a.tenant)
            break
        except defender_plugin.Error as err:
            if not err.transient or attempt == 4:
                return rpc_error(err)
            time.sleep(0.5 * 2 ** attempt)
    action = resp.action
    emit(event="submitted", action_id=action.id, request_id=request_id,
         machine_id=action.machine_id, status=status_name(action))

    # The wrapper reopens a stream broken with UNAVAILABLE; its timeout bounds the
    # whole watch (the deadline reaches the plugin, which then stops polling).
    last = None
    try:
        for act in client.watch_machine_action(action.id, tenant=a.tenant,
                                               timeout=a.timeout_seconds):
            if last is None or act.status != last.status:
                emit(event="status", action_id=act.id, status=status_name(act),
                     defender_status=act.defender_status)
            last = act
    except defender_plugin.WatchTimeout:
        print("%s: the action %s is not final after %g s" % (PROG, action.id, a.timeout_seconds),
              file=sys.stderr)
        return 4
    except defender_plugin.Error as err:
        return rpc_error(err)
    emit(event="final", action_id=last.id, status=status_name(last),
         defender_status=last.defender_status)
    return 0 if last.status == pb2.MACHINE_ACTION_STATUS_SUCCEEDED else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
