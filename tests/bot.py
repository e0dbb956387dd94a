"""A trader's bot: reads IBKR_HOST_IP / IBKR_PORT from a .env file and asks TWS for the time
through ib_async. Prints 'time <epoch>' on success.   python bot.py PATH_TO_ENV CLIENT_ID [hold]
With 'hold' it stays connected until its standard input closes. $BOT_TIMEOUT: connect() timeout (10 s)."""
import os
import sys

from ib_async import IB


def read_env(path):
    values = {}
    for line in open(path):
        line = line.split("#", 1)[0].strip()
        if "=" in line:
            k, v = line.split("=", 1)
            values[k.strip()] = v.strip().strip("'\"")
    return values


env = read_env(sys.argv[1])
ib = IB()
ib.connect(env["IBKR_HOST_IP"], int(env["IBKR_PORT"]), clientId=int(sys.argv[2]),
           timeout=float(os.environ.get("BOT_TIMEOUT", "10")))
print("time", int(ib.reqCurrentTime().timestamp()), flush=True)
if sys.argv[3:] == ["hold"]:
    sys.stdin.read()
ib.disconnect()
