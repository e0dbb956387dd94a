#!/usr/bin/env python3
"""Soak: one relay under a trading day's kinds of traffic for many cycles, to show that what it
holds stays flat (memory, descriptors, threads) and that no message is lost.

    .venv/bin/python bench/soak.py [--cycles 20] [--secs 60] [--loop uvloop] [--pump auto]

One relay process (log level warning, TWS awareness and target checks on, as shipped) serves three
routes; each cycle runs, at once and for `secs` seconds:
  - ticks: 32 bots open TWS sessions, receive 2,000 msgs/s each, checked for loss and order, and
    close (bench/ticks.c); 32 new sessions every cycle;
  - churn: one client opening a TWS session (clientId 1), echoing a byte and closing, again and
    again (loadgen connrate): thousands of connections a cycle through the clientId table;
  - bulk: 64 MiB to a sink through a half-close, repeated (loadgen bulk).
After each cycle, once the relay's connections have closed, it reads the relay's resident memory
(RSS and PSS), open descriptors and threads from /proc. The first cycle warms the allocator; the
verdict compares the second with the last, and counts the relay's warnings by event. Between cycles
the tick route's stand-in TWS is gone, so a few `target-down` lines are expected. Traffic stays on
127.0.0.1.
"""
import argparse
import collections
import os
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402  (loadgen and its backends, process helpers)
import ticks  # noqa: E402  (the tick generator; its stand-in TWS listens on compare.ECHO)

ROOT = compare.ROOT
TICKS_TWS, CHURN_TWS, BULK_SINK = compare.ECHO, 21022, compare.SINK     # backends
TICKS_PORT, CHURN_PORT, BULK_PORT = 21031, 21032, 21033   # the relay's routes


def start_relay(tmp, loop, pump):
    conf = os.path.join(tmp, "soak.yaml")
    with open(conf, "w") as f:
        f.write(f"""tws_aware: true
target_check: connect
discovery_port: false
status_port: false
loop: {loop}
pump: {pump}
log: {{level: warning}}
routes:
  - {{name: ticks, listen: "127.0.0.1:{TICKS_PORT}", target: "127.0.0.1:{TICKS_TWS}", max_connections: 64}}
  - {{name: churn, listen: "127.0.0.1:{CHURN_PORT}", target: "127.0.0.1:{CHURN_TWS}", max_connections: 64}}
  - {{name: bulk, listen: "127.0.0.1:{BULK_PORT}", target: "127.0.0.1:{BULK_SINK}", max_connections: 64}}
""")
    log = open(conf + ".log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "relay", "serve", "--config", conf], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=log)
    return proc, conf + ".log"


def held(pid):
    """What the relay process holds once its connections have closed: RSS and PSS in KiB, open
    descriptors, threads. Closing runs on after the clients exit; it waits (up to 10 s) for the
    descriptor count to hold still for half a second."""
    count, still_since, end = -1, time.monotonic(), time.monotonic() + 10
    while time.monotonic() < end:
        now = len(os.listdir(f"/proc/{pid}/fd"))
        if now != count:
            count, still_since = now, time.monotonic()
        elif time.monotonic() - still_since >= 0.5:
            break
        time.sleep(0.05)
    with open(f"/proc/{pid}/status") as f:
        status = dict(line.split(":", 1) for line in f)
    return {"rss": int(status["VmRSS"].split()[0]), "pss": compare.pss_kib([pid]),
            "fds": len(os.listdir(f"/proc/{pid}/fd")), "threads": int(status["Threads"])}


def logged(path):
    """The relay's log lines by level and event (a text line: date, time, level, event, fields)."""
    with open(path) as f:
        seen = collections.Counter(" ".join(line.split()[2:4]) for line in f if line[:1].isdigit())
    return ", ".join(f"{n} x {what}" for what, n in seen.most_common())


def run_cycle(secs):
    """One cycle's three workloads at once; returns what each reported (each raises if its
    generator failed: ticks.c and loadgen exit non-zero on a lost byte or connection)."""
    out = {}

    def ticks_run():
        out["ticks"] = ticks.run_row(TICKS_PORT, 32, 2000, 0, secs, None)

    def churn_run():
        out["conns"] = compare.loadgen("connrate", CHURN_PORT, secs, timeout=secs + 60)["conns_per_s"] * secs

    def bulk_run():
        end, n = time.monotonic() + secs, 0
        while time.monotonic() < end:
            compare.loadgen("bulk", BULK_PORT, 64)    # fails unless the sink counted every byte
            n += 64
        out["bulk_mib"] = n

    errors = []

    def guarded(fn):
        try:
            fn()
        except Exception as e:     # reported after the join, so one failure does not hang the others
            errors.append(e)

    workers = [threading.Thread(target=guarded, args=(fn,)) for fn in (ticks_run, churn_run, bulk_run)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if errors:
        raise errors[0]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cycles", type=int, default=20)
    ap.add_argument("--secs", type=int, default=60)
    ap.add_argument("--loop", default="uvloop", choices=["uvloop", "asyncio"])
    ap.add_argument("--pump", default="auto", choices=["auto", "python"])
    args = ap.parse_args()
    compare.build_loadgen()
    ticks.build()
    os.environ["LOADGEN_TWS"] = "1"     # every loadgen connection opens a TWS session, as compare's TWS rows do
    backends = [subprocess.Popen([compare.LOADGEN, kind, str(port)], stdout=subprocess.DEVNULL)
                for kind, port in (("echo", CHURN_TWS), ("sink", BULK_SINK))]
    with tempfile.TemporaryDirectory() as tmp:
        relay, log = start_relay(tmp, args.loop, args.pump)
        try:
            for port in (CHURN_TWS, BULK_SINK, CHURN_PORT, BULK_PORT):
                compare.wait_port(port)
            first = held(relay.pid)
            print(f"relay pid {relay.pid}, loop {args.loop}, pump {args.pump}; at start: rss {first['rss']} KiB, "
                  f"pss {first['pss']} KiB, {first['fds']} descriptors, {first['threads']} threads", flush=True)
            print("| cycle | tick msgs | lost or out of order | p50 / p99 us | sessions opened and closed "
                  "| bulk MiB | RSS KiB | PSS KiB | descriptors | threads |")
            print("|---|---|---|---|---|---|---|---|---|---|")
            rows, lost = [], 0
            for c in range(1, args.cycles + 1):
                r = run_cycle(args.secs)
                if relay.poll() is not None:
                    raise RuntimeError(f"the relay exited ({relay.returncode}) in cycle {c}")
                h = held(relay.pid)
                t = r["ticks"]
                lost += int(t["lost"] + t["reordered"])
                rows.append(h)
                print(f"| {c} | {t['msgs']:.0f} | {t['lost'] + t['reordered']:.0f} | {t['p50_us']:.0f} / {t['p99_us']:.0f} "
                      f"| {r['conns'] + 32:.0f} | {r['bulk_mib']} | {h['rss']} | {h['pss']} | {h['fds']} | {h['threads']} |",
                      flush=True)
            base, last = rows[min(1, len(rows) - 1)], rows[-1]
            print(f"\nfrom cycle {min(2, len(rows))} to {len(rows)}: RSS {last['rss'] - base['rss']:+d} KiB, "
                  f"PSS {last['pss'] - base['pss']:+d} KiB, descriptors {last['fds'] - base['fds']:+d}, "
                  f"threads {last['threads'] - base['threads']:+d}; messages lost or out of order: {lost}; "
                  f"the relay's log at level warning: {logged(log) or 'nothing'}")
        finally:
            compare.stop(relay)
            for b in backends:
                b.kill()
                b.wait()


if __name__ == "__main__":
    main()
