"""The plans file (SPEC section 3): the shipped defaults, interpolation, validation."""

import re
import textwrap

import pytest

from credits_service import create_app
from credits_service.config import DEFAULT_PLANS_FILE
from credits_service.plans import PlansError, load_plans

from .conftest import PASSWORD, PRICES, USERNAME

VALID = """\
[plans.free]
is_free = true
credits = { enable = true, amount = 50, expire_days = 30 }

[plans.pro]
credits = { enable = true, amount = 1000, expire_days = 30 }
prices = [
  { price_id = "price_m", type = "subscription", interval = "month" },
  { price_id = "price_y", type = "subscription", interval = "year" },
]

[plans.lifetime]
is_lifetime = true
credits = { enable = true, amount = 1000 }
prices = [{ price_id = "price_l", type = "one_time" }]
"""


def write(tmp_path, text, name="plans.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def by_id(plans):
    return {plan.id: plan for plan in plans.plans}


def test_shipped_file_mirrors_mksaas_defaults():
    plans = load_plans(DEFAULT_PLANS_FILE)
    found = by_id(plans)
    assert list(found) == ["free", "pro", "lifetime"]

    free = found["free"]
    assert free.is_free and not free.is_lifetime and not free.disabled
    assert free.prices == ()
    assert (free.credits.enable, free.credits.amount, free.credits.expire_days) == (True, 50, 30)
    assert plans.free is free

    pro = found["pro"]
    assert not pro.is_free and not pro.is_lifetime
    assert [(p.price_id, p.type, p.interval) for p in pro.prices] == [
        (PRICES["NEXT_PUBLIC_STRIPE_PRICE_PRO_MONTHLY"], "subscription", "month"),
        (PRICES["NEXT_PUBLIC_STRIPE_PRICE_PRO_YEARLY"], "subscription", "year"),
    ]
    assert (pro.credits.enable, pro.credits.amount, pro.credits.expire_days) == (True, 1000, 30)

    lifetime = found["lifetime"]
    assert lifetime.is_lifetime
    assert [(p.price_id, p.type, p.interval) for p in lifetime.prices] == [
        (PRICES["NEXT_PUBLIC_STRIPE_PRICE_LIFETIME"], "one_time", None)
    ]
    assert (lifetime.credits.enable, lifetime.credits.amount, lifetime.credits.expire_days) == (True, 1000, 30)

    assert plans.lifetime_by_price == {PRICES["NEXT_PUBLIC_STRIPE_PRICE_LIFETIME"]: lifetime}
    assert plans.subscription_by_price == {
        PRICES["NEXT_PUBLIC_STRIPE_PRICE_PRO_MONTHLY"]: (pro, "month"),
        PRICES["NEXT_PUBLIC_STRIPE_PRICE_PRO_YEARLY"]: (pro, "year"),
    }


def test_valid_table_file_loads(tmp_path):
    plans = load_plans(write(tmp_path, VALID), environ={})
    found = by_id(plans)
    assert found["lifetime"].credits.expire_days is None  # absent: never expires
    assert set(plans.subscription_by_price) == {"price_m", "price_y"}


def test_sub_table_style_is_accepted(tmp_path):
    path = write(tmp_path, """\
        [plans.free]
        is_free = true

        [plans.free.credits]
        enable = true
        amount = 50

        [plans.pro.credits]
        enable = true
        amount = 1000

        [[plans.pro.prices]]
        price_id = "price_m"
        type = "subscription"
        interval = "month"
        """)
    found = by_id(load_plans(path, environ={}))
    assert found["free"].credits.amount == 50
    assert [p.price_id for p in found["pro"].prices] == ["price_m"]


def test_variables_are_interpolated(tmp_path):
    path = write(tmp_path, """\
        [plans.pro]
        credits = { enable = true, amount = 10 }
        prices = [
          { price_id = "${MONTHLY}", type = "subscription", interval = "month" },
          { price_id = "pre_${A}_${B}_post", type = "subscription", interval = "year" },
        ]
        """)
    plans = load_plans(path, environ={"MONTHLY": "price_from_env", "A": "x", "B": "y"})
    assert [p.price_id for p in by_id(plans)["pro"].prices] == ["price_from_env", "pre_x_y_post"]


def test_variables_come_from_the_process_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("PLANS_TEST_PRICE", "price_env")
    path = write(tmp_path, """\
        [plans.pro]
        prices = [{ price_id = "${PLANS_TEST_PRICE}", type = "subscription", interval = "month" }]
        """)
    assert by_id(load_plans(path))["pro"].prices[0].price_id == "price_env"


YEARLY = "NEXT_PUBLIC_STRIPE_PRICE_PRO_YEARLY"


@pytest.mark.parametrize(
    "environ",
    [{k: v for k, v in PRICES.items() if k != YEARLY}, {**PRICES, YEARLY: ""}],
    ids=["unset", "empty"],
)
def test_unset_variable_is_an_error_naming_it(environ):
    with pytest.raises(PlansError) as raised:
        load_plans(DEFAULT_PLANS_FILE, environ=environ)
    message = str(raised.value)
    assert YEARLY in message
    # The line of the yearly price in the shipped file.
    expected = next(
        number for number, line in enumerate(DEFAULT_PLANS_FILE.read_text().splitlines(), 1) if YEARLY in line
    )
    assert f"line {expected}" in message


def test_unset_variable_in_shipped_file_via_environment(monkeypatch):
    monkeypatch.delenv("NEXT_PUBLIC_STRIPE_PRICE_LIFETIME")
    with pytest.raises(PlansError, match="NEXT_PUBLIC_STRIPE_PRICE_LIFETIME"):
        load_plans(DEFAULT_PLANS_FILE)


# (id, file text, what the message must name, the line it must give)
INVALID = [
    (
        "a stray key after a table belongs to that table",
        """\
        [plans.free]
        is_free = true

        title = "x"
        """,
        # "title" after [plans.free] belongs to plans.free: an unknown plan key
        "plans.free.title",
        4,
    ),
    (
        "unknown top-level key before tables",
        """\
        # comment
        version = 2

        [plans.free]
        is_free = true
        """,
        "'version'",
        2,
    ),
    (
        "unknown top-level table",
        """\
        [plans.free]
        is_free = true

        [settings]
        debug = true
        """,
        "'settings'",
        4,
    ),
    (
        "unknown plan key",
        """\
        [plans.free]
        is_free = true
        credits = { enable = true, amount = 50 }
        montly = 3
        """,
        "plans.free.montly",
        4,
    ),
    (
        "unknown credits key",
        """\
        [plans.free]
        is_free = true
        credits = { enable = true, amount = 50 }

        [plans.pro]
        credits = { enable = true, amount = 1000, expires = 30 }
        """,
        "plans.pro.credits.expires",
        6,
    ),
    (
        "unknown price key",
        """\
        [plans.pro]
        prices = [
          { price_id = "price_m", type = "subscription", interval = "month", currency = "usd" },
        ]
        """,
        "currency",
        3,
    ),
    (
        "negative amount",
        """\
        [plans.free]
        is_free = true
        credits = { enable = true, amount = -50 }
        """,
        "plans.free.credits.amount",
        3,
    ),
    (
        "negative amount in a sub-table",
        """\
        [plans.free]
        is_free = true

        [plans.free.credits]
        enable = true
        amount = -50
        """,
        "plans.free.credits.amount",
        6,
    ),
    (
        "amount as a string",
        """\
        [plans.pro]
        credits = { enable = true, amount = "1000" }
        """,
        "plans.pro.credits.amount",
        2,
    ),
    (
        "amount as a bool",
        """\
        [plans.pro]

        credits = { enable = true, amount = true }
        """,
        "plans.pro.credits.amount",
        3,
    ),
    (
        "amount as a float",
        """\
        [plans.pro]
        credits = { enable = true, amount = 10.5 }
        """,
        "plans.pro.credits.amount",
        2,
    ),
    (
        "enabled credits without an amount",
        """\
        [plans.pro]
        credits = { enable = true }
        """,
        "plans.pro.credits.amount",
        2,
    ),
    (
        "expire_days 0",
        """\
        [plans.free]
        is_free = true
        credits = { enable = true, amount = 50, expire_days = 0 }
        """,
        "plans.free.credits.expire_days",
        3,
    ),
    (
        "is_free not a bool",
        """\
        [plans.free]
        is_free = "yes"
        """,
        "plans.free.is_free",
        2,
    ),
    (
        "duplicated price id across plans",
        """\
        [plans.pro]
        prices = [{ price_id = "price_same", type = "subscription", interval = "month" }]

        [plans.team]
        prices = [
          { price_id = "price_other", type = "subscription", interval = "month" },
          { price_id = "price_same", type = "subscription", interval = "year" },
        ]
        """,
        "price_same",
        7,
    ),
    (
        "two free plans",
        """\
        [plans.free]
        is_free = true

        [plans.starter]
        credits = { enable = true, amount = 5 }
        is_free = true
        """,
        "plans.starter.is_free",
        6,
    ),
    (
        "bad price type",
        """\
        [plans.pro]
        prices = [
          { price_id = "price_m", type = "recurring", interval = "month" },
        ]
        """,
        "plans.pro.prices[0].type",
        3,
    ),
    (
        "subscription without interval",
        """\
        [plans.pro]
        prices = [
          { price_id = "price_m", type = "subscription", interval = "month" },
          { price_id = "price_y", type = "subscription" },
        ]
        """,
        "plans.pro.prices[1].interval",
        4,
    ),
    (
        "subscription with a bad interval",
        """\
        [plans.pro]
        prices = [{ price_id = "price_w", type = "subscription", interval = "week" }]
        """,
        "plans.pro.prices[0].interval",
        2,
    ),
    (
        "one_time with interval",
        """\
        [plans.lifetime]
        is_lifetime = true
        prices = [{ price_id = "price_l", type = "one_time", interval = "month" }]
        """,
        "plans.lifetime.prices[0].interval",
        3,
    ),
    (
        "free plan with prices",
        """\
        [plans.free]
        is_free = true
        credits = { enable = true, amount = 50 }
        prices = [{ price_id = "price_f", type = "subscription", interval = "month" }]
        """,
        "plans.free.prices",
        4,
    ),
    (
        "lifetime plan with a subscription price",
        """\
        [plans.lifetime]
        is_lifetime = true
        credits = { enable = true, amount = 1000 }
        prices = [
          { price_id = "price_l", type = "one_time" },
          { price_id = "price_lm", type = "subscription", interval = "month" },
        ]
        """,
        "price_lm",
        6,
    ),
    (
        "subscription plan with a one_time price",
        """\
        [plans.pro]
        prices = [{ price_id = "price_once", type = "one_time" }]
        """,
        "price_once",
        2,
    ),
    (
        "free and lifetime at once",
        """\
        [plans.odd]
        is_free = true
        is_lifetime = true
        """,
        "plans.odd.is_lifetime",
        3,
    ),
    (
        "empty price id",
        """\
        [plans.pro]
        prices = [{ price_id = " ", type = "subscription", interval = "month" }]
        """,
        "plans.pro.prices[0].price_id",
        2,
    ),
    (
        "broken TOML syntax",
        """\
        [plans.free]
        is_free = true
        credits = { enable = true, amount = 50
        """,
        "not valid TOML",
        3,
    ),
]


@pytest.mark.parametrize("text, names, line", [case[1:] for case in INVALID], ids=[case[0] for case in INVALID])
def test_invalid_file_is_refused_naming_key_and_line(tmp_path, text, names, line):
    path = write(tmp_path, text)
    with pytest.raises(PlansError) as raised:
        load_plans(path, environ={})
    message = str(raised.value)
    assert str(path) in message
    assert names in message
    assert re.search(rf"\bline {line}\b", message), message


def test_not_utf8_is_refused(tmp_path):
    path = tmp_path / "plans.toml"
    path.write_bytes(b'[plans.free]\nis_free = true\n# \xff\n')
    with pytest.raises(PlansError, match="not valid TOML"):
        load_plans(path, environ={})


def test_no_plans_is_refused(tmp_path):
    with pytest.raises(PlansError, match=r"no \[plans.<id>\] table"):
        load_plans(write(tmp_path, "# nothing here\n"), environ={})


def test_missing_file_is_refused(tmp_path):
    path = tmp_path / "nowhere" / "plans.toml"
    with pytest.raises(PlansError) as raised:
        load_plans(path, environ={})
    assert str(path) in str(raised.value)
    assert "cannot be read" in str(raised.value)


def app_settings(tmp_path, **overrides):
    return {
        "TESTING": True,
        "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'credits.sqlite'}",
        "CRON_JOBS_USERNAME": USERNAME,
        "CRON_JOBS_PASSWORD": PASSWORD,
    } | overrides


def test_create_app_refuses_a_broken_plans_file_from_the_environment(tmp_path, monkeypatch):
    broken = write(tmp_path, "[plans.free]\nis_free = true\ncredits = { enable = true, amount = -1 }\n")
    monkeypatch.setenv("CREDITS_PLANS_FILE", str(broken))
    with pytest.raises(PlansError, match=r"line 3: plans\.free\.credits\.amount"):
        create_app(app_settings(tmp_path))


def test_create_app_refuses_a_broken_plans_file_from_the_config(tmp_path):
    broken = write(tmp_path, "[plans.free]\nis_free = true\nbogus = 1\n")
    with pytest.raises(PlansError, match=r"line 3: plans\.free\.bogus"):
        create_app(app_settings(tmp_path, CREDITS_PLANS_FILE=str(broken)))


def test_create_app_refuses_a_missing_plans_file(tmp_path):
    with pytest.raises(PlansError, match="cannot be read"):
        create_app(app_settings(tmp_path, CREDITS_PLANS_FILE=str(tmp_path / "missing.toml")))


def test_create_app_uses_the_configured_plans_file(tmp_path):
    plans_file = write(tmp_path, VALID)
    app = create_app(app_settings(tmp_path, CREDITS_PLANS_FILE=str(plans_file)))
    assert set(app.extensions["credits_plans"].subscription_by_price) == {"price_m", "price_y"}


def test_create_app_refuses_an_unset_price_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("NEXT_PUBLIC_STRIPE_PRICE_PRO_MONTHLY")
    with pytest.raises(PlansError, match="NEXT_PUBLIC_STRIPE_PRICE_PRO_MONTHLY"):
        create_app(app_settings(tmp_path))


@pytest.mark.parametrize("source", ["environment", "config"])
def test_create_app_refuses_an_unknown_time_zone(tmp_path, monkeypatch, source):
    settings = app_settings(tmp_path)
    if source == "environment":
        monkeypatch.setenv("CREDITS_TIMEZONE", "Mars/Olympus_Mons")
    else:
        settings["CREDITS_TIMEZONE"] = "Mars/Olympus_Mons"
    with pytest.raises(ValueError, match="Mars/Olympus_Mons"):
        create_app(settings)


def test_create_app_accepts_a_known_time_zone(tmp_path):
    app = create_app(app_settings(tmp_path, CREDITS_TIMEZONE="Asia/Shanghai"))
    assert app.config["CREDITS_TIMEZONE"] == "Asia/Shanghai"
