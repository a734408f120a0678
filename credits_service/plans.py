"""The plans file: which price ids entitle a user to which monthly credits.

Plans are configuration, not code (SPEC section 3). The file is read once at
start-up and checked strictly, because a typo here silently grants the wrong
credits to every user: an unknown key, a negative amount, a duplicated price
id or a second free plan stops the service with the line that is wrong.
"""

import os
import re
import tomllib
from dataclasses import dataclass
from functools import cached_property

PLAN_KEYS = {"is_free", "is_lifetime", "disabled", "credits", "prices"}
CREDITS_KEYS = {"enable", "amount", "expire_days"}
PRICE_KEYS = {"price_id", "type", "interval"}
PRICE_TYPES = {"subscription", "one_time"}
INTERVALS = {"month", "year"}

_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class PlansError(ValueError):
    """The plans file cannot be used; the message says where and why."""


@dataclass(frozen=True)
class Credits:
    enable: bool
    amount: int
    expire_days: int | None  # None: the credits never expire


@dataclass(frozen=True)
class Price:
    price_id: str
    type: str
    interval: str | None


@dataclass(frozen=True)
class Plan:
    id: str
    prices: tuple[Price, ...]
    is_free: bool
    is_lifetime: bool
    disabled: bool
    credits: Credits

    @property
    def grants_credits(self):
        return self.credits.enable and self.credits.amount > 0


@dataclass(frozen=True)
class Plans:
    """The validated plans, indexed the way the job looks them up."""

    plans: tuple[Plan, ...]

    @cached_property
    def free(self):
        return next((plan for plan in self.plans if plan.is_free), None)

    @cached_property
    def lifetime_by_price(self):
        return {
            price.price_id: plan
            for plan in self.plans
            if plan.is_lifetime
            for price in plan.prices
            if price.type == "one_time"
        }

    @cached_property
    def subscription_by_price(self):
        """price id -> (plan, interval) for every subscription price."""
        return {
            price.price_id: (plan, price.interval)
            for plan in self.plans
            for price in plan.prices
            if price.type == "subscription"
        }


def load_plans(path, environ=None):
    """Read and validate the plans file at ``path``.

    ``${NAME}`` in a string is replaced by the environment variable NAME, so
    the shipped file can name MkSaaS's own price-id variables.
    """
    environ = os.environ if environ is None else environ
    try:
        with open(path, "rb") as file:
            raw = file.read()
    except OSError as error:
        raise PlansError(f"plans file {path}: cannot be read ({error.strerror})") from None
    try:
        source = raw.decode("utf-8")
        document = tomllib.loads(source)
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise PlansError(f"plans file {path}: not valid TOML: {error}") from None
    return _Checker(path, source, environ).plans(document)


class _Checker:
    """Validates one parsed file, naming the key and the line of each mistake."""

    def __init__(self, path, source, environ):
        self.path = path
        self.lines = source.splitlines()
        self.environ = environ

    def fail(self, plan_id, key, reason, needle=None):
        line = self.line_of(plan_id, needle or key)
        where = f", line {line}" if line else ""
        name = "plans" + (f".{plan_id}" if plan_id else "") + (f".{key}" if key else "")
        raise PlansError(f"plans file {self.path}{where}: {name}: {reason}")

    def line_of(self, plan_id, needle):
        """The line where ``needle`` first appears in the plan's table.

        TOML parsers keep no positions, so the line is found in the text: the
        plan's header, then the first line below it mentioning the key.
        """
        if plan_id is None:
            return None
        header = re.compile(rf"^\s*\[\s*plans\.\"?{re.escape(plan_id)}\"?\s*\]")
        start = next((i for i, line in enumerate(self.lines) if header.match(line)), None)
        if start is None:
            return None
        last_key = needle.rsplit(".", 1)[-1] if needle else None
        # The plan's own sub-tables ([plans.<id>.credits], [[plans.<id>.prices]]) belong to it.
        own_table = re.compile(rf"^\s*\[\[?\s*plans\.\"?{re.escape(plan_id)}\"?\s*\.")
        for i in range(start, len(self.lines)):
            if i > start and self.lines[i].lstrip().startswith("[") and not own_table.match(self.lines[i]):
                break
            if last_key and last_key in self.lines[i]:
                return i + 1
        return start + 1

    def plans(self, document):
        unknown = set(document) - {"plans"}
        if unknown:
            key = sorted(unknown)[0]
            line = self.line_of_top_level(key)
            where = f", line {line}" if line else ""
            raise PlansError(
                f"plans file {self.path}{where}: unknown top-level key {key!r} (expected only [plans.<id>] tables)"
            )
        tables = document.get("plans")
        if not isinstance(tables, dict) or not tables:
            raise PlansError(f"plans file {self.path}: no [plans.<id>] table")
        plans = tuple(self.plan(plan_id, table) for plan_id, table in tables.items())
        self.check_together(plans)
        return Plans(plans)

    def line_of_top_level(self, key):
        """The line of a top-level ``key = ...`` or of a ``[key]`` / ``[key.sub]`` table."""
        name = rf"\"?{re.escape(key)}\"?"
        assignment = re.compile(rf"^\s*{name}\s*[=.]")
        table = re.compile(rf"^\s*\[\[?\s*{name}\s*[\].]")
        in_table = False
        for i, line in enumerate(self.lines):
            if table.match(line):
                return i + 1
            if line.lstrip().startswith("["):
                in_table = True
            elif not in_table and assignment.match(line):
                return i + 1
        return None

    def plan(self, plan_id, table):
        if not isinstance(table, dict):
            self.fail(plan_id, None, "must be a table")
        for key in table:
            if key not in PLAN_KEYS:
                self.fail(plan_id, key, f"unknown key (expected one of {', '.join(sorted(PLAN_KEYS))})")
        is_free = self.boolean(plan_id, table, "is_free")
        is_lifetime = self.boolean(plan_id, table, "is_lifetime")
        if is_free and is_lifetime:
            self.fail(plan_id, "is_lifetime", "a plan cannot be both free and lifetime")
        prices = tuple(self.price(plan_id, i, p) for i, p in enumerate(self.array(plan_id, table, "prices")))
        if is_free and prices:
            self.fail(plan_id, "prices", "a free plan has no prices")
        for price in prices:
            if is_lifetime != (price.type == "one_time"):
                self.fail(
                    plan_id, "prices", f"price {price.price_id!r}: a lifetime plan has one_time prices, "
                    "any other plan subscription prices", needle=price.price_id
                )
        return Plan(
            id=plan_id,
            prices=prices,
            is_free=is_free,
            is_lifetime=is_lifetime,
            disabled=self.boolean(plan_id, table, "disabled"),
            credits=self.credits(plan_id, table.get("credits", {})),
        )

    def boolean(self, plan_id, table, key, default=False):
        value = table.get(key, default)
        if not isinstance(value, bool):
            self.fail(plan_id, key, f"must be true or false, got {value!r}")
        return value

    def array(self, plan_id, table, key):
        value = table.get(key, [])
        if not isinstance(value, list):
            self.fail(plan_id, key, "must be an array of tables")
        return value

    def whole_number(self, plan_id, table, key, minimum):
        value = table.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            # A missing key has no line of its own: point at the credits table instead.
            needle = None if key in table else "credits"
            self.fail(plan_id, f"credits.{key}", f"must be a whole number >= {minimum}, got {value!r}", needle=needle)
        return value

    def credits(self, plan_id, table):
        if not isinstance(table, dict):
            self.fail(plan_id, "credits", "must be a table such as { enable = true, amount = 50 }")
        for key in table:
            if key not in CREDITS_KEYS:
                self.fail(plan_id, f"credits.{key}", f"unknown key (expected {', '.join(sorted(CREDITS_KEYS))})")
        enable = table.get("enable", False)
        if not isinstance(enable, bool):
            self.fail(plan_id, "credits.enable", f"must be true or false, got {enable!r}")
        amount = self.whole_number(plan_id, table, "amount", 0) if "amount" in table or enable else 0
        expire_days = self.whole_number(plan_id, table, "expire_days", 1) if "expire_days" in table else None
        return Credits(enable=enable, amount=amount, expire_days=expire_days)

    def price(self, plan_id, index, table):
        key = f"prices[{index}]"
        if not isinstance(table, dict):
            self.fail(plan_id, key, "must be a table such as { price_id = \"...\", type = \"subscription\" }")
        for name in table:
            if name not in PRICE_KEYS:
                self.fail(plan_id, f"{key}.{name}", f"unknown key (expected {', '.join(sorted(PRICE_KEYS))})")
        raw_id = table.get("price_id")
        if not isinstance(raw_id, str) or not raw_id.strip():
            self.fail(plan_id, f"{key}.price_id", "must be a non-empty string", needle="price_id")
        price_id = self.interpolate(plan_id, f"{key}.price_id", raw_id)
        price_type = table.get("type")
        if price_type not in PRICE_TYPES:
            self.fail(plan_id, f"{key}.type", f"must be one of {sorted(PRICE_TYPES)}, got {price_type!r}", needle=raw_id)
        interval = table.get("interval")
        if price_type == "subscription" and interval not in INTERVALS:
            self.fail(plan_id, f"{key}.interval", f"must be one of {sorted(INTERVALS)}, got {interval!r}", needle=raw_id)
        if price_type == "one_time" and interval is not None:
            self.fail(plan_id, f"{key}.interval", "a one_time price has no interval", needle=raw_id)
        return Price(price_id=price_id, type=price_type, interval=interval)

    def interpolate(self, plan_id, key, value):
        def variable(match):
            name = match.group(1)
            if not self.environ.get(name):
                self.fail(plan_id, key, f"environment variable {name} is not set", needle=match.group(0))
            return self.environ[name]

        result = _VARIABLE.sub(variable, value).strip()
        if not result:
            self.fail(plan_id, key, "is empty", needle=value)
        return result

    def check_together(self, plans):
        free = [plan.id for plan in plans if plan.is_free]
        if len(free) > 1:
            self.fail(free[1], "is_free", f"two free plans ({free[0]!r} and {free[1]!r}); at most one")
        owner = {}
        for plan in plans:
            for price in plan.prices:
                if price.price_id in owner:
                    self.fail(
                        plan.id, "prices",
                        f"price id {price.price_id!r} is already used by plan {owner[price.price_id]!r}",
                        needle=price.price_id,
                    )
                owner[price.price_id] = plan.id
