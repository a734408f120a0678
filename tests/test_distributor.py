"""The daily job (SPEC section 4), called directly through ``world.run``."""

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.exc import DBAPIError

from credits_service.distributor import distribute
from credits_service.plans import load_plans

NOW = datetime(2026, 12, 1, 0, 5, tzinfo=UTC)
NOW_DB = NOW.replace(tzinfo=None)  # how the database stores it: naive UTC
NEXT_MONTH = datetime(2027, 1, 1, 0, 5, tzinfo=UTC)
DAY = timedelta(days=1)
PERIOD_KEY = 202612

LIFETIME = "price_lifetime"
YEARLY = "price_pro_yearly"
MONTHLY = "price_pro_monthly"
UNKNOWN = "price_nobody_knows"

GRANT_TYPES = ("MONTHLY_REFRESH", "SUBSCRIPTION_RENEWAL", "LIFETIME_MONTHLY")


def recurring(world, user):
    return [row for row in world.rows(user) if row["type"] in GRANT_TYPES]


def write_plans(tmp_path, text, name="plans.toml"):
    path = tmp_path / name
    path.write_text(text)
    return load_plans(path)


def without_run_details(answer):
    return {key: value for key, value in answer.items() if key not in ("runId", "dryRun", "durationMs")}


# Step 2: the classification table -------------------------------------------

def as_lifetime(world, user):
    world.purchase(user, LIFETIME)


def as_yearly(world, user):
    world.subscription(user, YEARLY, interval="year")


def as_trialing_yearly(world, user):
    world.subscription(user, YEARLY, interval="year", status="trialing")


def as_monthly(world, user):
    world.subscription(user, MONTHLY, interval="month")


def as_unknown(world, user):
    world.subscription(user, UNKNOWN, interval="year")


def as_free(world, user):
    pass


def as_credit_buyer(world, user):
    world.purchase(user, "price_credits_500", scene="credit")


@pytest.mark.parametrize(
    "setup, grant_type, amount, skip",
    [
        (as_lifetime, "LIFETIME_MONTHLY", 1000, None),
        (as_yearly, "SUBSCRIPTION_RENEWAL", 1000, None),
        (as_trialing_yearly, "SUBSCRIPTION_RENEWAL", 1000, None),
        (as_monthly, None, 0, "monthly"),
        (as_unknown, None, 0, "unknownPrice"),
        (as_free, "MONTHLY_REFRESH", 50, None),
        (as_credit_buyer, "MONTHLY_REFRESH", 50, None),
    ],
    ids=["lifetime", "yearly", "trialing-yearly", "monthly", "unknown-price", "free", "credit-package"],
)
def test_classification_table(world, setup, grant_type, amount, skip):
    user = world.user()
    setup(world, user)

    summary = world.run(NOW)

    answer = summary.as_json()
    assert answer["usersCount"] == 1
    assert answer["processedCount"] == 1
    assert answer["errorCount"] == 0
    rows = recurring(world, user)
    if grant_type is None:
        assert rows == []
        assert world.balance(user) is None
        assert sum(answer["granted"].values()) == 0
    else:
        assert answer["granted"] == {kind: int(kind == grant_type) for kind in GRANT_TYPES}
        [row] = rows
        assert row["type"] == grant_type
        assert row["amount"] == amount
        assert row["remaining_amount"] == amount
        assert row["period_key"] == PERIOD_KEY
        assert row["expiration_date"] == NOW_DB + timedelta(days=30)
        assert row["expiration_date_processed_at"] is None
        assert "2026-12" in row["description"] and str(amount) in row["description"]
        assert world.balance(user) == amount
    expected_skips = {"alreadyGranted": 0, "monthly": 0, "unknownPrice": 0, "noCredits": 0}
    if skip:
        expected_skips[skip] = 1
    assert answer["skipped"] == expected_skips
    assert answer["unknownPriceIds"] == ([UNKNOWN] if skip == "unknownPrice" else [])
    assert summary.unknown_price_ids == ({UNKNOWN} if skip == "unknownPrice" else set())
    assert world.drift() == []


def test_unknown_price_ids_are_listed_once_each(world):
    for price in ("price_b", "price_a", "price_b"):
        world.subscription(world.user(), price)
    summary = world.run(NOW)
    assert summary.as_json()["unknownPriceIds"] == ["price_a", "price_b"]
    assert summary.skipped["unknownPrice"] == 3
    assert world.rows() == []


def test_lifetime_buyer_with_yearly_subscription_gets_only_lifetime(world):
    user = world.user()
    world.purchase(user, LIFETIME)
    world.subscription(user, YEARLY, interval="year")

    summary = world.run(NOW)

    assert [row["type"] for row in recurring(world, user)] == ["LIFETIME_MONTHLY"]
    assert summary.granted["LIFETIME_MONTHLY"] == 1
    assert summary.granted["SUBSCRIPTION_RENEWAL"] == 0
    assert world.balance(user) == 1000
    assert world.drift() == []


@pytest.mark.parametrize(
    "setup",
    [
        lambda world, user: world.subscription(user, YEARLY, status="canceled"),
        lambda world, user: world.subscription(user, YEARLY, status="past_due"),
        lambda world, user: world.subscription(user, YEARLY, status="incomplete"),
        lambda world, user: world.purchase(user, LIFETIME, status="completed", paid=False),
        lambda world, user: world.purchase(user, LIFETIME, status="pending", paid=True),
        lambda world, user: world.purchase(user, LIFETIME, status="failed", paid=False),
    ],
    ids=["canceled", "past_due", "incomplete", "lifetime-unpaid", "lifetime-pending", "lifetime-failed"],
)
def test_inactive_payments_fall_back_to_free(world, setup):
    user = world.user()
    setup(world, user)

    summary = world.run(NOW)

    assert [(row["type"], row["amount"]) for row in recurring(world, user)] == [("MONTHLY_REFRESH", 50)]
    assert summary.granted["MONTHLY_REFRESH"] == 1
    assert world.balance(user) == 50
    assert world.drift() == []


@pytest.mark.parametrize(
    "payments, grant_types, skipped_monthly",
    [
        ([(MONTHLY, "active", 1), (YEARLY, "active", 2)], ["SUBSCRIPTION_RENEWAL"], 0),
        ([(YEARLY, "active", 1), (MONTHLY, "active", 2)], [], 1),
        ([(YEARLY, "trialing", 1), (MONTHLY, "active", 2)], [], 1),
        ([(MONTHLY, "active", 1), (YEARLY, "canceled", 2)], [], 1),
        ([(YEARLY, "active", 1), (MONTHLY, "canceled", 2)], ["SUBSCRIPTION_RENEWAL"], 0),
    ],
    ids=["newer-yearly", "newer-monthly", "newer-monthly-over-trial", "newer-canceled-yearly",
         "newer-canceled-monthly"],
)
def test_latest_active_subscription_wins(world, payments, grant_types, skipped_monthly):
    user = world.user()
    for price, status, month in payments:
        world.subscription(user, price, status=status, created_at=datetime(2026, month, 15))

    summary = world.run(NOW)

    assert [row["type"] for row in recurring(world, user)] == grant_types
    assert summary.skipped["monthly"] == skipped_monthly
    assert world.drift() == []


# Plans that grant nothing ----------------------------------------------------

PRO = """
[plans.pro]
credits = { enable = true, amount = 1000, expire_days = 30 }
prices = [
  { price_id = "price_pro_monthly", type = "subscription", interval = "month" },
  { price_id = "price_pro_yearly", type = "subscription", interval = "year" },
]
"""


@pytest.mark.parametrize(
    "free_plan",
    [
        "[plans.free]\nis_free = true\ndisabled = true\ncredits = { enable = true, amount = 50, expire_days = 30 }\n",
        "[plans.free]\nis_free = true\ncredits = { enable = false, amount = 50, expire_days = 30 }\n",
        "[plans.free]\nis_free = true\ncredits = { enable = true, amount = 0 }\n",
        "",
    ],
    ids=["free-disabled", "credits-disabled", "zero-amount", "no-free-plan"],
)
def test_free_plan_without_credits_grants_nothing(world, tmp_path, free_plan):
    plans = write_plans(tmp_path, free_plan + PRO)
    free_user = world.user()
    yearly_user = world.user()
    world.subscription(yearly_user, YEARLY)

    summary = world.run(NOW, plans=plans)

    assert recurring(world, free_user) == []
    assert world.balance(free_user) is None
    assert summary.skipped["noCredits"] == 1
    assert summary.granted["MONTHLY_REFRESH"] == 0
    assert summary.granted["SUBSCRIPTION_RENEWAL"] == 1
    assert summary.processed == 2
    assert world.drift() == []


def test_disabled_paid_plan_still_serves_its_subscribers(world, tmp_path):
    plans = write_plans(tmp_path, PRO.replace("[plans.pro]\n", "[plans.pro]\ndisabled = true\n"))
    user = world.user()
    world.subscription(user, YEARLY)

    summary = world.run(NOW, plans=plans)

    assert [row["type"] for row in recurring(world, user)] == ["SUBSCRIPTION_RENEWAL"]
    assert summary.granted["SUBSCRIPTION_RENEWAL"] == 1


def test_paid_plan_with_credits_disabled_grants_nothing(world, tmp_path):
    plans = write_plans(tmp_path, PRO.replace("enable = true", "enable = false"))
    user = world.user()
    world.subscription(user, YEARLY)

    summary = world.run(NOW, plans=plans)

    assert recurring(world, user) == []
    assert summary.skipped["noCredits"] == 1


def test_credits_without_expire_days_never_expire(world, tmp_path):
    plans = write_plans(tmp_path, "[plans.free]\nis_free = true\ncredits = { enable = true, amount = 50 }\n")
    user = world.user()

    world.run(NOW, plans=plans)
    [first] = recurring(world, user)
    assert first["expiration_date"] is None

    for now in (NEXT_MONTH, datetime(2027, 2, 1, tzinfo=UTC), datetime(2028, 6, 1, tzinfo=UTC)):
        summary = world.run(now, plans=plans)
        assert summary.expired_users == 0

    rows = recurring(world, user)
    assert [row["period_key"] for row in rows] == [202612, 202701, 202702, 202806]
    assert all(row["remaining_amount"] == 50 and row["expiration_date"] is None for row in rows)
    assert world.rows(user, "EXPIRE") == []
    assert world.balance(user) == 200
    assert world.drift() == []


# Step 1: expiry ---------------------------------------------------------------

def test_expiry_at_now_expires_and_one_second_later_does_not(world):
    due = world.user()
    not_yet = world.user()
    world.give(due, 30, expires=NOW)
    world.give(not_yet, 30, expires=NOW + timedelta(seconds=1))

    summary = world.run(NOW)

    assert summary.expired_users == 1
    assert summary.expired_credits == 30
    [grant] = world.rows(due, "PURCHASE_PACKAGE")
    assert grant["remaining_amount"] == 0
    assert grant["expiration_date_processed_at"] == NOW_DB
    assert grant["updated_at"] == NOW_DB
    [expire] = world.rows(due, "EXPIRE")
    assert expire["amount"] == -30
    assert expire["remaining_amount"] is None
    assert expire["created_at"] == NOW_DB
    assert world.balance(due) == 50  # 30 expired, then the free 50

    [kept] = world.rows(not_yet, "PURCHASE_PACKAGE")
    assert kept["remaining_amount"] == 30
    assert kept["expiration_date_processed_at"] is None
    assert world.rows(not_yet, "EXPIRE") == []
    assert world.balance(not_yet) == 80
    assert world.drift() == []

    again = world.run(NOW)
    assert again.expired_users == 0
    assert again.expired_credits == 0
    assert len(world.rows(due, "EXPIRE")) == 1
    assert world.balance(due) == 50
    assert world.drift() == []

    later = world.run(NOW + timedelta(seconds=1))
    assert later.expired_users == 1
    assert world.balance(not_yet) == 50
    assert world.drift() == []


def test_every_grant_type_expires_in_one_expire_row_per_user(world):
    user = world.user()
    world.give(user, 20, kind="REGISTER_GIFT", expires=NOW - DAY)
    world.give(user, 30, kind="PURCHASE_PACKAGE", expires=NOW - DAY)
    world.give(user, 5, kind="PROMO", expires=NOW - 10 * DAY)
    world.give(user, 1000, kind="SUBSCRIPTION_RENEWAL", expires=NOW - timedelta(minutes=1))
    world.give(user, 7, kind="PROMO", expires=None)  # never expires

    summary = world.run(NOW)

    assert summary.expired_users == 1
    assert summary.expired_credits == 1055
    [expire] = world.rows(user, "EXPIRE")
    assert expire["amount"] == -1055
    left = {(row["type"], row["amount"]): row["remaining_amount"] for row in world.rows(user)}
    assert left[("REGISTER_GIFT", 20)] == 0
    assert left[("PURCHASE_PACKAGE", 30)] == 0
    assert left[("PROMO", 5)] == 0
    assert left[("SUBSCRIPTION_RENEWAL", 1000)] == 0
    assert left[("PROMO", 7)] == 7
    assert world.balance(user) == 7 + 50
    assert world.drift() == []


def test_usage_and_expire_rows_are_never_touched(world):
    user = world.user()
    world.give(user, 40, expires=NOW + DAY)
    # Odd rows on purpose: a remaining amount and a past expiration date.
    usage = world.entry(user, "USAGE", -10, remaining=5, expires=NOW - DAY)
    old_expire = world.entry(user, "EXPIRE", -3, remaining=4, expires=NOW - DAY)
    world.give(user, 10, kind="REGISTER_GIFT", expires=NOW - DAY)
    assert world.drift() == []  # USAGE and EXPIRE rows are not part of the invariant

    before = {row["id"]: dict(row) for row in world.rows(user) if row["id"] in (usage, old_expire)}
    summary = world.run(NOW)

    after = {row["id"]: dict(row) for row in world.rows(user) if row["id"] in (usage, old_expire)}
    assert after == before
    assert summary.expired_credits == 10
    assert world.balance(user) == 40 + 50
    assert world.drift() == []


@pytest.mark.parametrize("banned, granted", [(None, 50), (True, 0)], ids=["examined", "banned"])
def test_expiry_is_clamped_at_zero_balance(world, banned, granted):
    user = world.user(banned=banned)
    world.give(user, 100, expires=NOW - DAY, balance=False)
    world.add_balance(user, 40)
    assert world.drift() == [(user, 40, 100)]

    summary = world.run(NOW)

    assert summary.clamped_users == 1
    assert summary.as_json()["expired"] == {"usersCount": 1, "credits": 100, "clampedUsers": 1}
    assert world.balance(user) == granted
    [expire] = world.rows(user, "EXPIRE")
    assert expire["amount"] == -100
    # The clamp brought the balance back in line with the ledger.
    assert world.drift() == []


def test_expiry_for_a_user_without_balance_row_does_not_create_a_negative_one(world):
    user = world.user(banned=True)
    world.give(user, 25, expires=NOW - DAY, balance=False)

    summary = world.run(NOW)

    assert summary.clamped_users == 1
    assert world.balance(user) in (None, 0)
    assert world.drift() == []


def test_grant_creates_missing_balance_row(world):
    fresh = world.user()
    known = world.user()
    world.add_balance(known, 0)
    assert world.balance(fresh) is None

    world.run(NOW)

    row = world.balance_row(fresh)
    assert row["current_credits"] == 50
    assert row["created_at"] == NOW_DB
    assert row["updated_at"] == NOW_DB
    existing = world.balance_row(known)
    assert existing["current_credits"] == 50
    assert existing["created_at"] != NOW_DB
    assert existing["updated_at"] == NOW_DB
    assert world.drift() == []


# Banned users -----------------------------------------------------------------

@pytest.mark.parametrize(
    "banned, ban_expires, examined",
    [
        (True, None, False),
        (True, NOW + DAY, False),
        (True, NOW - DAY, True),
        (False, None, True),
        (None, None, True),
        (False, NOW + DAY, True),
    ],
    ids=["banned-forever", "banned-until-tomorrow", "ban-expired", "not-banned", "banned-null", "false-with-date"],
)
def test_banned_users_are_not_examined_but_their_credits_expire(world, banned, ban_expires, examined):
    user = world.user(banned=banned, ban_expires=ban_expires.replace(tzinfo=None) if ban_expires else None)
    world.subscription(user, YEARLY)
    world.give(user, 30, expires=NOW - DAY)

    summary = world.run(NOW)

    assert summary.users == (1 if examined else 0)
    assert summary.expired_users == 1
    assert [row["type"] for row in recurring(world, user)] == (["SUBSCRIPTION_RENEWAL"] if examined else [])
    assert world.balance(user) == (1000 if examined else 0)
    assert [row["amount"] for row in world.rows(user, "EXPIRE")] == [-30]
    assert world.drift() == []


# Step 3: once per period ------------------------------------------------------

def test_two_runs_in_one_month_grant_once_and_next_month_grants_again(world):
    free = world.user()
    yearly = world.user()
    world.subscription(yearly, YEARLY)
    lifetime = world.user()
    world.purchase(lifetime, LIFETIME)

    first = world.run(NOW)
    assert sum(first.granted.values()) == 3

    again = world.run(NOW + timedelta(hours=1))
    assert sum(again.granted.values()) == 0
    assert again.skipped["alreadyGranted"] == 3
    assert again.processed == 3
    assert again.expired_users == 0
    assert world.balance(free) == 50

    # The last second of December: still December, and the 30 days are over.
    last = world.run(datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC))
    assert sum(last.granted.values()) == 0
    assert last.skipped["alreadyGranted"] == 3
    assert last.expired_users == 3
    assert [len(recurring(world, user)) for user in (free, yearly, lifetime)] == [1, 1, 1]
    assert world.balance(free) == 0
    assert world.drift() == []

    january = world.run(NEXT_MONTH)
    assert january.granted == {"MONTHLY_REFRESH": 1, "SUBSCRIPTION_RENEWAL": 1, "LIFETIME_MONTHLY": 1}
    assert january.skipped["alreadyGranted"] == 0
    assert january.expired_users == 0
    assert [row["period_key"] for row in recurring(world, free)] == [202612, 202701]
    assert world.balance(free) == 50
    assert world.balance(yearly) == 1000
    assert world.drift() == []


@pytest.mark.parametrize(
    "created_at, blocks",
    [
        (datetime(2026, 12, 1, 0, 0, 0), True),
        (datetime(2026, 12, 1, 0, 4, 59), True),
        (datetime(2026, 11, 30, 23, 59, 59), False),
        (datetime(2026, 11, 2), False),
        (datetime(2026, 12, 31, 23, 59, 59), True),
        (datetime(2027, 1, 1, 0, 0, 0), False),  # a run replayed at an earlier --now
    ],
    ids=["start-of-month", "minutes-ago", "last-second-of-last-month", "last-month", "end-of-month",
         "start-of-next-month"],
)
def test_host_row_without_period_key_blocks_this_month_only(world, created_at, blocks):
    user = world.user()
    world.give(user, 50, kind="MONTHLY_REFRESH", created_at=created_at, period_key=0)

    summary = world.run(NOW)

    rows = recurring(world, user)
    assert len(rows) == (1 if blocks else 2)
    assert summary.skipped["alreadyGranted"] == (1 if blocks else 0)
    assert summary.granted["MONTHLY_REFRESH"] == (0 if blocks else 1)
    assert world.balance(user) == (50 if blocks else 100)
    assert world.drift() == []


def test_other_types_this_month_do_not_block_the_grant(world):
    user = world.user()
    world.give(user, 100, kind="PURCHASE_PACKAGE", created_at=NOW_DB - timedelta(minutes=1))
    world.give(user, 1000, kind="SUBSCRIPTION_RENEWAL", created_at=NOW_DB - timedelta(minutes=1))
    world.give(user, 50, kind="MONTHLY_REFRESH", period_key=202611, created_at=NOW_DB - timedelta(minutes=1))

    summary = world.run(NOW)

    assert summary.granted["MONTHLY_REFRESH"] == 1
    assert world.balance(user) == 1200
    assert world.drift() == []


def test_period_is_the_month_in_the_configured_zone(world):
    user = world.user()
    moment = datetime(2026, 11, 30, 23, 30, tzinfo=UTC)

    shanghai = world.run(moment, zone="Asia/Shanghai")
    assert shanghai.period == "2026-12"
    [row] = recurring(world, user)
    assert row["period_key"] == 202612
    assert "2026-12" in row["description"]
    assert row["created_at"] == moment.replace(tzinfo=None)

    # The same instant in UTC is still November: a different period, so it grants.
    utc = world.run(moment, zone="UTC")
    assert utc.period == "2026-11"
    assert sorted(row["period_key"] for row in recurring(world, user)) == [202611, 202612]
    assert world.drift() == []


@pytest.mark.parametrize("zone, blocks", [("Asia/Shanghai", True), ("UTC", False)])
def test_host_row_period_is_taken_in_the_configured_zone(world, zone, blocks):
    user = world.user()
    # 1 December, 01:00 in Shanghai; still 30 November in UTC.
    world.give(user, 50, kind="MONTHLY_REFRESH", created_at=datetime(2026, 11, 30, 17, 0), period_key=0)

    summary = world.run(datetime(2026, 12, 1, 0, 5, tzinfo=UTC), zone=zone)

    assert summary.period == "2026-12"
    assert summary.skipped["alreadyGranted"] == (1 if blocks else 0)
    assert len(recurring(world, user)) == (1 if blocks else 2)
    assert world.drift() == []


# Dry run ----------------------------------------------------------------------

def mixed_population(world):
    expiring = world.user()
    world.give(expiring, 30, expires=NOW - DAY)
    world.give(expiring, 12, kind="REGISTER_GIFT", expires=NOW)
    free = world.user()  # no balance row yet
    yearly = world.user()
    world.subscription(yearly, YEARLY)
    world.give(yearly, 1000, kind="SUBSCRIPTION_RENEWAL", expires=NOW - DAY, created_at=datetime(2026, 11, 1))
    lifetime = world.user()
    world.purchase(lifetime, LIFETIME)
    monthly = world.user()
    world.subscription(monthly, MONTHLY)
    unknown = world.user()
    world.subscription(unknown, UNKNOWN)
    banned = world.user(banned=True)
    world.give(banned, 8, expires=NOW - DAY)
    served = world.user()
    world.give(served, 50, kind="MONTHLY_REFRESH", created_at=NOW_DB - timedelta(minutes=3))
    return [expiring, free, yearly, lifetime, monthly, unknown, banned, served]


def test_dry_run_changes_nothing_and_reports_what_a_real_run_does(world):
    mixed_population(world)
    before = world.counts()

    dry = world.run(NOW, dry_run=True)

    assert world.counts() == before
    assert dry.dry_run is True
    assert dry.as_json()["dryRun"] is True
    assert dry.granted == {"MONTHLY_REFRESH": 2, "SUBSCRIPTION_RENEWAL": 1, "LIFETIME_MONTHLY": 1}
    assert dry.expired_users == 3

    real = world.run(NOW)

    assert real.as_json()["dryRun"] is False
    assert world.counts() != before
    assert without_run_details(dry.as_json()) == without_run_details(real.as_json())
    assert world.drift() == []


# Failures ---------------------------------------------------------------------

def test_one_failing_user_costs_that_user_only(world):
    users = [world.user() for _ in range(5)]
    failing = users[1]
    assert failing == "user-0002"
    world.give(failing, 30, expires=NOW - DAY)
    world.give(users[2], 30, expires=NOW - DAY)
    world.fail_inserts_for(failing)

    summary = world.run(NOW, batch_size=3)

    answer = summary.as_json()
    assert answer["usersCount"] == 5
    assert answer["errorCount"] == 1
    assert answer["processedCount"] == 4
    [failed] = answer["failedUsers"]
    assert failed["userId"] == failing
    assert "planted failure" in failed["reason"]
    assert answer["granted"]["MONTHLY_REFRESH"] == 4
    assert answer["expired"]["usersCount"] == 1
    for user in users:
        if user != failing:
            assert [row["type"] for row in recurring(world, user)] == ["MONTHLY_REFRESH"], user
    # The failed user's expiry was rolled back with the rest of its work.
    assert recurring(world, failing) == []
    assert world.rows(failing, "EXPIRE") == []
    [grant] = world.rows(failing, "PURCHASE_PACKAGE")
    assert grant["remaining_amount"] == 30
    assert world.balance(failing) == 30
    assert world.drift() == []

    # The next call catches up, granting nothing twice.
    world.stop_failing()
    retry = world.run(NOW + timedelta(hours=1))
    assert retry.errors == 0
    assert retry.granted["MONTHLY_REFRESH"] == 1
    assert retry.skipped["alreadyGranted"] == 4
    assert [row["type"] for row in recurring(world, failing)] == ["MONTHLY_REFRESH"]
    assert world.balance(failing) == 50
    assert world.drift() == []


# Summary and timestamps -------------------------------------------------------

def test_summary_counts_and_timestamps_of_written_rows(world):
    population = mixed_population(world)
    now = datetime(2026, 12, 1, 0, 5, 7, 123456, tzinfo=UTC)
    now_db = now.replace(tzinfo=None)
    before = {row["id"] for row in world.rows()}
    balances_before = {user: world.balance(user) for user in population}

    summary = world.run(now)

    answer = summary.as_json()
    assert list(answer)[:4] == ["message", "usersCount", "processedCount", "errorCount"]
    assert answer["usersCount"] == 7  # 8 users, one banned
    assert answer["processedCount"] + answer["errorCount"] == answer["usersCount"]
    assert answer["message"] == "distribute credits success, users: 7, processed: 7, errors: 0"
    assert answer["period"] == "2026-12"
    assert answer["expired"] == {"usersCount": 3, "credits": 30 + 12 + 1000 + 8, "clampedUsers": 0}
    assert answer["granted"] == {"MONTHLY_REFRESH": 2, "SUBSCRIPTION_RENEWAL": 1, "LIFETIME_MONTHLY": 1}
    assert answer["skipped"] == {"alreadyGranted": 1, "monthly": 1, "unknownPrice": 1, "noCredits": 0}

    rows = world.rows()
    written = [row for row in rows if row["id"] not in before]
    assert len(written) == 4 + 3  # four grants, three EXPIRE rows
    for row in written:
        assert row["created_at"] == now_db
        assert row["updated_at"] == now_db
    expired = [row for row in rows if row["expiration_date_processed_at"] is not None]
    assert len(expired) == 4
    for row in expired:
        assert row["expiration_date_processed_at"] == now_db
        assert row["updated_at"] == now_db
        assert row["remaining_amount"] == 0
    changed = 0
    for user in population:
        row = world.balance_row(user)
        if row is not None and row["current_credits"] != balances_before.get(user):
            changed += 1
            assert row["updated_at"] == now_db, user
    assert changed == 4  # expiring, lifetime, banned and the free user created on the way
    assert world.drift() == []


# Batching ---------------------------------------------------------------------

@pytest.mark.parametrize("batch_size", [1, 3, 4, 10, 1000])
def test_keyset_batches_handle_every_user_exactly_once(world, batch_size):
    ids = ["user-1", "user-10", "user-2", "user-9", "User-3", "a", "b-", "b", "zz", "user-0"]
    for user_id in ids:
        world.user(user_id=user_id)
        world.give(user_id, 5, expires=NOW - DAY)
    seen = []

    summary = distribute(world.engine, world.plans, NOW, batch_size=batch_size, progress=seen.append)

    assert sum(seen) == len(ids)
    assert len(seen) == -(-len(ids) // batch_size)
    assert summary.users == len(ids)
    assert summary.granted["MONTHLY_REFRESH"] == len(ids)
    assert summary.expired_users == len(ids)
    for user_id in ids:
        assert [row["type"] for row in recurring(world, user_id)] == ["MONTHLY_REFRESH"], user_id
        assert len(world.rows(user_id, "EXPIRE")) == 1, user_id
        assert world.balance(user_id) == 50
    assert world.drift() == []


def test_a_negative_balance_becomes_zero_when_credits_expire(world):
    user = world.user()
    world.give(user, 30, expires=NOW - DAY, balance=False)
    world.add_balance(user, -5)  # drift written by other software

    summary = world.run(NOW)

    assert summary.clamped_users == 1
    assert world.balance(user) == 50  # 0 after expiry, then this month's grant
    assert world.drift() == []


def test_a_balance_touched_by_expiry_and_grant_is_stamped_even_if_unchanged(world):
    user = world.user()
    world.give(user, 50, expires=NOW - DAY)

    world.run(NOW)

    row = world.balance_row(user)
    assert row["current_credits"] == 50
    assert row["updated_at"] == NOW_DB
    assert world.drift() == []


def test_an_active_subscription_with_an_empty_price_id_is_unknown_not_free(world):
    user = world.user()
    world.subscription(user, "")

    summary = world.run(NOW)

    assert summary.granted["MONTHLY_REFRESH"] == 0
    assert summary.skipped["unknownPrice"] == 1
    assert summary.as_json()["unknownPriceIds"] == [""]
    assert world.balance(user) is None


def test_an_error_in_the_sql_itself_fails_the_run_not_every_user(world):
    for _ in range(4):
        world.user()
    with world.engine.begin() as conn:
        # ON CONFLICT names this index: without it every grant statement fails.
        conn.exec_driver_sql("DROP INDEX uq_credit_transaction_period")

    with pytest.raises(DBAPIError):
        world.run(NOW)


@pytest.mark.parametrize("setting", ["CREDITS_BATCH_SIZE", "CREDITS_WORKERS"])
def test_batch_size_and_workers_below_one_stop_start_up(make_app, setting):
    with pytest.raises(ValueError, match=setting):
        make_app({setting: 0}, migrate=False)
