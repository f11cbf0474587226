"""The cluster's name space, its pure parts: keys, values and the local
copy every host keeps of which host runs which agent (supervisor/directory.py).
The KV round trips themselves are exercised by tests/test_cluster.py."""

from __future__ import annotations

import pytest

from caxton.supervisor.directory import Listing, decode, encode, key_of, name_of


@pytest.mark.parametrize("name", ["pong", "a.b", "ends.", "x-1_y"])
def test_a_name_makes_a_valid_kv_key_and_back(name):
    key = key_of(name)
    assert not key.endswith(".") and "." not in key
    assert name_of(key) == name


def test_values_name_the_host_and_anything_else_is_not_a_host():
    assert decode(encode("node-1")) == "node-1"
    for value in (None, b"", b"not json", b"[]", b'{"host": 3}', b'{"host": ""}'):
        assert decode(value) is None


def test_other_hosts_agents_are_found_and_this_hosts_are_not():
    listing = Listing("a")
    listing.announced("pong", "c")
    listing.announced("ping", "a")
    assert listing.host_of("pong") == "c"
    assert listing.host_of("ping") is None  # local: never sent over NATS
    assert listing.host_of("nobody") is None
    assert listing.placements() == {"pong": "c", "ping": "a"}
    assert listing.hosts() == {"a", "c"}


def test_a_lapsed_announcement_is_remembered_with_its_host_until_announced_again():
    listing = Listing("a")
    listing.announced("echo", "b")
    listing.removed("echo", lapsed=True)
    assert listing.host_of("echo") is None
    assert listing.lapsed_host("echo") == "b"
    listing.announced("echo", "b")
    assert listing.host_of("echo") == "b" and listing.lapsed_host("echo") is None


def test_a_removal_by_its_host_is_forgotten():
    listing = Listing("a")
    listing.announced("echo", "b")
    listing.removed("echo", lapsed=False)
    assert listing.host_of("echo") is None and listing.lapsed_host("echo") is None
    listing.removed("never-there", lapsed=True)
    assert listing.lapsed_host("never-there") is None


def test_a_replay_replaces_the_copy_at_once_when_caught_up():
    listing = Listing("a")
    listing.announced("stays", "b")
    listing.announced("went", "c")
    listing.replaying()
    listing.announced("stays", "b")
    listing.announced("new", "c")
    # Until the replay has caught up, lookups see the old copy, never a half one.
    assert listing.host_of("went") == "c" and listing.host_of("new") is None
    listing.caught_up()
    assert listing.placements() == {"stays": "b", "new": "c"}
    # Gone while this host was not watching: its host dropped out, as far as we can tell.
    assert listing.lapsed_host("went") == "c"


def test_a_lapse_seen_during_a_replay_keeps_the_host_it_had():
    listing = Listing("a")
    listing.announced("echo", "b")
    listing.replaying()
    listing.removed("echo", lapsed=True)
    listing.caught_up()
    assert listing.host_of("echo") is None and listing.lapsed_host("echo") == "b"


def test_the_listing_is_synced_only_once_a_replay_has_caught_up():
    listing = Listing("a")
    assert not listing.synced  # never read: a missing name may run elsewhere
    listing.replaying()
    listing.announced("x", "b")
    assert not listing.synced and listing.host_of("x") is None
    listing.caught_up()
    assert listing.synced and listing.host_of("x") == "b"
