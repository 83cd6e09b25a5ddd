"""Dead letters in SQL, on SQLite and PostgreSQL: nothing the pipeline refuses is lost."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


async def test_dead_letters_keep_reason_payload_and_count(sql_store) -> None:  # type: ignore[no-untyped-def]
    raw = b'{"impression": {"win_price_micros_usd": "-5"}}'
    await sql_store.add_dead_letters([("bad_money", raw), ("malformed", b"{nope"),
                                      ("bad_money", raw)], source="sandbox", now=T0)
    await sql_store.add_dead_letters([("bad_money", raw)], source="sandbox",
                                     now=T0 + timedelta(minutes=5))
    assert await sql_store.dead_letter_counts() == {"bad_money": 3, "malformed": 1}
    letters = await sql_store.list_dead_letters()
    assert [le.reason for le in letters] == ["bad_money", "malformed"]  # newest first
    money = letters[0]
    assert money.raw == raw and money.count == 3
    assert money.first_seen == T0 and money.last_seen == T0 + timedelta(minutes=5)
    assert (await sql_store.get_dead_letter(money.id)) == money
    assert [le.reason for le in await sql_store.list_dead_letters(reason="malformed")] == \
        ["malformed"]
    assert await sql_store.delete_dead_letters([money.id]) == 1
    assert await sql_store.get_dead_letter(money.id) is None
    assert await sql_store.dead_letter_counts() == {"malformed": 1}
