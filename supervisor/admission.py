"""Admission: whether a deploy or reload may go ahead, and what it holds meanwhile.

A request is admitted in steps, cheapest first: every value the client
supplied within the operator's caps (caps.py); its module validated in one
of the few validation slots (validation holds the module and the validator's
working memory, so `validation_concurrency` bounds what many large modules
at once can cost); then, under the registry's lock, together with the change
it admits, the host-wide quotas.

A new name is claimed by its deploy until the first start ends, so that a
retry arriving meanwhile (a client that lost its connection) waits for that
outcome rather than reporting on an agent that may yet vanish. A reload that
raises an agent's memory holds the growth against the committed-memory
quota until it ends.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields

from .agent import Agent
from .caps import Usage, check_label, check_limits, check_quota, check_replicas
from .config import Config, Limits
from .deadline import Deadline
from .errors import AlreadyExists, InvalidArgument, ModuleRejected, Unavailable
from .policy import Policy
from .restart import RestartSettings
from .specs import DeploySpec, LimitOverrides, check_name, quoted
from .validation import Report, validate

# How long a request waits for a validation slot before it is told to try again.
VALIDATION_WAIT_S = 30.0


@dataclass(frozen=True)
class Wanted:
    """What a deploy asks for, to compare with an agent that exists already."""

    module_sha256: str
    limits: Limits
    policy: str
    replicas: int
    restart: RestartSettings
    label: str

    @staticmethod
    def of(agent: Agent) -> Wanted:
        return Wanted(agent.version.module_sha256, agent.limits, agent.policy, agent.replicas,
                      agent.recovery.settings, agent.version.label)

    def differences(self, other: Wanted) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name) != getattr(other, f.name)]


class Admission:
    """The admission of one runtime: `agents` and `lock` are its registry
    and the lock that guards it (held by the caller where a method says so)."""

    def __init__(self, config: Config, agents: Mapping[str, Agent], lock: threading.Lock):
        self.config = config
        self.caps = config.caps
        self._agents = agents
        self._lock = lock
        self._validating = threading.BoundedSemaphore(config.validation_concurrency)
        # A retry waits this long for a first deploy still starting its
        # workers (each start has worker_start_timeout_s).
        self._claim_wait_s = 2 * config.worker_start_timeout_s
        # New names between their record and the end of their first start.
        self._deploying: dict[str, threading.Event] = {}
        # What reloads under way add to the quotas until they end.
        self._growing: list[Usage] = []
        # What the registry's agents hold, kept as agents join and leave it
        # (`joined`, `left`) and summed again only when some agent's version
        # changed since (Agent.version_changed): summed for every deploy, it
        # cost 1.3 ms at 1,000 agents, under the registry's lock. None: not
        # summed yet.
        self._total: Usage | None = None
        self._total_as_of = 0

    def reconfigure(self, config: Config) -> None:
        """New caps, policies and default limits for requests from now on."""
        self.config = config
        self.caps = config.caps

    # ------------------------------------------------------------ the request's own values

    def check_deploy(self, spec: DeploySpec) -> int:
        """The deploy's values within the caps; returns its replica count."""
        check_name(spec.name)
        replicas = 1 if spec.replicas is None else spec.replicas
        check_replicas(self.caps, replicas)
        check_limits(self.caps, spec.limits)
        check_label(self.caps, spec.label)
        return replicas

    def check_reload(self, limits: LimitOverrides, label: str) -> None:
        check_limits(self.caps, limits)
        check_label(self.caps, label)

    def policy(self, name: str) -> Policy:
        """The validation policy `name` ("" = the default one)."""
        name = name or self.config.default_policy
        try:
            return self.config.policies[name]
        except KeyError:
            known = ", ".join(sorted(self.config.policies))
            raise InvalidArgument(f"no validation policy named {quoted(name)} (known: {known})") from None

    # ------------------------------------------------------------ validation

    @contextlib.contextmanager
    def _validation_slot(self) -> Iterator[None]:
        """One of the few validations that may run at once; Unavailable if
        none comes free within VALIDATION_WAIT_S."""
        if not self._validating.acquire(timeout=VALIDATION_WAIT_S):
            raise Unavailable(f"the supervisor is busy validating other modules "
                              f"({self.config.validation_concurrency} at a time); try again")
        try:
            yield
        finally:
            self._validating.release()

    def dry_run(self, module: bytes, policy_name: str, limits: LimitOverrides | None) -> Report:
        """ValidateModule: the report, held to the caps a deploy would be."""
        memory_limit = None
        if limits is not None:
            check_limits(self.caps, limits)
            memory_limit = limits.apply(self.config.limits).memory_bytes
        policy = self.policy(policy_name)
        with self._validation_slot():
            return validate(module, policy, memory_limit)

    def validated(self, module: bytes, policy: Policy, limits: Limits, keeps_serving: str = "") -> tuple[Report, bytes]:
        """The report on a module that passed, and the binary to store (a
        module that could not be read never passes); ModuleRejected if not."""
        with self._validation_slot():
            report = validate(module, policy, limits.memory_bytes)
        if not report.valid or report.wasm is None:
            raise ModuleRejected(f"module rejected by policy {policy.name!r}{keeps_serving}: {report.summary()}",
                                 report)
        return report, report.wasm

    # ------------------------------------------------------------ host-wide quotas

    def _held(self) -> Usage:
        """What the agents hold of the quotas, with what reloads under way
        add (caller holds the lock)."""
        total = self._total
        if total is None or self._total_as_of != Agent.version_changed or total.agents != len(self._agents):
            # Read first: a version changed during the sum makes the next
            # call sum again. (The count of agents only guards against a
            # join or leave that was not reported.)
            as_of = Agent.version_changed
            total = Usage.total((a.limits.memory_bytes, a.replicas) for a in self._agents.values())
            self._total, self._total_as_of = total, as_of
        return sum(self._growing, total)

    def joined(self, agent: Agent) -> None:
        """`agent` was put in the registry (caller holds the lock)."""
        if self._total is not None:
            self._total += Usage.of(agent.limits.memory_bytes, agent.replicas)

    def left(self, agent: Agent) -> None:
        """`agent` was taken out of the registry (caller holds the lock)."""
        if self._total is not None:
            self._total -= Usage.of(agent.limits.memory_bytes, agent.replicas)

    def claim(self, name: str, wanted: Wanted) -> bool:
        """True if an agent `name` exists exactly as `wanted` (a repeated
        deploy: nothing to do); AlreadyExists if it exists otherwise; else
        False, with the name claimed for this deploy within the quotas: the
        caller records it and calls `settle` once its first start has ended."""
        deadline = Deadline.after(self._claim_wait_s)
        while True:
            with self._lock:
                pending = self._deploying.get(name)
                existing = self._agents.get(name)
                if pending is None and existing is None:
                    check_quota(self.caps, self._held(), Usage.of(wanted.limits.memory_bytes, wanted.replicas))
                    self._deploying[name] = threading.Event()
                    return False
                if pending is None and existing is not None:
                    differences = wanted.differences(Wanted.of(existing))
                    if not differences:
                        return True
                    raise AlreadyExists(f"an agent named {name!r} already exists with a different "
                                        f"{', '.join(differences)} (remove it first)")
            # A deploy of this name is still starting it (a retry overtook
            # its first attempt): that one's outcome decides.
            if pending is not None and not pending.wait(deadline.timeout()):
                raise Unavailable(f"a deploy of {name!r} is still starting it; try again")

    def settle(self, name: str) -> None:
        """The deploy that claimed `name` has ended, one way or the other."""
        with self._lock:
            self._deploying.pop(name).set()

    def check_growth(self, growth: Usage) -> None:
        """ResourceExhausted if `growth` would pass a quota (caller holds the lock)."""
        check_quota(self.caps, self._held(), growth)

    def hold(self, growth: Usage) -> None:
        """Count `growth` (checked) until `release` (caller holds the lock)."""
        self._growing.append(growth)

    def release(self, growth: Usage) -> None:
        with self._lock:
            self._growing.remove(growth)
