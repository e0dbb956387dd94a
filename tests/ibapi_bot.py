"""The official ibapi client: connect, ask for the time, print 'time <epoch>'; every error it is
handed is printed as 'error <code> <text>'. Works with ibapi 9.81 (error(reqId, code, text)) and
10.x (error(reqId, errorTime, code, text, json)).
    python ibapi_bot.py HOST PORT CLIENT_ID"""
import inspect
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

    def connectionClosed(self):
        print("connection closed", flush=True)
        self.done.set()

    def error(self, reqId, *args):
        if "errorTime" in inspect.signature(EWrapper.error).parameters:
            args = args[1:]
        errorCode, errorString = args[0], args[1]
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
