"""Peer ranking: offences cost more than absence, repeated lies get a peer banned for a while."""

from p2pcache.net.peer_ranking import PeerRanking


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_fast_reliable_peers_first():
    ranking = PeerRanking()
    ranking.record_success("slow", 10.0, 10_000_000, 0.1)
    ranking.record_success("fast", 1.0, 10_000_000, 0.01)
    ranking.record_unavailable("flaky")
    assert ranking.order(["flaky", "slow", "fast", "new"]) == ["fast", "slow", "new", "flaky"]


def test_liars_are_banned_then_forgiven():
    clock = Clock()
    ranking = PeerRanking(ban_after=2, ban_seconds=60, clock=clock)
    assert not ranking.record_misbehaved("liar")
    assert ranking.order(["liar", "ok"]) == ["ok", "liar"]
    assert ranking.record_misbehaved("liar")
    assert ranking.is_banned("liar") and ranking.order(["liar", "ok"]) == ["ok"]
    assert ranking.banned_count() == 1
    clock.now = 61
    assert not ranking.is_banned("liar")


def test_memory_is_bounded():
    ranking = PeerRanking(max_peers=100)
    for n in range(1000):
        ranking.record_unavailable(f"peer{n}")
    assert len(ranking.scores) <= 100
