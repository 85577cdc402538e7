"""BodyHints: the header pass's sizes and keys, kept for the body backlog within a bound."""

from __future__ import annotations

from services.fetcher.sync.body_hints import BodyHints, HintPool


def test_sizes_and_keys_of_one_uidvalidity_and_keys_are_handed_out_once() -> None:
    hints = BodyHints()
    hints.note(7, 10, "m:a", 500)
    hints.note(7, 9, "m:b", 600)
    assert hints.sizes(7, [10, 9, 8]) == {10: 500, 9: 600}
    assert hints.sizes(8, [10, 9]) == {}, "another UIDVALIDITY: another folder's numbering"
    assert hints.take_keys(8, [10]) == {}
    assert hints.take_keys(7, [10, 8]) == {10: "m:a"}
    assert hints.take_keys(7, [10]) == {}, "forgotten once handed out"
    assert len(hints) == 1


def test_a_new_uidvalidity_forgets_the_old_hints() -> None:
    hints = BodyHints()
    hints.note(7, 10, "m:a", 500)
    hints.note(8, 3, "m:c", 100)
    assert hints.sizes(7, [10]) == {} and hints.sizes(8, [3]) == {3: 100}


def test_bounded_and_no_size_is_not_a_hint() -> None:
    hints = BodyHints(limit=2, pool=HintPool(10))
    for uid in range(1, 5):
        hints.note(1, uid, f"m:{uid}", 100)
    hints.note(1, 9, "m:9", 0)
    assert hints.sizes(1, range(10)) == {1: 100, 2: 100}, (
        "the first ones kept (the backlog goes in that order)"
    )
    hints.clear()
    assert len(hints) == 0 and hints.sizes(1, [1]) == {}


def test_folders_share_the_process_pool_and_give_hints_back() -> None:
    pool = HintPool(3)
    a, b = BodyHints(pool=pool), BodyHints(pool=pool)
    for uid in (1, 2):
        a.note(1, uid, f"m:a{uid}", 100)
        b.note(1, uid, f"m:b{uid}", 100)
    assert (len(a), len(b), pool.used) == (2, 1, 3), "the pool's limit holds across folders"
    a.note(1, 1, "m:a1", 100)
    assert pool.used == 3, "a hint noted twice counts once"
    assert a.take_keys(1, [1]) == {1: "m:a1"} and pool.used == 2
    b.note(2, 7, "m:b7", 100)
    assert len(b) == 1 and pool.used == 2, "a new UIDVALIDITY gives the old hints back"
    del a
    assert pool.used == 1, "a folder dropped gives its hints back"
    b.clear()
    assert pool.used == 0
