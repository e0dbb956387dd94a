"""tws-relay: a TCP relay that lets WSL2 and Docker bots reach TWS / IB Gateway as a local client."""
__version__ = "0.1.0"
