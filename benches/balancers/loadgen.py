#!/usr/bin/env python3
"""Open-loop load through a balancer users already run, for the fleet benchmarks
(`fleet_bench.py`) and the end-to-end tests that check their shape.

  loadgen.py grpc --targets A,B,C --policy weighted_round_robin --rate 300 --duration 8 --spin-us 1000
  loadgen.py http --target HOST:PORT --rate 300 --duration 8 --path '/cpu?us=1000'

`grpc`: a grpcio (C-core) channel over the three `hermes-workload --grpc` hosts with the service
config's `loadBalancingConfig` set to POLICY (`round_robin` or `weighted_round_robin`, gRFC A58, which
weighs hosts by the ORCA reports in their trailers), calling `hermes.bench.Workload/Work` with
`spin_us`. `http`: HTTP/1.1 keep-alive connections to one address (HAProxy's frontend), GET PATH.

Arrivals are a Poisson process at RATE per second; each latency runs from the request's scheduled
send time, so a stalled host shows in every request due during its stall. Requests of the first
WARMUP seconds (the balancer learning its weights) are sent but not counted. Prints one JSON object:
requests, errors, latency percentiles in ms, and the requests answered by each host (by process id:
`WorkReply.pid` for gRPC, the `x-hermes-pid` header for HTTP).
"""

import argparse
import asyncio
import collections
import json
import random
import sys
import time

WORK = "/hermes.bench.Workload/Work"


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def work_request(spin_us):
    """hermes.bench.WorkRequest{spin_us} (field 1, varint), serialized by hand: no protobuf package."""
    return b"\x08" + varint(spin_us) if spin_us else b""


def reply_pid(reply):
    """WorkReply.pid (field 2, varint) of a serialized hermes.bench.WorkReply."""
    i, fields = 0, {}
    while i < len(reply):
        key = reply[i]
        i += 1
        value, shift = 0, 0
        while True:
            b = reply[i]
            i += 1
            value |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        fields[key >> 3] = value
    return fields.get(2, 0)


def percentile(sorted_ms, p):
    if not sorted_ms:
        return None
    return sorted_ms[min(len(sorted_ms) - 1, int(len(sorted_ms) * p))]


async def open_loop(rate, duration, warmup, send):
    """Calls `send()` at Poisson times for `duration` s; returns (latencies ms, per-host counts, errors)
    of the requests scheduled after `warmup` s."""
    loop = asyncio.get_running_loop()
    rng = random.Random(1)
    lat, hosts, errors = [], collections.Counter(), collections.Counter()
    start = loop.time()
    due = start

    async def one(at, counted):
        try:
            host = await send()
        except Exception as e:  # a failed request is counted, never dropped
            if counted:
                errors[type(e).__name__ + ": " + str(e)[:120]] += 1
            return
        if counted:
            lat.append((loop.time() - at) * 1e3)
            hosts[str(host)] += 1

    tasks = []
    while True:
        due += rng.expovariate(rate)
        if due - start >= duration:
            break
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(due, due - start >= warmup)))
    await asyncio.gather(*tasks)
    return sorted(lat), hosts, errors


async def run_grpc(args):
    import grpc  # PyPI grpcio

    policy = {args.policy: {}}
    if args.policy == "weighted_round_robin":
        # gRFC A58's knobs: weights used after 1 s of reports (10 s by default), recomputed every
        # 100 ms (the minimum); ORCA per request (the trailers), not out of band, unless asked.
        policy[args.policy] = {"blackoutPeriod": "1s", "weightUpdatePeriod": "0.1s"}
        if args.oob:
            policy[args.policy].update({"enableOobLoadReport": True, "oobReportingPeriod": "1s"})
    config = {"loadBalancingConfig": [policy]}
    options = [
        ("grpc.service_config", json.dumps(config)),
        # C-core's default authority for `ipv4:A,B,C` is the address list itself, which HTTP/2
        # servers (hyper included) refuse as a malformed `:authority`.
        ("grpc.default_authority", "localhost"),
    ]
    async with grpc.aio.insecure_channel("ipv4:" + args.targets, options=options) as channel:
        await asyncio.wait_for(channel.channel_ready(), 10)
        call = channel.unary_unary(WORK)
        request = work_request(args.spin_us)

        async def send():
            return reply_pid(await call(request, timeout=30))

        return await open_loop(args.rate, args.duration, args.warmup, send)


class Pool:
    """Keep-alive HTTP/1.1 connections to one address, one request at a time each."""

    def __init__(self, host, port):
        self.host, self.port, self.idle = host, port, []

    async def get(self, path):
        conn = self.idle.pop() if self.idle else await asyncio.open_connection(self.host, self.port)
        reader, writer = conn
        writer.write(f"GET {path} HTTP/1.1\r\nHost: fleet\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:] if l)}
        await reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            writer.close()
        else:
            self.idle.append(conn)
        if status != 200:
            raise RuntimeError(f"status {status}")
        return headers.get("x-hermes-pid", "?")


async def run_http(args):
    host, _, port = args.target.rpartition(":")
    pool = Pool(host, int(port))
    return await open_loop(args.rate, args.duration, args.warmup, lambda: pool.get(args.path))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="kind", required=True)
    g = sub.add_parser("grpc")
    g.add_argument("--targets", required=True, help="A,B,C: the hosts' addresses")
    g.add_argument("--policy", default="weighted_round_robin")
    g.add_argument("--spin-us", type=int, default=1000)
    g.add_argument("--oob", action="store_true", help="weighted_round_robin from the out-of-band stream")
    h = sub.add_parser("http")
    h.add_argument("--target", required=True, help="HOST:PORT of the balancer")
    h.add_argument("--path", default="/cpu?us=1000")
    for p in (g, h):
        p.add_argument("--rate", type=float, default=300)
        p.add_argument("--duration", type=float, default=8)
        p.add_argument("--warmup", type=float, default=3)
    args = parser.parse_args()
    began = time.time()
    lat, hosts, errors = asyncio.run(run_grpc(args) if args.kind == "grpc" else run_http(args))
    out = {
        "kind": args.kind,
        "policy": getattr(args, "policy", None),
        "rate": args.rate,
        "requests": len(lat),
        "errors": sum(errors.values()),
        "error_kinds": dict(errors),
        "p50_ms": percentile(lat, 0.50),
        "p90_ms": percentile(lat, 0.90),
        "p99_ms": percentile(lat, 0.99),
        "max_ms": lat[-1] if lat else None,
        "hosts": dict(hosts),
        "seconds": round(time.time() - began, 2),
    }
    json.dump(out, sys.stdout)
    print()


if __name__ == "__main__":
    main()
