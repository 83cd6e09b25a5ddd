

def test_the_syncs_decision_ids_fit_their_column_and_stay_apart() -> None:
    """A decision id is at most 32 characters: the sync's used to be its time in full, cut
    there, so two changes in the same second shared one."""
    from datetime import UTC, datetime

    from campaignd.dsp.sync_model import sync_decision

    now = datetime(2026, 12, 3, 21, 8, 0, 123456, tzinfo=UTC)
    a, b = sync_decision(now), sync_decision(now)
    assert a != b and len(a) <= 32 and a.startswith("sync:20261203T210800:")
