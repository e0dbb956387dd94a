#!/usr/bin/env python3
"""Tick-stream benchmark: how late each market-data message reaches the bots, through each path,
side by side in one run (bench/ticks.c is the stand-in TWS and the bots).

    .venv/bin/python bench/ticks.py [--rounds 5] [--secs 5] [--only direct,relay-uvloop,...] [--rows steady,...]
    .venv/bin/python bench/ticks.py --hogs 2 --rows steady      (the same, on a busy machine)

Rows: steady 32 bots x 2,000 msgs/s; bursts of 5,000 msgs to each of 32 bots once a second; one
bot x 10,000 msgs/s. Paths: the compare bench's contenders (direct, relay on uvloop and asyncio at
log level warning with every other default: TWS awareness and target checks on, a native pump
thread per core; relay-1thread: pump_threads 1; socat, HAProxy default and nbthread 1, and
relay-2proc: two relay processes with one pump thread each, sharing the bots), and a pair that
polls busily instead of sleeping, one thread each: relay-1thread-busy (busy_poll: 200) and
haproxy-1thread-busy (busy-polling). Each cell is the median of `rounds` interleaved rounds;
each round runs every path once per row. Also the proxy's CPU seconds per million messages (its
processes' user + system time over the run). It waits for a quiet machine first and prints the
load average. `--hogs N` then keeps N processes spinning on the CPU through every row: a busy
machine (TWS, charts, a backtest), where a proxy's thread must win the CPU back each time a tick
arrives. `--unsettled`: the stand-in TWS never sends managedAccounts / nextValidId after startApi,
only market data: an opening that never settles, which a TWS-aware relay reads only up to its bound.
Needs gcc, socat and haproxy (apt-get install gcc socat haproxy). Traffic stays on 127.0.0.1.
"""
import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402  (the contenders, ports, process-tree helpers)
from stats import median_interval, verdict  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
TICKS = os.path.join(HERE, ".build", "ticks")
# compare's contenders, and a pair that polls busily instead of sleeping while sessions are live:
# the relay's `busy_poll: 200` and HAProxy's `busy-polling`, each with one thread
CONTENDERS = {**compare.CONTENDERS,
              "relay-1thread-busy": lambda tmp: compare.start_relay(tmp, "uvloop", threads=1, busy_poll=200),
              "haproxy-1thread-busy": lambda tmp: compare.start_haproxy(tmp, 1, busy=True)}
ROWS = [("steady 32 bots x 2,000 msgs/s", 32, 2000, 0), ("bursts 32 bots x 5,000 msgs each second", 32, 0, 5000),
        ("one bot x 10,000 msgs/s", 1, 10000, 0)]
TICK = os.sysconf("SC_CLK_TCK")


def build():
    os.makedirs(os.path.dirname(TICKS), exist_ok=True)
    subprocess.run(["gcc", "-O2", "-pthread", "-o", TICKS, os.path.join(HERE, "ticks.c")], check=True)


def cpu_seconds(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            # utime, stime, and cutime, cstime: children it waited for (socat forks one per connection)
            total += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total / TICK


def run_row(path_port, bots, rate, burst, secs, proc, opening="settled"):
    pids = compare.pids_of(proc)
    before = cpu_seconds(pids)
    out = subprocess.run([TICKS, str(path_port), str(compare.ECHO), str(bots), str(rate), str(burst), str(secs),
                          opening], capture_output=True, text=True, timeout=secs + 60)
    if out.returncode:
        raise RuntimeError(f"ticks: {out.stderr.strip()}")
    pids = compare.pids_of(proc)
    row = {k: float(v) for k, v in (kv.split("=") for kv in out.stdout.split())}
    row["cpu_s_per_m"] = (cpu_seconds(pids) - before) / row["msgs"] * 1e6 if proc is not None else float("nan")
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--secs", type=int, default=5)
    ap.add_argument("--only", help="comma-separated subset of: " + ",".join(CONTENDERS))
    ap.add_argument("--rows", help="comma-separated subset of: steady,bursts,one (each row's first word)")
    ap.add_argument("--show-rounds", action="store_true", help="also print each round's p50 and p99 (stderr)")
    ap.add_argument("--hogs", type=int, default=0, help="processes spinning on the CPU through every row")
    ap.add_argument("--unsettled", action="store_true",
                    help="the stand-in TWS never settles the opening (no managedAccounts / nextValidId)")
    args = ap.parse_args()
    rows = [r for r in ROWS if not args.rows or r[0].split()[0] in args.rows.split(",")]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    build()
    names = args.only.split(",") if args.only else list(CONTENDERS)
    load = compare.wait_for_quiet()
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", file=sys.stderr)
    samples = {(n, r[0]): [] for n in names for r in rows}
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.hogs)]
    try:
        run_rounds(args, names, rows, samples)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    load_after = os.getloadavg()
    report(args, names, rows, samples, load, load_after)


def run_rounds(args, names, rows, samples):
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(args.rounds):
            for n in names:
                # the stand-in TWS listens on the compare bench's echo port; the proxy forwards to it
                start = CONTENDERS[n]
                proc, port, _ = start(tmp) if n != "direct" else (None, compare.ECHO, None)
                try:          # no port wait: a relay listens only once the stand-in TWS is up; the bots retry
                    for label, bots, rate, burst in rows:
                        print(f"round {rnd + 1}: {n}: {label}", file=sys.stderr, flush=True)
                        samples[(n, label)].append(run_row(port, bots, rate, burst, args.secs, proc,
                                                           "never" if args.unsettled else "settled"))
                except Exception:
                    compare.show_logs(tmp)
                    raise
                finally:
                    compare.stop(proc)


def report(args, names, rows, samples, load, load_after):
    if args.show_rounds:
        for (n, label), v in samples.items():
            print(f"{n}, {label}: p50 by round {[round(x['p50_us']) for x in v]}, "
                  f"p99 by round {[round(x['p99_us']) for x in v]}", file=sys.stderr)
    med = {k: {m: sorted(s[m] for s in v)[len(v) // 2] for m in v[0]} for k, v in samples.items()}
    lost = sum(s["lost"] + s["reordered"] for v in samples.values() for s in v)
    print(f"\n{os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}, one run, medians of {args.rounds} interleaved "
          f"rounds of {args.secs} s; "
          + (f"{args.hogs} processes spinning on the CPU throughout; " if args.hogs else "")
          + ("the opening never settles (no managedAccounts / nextValidId); " if args.unsettled else "")
          + f"load average before {load[0]:.2f}, after {load_after[0]:.2f}; "
          f"messages lost or out of order on any path: {int(lost)}\n")
    for label, *_ in rows:
        print(f"**{label}** (one-way latency, us; proxy CPU s per million messages)\n")
        print("| path | p50 | p99 | p99.9 | max | CPU s/M | p99 over rounds | p50 vs HAProxy, same threads "
              "| p99 vs HAProxy, same threads | rounds at or ahead on p50, p99 | verdict on p50, p99 "
              "| 95% interval of the ratio, p50; p99 |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for n in names:
            m = med[(n, label)]
            ref_name = compare.same_threads(n)
            ref = med.get((ref_name, label))
            ratios, rounds_ahead, verdicts, intervals = ["", ""], "", "", ""
            if ref:
                ratios = [f"{ref[k] / m[k]:.2f}x" for k in ("p50_us", "p99_us")]
                pairs = list(zip(samples[(n, label)], samples[(ref_name, label)]))   # the same round
                rounds_ahead = ", ".join(f"{sum(mine[k] <= theirs[k] for mine, theirs in pairs)}/{len(pairs)}"
                                         for k in ("p50_us", "p99_us"))
                if ref_name != n:
                    verdicts = ", ".join(verdict([mine[k] for mine, _ in pairs], [theirs[k] for _, theirs in pairs])
                                         for k in ("p50_us", "p99_us"))
                    spans = [median_interval([theirs[k] / mine[k] for mine, theirs in pairs]) for k in ("p50_us", "p99_us")]
                    intervals = "; ".join(f"{lo:.2f}-{hi:.2f}x" for lo, hi in spans) if all(spans) else ""
            cpu = "" if m["cpu_s_per_m"] != m["cpu_s_per_m"] else f"{m['cpu_s_per_m']:.1f}"
            p99s = [s["p99_us"] for s in samples[(n, label)]]
            print(f"| {n} | {m['p50_us']:.0f} | {m['p99_us']:.0f} | {m['p999_us']:.0f} | {m['max_us']:.0f} | {cpu} | "
                  f"{min(p99s):.0f}-{max(p99s):.0f} | {ratios[0]} | {ratios[1]} | {rounds_ahead} | {verdicts} "
                  f"| {intervals} |")
        print()
    print("(ratios: above 1.00x the path is ahead of HAProxy with as many threads: haproxy-1thread for the "
          "-1thread paths, HAProxy's default of one thread per core for the others, and busy-polling for the -busy "
          "path; "
          "'p99 over rounds': the lowest and highest p99 of the rounds, this machine's noise; "
          "'rounds at or ahead': in how many rounds the path's p50 and p99 were at or below that HAProxy's "
          "in the same round; 'verdict': the sign test over those rounds (ties left out) at 5%: 'undecided' "
          "unless one path won clearly more rounds; with 5 rounds even 5 of 5 is undecided (p=0.06); "
          "'95% interval of the ratio': where the median of the round-by-round ratios lies, 95% sure (at least 6 "
          "rounds): the widest gap either way the run cannot rule out)")


if __name__ == "__main__":
    main()
