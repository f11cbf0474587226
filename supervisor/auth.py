"""Who may call: bearer tokens, their roles, and the authorizer (pure).

A caller presents `authorization: Bearer <token>`. The supervisor knows
tokens only by their SHA-256 (from the config, or the admin token it created
at first start), each with a name and a role:

- admin: everything;
- deployer: the lifecycle calls (deploy, reload, rollback, stop, start,
  remove) and everything a reader may do;
- sender: Messaging only;
- reader: status, list, watch and validate.

Every method of caxton.v1 is in `REQUIRED_ROLE`; a method that is not (one
added later and forgotten here) needs admin: the table fails closed. The
standard health and reflection services need no token, so orchestrators and
grpcurl can probe without one.

Nothing here does I/O or knows grpc's server objects: `Authorizer.authorize`
takes the method's full name and the call's metadata and returns the
Principal or raises an AuthError carrying its status code, so the rules are
tested directly and the interceptor around them stays thin.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

import grpc

from caxton.contract import AUTHORIZATION_METADATA_KEY, BEARER_SCHEME

from .errors import CaxtonError
from .settings import Table


class Role(enum.Enum):
    ADMIN = "admin"
    DEPLOYER = "deployer"
    SENDER = "sender"
    READER = "reader"


# What each role may do, as the roles whose calls it may make.
_GRANTS: dict[Role, frozenset[Role]] = {
    Role.ADMIN: frozenset(Role),
    Role.DEPLOYER: frozenset({Role.DEPLOYER, Role.READER}),
    Role.SENDER: frozenset({Role.SENDER}),
    Role.READER: frozenset({Role.READER}),
}

_LIFECYCLE = "/caxton.v1.AgentLifecycle/"
_MESSAGING = "/caxton.v1.Messaging/"

# The role each call needs. Reads need reader, changes to agents need
# deployer, messages need sender; anything else (including another agent's
# message content, should a call ever expose it) needs admin.
REQUIRED_ROLE: dict[str, Role] = {
    _LIFECYCLE + "DeployAgent": Role.DEPLOYER,
    _LIFECYCLE + "StopAgent": Role.DEPLOYER,
    _LIFECYCLE + "StartAgent": Role.DEPLOYER,
    _LIFECYCLE + "RemoveAgent": Role.DEPLOYER,
    _LIFECYCLE + "HotReloadAgent": Role.DEPLOYER,
    _LIFECYCLE + "RollbackAgent": Role.DEPLOYER,
    _LIFECYCLE + "ControlRollout": Role.DEPLOYER,
    _LIFECYCLE + "TraceConversation": Role.READER,
    _LIFECYCLE + "GetAgentStatus": Role.READER,
    _LIFECYCLE + "ListAgents": Role.READER,
    _LIFECYCLE + "ValidateModule": Role.READER,
    _LIFECYCLE + "WatchEvents": Role.READER,
    _LIFECYCLE + "AgentLogs": Role.READER,
    _MESSAGING + "Send": Role.SENDER,
    _MESSAGING + "SendStream": Role.SENDER,
}

# Services anyone who reaches the port may call: probes cannot carry tokens.
PUBLIC_SERVICES = frozenset({
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
})

# The calls that change agents: each one is audited with its outcome.
LIFECYCLE_CALLS = frozenset(method for method, role in REQUIRED_ROLE.items() if role is Role.DEPLOYER)

# Token names become message senders and appear in audit lines.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def required_role(method: str) -> Role | None:
    """The role `method` ("/package.Service/Method") needs; None for a public service."""
    service = method.lstrip("/").split("/", 1)[0]
    if service in PUBLIC_SERVICES:
        return None
    return REQUIRED_ROLE.get(method, Role.ADMIN)


def call_name(method: str) -> str:
    """"/caxton.v1.AgentLifecycle/DeployAgent" -> "DeployAgent"."""
    return method.rsplit("/", 1)[-1] or method


@dataclass(frozen=True)
class Principal:
    """Who is calling: the name and role of the token presented."""

    name: str
    role: Role

    def may(self, needed: Role) -> bool:
        return needed in _GRANTS[self.role]


@dataclass(frozen=True)
class TokenEntry:
    """A token the supervisor accepts, known only by its SHA-256."""

    name: str
    role: Role
    sha256: str  # lowercase hex


class AuthError(CaxtonError):
    """A call refused for who is calling; `code` is its gRPC status, `token`
    the name of the token presented ("-" when none was known)."""

    def __init__(self, message: str, token: str = "-"):
        super().__init__(message)
        self.token = token


class Unauthenticated(AuthError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(AuthError):
    code = grpc.StatusCode.PERMISSION_DENIED


def new_token() -> str:
    """A fresh token: 32 random bytes, URL-safe (43 characters)."""
    return secrets.token_urlsafe(32)


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_token_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ValueError(f"bad token name {name!r}: 1-64 letters, digits, '.', '_' or '-', starting with a "
                         "letter or digit")
    return name


def _bearer(metadata: Iterable[tuple[str, str | bytes]]) -> str:
    values = [value for key, value in metadata if key.lower() == AUTHORIZATION_METADATA_KEY]
    if not values:
        raise Unauthenticated(f"missing token: send '{AUTHORIZATION_METADATA_KEY}: {BEARER_SCHEME} <token>' "
                              "(the caxton CLI takes --token or --token-file)")
    if len(values) > 1:
        raise Unauthenticated(f"more than one '{AUTHORIZATION_METADATA_KEY}' metadata entry")
    value = values[0]
    scheme, _, token = value.partition(" ") if isinstance(value, str) else ("", "", "")
    token = token.strip()
    if scheme.lower() != BEARER_SCHEME.lower() or not token:
        raise Unauthenticated(f"the '{AUTHORIZATION_METADATA_KEY}' metadata must be '{BEARER_SCHEME} <token>'")
    return token


class Authorizer:
    """Checks a call's token against the known tokens and its role against the call."""

    def __init__(self, tokens: Iterable[TokenEntry]):
        self._tokens = [(bytes.fromhex(entry.sha256), entry) for entry in tokens]
        if not self._tokens:
            raise ValueError("an authorizer needs at least one token")

    def replace(self, tokens: Iterable[TokenEntry]) -> None:
        """Accept these tokens from now on (a config reload). One assignment,
        so a call sees either the old set or the new one."""
        entries = [(bytes.fromhex(entry.sha256), entry) for entry in tokens]
        if not entries:
            raise ValueError("an authorizer needs at least one token")
        self._tokens = entries

    def authenticate(self, metadata: Iterable[tuple[str, str | bytes]]) -> Principal:
        """The principal whose token the metadata carries; Unauthenticated if none is known."""
        digest = hashlib.sha256(_bearer(metadata).encode()).digest()
        found: TokenEntry | None = None
        # Every entry is compared, each in constant time: how long this takes
        # says nothing about which token, or how much of one, matched.
        for known, entry in self._tokens:
            if hmac.compare_digest(digest, known):
                found = entry
        if found is None:
            raise Unauthenticated("unknown token")
        return Principal(found.name, found.role)

    def authorize(self, method: str, metadata: Iterable[tuple[str, str | bytes]]) -> Principal | None:
        """The caller of `method`, allowed to make the call; None for a
        public service. Raises Unauthenticated or PermissionDenied."""
        needed = required_role(method)
        if needed is None:
            return None
        principal = self.authenticate(metadata)
        if not principal.may(needed):
            raise PermissionDenied(f"{call_name(method)} needs the {needed.value} role; "
                                   f"token {principal.name!r} has the {principal.role.value} role", principal.name)
        return principal


def bound_sender(principal: Principal, sender: str) -> str:
    """The envelope's sender for a message from `principal`: the token's
    name, so an agent can trust it whoever calls; admin may speak for anyone."""
    name = sender_name(principal)
    return sender if name is None else name


def sender_name(principal: Principal) -> str | None:
    """What every message from `principal` is sent as (bound_sender), or
    None when it may speak for anyone: for a caller that binds many."""
    return None if principal.role is Role.ADMIN else principal.name


def check_policy_choice(principal: Principal, policy: str, default_policy: str) -> None:
    """Choosing a validation policy other than the supervisor's default
    takes the admin role: a looser policy would let anyone who may deploy
    run what the operator chose to keep out."""
    if policy and policy != default_policy and principal.role is not Role.ADMIN:
        raise PermissionDenied(f"choosing the validation policy {policy!r} needs the admin role "
                               f"(token {principal.name!r} has the {principal.role.value} role; "
                               f"leave the policy empty for the default, {default_policy!r})", principal.name)


@dataclass(frozen=True)
class AuthSettings:
    """[auth]: the tokens the supervisor accepts. None configured: the
    supervisor creates an admin token in its state directory at first start."""

    tokens: tuple[TokenEntry, ...] = ()


def _read_token(table: Table) -> TokenEntry:
    name = table.string("name", "")
    try:
        check_token_name(name)
    except ValueError as exc:
        raise table.error("name", str(exc)) from None
    role = table.choice("role", "", [role.value for role in Role])
    if not role:
        raise table.error("role", f"missing; one of {', '.join(role.value for role in Role)}")
    sha256 = table.string("sha256", "").lower()
    if not _SHA256.fullmatch(sha256):
        raise table.error("sha256", "expected the token's SHA-256 as 64 hex digits "
                                    "(`caxton-supervisor token create` prints it)")
    table.finish()
    return TokenEntry(name, Role(role), sha256)


def read_auth(table: Table) -> AuthSettings:
    """[auth] with its [[auth.tokens]]; names and hashes must be unique."""
    tokens: list[TokenEntry] = []
    for entry in table.tables("tokens"):
        token = _read_token(entry)
        for other in tokens:
            if other.name == token.name:
                raise entry.error("name", f"{token.name!r} is taken by an earlier token")
            if other.sha256 == token.sha256:
                raise entry.error("sha256", f"the same token as {other.name!r}")
        tokens.append(token)
    table.finish()
    return AuthSettings(tuple(tokens))
