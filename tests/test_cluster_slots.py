"""The sans-I/O side of the backplane on a Redis Cluster: slots, partition tags, names, the
cluster URL, the slot map (``CLUSTER SHARDS``) read into masters.  The real cluster's
``CLUSTER KEYSLOT`` is compared in ``test_backplane_cluster.py``."""

from __future__ import annotations

import pytest

from trio_wshandler import RedisBackplane
from trio_wshandler._backplane import redact_url
from trio_wshandler._backplane_run import masters_by_partition
from trio_wshandler._backplane_wire import Names
from trio_wshandler._cluster_slots import (
    SLOTS,
    key_slot,
    parse_cluster_url,
    partition_of,
    partition_tags,
    spread,
)


def test_key_slots_are_redis_clusters() -> None:
    # values from the Redis Cluster specification and CLUSTER KEYSLOT
    assert key_slot("123456789") == 0x31C3 % SLOTS
    assert key_slot("foo") == 12182 and key_slot("bar") == 5061
    assert key_slot("{user1000}.following") == key_slot("{user1000}.followers")
    assert key_slot("foo{}{bar}") == key_slot("foo{}{bar}")  # empty tag: the whole name
    assert key_slot("foo{}{bar}") != key_slot("bar")
    assert key_slot("foo{{bar}}zap") == key_slot("{bar")
    assert key_slot("foo{bar}{zap}") == key_slot("bar")


@pytest.mark.parametrize("masters", [1, 2, 3, 4, 6])
def test_partition_tags_spread_evenly_over_equal_slot_ranges(masters: int) -> None:
    """What redis-cli --cluster create makes: equal contiguous ranges."""
    bounds = [m * SLOTS // masters for m in range(masters + 1)]
    ranges = {f"m{m}": [(bounds[m], bounds[m + 1] - 1)] for m in range(masters)}
    assert set(spread(12, ranges).values()) == {12 // masters}
    tags = partition_tags(12)
    assert len(set(tags)) == 12
    assert [key_slot(t) * 12 // SLOTS for t in tags] == list(range(12))


def test_numbered_tags_would_not_spread() -> None:
    """Why the tags are chosen: ``{0}``..``{11}`` leave a third of 3 masters' share uneven."""
    ranges = {"a": [(0, 5460)], "b": [(5461, 10922)], "c": [(10923, 16383)]}
    numbered = [str(i) for i in range(12)]
    counts = {m: 0 for m in ranges}
    for tag in numbered:
        slot = key_slot(tag)
        for m, [(first, last)] in ranges.items():
            if first <= slot <= last:
                counts[m] += 1
    assert sorted(counts.values()) != [4, 4, 4]


def test_names_share_a_slot_per_topic_and_per_process() -> None:
    names = Names("app", partition_tags(12))
    topic = "room:42"
    slot = key_slot(names.topic(topic))
    assert key_slot(names.history(topic)) == key_slot(names.stream(topic)) == slot
    assert names.topic(topic).startswith("app:{")
    node = "01HZZZZZZZZZZZZZZZZZZZZZZZ"
    home = names.node_partition(node)
    assert key_slot(names.node(node)) == key_slot(names.connections(node))
    assert key_slot(names.node(node)) == key_slot(names.all(home)) == key_slot(names.nodes(home))
    assert {names.topic_partition(f"t{i}") for i in range(500)} == set(range(12))
    assert partition_of("anything", 1) == 0
    single = Names("app")  # one Redis: the names of before
    assert single.topic(topic) == "app:topic:room:42" and single.all(0) == "app:all"
    assert single.nodes(0) == "app:nodes" and single.connections(node) == f"app:conns:{node}"


def test_cluster_urls() -> None:
    parsed = parse_cluster_url("redis+cluster://us%40r:p%3Aw@h1:7000,10.0.0.2:7001,[::1]:7002/")
    assert parsed.nodes == (("h1", 7000), ("10.0.0.2", 7001), ("::1", 7002))
    assert (parsed.username, parsed.password, parsed.tls) == ("us@r", "p:w", False)
    assert parse_cluster_url("rediss+cluster://h:1").tls
    for bad in ("redis://h:1", "redis+cluster://h", "redis+cluster://h:0", "redis+cluster://:1"):
        with pytest.raises(ValueError):
            parse_cluster_url(bad)
    assert redact_url("redis+cluster://u:secret@h1:1,h2:2") == "redis+cluster://u:***@h1:1,h2:2"
    assert "secret" not in repr(parsed.password and parsed)


def test_cluster_options() -> None:
    backplane = RedisBackplane("redis+cluster://:pw@h1:7000,h2:7001", partitions=6)
    assert backplane.cluster is not None and backplane.names.partitions == 6
    assert backplane.safe_url == "redis+cluster://:***@h1:7000,h2:7001"
    nodes = RedisBackplane("rediss+cluster://:pw@", startup_nodes=[("a", 1), ("b", 2)])
    assert nodes.cluster is not None and nodes.cluster.nodes == (("a", 1), ("b", 2))
    assert nodes.cluster.tls and nodes.cluster.password == "pw"
    assert RedisBackplane("redis://h/0", partitions=6).names.partitions == 1  # one Redis
    with pytest.raises(ValueError, match="hash tags"):
        RedisBackplane("redis+cluster://h:1", prefix="a{b}")
    with pytest.raises(ValueError):
        RedisBackplane("redis+cluster://h:1", partitions=0)


def test_the_slot_map_read_into_masters() -> None:
    """CLUSTER SHARDS as coredis gives it; a failed master serves nothing (its shard lost)."""

    def node(port: int, role: str, health: str = "online") -> dict[bytes, object]:
        return {b"port": port, b"ip": b"127.0.0.1", b"endpoint": b"127.0.0.1",
                b"role": role.encode(), b"health": health.encode()}  # fmt: skip

    shards = [
        {b"slots": [0, 5460], b"nodes": [node(1, "master"), node(4, "replica")]},
        {b"slots": [5461, 10922], b"nodes": [node(2, "master", "fail"), node(5, "master")]},
        {b"slots": [10923, 16383], b"nodes": [node(3, "master", "fail")]},
    ]
    tags = partition_tags(3)
    assert masters_by_partition(shards, tags) == [("127.0.0.1", 1), ("127.0.0.1", 5), None]
