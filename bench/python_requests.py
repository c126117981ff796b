#!/usr/bin/python3
"""The usual alternative, for bench/run: what SOAR integrations do.

N threads, each with its own `requests.Session` (keep-alive, TLS verified
against --ca), POST /api/machines/{id}/StopAndQuarantineFile straight to the
API with one client-credentials token fetched at the start. Closed loop, like
defender-bench: each thread sends its next POST when the last is answered.
Prints one JSON object like defender-bench's.
"""
import argparse
import json
import os
import threading
import time

import requests


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--concurrency", type=int, required=True)
    p.add_argument("--seconds", type=float, default=3)
    p.add_argument("--warmup-seconds", type=float, default=0.5)
    p.add_argument("--machine", default="1e5bc9d7e413ddd7902c2932e418702b84d0cc07")
    p.add_argument("--tag", default="0000000d")
    p.add_argument("--tenant-id", default="11111111-1111-1111-1111-111111111111")
    p.add_argument("--client-id", default="22222222-2222-2222-2222-222222222222")
    p.add_argument("--scope", default="https://api.securitycenter.microsoft.com/.default")
    a = p.parse_args()

    token = requests.post(
        f"{a.url}/{a.tenant_id}/oauth2/v2.0/token",
        data={"grant_type": "client_credentials", "client_id": a.client_id,
              "client_secret": os.environ.get("BENCH_CLIENT_SECRET", "sandbox-secret"),
              "scope": a.scope},
        verify=a.ca, timeout=30)
    token.raise_for_status()
    bearer = "Bearer " + token.json()["access_token"]
    post_url = f"{a.url}/api/machines/{a.machine}/StopAndQuarantineFile"

    counter = iter(range(1 << 62))
    counter_lock = threading.Lock()
    start = time.monotonic()
    window_start = start + a.warmup_seconds
    window_end = window_start + a.seconds
    results = []  # per thread: (latencies, ok, errors)

    def caller():
        session = requests.Session()
        session.headers["Authorization"] = bearer
        latencies, ok, errors = [], 0, {}
        while True:
            sent = time.monotonic()
            if sent >= window_end:
                break
            with counter_lock:
                n = next(counter)
            sha1 = f"{a.tag}{n:032x}"
            try:
                # verify per request: a CA bundle variable in the environment
                # would override the session's.
                r = session.post(post_url, json={"Comment": "defender-bench", "Sha1": sha1},
                                 verify=a.ca, timeout=60)
                code = str(r.status_code)
                good = r.status_code == 201
            except requests.RequestException as e:
                code, good = type(e).__name__, False
            now = time.monotonic()
            if window_start <= now < window_end:
                if good:
                    ok += 1
                    latencies.append(now - sent)
                else:
                    errors[code] = errors.get(code, 0) + 1
        results.append((latencies, ok, errors))

    threads = [threading.Thread(target=caller) for _ in range(a.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    latencies = sorted(x for r in results for x in r[0])
    ok = sum(r[1] for r in results)
    errors = {}
    for r in results:
        for k, v in r[2].items():
            errors[k] = errors.get(k, 0) + v

    def pct(q):
        if not latencies:
            return 0.0
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000

    print(json.dumps({"mode": "python", "concurrency": a.concurrency, "seconds": a.seconds,
                      "ok": ok, "errors": errors, "rps": ok / a.seconds,
                      "p50_ms": pct(0.5), "p99_ms": pct(0.99)}), flush=True)


if __name__ == "__main__":
    main()
