"""A trader's bot as the ib_async docs write it: the address is hard-coded to 127.0.0.1:7497.
Prints 'time <epoch>' on success, 'refused after <seconds> s' if the connect is refused.
    python momentum_bot.py CLIENT_ID [hold]      (hold: stay connected until stdin closes)"""
import sys
import time

from ib_async import IB

ib = IB()
t0 = time.monotonic()
try:
    ib.connect("127.0.0.1", 7497, clientId=int(sys.argv[1]), timeout=10)
except ConnectionRefusedError:
    print(f"refused after {time.monotonic() - t0:.3f} s", flush=True)
    sys.exit(3)
print("time", int(ib.reqCurrentTime().timestamp()), flush=True)
if sys.argv[2:] == ["hold"]:
    sys.stdin.read()
ib.disconnect()
