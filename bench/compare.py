#!/usr/bin/env python3
"""Side-by-side benchmark: direct, relay (uvloop and asyncio; relay-1thread: one pump thread), socat,
HAProxy (default and nbthread 1), and two relay processes sharing the clients (relay-2proc: the
multi-core design study), one run, same backends, same C load generator (bench/loadgen.c). Prints
a table and each relay's ratio to the HAProxy with as many threads.

    .venv/bin/python bench/compare.py [--quick] [--only direct,relay-uvloop,...]
    .venv/bin/python bench/compare.py --two-hop          (the WSL path: forwarder + relay vs relay alone)

Needs gcc, socat and haproxy (apt-get install socat haproxy). Traffic stays on 127.0.0.1.
Rows: ping-pong round trip p50/p99 (128-byte messages, one connection); 200 concurrent connections
ping-ponging (messages/s, p99); bulk MiB/s through a half-close; new connections/s (connect, 1-byte
echo, close); memory per idle connection (PSS of the proxy's processes, 500 connections).
"""
import argparse
import glob
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
LOADGEN = os.path.join(HERE, ".build", "loadgen")
ECHO, SINK = 21001, 21002          # backends
P_ECHO, P_SINK = 21011, 21012      # whichever proxy is under test listens here


def build_loadgen():
    os.makedirs(os.path.dirname(LOADGEN), exist_ok=True)
    subprocess.run(["gcc", "-O2", "-o", LOADGEN, os.path.join(HERE, "loadgen.c")], check=True)


def wait_port(port, timeout=10):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on {port}")


def wait_for_quiet(limit=0.5, patience=180):
    """Wait (up to `patience` s) until the 1-minute load average is under `limit`; return it.
    A busy machine hurts a one-threaded proxy far more than a threaded one."""
    end = time.monotonic() + patience
    while True:
        load = os.getloadavg()
        if load[0] < limit or time.monotonic() > end:
            return load
        time.sleep(5)


def loadgen(*args, timeout=120):
    out = subprocess.run([LOADGEN, *map(str, args)], capture_output=True, text=True, timeout=timeout)
    if out.returncode:
        raise RuntimeError(f"loadgen {args}: {out.stderr.strip()}")
    return {k: float(v) for k, v in (line.split("=") for line in out.stdout.split())}


def pss_kib(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total


def tree(pid):
    """pid and all its descendants."""
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True).stdout
    children = {}
    pairs = [tuple(map(int, line.split())) for line in out.strip().splitlines()]
    for p, pp in pairs:
        children.setdefault(pp, []).append(p)
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(children.get(p, []))
    return found


# ------------------------------------------------------------------------- the contenders

def start_direct(tmp):
    return None, ECHO, SINK


def start_relay(tmp, loop, tws_aware=True, prefix=(), target_check="connect", ports=(P_ECHO, P_SINK), threads="auto",
                busy_poll=0):
    pe, ps = ports
    conf = os.path.join(tmp, f"relay-{loop}-{tws_aware}-{pe}-{threads}-{busy_poll}.yaml")
    with open(conf, "w") as f:
        f.write(f"""tws_aware: {str(tws_aware).lower()}
target_check: {target_check}
discovery_port: false
routes:
  - {{name: echo, listen: "127.0.0.1:{pe}", target: "127.0.0.1:{ECHO}", max_connections: 10000}}
  - {{name: sink, listen: "127.0.0.1:{ps}", target: "127.0.0.1:{SINK}", max_connections: 10000}}
log: {{level: {os.environ.get("RELAY_BENCH_LOG", "warning")}}}
loop: {loop}
pump_threads: {threads}
busy_poll: {busy_poll}
""")
    p = subprocess.Popen([*prefix, sys.executable, "-m", "relay", "serve", "--config", conf], cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=open(conf + ".log", "w"))
    return p, pe, ps


def start_relay_per_core(tmp, cores=2):
    """The design study's stand-in for one event loop per core: `cores` relay processes, each
    relay-uvloop's config on its own ports to the same backends; the clients spread their
    connections over them as SO_REUSEPORT would (without the shared clientId / cap state a real
    design needs, so this is an upper bound on what it gains)."""
    started = [start_relay(tmp, "uvloop", ports=(P_ECHO + 100 * (i + 1), P_SINK + 100 * (i + 1)), threads=1)
               for i in range(cores)]
    return (Group([p for p, _, _ in started]), ",".join(str(pe) for _, pe, _ in started),
            ",".join(str(ps) for _, _, ps in started))


class Group:
    """Several processes measured and stopped as one contender."""

    def __init__(self, procs):
        self.procs = procs

    def pids(self):
        return [p for proc in self.procs for p in tree(proc.pid)]

    def wait(self, timeout=None):
        for proc in self.procs:
            proc.wait(timeout=timeout)


def pids_of(proc):
    if proc is None:
        return []
    return proc.pids() if isinstance(proc, Group) else tree(proc.pid)


def start_socat(tmp):
    # the way IB Gateway Docker images run it: one forked process per connection
    cmd = ["sh", "-c", f"socat TCP-LISTEN:{P_ECHO},bind=127.0.0.1,reuseaddr,fork,backlog=4096 TCP:127.0.0.1:{ECHO} & "
           f"socat TCP-LISTEN:{P_SINK},bind=127.0.0.1,reuseaddr,fork,backlog=4096 TCP:127.0.0.1:{SINK} & wait"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), P_ECHO, P_SINK


def start_haproxy(tmp, threads=None, busy=False):
    conf = os.path.join(tmp, f"haproxy-{threads}-{busy}.cfg")
    with open(conf, "w") as f:
        f.write(f"""global
    maxconn 5000
    {f"nbthread {threads}" if threads else ""}
    {"busy-polling" if busy else ""}
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
listen echo
    bind 127.0.0.1:{P_ECHO}
    server s 127.0.0.1:{ECHO}
listen sink
    bind 127.0.0.1:{P_SINK}
    server s 127.0.0.1:{SINK}
""")
    p = subprocess.Popen(["haproxy", "-db", "-f", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return p, P_ECHO, P_SINK


CONTENDERS = {
    "direct": start_direct,
    "relay-uvloop": lambda tmp: start_relay(tmp, "uvloop"),        # its default: a pump thread per core
    "relay-asyncio": lambda tmp: start_relay(tmp, "asyncio"),
    "relay-1thread": lambda tmp: start_relay(tmp, "uvloop", threads=1),   # pump_threads: 1
    "socat": start_socat,
    "haproxy": start_haproxy,                     # its default: one thread per core
    "haproxy-1thread": lambda tmp: start_haproxy(tmp, 1),   # like for like with relay-1thread
    "relay-2proc": start_relay_per_core,          # the design study: one relay process per core
}


def stop(proc):
    """Stop a contender and everything it started."""
    if proc is None:
        return
    for pid in reversed(pids_of(proc)):
        try:
            os.kill(pid, 15)
        except ProcessLookupError:
            pass
    proc.wait(timeout=10)


def show_logs(tmp):
    """A failing contender's own account: the last lines of each relay log in the run's folder."""
    for log in sorted(glob.glob(os.path.join(tmp, "*.log"))):
        with open(log) as f:
            print(f"--- {log} (last lines)\n" + "".join(f.readlines()[-20:]), file=sys.stderr)


def measure(name, start, tmp, quick):
    proc, pe, ps = start(tmp)
    try:
        for port in f"{pe},{ps}".split(","):
            wait_port(int(port))
        pp = loadgen("pingpong", pe, 128, 5000 if quick else 20000)
        cc = loadgen("concurrent", pe, 200, 128, 1.5 if quick else 3)
        bulk = loadgen("bulk", ps, 512 if quick else 2048)
        cr = loadgen("connrate", pe, 1 if quick else 2)
        row = {"p50_us": pp["p50_us"], "p99_us": pp["p99_us"], "c200_msgs_s": cc["msgs_per_s"],
               "c200_p99_us": cc["p99_us"], "bulk_mib_s": bulk["mib_per_s"], "conns_s": cr["conns_per_s"]}
        if proc is not None:
            time.sleep(1.0)   # let closed connections settle before the memory baseline
            before = pss_kib(pids_of(proc))
            idle = subprocess.Popen([LOADGEN, "idle", str(pe), "500"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    text=True)
            assert idle.stdout.readline().startswith("ready")
            after = pss_kib(pids_of(proc))
            idle.stdin.close()
            idle.wait()
            row["kib_per_idle_conn"] = (after - before) / 500
        else:
            row["kib_per_idle_conn"] = float("nan")
        return row
    except Exception:
        show_logs(tmp)
        raise
    finally:
        stop(proc)


ROWS = [("ping-pong p50 (us)", "p50_us", "lower"), ("ping-pong p99 (us)", "p99_us", "lower"),
        ("200 conns msgs/s", "c200_msgs_s", "higher"), ("200 conns p99 (us)", "c200_p99_us", "lower"),
        ("bulk MiB/s", "bulk_mib_s", "higher"), ("new conns/s", "conns_s", "higher"),
        ("KiB per idle conn", "kib_per_idle_conn", "lower")]


def same_threads(name):
    """The HAProxy with as many threads as path `name`, and polling busily if it does (ticks.py's
    -busy paths): nbthread 1 for the -1thread paths, else its default of one per core."""
    haproxy = "haproxy-1thread" if "-1thread" in name else "haproxy"
    return haproxy + "-busy" if name.endswith("-busy") else haproxy


# the relays in the table's ratio columns, each against the HAProxy with as many threads
SAME_THREADS = tuple((mine, same_threads(mine)) for mine in ("relay-uvloop", "relay-1thread"))


def ratio(results, key, better, mine, other):
    """`mine` against `other`, as 'how many times better' (>1 = ahead)."""
    if mine not in results or other not in results:
        return ""
    r, h = results[mine][key], results[other][key]
    if not h or h != h or r != r:
        return ""
    x = (h / r) if better == "lower" else (r / h)
    return f"{x:.2f}x {'ahead' if x >= 1 else 'behind'}"


def table(results):
    names = list(results)
    out = ["| row | " + " | ".join(names) + " | " + " | ".join(f"{m} vs {o}" for m, o in SAME_THREADS) + " |",
           "|---|" + "---|" * (len(names) + len(SAME_THREADS))]
    for label, key, better in ROWS:
        cells = [f"{results[n][key]:.1f}" if results[n][key] < 100 else f"{results[n][key]:.0f}" for n in names]
        ratios = [ratio(results, key, better, mine, other) for mine, other in SAME_THREADS]
        out.append(f"| {label} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    return "\n".join(out)


def tws_overhead(rounds=7):
    """TWS awareness on vs off, every connection opening with the API handshake: median of
    `rounds` interleaved ping-pong and bulk measurements each."""
    os.environ["LOADGEN_TWS"] = "1"
    samples = {True: {"p50_us": [], "p99_us": [], "bulk_mib_s": []}, False: {"p50_us": [], "p99_us": [],
                                                                              "bulk_mib_s": []}}
    backends = [subprocess.Popen([LOADGEN, mode, str(port)], stdout=subprocess.DEVNULL)
                for mode, port in (("echo", ECHO), ("sink", SINK))]
    try:
        wait_port(ECHO)
        wait_port(SINK)
        with tempfile.TemporaryDirectory() as tmp:
            for _ in range(rounds):
                for aware in (True, False):
                    proc, pe, ps = start_relay(tmp, "uvloop", tws_aware=aware)
                    try:
                        wait_port(pe)
                        pp = loadgen("pingpong", pe, 128, 20000)
                        bulk = loadgen("bulk", ps, 2048)
                    finally:
                        proc.terminate()
                        proc.wait()
                    samples[aware]["p50_us"].append(pp["p50_us"])
                    samples[aware]["p99_us"].append(pp["p99_us"])
                    samples[aware]["bulk_mib_s"].append(bulk["mib_per_s"])
    finally:
        for b in backends:
            b.kill()
    med = {a: {k: sorted(v)[len(v) // 2] for k, v in rows.items()} for a, rows in samples.items()}
    print(f"\nTWS awareness, relay on uvloop, every connection opens with the API handshake "
          f"(median of {rounds} interleaved rounds):\n")
    print("| row | awareness off (range) | awareness on (range) | on vs off |\n|---|---|---|---|")
    for key, label, better in (("p50_us", "ping-pong p50 (us)", "lower"), ("p99_us", "ping-pong p99 (us)", "lower"),
                               ("bulk_mib_s", "bulk MiB/s", "higher")):
        off, on = med[False][key], med[True][key]
        change = (on - off) / off * 100 if better == "higher" else (off - on) / off * 100
        spread = {a: f"{min(samples[a][key]):.0f}-{max(samples[a][key]):.0f}" for a in (False, True)}
        print(f"| {label} | {off:.1f} ({spread[False]}) | {on:.1f} ({spread[True]}) | "
              f"{change:+.1f}% {'(better)' if change >= 0 else '(worse)'} |")


def tws_instructions():
    """TWS awareness on vs off in instructions (valgrind's callgrind: repeatable where wall-clock time
    on a shared VM is not). The relay runs 1000 and 3000 ping-pong round trips after the API
    handshake; the difference / 2000 is the cost of one round trip, the rest is start-up and the
    opening. Target checks off (they would add their own instructions on a timer)."""
    if not shutil.which("valgrind"):
        sys.exit("--instructions needs valgrind: apt-get install valgrind")
    os.environ["LOADGEN_TWS"] = "1"
    backend = subprocess.Popen([LOADGEN, "echo", str(ECHO)], stdout=subprocess.DEVNULL)
    totals = {}
    try:
        wait_port(ECHO)
        with tempfile.TemporaryDirectory() as tmp:
            for aware in (False, True):
                for count in (1000, 3000, 1000, 3000):
                    out = os.path.join(tmp, f"cg-{aware}-{count}-%p")
                    proc, pe, _ = start_relay(tmp, "uvloop", aware, ("valgrind", "--tool=callgrind", "-q",
                                                                     f"--callgrind-out-file={out}"), "off")
                    try:
                        wait_port(pe, timeout=60)
                        loadgen("pingpong", pe, 128, count)
                    finally:
                        proc.send_signal(2)
                        proc.wait(timeout=60)
                    name = next(n for n in os.listdir(tmp) if n.startswith(f"cg-{aware}-{count}-"))
                    with open(os.path.join(tmp, name)) as f:
                        total = int(next(line for line in f if line.startswith("summary:")).split()[1])
                    os.remove(os.path.join(tmp, name))
                    totals.setdefault((aware, count), []).append(total)
    finally:
        backend.kill()
    mean = {k: sum(v) / len(v) for k, v in totals.items()}
    per_trip = {a: (mean[(a, 3000)] - mean[(a, 1000)]) / 2000 for a in (False, True)}
    print("\nTWS awareness in instructions (callgrind, relay on uvloop, two runs each):\n")
    print("| | awareness off | awareness on | on vs off |\n|---|---|---|---|")
    print(f"| instructions per ping-pong round trip | {per_trip[False]:.0f} | {per_trip[True]:.0f} | "
          f"{(per_trip[True] - per_trip[False]) / per_trip[False] * 100:+.1f}% |")
    spread = max(max(v) - min(v) for v in totals.values()) / 2000
    print(f"| repeat spread per round trip | {spread:.0f} | | |")
    extra = mean[(True, 1000)] - 1000 * per_trip[True] - (mean[(False, 1000)] - 1000 * per_trip[False])
    print(f"| the opening, once per connection | | {extra / 1e6:+.2f} M | |")


def two_hop(rounds=7):
    """The WSL path's cost: a bot in WSL talking to 127.0.0.1:7497 crosses the forwarder and then
    the Windows relay. Ping-pong round trips direct, through the relay alone, and through forwarder
    + relay (both on uvloop, default settings), interleaved, median of `rounds`."""
    backend = subprocess.Popen([LOADGEN, "echo", str(ECHO)], stdout=subprocess.DEVNULL)
    procs = []
    try:
        wait_port(ECHO)
        with tempfile.TemporaryDirectory() as tmp:
            env = {**os.environ, "TWS_RELAY_RUN_DIR": tmp}    # this bench's relays see only each other
            # the "Windows" relay: route tws-paper on P_ECHO, its discovery answer on 127.0.0.1:17400
            procs.append(subprocess.Popen([sys.executable, "-m", "relay", "serve", "--listen", f"127.0.0.1:{P_ECHO}",
                                           "--target", f"127.0.0.1:{ECHO}", "--name", "tws-paper", "--status-port",
                                           "off", "--log-level", "warning"], cwd=ROOT, env=env))
            wait_port(P_ECHO)
            wait_port(17400)
            # the WSL forwarder: 127.0.0.1:7497 -> the relay's tws-paper port
            procs.append(subprocess.Popen([sys.executable, "-m", "relay", "wsl", "forward", "--host", "127.0.0.1",
                                           "--status-port", "off", "--log-level", "warning"], cwd=ROOT, env=env))
            wait_port(7497)
            paths = {"direct": ECHO, "relay (one hop)": P_ECHO, "forwarder + relay (two hops)": 7497}
            samples = {name: {"p50_us": [], "p99_us": []} for name in paths}
            for _ in range(rounds):
                for name, port in paths.items():
                    pp = loadgen("pingpong", port, 128, 20000)
                    samples[name]["p50_us"].append(pp["p50_us"])
                    samples[name]["p99_us"].append(pp["p99_us"])
    finally:
        for p in procs:
            p.terminate()
            p.wait()
        backend.kill()
    med = {n: {k: sorted(v)[len(v) // 2] for k, v in rows.items()} for n, rows in samples.items()}
    print(f"\n{os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}, one run, 128-byte ping-pong, "
          f"median of {rounds} interleaved rounds, all on 127.0.0.1\n")
    print("| path | p50 (us) | p99 (us) | p50 added vs direct | p50 added vs one hop |\n|---|---|---|---|---|")
    for name in paths:
        m = med[name]
        print(f"| {name} | {m['p50_us']:.1f} | {m['p99_us']:.1f} | {m['p50_us'] - med['direct']['p50_us']:+.1f} | "
              f"{m['p50_us'] - med['relay (one hop)']['p50_us']:+.1f} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="shorter runs (for a smoke test)")
    ap.add_argument("--tws-overhead", action="store_true",
                    help="only compare TWS awareness on vs off (ping-pong and bulk, handshake first)")
    ap.add_argument("--instructions", action="store_true",
                    help="TWS awareness on vs off counted in instructions with valgrind (repeatable)")
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds for --tws-overhead / --two-hop")
    ap.add_argument("--two-hop", action="store_true",
                    help="only the WSL path: direct vs relay vs forwarder + relay (ping-pong latency)")
    ap.add_argument("--only", help="comma-separated subset of: " + ",".join(CONTENDERS))
    args = ap.parse_args()
    for tool in ("gcc", "socat", "haproxy"):
        if not shutil.which(tool):
            sys.exit(f"bench needs {tool}: apt-get install gcc socat haproxy")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    build_loadgen()
    if args.tws_overhead:
        tws_overhead(args.rounds)
        return
    if args.two_hop:
        two_hop(args.rounds)
        return
    if args.instructions:
        tws_instructions()
        return
    names = args.only.split(",") if args.only else list(CONTENDERS)
    load = wait_for_quiet()
    backends = [subprocess.Popen([LOADGEN, mode, str(port)], stdout=subprocess.DEVNULL)
                for mode, port in (("echo", ECHO), ("sink", SINK))]
    try:
        wait_port(ECHO)
        wait_port(SINK)
        results = {}
        with tempfile.TemporaryDirectory() as tmp:
            for n in names:
                print(f"measuring {n} ...", file=sys.stderr, flush=True)
                results[n] = measure(n, CONTENDERS[n], tmp, args.quick)
        after = os.getloadavg()[0]
        print(f"\n{os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}, one run, all on 127.0.0.1; load average "
              f"before {load[0]:.2f}, after {after:.2f}\n")
        print(table(results))
    finally:
        for b in backends:
            b.kill()


if __name__ == "__main__":
    main()
