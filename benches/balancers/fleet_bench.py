#!/usr/bin/env python3
"""A fleet of three Hermes hosts behind the balancers users already run, side by side with the same
balancer blind to the hosts' load. As root, from the workspace root, after
`cargo build --release -p hermes-tests --bin hermes-workload`:

  python3 benches/balancers/fleet_bench.py grpc      # grpcio weighted_round_robin vs round_robin
  python3 benches/balancers/fleet_bench.py haproxy   # HAProxy roundrobin + agent-check vs plain roundrobin

The hosts are `hermes-workload --workers 1` at `--cost-scale` 1, 2 and 4 (`--grpc --orca` for gRPC,
`--agent-port` for HAProxy). Three hosts on one machine would share its cores, so that the dearest host's
work would slow the others: each host gets a CPU quota of its own instead (a cgroup per host, `cpu.max`
on cgroup v2 or `cpu.cfs_quota_us` on v1; `--quota` cores each, 0.4 by default), as separate machines
would, and the client and the balancer keep the rest of the machine. Requests are CPU-spin requests
(`spin_us` of CPU time for gRPC, `/cpu?us=N` for HTTP, scaled by each host's cost), sent open-loop at each
rate of `--rates` by `loadgen.py`; each rate runs the two modes interleaved, `--repeat` times (3 by
default). Prints per rate and mode the median p99 and p50 with every run's p99 in brackets, the hosts'
shares, and the ratio of the median p99s (the hosts' load vs blind); last, one line per rate:

  p99 ratio weighted_round_robin/round_robin at 200/s = 0.55

Figures mean something only on a quiet machine: the script prints `uptime` first.
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
LOADGEN = os.path.join(HERE, "loadgen.py")
SCALES = ["1", "2", "4"]
PERIOD_US = 10_000


class Cgroup:
    """A child cgroup with a CPU quota (v2 `cpu.max`, else v1 `cpu.cfs_quota_us`); removed on close."""

    def __init__(self, name, cores):
        v2_root = "/sys/fs/cgroup"
        controllers = os.path.join(v2_root, "cgroup.controllers")
        if os.path.exists(controllers) and "cpu" in open(controllers).read().split():
            self.path = os.path.join(v2_root, name)
            os.makedirs(self.path, exist_ok=True)
            with open(os.path.join(self.path, "cpu.max"), "w") as f:
                f.write(f"{int(cores * PERIOD_US)} {PERIOD_US}")
        elif os.path.isdir("/sys/fs/cgroup/cpu"):
            self.path = os.path.join("/sys/fs/cgroup/cpu", name)
            os.makedirs(self.path, exist_ok=True)
            with open(os.path.join(self.path, "cpu.cfs_period_us"), "w") as f:
                f.write(str(PERIOD_US))
            with open(os.path.join(self.path, "cpu.cfs_quota_us"), "w") as f:
                f.write(str(int(cores * PERIOD_US)))
        else:
            raise SystemExit("no cgroup cpu controller (v2 with `cpu`, or v1 at /sys/fs/cgroup/cpu); run with --quota 0")

    def add(self, pid):
        with open(os.path.join(self.path, "cgroup.procs"), "w") as f:
            f.write(str(pid))

    def close(self):
        for _ in range(50):
            try:
                os.rmdir(self.path)
                return
            except OSError:
                time.sleep(0.1)  # its processes are still exiting


def workload_bin(given):
    if given:
        return given
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    path = os.path.join(target, "release", "hermes-workload")
    if not os.path.exists(path):
        raise SystemExit(f"{path} not found: cargo build --release -p hermes-tests --bin hermes-workload")
    return path


class Fleet:
    """The three hosts, each in its own cgroup."""

    def __init__(self, args, extra):
        self.procs, self.groups, self.addrs, self.agents = [], [], [], []
        tag = f"hermes-fleet-{os.getpid()}"
        for i, scale in enumerate(SCALES):
            cmd = [workload_bin(args.workload), "--workers", "1", "--cost-scale", scale] + extra
            p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
            self.procs.append(p)
            if args.quota > 0:
                group = Cgroup(f"{tag}-h{i}", args.quota)
                group.add(p.pid)
                self.groups.append(group)
        for p in self.procs:
            line = p.stdout.readline().split()
            if line[:2] != ["listening", "on"]:
                raise SystemExit(f"unexpected first line {line}")
            self.addrs.append(line[2])
            if "--agent-port" in extra:
                self.agents.append(p.stdout.readline().split()[2])
        self.pids = [str(p.pid) for p in self.procs]

    def close(self):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        for g in self.groups:
            g.close()


class Haproxy:
    """HAProxy in the foreground on a free port: `roundrobin`, with the agents' weights or without."""

    def __init__(self, fleet, agents):
        self.dir = tempfile.mkdtemp(prefix="hermes-fleet-haproxy-")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        cfg = [
            "global", "  maxconn 4096",
            "defaults", "  mode http", "  timeout connect 2s", "  timeout client 60s", "  timeout server 60s",
            "backend fleet", "  balance roundrobin",
        ]
        for i, addr in enumerate(fleet.addrs):
            agent = f" agent-check agent-port {fleet.agents[i].rsplit(':', 1)[1]} agent-inter 200ms" if agents else ""
            cfg.append(f"  server h{i} {addr} weight 100 check inter 1s{agent}")
        cfg += ["frontend fe", f"  bind 127.0.0.1:{self.port}", "  default_backend fleet", ""]
        path = os.path.join(self.dir, "haproxy.cfg")
        with open(path, "w") as f:
            f.write("\n".join(cfg))
        self.proc = subprocess.Popen(["haproxy", "-db", "-f", path], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise SystemExit("HAProxy did not listen")

    def close(self):
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


def loadgen(argv):
    out = subprocess.run([sys.executable, LOADGEN] + argv, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("balancer", choices=["grpc", "haproxy"])
    parser.add_argument("--workload", help="the hermes-workload binary (default: target/release)")
    parser.add_argument("--rates", default="150,200,250",
                        help="requests/s, comma-separated; with the default costs and quotas the x4 host alone "
                             "saturates near 300/s under a blind balancer")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--duration", type=float, default=14)
    parser.add_argument("--warmup", type=float, default=4)
    parser.add_argument("--cost-us", type=int, default=1000, help="CPU per request at cost scale 1, µs")
    parser.add_argument("--quota", type=float, default=0.4, help="CPU cores per host (cgroup); 0: none")
    args = parser.parse_args()
    grpc = args.balancer == "grpc"
    rates = [float(r) for r in args.rates.split(",")]
    print("uptime:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    extra = ["--grpc", "--orca"] if grpc else ["--agent-port", "0"]
    fleet = Fleet(args, extra)
    proxies = {}
    try:
        if grpc:
            modes = ["round_robin", "weighted_round_robin"]
            targets = ",".join(fleet.addrs)

            def run(mode, rate):
                return loadgen(["grpc", "--targets", targets, "--policy", mode, "--rate", str(rate),
                                "--duration", str(args.duration), "--warmup", str(args.warmup),
                                "--spin-us", str(args.cost_us)])
        else:
            modes = ["roundrobin", "roundrobin+agent"]
            proxies = {"roundrobin": Haproxy(fleet, False), "roundrobin+agent": Haproxy(fleet, True)}

            def run(mode, rate):
                return loadgen(["http", "--target", f"127.0.0.1:{proxies[mode].port}", "--path",
                                f"/cpu?us={args.cost_us}", "--rate", str(rate), "--duration", str(args.duration),
                                "--warmup", str(args.warmup)])

        print(f"hosts: 3 x hermes-workload --workers 1, cost x1/x{SCALES[1]}/x{SCALES[2]} of {args.cost_us} us CPU, "
              f"{args.quota or 'no'} CPU quota each; {args.repeat} runs per mode, interleaved")
        print(f"{'rate/s':>7} {'mode':<22} {'p99 ms (median [runs])':<34} {'p50 ms':>8} {'shares x1/x2/x4':>18} {'errors':>6}")
        ratios = []
        for rate in rates:
            runs = {m: [] for m in modes}
            for _ in range(args.repeat):
                for mode in modes:
                    runs[mode].append(run(mode, rate))
            med = {}
            for mode in modes:
                rs = runs[mode]
                p99s = [r["p99_ms"] or float("inf") for r in rs]
                med[mode] = statistics.median(p99s)
                p50 = statistics.median([r["p50_ms"] or float("inf") for r in rs])
                shares = [sum(r["hosts"].get(pid, 0) for r in rs) for pid in fleet.pids]
                total = max(1, sum(shares))
                share_txt = "/".join(f"{100 * s / total:.0f}%" for s in shares)
                runs_txt = ", ".join(f"{p:.1f}" for p in p99s)
                errors = sum(r["errors"] for r in rs)
                print(f"{rate:>7.0f} {mode:<22} {med[mode]:>8.1f} [{runs_txt}]{'':<4} {p50:>8.1f} {share_txt:>18} {errors:>6}")
            ratios.append((rate, med[modes[1]] / med[modes[0]]))
        for rate, ratio in ratios:
            print(f"p99 ratio {modes[1]}/{modes[0]} at {rate:.0f}/s = {ratio:.2f}")
    finally:
        for p in proxies.values():
            p.close()
        fleet.close()


if __name__ == "__main__":
    main()
