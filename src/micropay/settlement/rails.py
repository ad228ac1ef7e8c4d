"""Rails: the outside networks (card, bank) that aggregated amounts travel through.

The simulated rails behave like real ones in what matters to the ledger: a card charge answers
at once and may be declined; a bank transfer answers ``pending`` and settles (or fails) later;
each costs a fee, booked as the platform's expense. Failures are injected per request
(``simulate_failure``), for tests and the demo.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from micropay.errors import NotFound, require
from micropay.settlement.fees import minor_units, rail_fee

NS_PER_S = 1_000_000_000


@dataclass(frozen=True, slots=True)
class RailOutcome:
    status: str  # "succeeded" | "pending" | "failed"
    fee: int
    failure_code: str
    settles_at_ns: int


class Rail(Protocol):
    @property
    def name(self) -> str: ...

    def collect(self, amount: int, scale: int, now_ns: int, simulate_failure: bool) -> RailOutcome:
        """Start collecting ``amount`` (minor units at ``scale``) from the payer's card or bank."""
        ...

    def settle(self, amount: int, scale: int, simulate_failure: bool) -> RailOutcome:
        """The answer of a collection that was ``pending``."""
        ...


@dataclass(frozen=True, slots=True)
class SimulatedCardRail:
    """Card network: answers at once; fee ``fixed_major`` + ``percent_bps`` (default 0.30 + 2.9%)."""

    name: str = "card"
    fixed_major: str = "0.30"
    percent_bps: int = 290

    def fee(self, amount: int, scale: int) -> int:
        return rail_fee(amount, self.percent_bps, minor_units(self.fixed_major, scale))

    def collect(self, amount: int, scale: int, now_ns: int, simulate_failure: bool) -> RailOutcome:
        require(amount > 0, "card collect: amount must be positive")
        if simulate_failure:
            return RailOutcome("failed", 0, "card_declined", now_ns)
        return RailOutcome("succeeded", self.fee(amount, scale), "", now_ns)

    def settle(self, amount: int, scale: int, simulate_failure: bool) -> RailOutcome:
        if simulate_failure:
            return RailOutcome("failed", 0, "card_declined", 0)
        return RailOutcome("succeeded", self.fee(amount, scale), "", 0)


@dataclass(frozen=True, slots=True)
class SimulatedBankRail:
    """Bank transfer: flat fee, answers ``pending`` and settles ``settle_delay_s`` later (or fails)."""

    name: str = "bank"
    fixed_major: str = "0.20"
    settle_delay_s: int = 2

    def fee(self, scale: int) -> int:
        return minor_units(self.fixed_major, scale)

    def collect(self, amount: int, scale: int, now_ns: int, simulate_failure: bool) -> RailOutcome:
        require(amount > 0, "bank collect: amount must be positive")
        return RailOutcome("pending", self.fee(scale), "", now_ns + self.settle_delay_s * NS_PER_S)

    def settle(self, amount: int, scale: int, simulate_failure: bool) -> RailOutcome:
        if simulate_failure:
            return RailOutcome("failed", 0, "bank_transfer_failed", 0)
        return RailOutcome("succeeded", self.fee(scale), "", 0)


class Rails:
    """The rails a deployment offers, by name."""

    def __init__(self, rails: tuple[Rail, ...] | None = None) -> None:
        if rails is None:
            rails = (SimulatedCardRail(), SimulatedBankRail())
        self._rails = {rail.name: rail for rail in rails}
        require(len(self._rails) == len(rails), "two rails share a name")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._rails)

    def get(self, name: str) -> Rail:
        rail = self._rails.get(name)
        if rail is None:
            raise NotFound("rail_not_found", f"no rail {name!r}; rails: {', '.join(self._rails)}", "rail")
        return rail
