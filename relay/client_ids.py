"""Which connection holds which clientId, per target: the relay's answer to TWS's error 326."""
from __future__ import annotations

from typing import TYPE_CHECKING, Dict, Optional

if TYPE_CHECKING:   # pragma: no cover
    from .pump import Splice


class ClientIds:
    """Which connection holds which clientId, per target (one TWS session serves one target)."""

    def __init__(self) -> None:
        self.held: Dict[tuple, Splice] = {}

    def claim(self, target: str, client_id: int, splice: Splice) -> Optional[Splice]:
        """Record the claim; return the connection already holding this clientId, if its session
        is not over (see Splice.ending)."""
        holder = self.held.get((target, client_id))
        if holder is not None and holder is not splice and not holder.ending():
            return holder
        self.held[(target, client_id)] = splice
        return None

    def release(self, target: str, client_id: int, splice: Splice) -> None:
        if self.held.get((target, client_id)) is splice:
            del self.held[(target, client_id)]
