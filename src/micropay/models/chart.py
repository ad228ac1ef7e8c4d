"""The chart of accounts: every account the models use, and how its id is formed.

System and per-party accounts carry a ``:`` in their ids, which client-chosen ids (``A-Za-z0-9_-``)
never do, so they cannot collide with accounts created through the ledger API. docs/accounts.md
says what debits and credits each one.
"""

from __future__ import annotations

from micropay.ledger import AccountFlags

WALLET_FLAGS = int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)
"""Wallets, promo balances and tabs may not go below zero (a tab: below minus its credit limit)."""


def wallet_account(payer_id: str, ledger: str) -> str:
    """Paid money the payer holds (liability to the payer)."""
    return f"payer:{payer_id}:wallet:{ledger}"


def promo_account(payer_id: str, ledger: str) -> str:
    """Promo credit granted to the payer (vouchers); spent first, expires."""
    return f"payer:{payer_id}:promo:{ledger}"


def tab_account(payer_id: str, ledger: str) -> str:
    """Post-pay tab: goes negative, down to its credit limit, as usage accrues."""
    return f"payer:{payer_id}:tab:{ledger}"


def merchant_account(merchant_id: str) -> str:
    """What the platform owes the merchant (its earnings less refunds and payouts)."""
    return f"merchant:{merchant_id}"


def publisher_account(publisher_id: str) -> str:
    """A publisher's earnings from pool distributions, ready for payouts."""
    return f"publisher:{publisher_id}"


def pool_account(pool_id: str) -> str:
    """Members' fees collected into a pool, until a distribution pays them out."""
    return f"pool:{pool_id}"


def fees_account(ledger: str) -> str:
    """Platform fee revenue."""
    return f"platform:fees:{ledger}"


def promo_funding_account(ledger: str) -> str:
    """The platform's promo expense: funds every voucher redeemed (goes negative)."""
    return f"platform:promo:{ledger}"


def promo_expired_account(ledger: str) -> str:
    """Promo-expense reversal: unused promo credit returns here when it expires."""
    return f"platform:promo_expired:{ledger}"


def rail_clearing_account(rail: str, ledger: str) -> str:
    """Money in flight through an outside rail (card network, bank): negative while owed to us."""
    return f"rail:{rail}:clearing:{ledger}"


def bank_account(ledger: str) -> str:
    """Cash the platform holds at its bank (an asset: negative in this credit-normal ledger)."""
    return f"platform:bank:{ledger}"


def rail_fees_account(ledger: str) -> str:
    """The platform's cost of money: rail fees paid on top-ups and settlements (an expense)."""
    return f"platform:rail_fees:{ledger}"


def system_accounts(ledger: str, rails: tuple[str, ...]) -> list[tuple[str, int]]:
    """The platform accounts one ledger needs, with their flags (all may go negative)."""
    accounts = [
        fees_account(ledger),
        promo_funding_account(ledger),
        promo_expired_account(ledger),
        rail_fees_account(ledger),
        bank_account(ledger),
    ]
    accounts.extend(rail_clearing_account(rail, ledger) for rail in rails)
    return [(account_id, 0) for account_id in accounts]
