"""The official ibapi client: connect, ask for the time, print 'time <epoch>'.
    python ibapi_bot.py HOST PORT CLIENT_ID"""
import sys
import threading

from ibapi.client import EClient
from ibapi.wrapper import EWrapper


class Bot(EWrapper, EClient):
    def __init__(self):
        EClient.__init__(self, self)
        self.done = threading.Event()
        self.failed = False

    def nextValidId(self, orderId):
        self.reqCurrentTime()

    def currentTime(self, time):
        print("time", time, "server_version", self.serverVersion(), flush=True)
        self.done.set()

    def error(self, reqId, errorCode, errorString, *rest):
        print("error", errorCode, errorString, flush=True)
        if errorCode == 326:          # clientId in use: give up at once
            self.failed = True
            self.done.set()


bot = Bot()
bot.connect(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
threading.Thread(target=bot.run, daemon=True).start()
ok = bot.done.wait(10)
bot.disconnect()
sys.exit(0 if ok and not bot.failed else 1)
