"""The ledger invariant: a balance equals what is left of the user's grants.

``current_credits == sum(remaining_amount of the user's grant rows)`` must hold
for every user after every operation of the service. ``find_drift`` reports
the users where it does not, which is how drift written by other software is
found (``flask credits verify``).
"""

from sqlalchemy import func, literal, select, union_all

from .models import NOT_GRANTS, CreditTransaction, UserCredit

balances = UserCredit.__table__
ledger = CreditTransaction.__table__


def find_drift(conn):
    """Yield ``(user_id, balance, sum_of_remaining)`` for every user out of balance.

    Streams its rows, so memory stays flat however many users there are.
    """
    remaining = (
        select(ledger.c.user_id, func.sum(func.coalesce(ledger.c.remaining_amount, 0)).label("total"))
        .where(ledger.c.type.not_in(NOT_GRANTS))
        .group_by(ledger.c.user_id)
        .subquery()
    )
    with_balance = (
        select(balances.c.user_id, balances.c.current_credits, func.coalesce(remaining.c.total, 0))
        .outerjoin(remaining, remaining.c.user_id == balances.c.user_id)
        .where(balances.c.current_credits != func.coalesce(remaining.c.total, 0))
    )
    # NOT EXISTS rather than NOT IN: PostgreSQL plans NOT IN over a large
    # subquery as a rescan per row, which never finishes on a big ledger.
    has_balance = select(balances.c.id).where(balances.c.user_id == remaining.c.user_id).exists()
    without_balance = select(remaining.c.user_id, literal(0), remaining.c.total).where(
        remaining.c.total != 0, ~has_balance
    )
    query = union_all(with_balance, without_balance).order_by("user_id")
    for row in conn.execution_options(stream_results=True, yield_per=1000).execute(query):
        yield tuple(row)
