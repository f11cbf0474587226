"""Running attacks are contained: real supervisor, real workers, real wasmtime.

Each attack fails with its own status, the attacking agent keeps answering
afterwards in the same worker process (the instance is replaced, the process
is not), and a neighbour agent in the same supervisor answers throughout:
right after the attack and, from a thread, while the attack runs.
"""

from __future__ import annotations

import time

import grpc
import pytest

from .harness import LoadGenerator, wait_until

MIB = 1 << 20


class Neighbour(LoadGenerator):
    """An echo agent pinged from a thread while an attack runs next door.

    Every round trip is recorded; `check()` asserts they all succeeded.
    """

    def __init__(self, sup, name: str):
        sup.deploy(name, "echo")
        # Entering waits for a first reply: the neighbour is known to answer
        # before the attack starts.
        super().__init__(sup, name, timeout=10, pause=0.005, warmup=1)
        self.sup = sup
        self.name = name

    def check(self) -> None:
        errors = [trip for trip in self.trips() if not trip.echoed]
        assert not errors, f"{self.name} failed during the attack: {errors[:3]}"
        # And right after the attack, too.
        assert self.sup.send(self.name, b"after").reply.content == b"after"

    def trips_during(self, start: float, end: float) -> list[float]:
        """Latencies of the round trips that began and ended inside [start, end]."""
        return [t.end - t.start for t in self.trips() if t.start >= start and t.end <= end and t.echoed]


def pid_of(sup, name: str) -> int:
    status = sup.status(name)
    assert len(status.instances) == 1, status
    return status.instances[0].pid


def attack(sup, name: str, content: bytes, code: grpc.StatusCode, *words: str,
           timeout: float = 30) -> tuple[str, float]:
    """Send `content`, expect it to fail with `code` and a message containing
    every one of `words`; return the message and the elapsed time."""
    start = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        sup.send(name, content, timeout=timeout)
    elapsed = time.monotonic() - start
    details = info.value.details() or ""
    assert info.value.code() == code, f"{name} <- {content!r}: {info.value.code()} {details!r}"
    for word in words:
        assert word in details, f"{name} <- {content!r}: {word!r} not in {details!r}"
    return details, elapsed


def assert_still_answers(sup, name: str, pid: int) -> None:
    assert sup.send(name, b"still here").reply.content == b"still here"
    assert pid_of(sup, name) == pid, f"{name}: the worker process was replaced"


# ---------------------------------------------------------------- CPU


def test_infinite_loop_runs_out_of_fuel_quickly(shared_supervisor):
    sup = shared_supervisor
    sup.deploy("fuel-loop", "loop", fuel=10_000_000)
    sup.deploy("fuel-attacker", "attacker", fuel=10_000_000)
    loop_pid, attacker_pid = pid_of(sup, "fuel-loop"), pid_of(sup, "fuel-attacker")
    with Neighbour(sup, "fuel-neighbour") as neighbour:
        for name, content in (("fuel-loop", b"x"), ("fuel-attacker", b"loop"), ("fuel-loop", b"again")):
            _, elapsed = attack(sup, name, content, grpc.StatusCode.RESOURCE_EXHAUSTED, "fuel")
            # 10M fuel is milliseconds of wasm; the bound only has to tell a
            # fuel trap from the 5 s wall-clock timeout, even on a busy host.
            assert elapsed < 4.0, f"{name}: running out of 10M fuel took {elapsed:.2f}s"
    neighbour.check()
    # loop.wat loops on every message: it still gets each one, in the same worker.
    assert pid_of(sup, "fuel-loop") == loop_pid
    assert sup.status("fuel-loop").instances[0].resets == 2
    assert_still_answers(sup, "fuel-attacker", attacker_pid)
    assert sup.status("fuel-attacker").instances[0].resets == 1


def test_infinite_loop_with_huge_fuel_hits_the_timeout(shared_supervisor):
    sup = shared_supervisor
    sup.deploy("timeout-attacker", "attacker", fuel=10**15, timeout_ms=300)
    pid = pid_of(sup, "timeout-attacker")
    with Neighbour(sup, "timeout-neighbour") as neighbour:
        start = time.monotonic()
        _, elapsed = attack(sup, "timeout-attacker", b"loop", grpc.StatusCode.DEADLINE_EXCEEDED, "timeout")
        end = start + elapsed
    assert 0.25 <= elapsed <= 5.0, f"a 300 ms timeout ended the call after {elapsed:.2f}s"
    neighbour.check()
    during = neighbour.trips_during(start, end)
    assert during, "the neighbour did not answer while the attacker was spinning"
    # Faster than the attacker's own 300 ms timeout: it was not waiting for it.
    assert min(during) < 0.25, f"the neighbour's fastest answer during the attack took {min(during):.3f}s"
    assert_still_answers(sup, "timeout-attacker", pid)
    assert sup.status("timeout-attacker").instances[0].resets == 1


# ---------------------------------------------------------------- memory


def test_memory_bomb_sees_grow_fail(shared_supervisor):
    sup = shared_supervisor
    sup.deploy("bomb", "trap", memory_bytes=4 * MIB)
    pid = pid_of(sup, "bomb")
    with Neighbour(sup, "bomb-neighbour") as neighbour:
        assert sup.send("bomb", b"grow").reply.content == b"grow-failed"
    neighbour.check()
    status = sup.status("bomb")
    assert status.limits.memory_bytes == 4 * MIB
    assert 0 < status.memory_bytes <= 4 * MIB
    assert 0 < status.instances[0].memory_bytes <= 4 * MIB
    # Containment happened inside wasm: no trap, no reset.
    assert status.instances[0].resets == 0
    assert_still_answers(sup, "bomb", pid)


def test_memory_bomb_that_touches_every_page(shared_supervisor):
    sup = shared_supervisor
    sup.deploy("hog", "hog", memory_bytes=8 * MIB)
    pid = pid_of(sup, "hog")
    with Neighbour(sup, "hog-neighbour") as neighbour:
        assert sup.send("hog", b"64").reply.content == b"grow-failed"
        assert sup.send("hog", b"2").reply.content == b"ok"
        # 1 page + 3 x 2 MiB fits in 8 MiB; one more 2 MiB does not.
        assert sup.send("hog", b"2").reply.content == b"ok"
        assert sup.send("hog", b"2").reply.content == b"ok"
        assert sup.send("hog", b"2").reply.content == b"grow-failed"
    neighbour.check()
    status = sup.status("hog")
    assert 6 * MIB < status.instances[0].memory_bytes <= 8 * MIB
    assert status.instances[0].resets == 0
    assert pid_of(sup, "hog") == pid
    assert sup.send("hog", b"0").reply.content == b"ok"


# ---------------------------------------------------------------- replies


def test_out_of_bounds_reply_pointer(shared_supervisor):
    sup = shared_supervisor
    sup.deploy("oob-attack", "oob_reply")
    sup.deploy("oob-attacker", "attacker")
    oob_pid, attacker_pid = pid_of(sup, "oob-attack"), pid_of(sup, "oob-attacker")
    with Neighbour(sup, "oob-neighbour") as neighbour:
        attack(sup, "oob-attack", b"x", grpc.StatusCode.INTERNAL, "outside")
        attack(sup, "oob-attacker", b"oob", grpc.StatusCode.INTERNAL, "outside")
        attack(sup, "oob-attack", b"y", grpc.StatusCode.INTERNAL, "outside")
    neighbour.check()
    assert pid_of(sup, "oob-attack") == oob_pid
    assert_still_answers(sup, "oob-attacker", attacker_pid)


def test_reply_larger_than_the_limit(shared_supervisor):
    sup = shared_supervisor
    sup.deploy("big-reply", "big_reply", max_message_bytes=1000)
    pid = pid_of(sup, "big-reply")
    with Neighbour(sup, "big-reply-neighbour") as neighbour:
        details, _ = attack(sup, "big-reply", b"2000", grpc.StatusCode.RESOURCE_EXHAUSTED, "max_message_bytes")
        assert "2000" in details
        reply = sup.send("big-reply", b"500").reply.content
        assert len(reply) == 500 and reply.startswith(b"0123456789abcdef")
        # The limit is inclusive, and a reply far beyond memory is refused for its size first.
        assert len(sup.send("big-reply", b"1000").reply.content) == 1000
        attack(sup, "big-reply", b"1001", grpc.StatusCode.RESOURCE_EXHAUSTED, "max_message_bytes")
        attack(sup, "big-reply", b"4000000000", grpc.StatusCode.RESOURCE_EXHAUSTED, "max_message_bytes")
        # A message larger than the limit is refused before the agent sees it.
        attack(sup, "big-reply", b"1" + b" " * 1000, grpc.StatusCode.RESOURCE_EXHAUSTED, "1001")
    neighbour.check()
    assert pid_of(sup, "big-reply") == pid
    assert len(sup.send("big-reply", b"10").reply.content) == 10


# ---------------------------------------------------------------- traps


@pytest.mark.parametrize(
    "content, words",
    [
        (b"recurse", "stack overflow"),
        (b"unreachable", "unreachable"),
        (b"div0", "division by zero"),
    ],
    ids=["recurse", "unreachable", "div0"],
)
def test_trap_is_internal_and_named(shared_supervisor, content, words):
    sup = shared_supervisor
    name = f"trap-{content.decode()}"
    sup.deploy(name, "trap")
    pid = pid_of(sup, name)
    with Neighbour(sup, f"{name}-neighbour") as neighbour:
        attack(sup, name, content, grpc.StatusCode.INTERNAL, words)
    neighbour.check()
    assert_still_answers(sup, name, pid)
    assert sup.status(name).instances[0].resets == 1


def test_out_of_bounds_store_is_internal_and_named(shared_supervisor):
    sup = shared_supervisor
    sup.deploy("trap-oobstore", "attacker")
    pid = pid_of(sup, "trap-oobstore")
    with Neighbour(sup, "trap-oobstore-neighbour") as neighbour:
        attack(sup, "trap-oobstore", b"oobstore", grpc.StatusCode.INTERNAL, "out-of-bounds")
    neighbour.check()
    assert_still_answers(sup, "trap-oobstore", pid)
    assert sup.status("trap-oobstore").instances[0].resets == 1


# ---------------------------------------------------------------- logs


def test_log_flood_is_capped(shared_supervisor):
    sup = shared_supervisor
    sup.deploy("log-flood", "log_flood")
    pid = pid_of(sup, "log-flood")
    tag = "[log-flood v1]"
    before = len(sup.log_text())
    with Neighbour(sup, "log-flood-neighbour") as neighbour:
        assert sup.send("log-flood", b"go", timeout=60).reply.content == b"flooded"
    neighbour.check()

    def flood_lines() -> list[str]:
        return [line for line in sup.log_text()[before:].splitlines() if tag in line]

    wait_until(lambda: any("dropped" in line for line in flood_lines()), 10, "the dropped-records notice")
    lines = flood_lines()
    assert len(lines) <= 100, f"{len(lines)} log lines from one message"
    assert sum("flood line" in line for line in lines) == 64
    assert pid_of(sup, "log-flood") == pid


# ---------------------------------------------------------------- everything


def test_many_attacks_on_one_agent(shared_supervisor):
    """Every attack in turn on one agent: each fails with its own status, the
    agent answers after each, only real traps replace the instance, and the
    worker process is the same throughout."""
    sup = shared_supervisor
    name = "punchbag"
    sup.deploy(name, "attacker", fuel=20_000_000, timeout_ms=300, memory_bytes=1 * MIB, max_message_bytes=1000)
    pid = pid_of(sup, name)
    internal = grpc.StatusCode.INTERNAL
    exhausted = grpc.StatusCode.RESOURCE_EXHAUSTED
    deadline = grpc.StatusCode.DEADLINE_EXCEEDED
    attacks = [
        # (content, status, words, is a trap)
        (b"loop", exhausted, ("fuel",), True),
        (b"clock", deadline, ("timeout",), True),
        (b"unreachable", internal, ("unreachable",), True),
        (b"div0", internal, ("division by zero",), True),
        (b"recurse", internal, ("stack overflow",), True),
        (b"oobstore", internal, ("out-of-bounds",), True),
        (b"big", exhausted, ("max_message_bytes",), False),
        (b"oob", internal, ("outside",), False),
    ]
    traps = 0
    with Neighbour(sup, "punchbag-neighbour") as neighbour:
        for content, code, words, is_trap in attacks:
            attack(sup, name, content, code, *words)
            traps += is_trap
            assert_still_answers(sup, name, pid)
            assert sup.status(name).instances[0].resets == traps, f"after {content[:16]!r}"
        assert sup.send(name, b"grow").reply.content == b"grow-failed"
    neighbour.check()
    status = sup.status(name)
    assert status.instances[0].pid == pid
    assert status.instances[0].resets == traps == 6
    assert status.errors == len(attacks)
    assert status.instances[0].memory_bytes <= 1 * MIB
    # A message over the limit never reaches the agent: no reset either.
    attack(sup, name, b"x" * 1001, exhausted, "max_message_bytes")
    assert_still_answers(sup, name, pid)
    assert sup.status(name).instances[0].resets == 6
