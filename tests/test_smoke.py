from datetime import UTC, datetime

NOW = datetime(2026, 12, 1, 0, 5, tzinfo=UTC)


def test_free_user_gets_monthly_credits(world):
    user = world.user()
    summary = world.run(NOW)
    assert summary.granted["MONTHLY_REFRESH"] == 1
    assert world.balance(user) == 50
    assert world.drift() == []
