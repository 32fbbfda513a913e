#!/usr/bin/python3
"""Measures the operational paths of a release build on this machine (loopback only, bounded):

1. the built-in STUN server: round trips per second for one client, and the median round trip;
2. shutdown: with PEERS open SSE streams and PEERS waiting long-polls, how long after SIGTERM
   the last stream ends, the last poll returns, and the process exits;
3. GET /metrics with those peers present: median scrape time.

Usage: cargo build --release && /usr/bin/python3 scripts/measure-ops.py [PEERS]
"""

import http.client
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time

PEERS = int(sys.argv[1]) if len(sys.argv) > 1 else 200
STUN_ROUNDS = 20000
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port(kind):
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port, method, path, body=None, token=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = "Bearer " + token
    conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, data


def main():
    http_port, stun_port = free_port(socket.SOCK_STREAM), free_port(socket.SOCK_DGRAM)
    env = dict(os.environ, ROCKET_ADDRESS="127.0.0.1", ROCKET_PORT=str(http_port),
               ROCKET_SIGNPOST='{stun_bind="127.0.0.1:%d", log_level="warn", max_peers_per_room=16}' % stun_port)
    server = subprocess.Popen([os.path.join(ROOT, "target/release/signpost")], cwd=ROOT, env=env,
                              stderr=subprocess.DEVNULL)
    deadline = time.time() + 10
    while True:
        try:
            request(http_port, "GET", "/healthz")
            break
        except OSError:
            assert time.time() < deadline, "server did not start"
            time.sleep(0.05)

    # 1. STUN round trips.
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(2)
    rtts = []
    started = time.perf_counter()
    for i in range(STUN_ROUNDS):
        txn = struct.pack(">IQ", 0, i)
        sent = time.perf_counter()
        sock.sendto(struct.pack(">HHI", 1, 0, 0x2112A442) + txn, ("127.0.0.1", stun_port))
        data, _ = sock.recvfrom(1500)
        rtts.append(time.perf_counter() - sent)
        assert data[8:20] == txn
    elapsed = time.perf_counter() - started
    print(f"STUN: {STUN_ROUNDS} sequential Binding round trips in {elapsed:.2f} s = "
          f"{STUN_ROUNDS / elapsed:.0f}/s, median RTT {statistics.median(rtts) * 1e6:.0f} us "
          f"(p99 {sorted(rtts)[int(len(rtts) * 0.99)] * 1e6:.0f} us)")

    # 2. PEERS streams and PEERS polls, then SIGTERM.
    peers = []
    for i in range(2 * PEERS):
        status, body = request(http_port, "POST", f"/api/rooms/r{i // 16}/peers", {})
        assert status == 201, body
        joined = json.loads(body)
        peers.append((f"r{i // 16}", joined["peer_id"], joined["token"]))
    ended, errors = [], []
    lock = threading.Lock()
    ready = threading.Barrier(2 * PEERS + 1)

    def stream(room, peer, token):
        conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=30)
        conn.request("GET", f"/api/rooms/{room}/peers/{peer}/events",
                     headers={"Authorization": "Bearer " + token})
        response = conn.getresponse()
        response.readline()  # event:ready
        ready.wait()
        try:
            while response.read1(65536):
                pass
            with lock:
                ended.append(time.perf_counter())
        except Exception as error:  # a cut, not an end
            with lock:
                errors.append(repr(error))

    def poll(room, peer, token):
        conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=30)
        # Skip what is queued (the joins that followed), then wait.
        conn.request("GET", f"/api/rooms/{room}/peers/{peer}/messages?after=1000000&wait=0",
                     headers={"Authorization": "Bearer " + token})
        last = json.loads(conn.getresponse().read())["last_id"]
        conn.request("GET", f"/api/rooms/{room}/peers/{peer}/messages?after={last}&wait=25",
                     headers={"Authorization": "Bearer " + token})
        ready.wait()
        response = conn.getresponse()
        body = response.read()
        with lock:
            if response.status == 200:
                ended.append(time.perf_counter())
            else:
                errors.append(f"poll {response.status} {body!r}")

    threads = [threading.Thread(target=stream if i < PEERS else poll, args=peer)
               for i, peer in enumerate(peers)]
    for thread in threads:
        thread.start()
    ready.wait()
    # Wait until the server counts every poll as waiting.
    while True:
        _, text = request(http_port, "GET", "/metrics")
        text = text.decode()
        values = dict(line.rsplit(" ", 1) for line in text.splitlines() if line.startswith("signpost_")
                      and " " in line)
        if values.get("signpost_polls_in_flight") == str(PEERS) and values.get("signpost_sse_streams") == str(PEERS):
            break
    scrapes = []
    for _ in range(200):
        t = time.perf_counter()
        request(http_port, "GET", "/metrics")
        scrapes.append(time.perf_counter() - t)
    print(f"/metrics with {2 * PEERS} peers: median scrape {statistics.median(scrapes) * 1e3:.2f} ms "
          f"({len(text)} bytes)")

    signalled = time.perf_counter()
    server.terminate()  # SIGTERM
    for thread in threads:
        thread.join(timeout=30)
    exit_code = server.wait(timeout=30)
    exited = time.perf_counter()
    print(f"shutdown with {PEERS} SSE streams and {PEERS} waiting polls: all {len(ended)} ended "
          f"{(max(ended) - signalled) * 1e3:.0f} ms after SIGTERM ({len(errors)} cut or failed); "
          f"process exited with {exit_code} after {exited - signalled:.2f} s")
    if errors:
        print("errors:", errors[:5])


if __name__ == "__main__":
    main()
