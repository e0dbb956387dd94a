"""Which connection holds which clientId, per target: the relay's answer to TWS's error 326."""
from __future__ import annotations

from typing import Dict, Optional, Protocol


class Holder(Protocol):
    """A connection that may hold a clientId (pump.Splice)."""
    peer: str

    def ending(self) -> bool: ...


class ClientIds:
    """Which connection holds which clientId, per target (one TWS session serves one target)."""

    def __init__(self) -> None:
        self.held: Dict[tuple, Holder] = {}

    def claim(self, target: str, client_id: int, splice: Holder) -> Optional[Holder]:
        """Record the claim; return the connection already holding this clientId, if its session
        is not over (see Splice.ending)."""
        holder = self.held.get((target, client_id))
        if holder is not None and holder is not splice and not holder.ending():
            return holder
        self.held[(target, client_id)] = splice
        return None

    def release(self, target: str, client_id: int, splice: Holder) -> None:
        if self.held.get((target, client_id)) is splice:
            del self.held[(target, client_id)]
