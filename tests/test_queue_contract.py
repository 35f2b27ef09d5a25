"""One contract for every handoff queue: the in-process one and the Redis one (real Redis, a random
key prefix per test). The order rule is in handoff/queue.py's docstring."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from handoff.queue import Claim, HandoffQueue, InProcessQueue, QueueEntry
from handoff.redis_queue import RedisQueue
from tests.redis_helpers import TEST_REDIS_URL, delete_prefix, prefix_keys, random_prefix, require_redis
from triage import Risk

AGING = 20  # minutes to move up one level
T0 = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def entry(cid: str, risk: Risk, minutes: float, channel: str = "loopback") -> QueueEntry:
    return QueueEntry(cid, risk, at(minutes), channel)


@dataclass
class Store:
    queue: HandoffQueue
    # Another handle on the same queue: for Redis its own client and connections, as another process
    # would have; in-process, the same object (there is only one process).
    another: Callable[[], HandoffQueue]


@pytest.fixture(params=["in-process", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    if request.param == "in-process":
        q = InProcessQueue(AGING)
        yield Store(q, lambda: q)
        return
    await require_redis()
    prefix = random_prefix()
    made: list[RedisQueue] = []

    def another() -> HandoffQueue:
        made.append(RedisQueue.from_url(TEST_REDIS_URL, prefix=prefix, aging_minutes=AGING))
        return made[-1]

    first = another()
    await first.rebuild([], {})  # made once, as the service makes it at start
    try:
        yield Store(first, another)
    finally:
        await delete_prefix(prefix)
        for q in made:
            await q.close()
        assert await prefix_keys(prefix) == []


async def order(q: HandoffQueue, minutes: float) -> list[str]:
    return [e.conversation_id for e in await q.ordered(at(minutes))]


async def put_all(q: HandoffQueue, *entries: QueueEntry) -> None:
    for e in entries:
        await q.put(e)


# -- order ------------------------------------------------------------------------------------------


async def test_crisis_first(store: Store) -> None:
    q = store.queue
    await put_all(q, entry("low", Risk.LOW, 0), entry("high", Risk.HIGH, 1), entry("crisis", Risk.CRISIS, 2))
    assert await order(q, 3) == ["crisis", "high", "low"]


async def test_high_then_medium_then_low(store: Store) -> None:
    q = store.queue
    await put_all(q, entry("low", Risk.LOW, 0), entry("medium", Risk.MEDIUM, 1), entry("high", Risk.HIGH, 2))
    assert await order(q, 3) == ["high", "medium", "low"]


async def test_longest_waiting_first_within_a_level(store: Store) -> None:
    q = store.queue
    await put_all(
        q,
        entry("m-later", Risk.MEDIUM, 5),
        entry("m-first", Risk.MEDIUM, 1),
        entry("c-later", Risk.CRISIS, 4),
        entry("c-first", Risk.CRISIS, 2),
        entry("m-middle", Risk.MEDIUM, 3),
    )
    assert await order(q, 6) == ["c-first", "c-later", "m-first", "m-middle", "m-later"]


async def test_waiting_moves_a_low_entry_up(store: Store) -> None:
    q = store.queue
    await put_all(q, entry("low", Risk.LOW, 0), entry("medium", Risk.MEDIUM, 1), entry("high", Risk.HIGH, 2))
    assert await order(q, AGING - 0.5) == ["high", "medium", "low"]
    # After AGING minutes the low entry counts as medium, and it has waited longer.
    assert await order(q, AGING) == ["high", "low", "medium"]
    # After twice that, as high (the medium one too, after AGING minutes of its own): longest first.
    assert await order(q, 2 * AGING) == ["low", "medium", "high"]
    # Waiting never makes a crisis.
    await q.put(entry("crisis", Risk.CRISIS, 100))
    assert (await order(q, 1000))[0] == "crisis"


async def test_put_keeps_queued_at_and_a_raised_risk_moves_the_entry_at_once(store: Store) -> None:
    q = store.queue
    await put_all(q, entry("a", Risk.LOW, 0), entry("b", Risk.MEDIUM, 1), entry("c", Risk.HIGH, 2))
    assert await order(q, 3) == ["c", "b", "a"]
    await q.put(entry("a", Risk.CRISIS, 3, channel="line"))
    assert await order(q, 3) == ["a", "c", "b"]
    (a,) = [e for e in await q.entries() if e.conversation_id == "a"]
    assert a == QueueEntry("a", Risk.CRISIS, at(0), "line")
    # Lowered again (a counsellor's judgement): still the same place in time.
    await q.put(entry("a", Risk.MEDIUM, 4))
    assert await order(q, 4) == ["c", "a", "b"]
    assert {e.queued_at for e in await q.entries()} == {at(0), at(1), at(2)}


async def test_entries_round_trip(store: Store) -> None:
    e = QueueEntry("x", Risk.HIGH, datetime(2026, 3, 1, 12, 34, 56, 789012, tzinfo=UTC), "telegram")
    await store.queue.put(e)
    assert await store.queue.entries() == [e]
    assert await store.another().entries() == [e]


async def test_rank_of_an_entry_not_yet_queued(store: Store) -> None:
    q = store.queue
    assert await q.rank(entry("new", Risk.LOW, 0), at(0)) == 1
    await put_all(q, entry("high", Risk.HIGH, 0), entry("low", Risk.LOW, 1))
    assert await q.rank(entry("new", Risk.MEDIUM, 2), at(2)) == 2
    assert await q.rank(entry("new", Risk.CRISIS, 2), at(2)) == 1
    assert await q.rank(entry("new", Risk.LOW, 2), at(2)) == 3
    assert await q.entries() and "new" not in {e.conversation_id for e in await q.entries()}
    # An entry already queued is not counted against itself.
    assert await q.rank(entry("low", Risk.LOW, 1), at(2)) == 2


async def test_position(store: Store) -> None:
    q = store.queue
    await put_all(q, entry("a", Risk.LOW, 0), entry("b", Risk.HIGH, 1))
    assert await q.position("b", at(2)) == 1
    assert await q.position("a", at(2)) == 2
    assert await q.position("nobody", at(2)) is None


async def test_remove(store: Store) -> None:
    q = store.queue
    await put_all(q, entry("a", Risk.LOW, 0), entry("b", Risk.HIGH, 1))
    await q.remove("b")
    await q.remove("never-there")
    assert await order(q, 2) == ["a"]
    assert await q.position("b", at(2)) is None
    # Put again after leaving: a new place in time.
    await q.put(entry("b", Risk.LOW, 5))
    assert await order(q, 6) == ["a", "b"]
    assert {e.conversation_id: e.queued_at for e in await q.entries()}["b"] == at(5)


# -- claims -----------------------------------------------------------------------------------------


async def test_claim_taken_and_full(store: Store) -> None:
    q = store.queue
    await put_all(q, entry("a", Risk.LOW, 0), entry("b", Risk.HIGH, 1), entry("c", Risk.MEDIUM, 2))
    assert await q.claim("b", 1, limit=2) == Claim.CLAIMED
    assert await order(q, 3) == ["c", "a"]
    assert await q.claim("b", 2, limit=2) == Claim.TAKEN  # someone else has it
    assert await q.claim("b", 1, limit=2) == Claim.TAKEN  # not waiting any more, even for its holder
    assert await q.claim("gone", 2, limit=2) == Claim.TAKEN
    assert await q.claim("c", 1, limit=1) == Claim.FULL
    assert await order(q, 3) == ["c", "a"]  # a refused claim leaves the queue as it was
    assert await q.claim("c", 1, limit=2) == Claim.CLAIMED
    assert await q.claim("a", 1, limit=2) == Claim.FULL
    assert await q.held(1) == {"b", "c"}
    assert await q.held(2) == set()
    assert await order(q, 3) == ["a"]


async def test_a_taken_conversation_is_taken_rather_than_full(store: Store) -> None:
    q = store.queue
    await q.put(entry("a", Risk.LOW, 0))
    assert await q.claim("a", 1, limit=1) == Claim.CLAIMED
    assert await q.claim("a", 2, limit=0) == Claim.TAKEN


async def test_release_frees_capacity(store: Store) -> None:
    q = store.queue
    await put_all(q, entry("a", Risk.LOW, 0), entry("b", Risk.LOW, 1))
    assert await q.claim("a", 7, limit=1) == Claim.CLAIMED
    assert await q.claim("b", 7, limit=1) == Claim.FULL
    await q.release("a", 7)
    await q.release("never-held", 7)
    await q.release("a", 99)
    assert await q.held(7) == set()
    assert await q.claim("b", 7, limit=1) == Claim.CLAIMED
    assert await q.held(7) == {"b"}
    # Released is not queued: the conversation goes back to the queue only when put there.
    assert await q.entries() == []
    await q.release("b", 7)
    await q.put(entry("b", Risk.LOW, 1))
    assert await q.claim("b", 8, limit=1) == Claim.CLAIMED


async def test_held_is_per_counsellor(store: Store) -> None:
    q = store.queue
    await put_all(q, *(entry(f"c{i}", Risk.LOW, i) for i in range(4)))
    for i, counsellor in enumerate([1, 2, 1, 3]):
        assert await q.claim(f"c{i}", counsellor, limit=5) == Claim.CLAIMED
    assert await q.held(1) == {"c0", "c2"}
    assert await q.held(2) == {"c1"}
    assert await q.held(3) == {"c3"}
    assert await store.another().held(1) == {"c0", "c2"}


async def test_rebuild_replaces_everything(store: Store) -> None:
    q = store.queue
    await put_all(q, entry("old-1", Risk.CRISIS, 0), entry("old-2", Risk.LOW, 1), entry("kept", Risk.LOW, 2))
    assert await q.claim("old-1", 1, limit=5) == Claim.CLAIMED
    assert await q.claim("old-2", 2, limit=5) == Claim.CLAIMED
    new = [entry("kept", Risk.HIGH, 2), entry("n-1", Risk.MEDIUM, 3)]
    await q.rebuild(new, {2: {"h-1", "h-2"}, 3: {"h-3"}, 4: set()})
    assert sorted(await q.entries(), key=lambda e: e.conversation_id) == new
    assert await q.held(1) == set()
    assert await q.held(2) == {"h-1", "h-2"}
    assert await q.held(3) == {"h-3"}
    assert await q.held(4) == set()
    assert await q.intact()
    # The limits count the rebuilt holdings.
    assert await q.claim("n-1", 2, limit=2) == Claim.FULL
    assert await q.claim("n-1", 3, limit=2) == Claim.CLAIMED
    # And an empty rebuild empties it.
    await q.rebuild([], {})
    assert await q.entries() == []
    assert await q.held(2) == set() and await q.held(3) == set()
    assert await q.intact()


# -- many counsellors at once -----------------------------------------------------------------------


async def test_concurrent_claims_each_conversation_once_and_nobody_over_the_limit(store: Store) -> None:
    """50 claimers (5 each for 10 counsellors, limit 2) race for 20 conversations. For Redis, through
    ten clients of their own, so that the claims really meet in Redis at the same time."""
    conversations = [f"conv-{i:02d}" for i in range(20)]
    counsellors, limit = list(range(1, 11)), 2
    await put_all(store.queue, *(entry(cid, Risk.LOW, i) for i, cid in enumerate(conversations)))
    handles = [store.another() for _ in range(10)]
    start = asyncio.Event()
    results: list[tuple[int, str, Claim]] = []

    async def claimer(n: int) -> None:
        q, counsellor = handles[n % len(handles)], counsellors[n % len(counsellors)]
        # Like a counsellor at the console: the queue as it was shown, the most urgent one first.
        shown = [e.conversation_id for e in await q.ordered(at(30))]
        await start.wait()
        for cid in shown:
            result = await q.claim(cid, counsellor, limit)
            results.append((counsellor, cid, result))
            if result in (Claim.CLAIMED, Claim.FULL):
                return

    tasks = [asyncio.create_task(claimer(n)) for n in range(50)]
    await asyncio.sleep(0)
    start.set()
    await asyncio.gather(*tasks)

    claimed = Counter(cid for _, cid, r in results if r is Claim.CLAIMED)
    assert claimed == Counter(conversations)  # each exactly once, and every one of them
    held = {c: await store.queue.held(c) for c in counsellors}
    assert all(len(h) <= limit for h in held.values()), held
    assert set().union(*held.values()) == set(conversations)
    for counsellor, cid, r in results:
        if r is Claim.CLAIMED:
            assert cid in held[counsellor]
    assert await store.queue.entries() == []
    assert any(r is Claim.TAKEN for _, _, r in results)  # they did meet
