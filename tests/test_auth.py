"""Who may call: tokens, roles, the admin token file, and a real supervisor enforcing them.

The rules are tested directly first (supervisor/auth.py is pure), then end
to end: each role against each call of each service, sender binding, the
audit trail and the policy rule, through real gRPC.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import tomllib

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from caxton.contract import ADMIN_TOKEN_FILE
from caxton.supervisor import auth
from caxton.supervisor.admin_token import admin_token
from caxton.supervisor.auth import (
    REQUIRED_ROLE,
    Authorizer,
    PermissionDenied,
    Principal,
    Role,
    TokenEntry,
    Unauthenticated,
    check_policy_choice,
    new_token,
    read_auth,
    token_sha256,
)
from caxton.supervisor.config import ConfigError, config_from_table
from caxton.supervisor.settings import Table
from caxton.v1 import caxton_pb2, caxton_pb2_grpc

from .harness import ROOT, SupervisorProcess, module, wait_until

LIFECYCLE = "/caxton.v1.AgentLifecycle/"
MESSAGING = "/caxton.v1.Messaging/"

# What each role may call, written out rather than derived from the table
# under test: admin everything, deployer lifecycle and reads, sender
# messages, reader reads.
READS = {"GetAgentStatus", "ListAgents", "ValidateModule", "WatchEvents", "AgentLogs", "TraceConversation"}
CHANGES = {"DeployAgent", "StopAgent", "StartAgent", "RemoveAgent", "HotReloadAgent", "RollbackAgent",
           "ControlRollout"}
MESSAGES = {"Send", "SendStream"}
ALLOWED = {
    "admin": READS | CHANGES | MESSAGES,
    "deployer": READS | CHANGES,
    "sender": MESSAGES,
    "reader": READS,
}
NEEDED = {**{m: "reader" for m in READS}, **{m: "deployer" for m in CHANGES}, **{m: "sender" for m in MESSAGES}}


def _full_name(call: str) -> str:
    return (MESSAGING if call in MESSAGES else LIFECYCLE) + call


def _metadata(token: str) -> list[tuple[str, str]]:
    return [("user-agent", "test"), ("authorization", f"Bearer {token}")]


TOKENS = {role.value: f"token-of-{role.value}" for role in Role}


@pytest.fixture
def authorizer() -> Authorizer:
    return Authorizer(TokenEntry(f"{role}-token", Role(role), token_sha256(token)) for role, token in TOKENS.items())


# ---------------------------------------------------------------- the table


def test_every_method_of_caxton_v1_is_in_the_table():
    services = caxton_pb2.DESCRIPTOR.services_by_name.values()
    methods = {f"/{service.full_name}/{method.name}" for service in services for method in service.methods}
    assert methods == set(REQUIRED_ROLE)
    assert {call.rsplit("/", 1)[1] for call in methods} == set(NEEDED)


@pytest.mark.parametrize("role", [role.value for role in Role])
@pytest.mark.parametrize("call", sorted(NEEDED))
def test_each_role_against_each_call(authorizer, role, call):
    method = _full_name(call)
    if call in ALLOWED[role]:
        assert authorizer.authorize(method, _metadata(TOKENS[role])) == Principal(f"{role}-token", Role(role))
    else:
        with pytest.raises(PermissionDenied) as denied:
            authorizer.authorize(method, _metadata(TOKENS[role]))
        assert denied.value.code == grpc.StatusCode.PERMISSION_DENIED
        assert denied.value.message == (f"{call} needs the {NEEDED[call]} role; "
                                        f"token '{role}-token' has the {role} role")


def test_a_method_missing_from_the_table_needs_admin(authorizer):
    method = LIFECYCLE + "PeekAtMessages"
    assert authorizer.authorize(method, _metadata(TOKENS["admin"])).role is Role.ADMIN
    for role in ("deployer", "sender", "reader"):
        with pytest.raises(PermissionDenied, match="PeekAtMessages needs the admin role"):
            authorizer.authorize(method, _metadata(TOKENS[role]))


@pytest.mark.parametrize("method", ["/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch",
                                    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                                    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"])
def test_health_and_reflection_need_no_token(authorizer, method):
    assert authorizer.authorize(method, []) is None


@pytest.mark.parametrize("metadata, message", [
    ([], "missing token: send 'authorization: Bearer <token>'"),
    ([("authorization", "Basic dXNlcjpwYXNz")], "must be 'Bearer <token>'"),
    ([("authorization", "Bearer ")], "must be 'Bearer <token>'"),
    ([("authorization", "Bearer nope")], "unknown token"),
    ([("authorization", "Bearer token-of-admi")], "unknown token"),
    ([("authorization", "Bearer token-of-admin"), ("authorization", "Bearer token-of-admin")],
     "more than one 'authorization'"),
])
def test_missing_malformed_or_unknown_tokens_are_unauthenticated(authorizer, metadata, message):
    for call in NEEDED:
        with pytest.raises(Unauthenticated) as refused:
            authorizer.authorize(_full_name(call), metadata)
        assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED
        assert message in refused.value.message


def test_the_bearer_scheme_is_case_insensitive(authorizer):
    assert authorizer.authenticate([("authorization", f"bearer {TOKENS['reader']}")]).name == "reader-token"


def test_every_known_token_is_compared(authorizer, monkeypatch):
    """A match does not end the search early: the time taken does not say
    which token matched."""
    compared = []

    def compare_digest(a: bytes, b: bytes) -> bool:
        compared.append(b)
        return a == b

    monkeypatch.setattr(auth.hmac, "compare_digest", compare_digest)
    authorizer.authenticate(_metadata(TOKENS["admin"]))
    assert len(compared) == len(TOKENS)


def test_new_tokens_are_long_random_and_url_safe():
    tokens = {new_token() for _ in range(100)}
    assert len(tokens) == 100
    assert all(len(token) >= 43 and token.replace("-", "").replace("_", "").isalnum() for token in tokens)
    token = new_token()
    assert token_sha256(token) == hashlib.sha256(token.encode()).hexdigest()


def test_the_sender_is_the_token_name_except_for_admin():
    assert auth.bound_sender(Principal("ops", Role.ADMIN), "billing") == "billing"
    for role in (Role.DEPLOYER, Role.SENDER, Role.READER):
        assert auth.bound_sender(Principal("bot", role), "billing") == "bot"
        assert auth.bound_sender(Principal("bot", role), "") == "bot"


# ---------------------------------------------------------------- the policy rule


def test_choosing_a_policy_other_than_the_default_takes_admin():
    deployer = Principal("ci", Role.DEPLOYER)
    check_policy_choice(deployer, "", "default")
    check_policy_choice(deployer, "default", "default")
    check_policy_choice(Principal("root", Role.ADMIN), "permissive", "default")
    with pytest.raises(PermissionDenied) as denied:
        check_policy_choice(deployer, "permissive", "default")
    assert "choosing the validation policy 'permissive' needs the admin role" in denied.value.message
    assert denied.value.token == "ci"
    with pytest.raises(PermissionDenied):
        check_policy_choice(Principal("r", Role.READER), "default", "strict")


# ---------------------------------------------------------------- config


def _auth(tokens: list[dict]) -> auth.AuthSettings:
    return read_auth(Table({"tokens": tokens}, "auth"))


def test_tokens_from_config():
    sha = token_sha256("x")
    settings = _auth([{"name": "ci", "role": "deployer", "sha256": sha.upper()}])
    assert settings.tokens == (TokenEntry("ci", Role.DEPLOYER, sha),)
    config = config_from_table({"auth": {"tokens": [{"name": "ops", "role": "admin", "sha256": sha}]}})
    assert config.auth.tokens == (TokenEntry("ops", Role.ADMIN, sha),)
    assert config_from_table({}).auth.tokens == ()


@pytest.mark.parametrize("tokens, field, problem", [
    ([{"name": "c i", "role": "admin", "sha256": "a" * 64}], "auth.tokens[0].name", "bad token name 'c i'"),
    ([{"role": "admin", "sha256": "a" * 64}], "auth.tokens[0].name", "bad token name ''"),
    ([{"name": "ci", "role": "root", "sha256": "a" * 64}], "auth.tokens[0].role", "expected one of"),
    ([{"name": "ci", "sha256": "a" * 64}], "auth.tokens[0].role", "missing"),
    ([{"name": "ci", "role": "admin", "sha256": "xyz"}], "auth.tokens[0].sha256", "64 hex digits"),
    ([{"name": "ci", "role": "admin", "sha256": "a" * 64, "token": "t"}], "auth.tokens[0].token", "unknown"),
    ([{"name": "ci", "role": "admin", "sha256": "a" * 64}, {"name": "ci", "role": "reader", "sha256": "b" * 64}],
     "auth.tokens[1].name", "'ci' is taken"),
    ([{"name": "a", "role": "admin", "sha256": "a" * 64}, {"name": "b", "role": "reader", "sha256": "a" * 64}],
     "auth.tokens[1].sha256", "the same token as 'a'"),
])
def test_bad_tokens_in_config_name_the_field(tokens, field, problem):
    with pytest.raises(ConfigError) as error:
        _auth(tokens)
    assert error.value.field == field
    assert problem in error.value.problem


def test_tokens_must_be_an_array_of_tables():
    with pytest.raises(ConfigError, match=r"auth.tokens: expected an array of tables \(\[\[auth.tokens\]\]\)"):
        config_from_table({"auth": {"tokens": "abc"}})
    with pytest.raises(ConfigError, match=r"auth.tokens\[0\]: expected a table"):
        config_from_table({"auth": {"tokens": ["abc"]}})


def _token_create(name: str, role: str) -> tuple[str, str]:
    """`caxton-supervisor token create`: (the token, the TOML lines)."""
    result = subprocess.run([sys.executable, "-m", "caxton.supervisor", "token", "create", "--name", name,
                             "--role", role], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr
    first, blank, *toml = result.stdout.splitlines()
    assert first.startswith("token: ") and blank == ""
    assert "shown only this once" in result.stderr
    return first.removeprefix("token: "), "\n".join(toml) + "\n"


def test_token_create_prints_a_token_and_the_lines_that_accept_it():
    token, toml = _token_create("ci-bot", "deployer")
    assert token not in toml
    config = config_from_table(tomllib.loads(toml))
    principal = Authorizer(config.auth.tokens).authorize(LIFECYCLE + "DeployAgent", _metadata(token))
    assert principal == Principal("ci-bot", Role.DEPLOYER)


def test_token_create_refuses_a_bad_name():
    result = subprocess.run([sys.executable, "-m", "caxton.supervisor", "token", "create", "--name", "a b",
                             "--role", "reader"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 2
    assert result.stdout == ""
    assert "bad token name 'a b'" in result.stderr


# ---------------------------------------------------------------- the admin token file


def test_the_admin_token_is_created_once_owner_only(tmp_path):
    entry, created = admin_token(tmp_path)
    assert created
    path = tmp_path / ADMIN_TOKEN_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = path.read_text().strip()
    assert len(token) >= 43
    assert entry == TokenEntry("admin", Role.ADMIN, token_sha256(token))
    assert admin_token(tmp_path) == (entry, False)
    assert path.read_text().strip() == token
    assert os.listdir(tmp_path) == [ADMIN_TOKEN_FILE]  # no temporary file left behind


def test_an_admin_token_file_others_can_read_is_refused(tmp_path):
    admin_token(tmp_path)
    path = tmp_path / ADMIN_TOKEN_FILE
    path.chmod(0o644)
    with pytest.raises(ValueError, match=r"readable or writable by others \(mode 0644\): run `chmod 600"):
        admin_token(tmp_path)


def test_an_admin_token_symlink_or_empty_file_is_refused(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("a-token\n")
    elsewhere.chmod(0o600)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / ADMIN_TOKEN_FILE).symlink_to(elsewhere)
    with pytest.raises(OSError):
        admin_token(tmp_path / "state")
    (tmp_path / "state" / ADMIN_TOKEN_FILE).unlink()
    empty = tmp_path / "state" / ADMIN_TOKEN_FILE
    empty.touch(mode=0o600)
    with pytest.raises(ValueError, match="is empty"):
        admin_token(tmp_path / "state")


# ---------------------------------------------------------------- a real supervisor


class Callers:
    """Stubs for one token on a fresh channel."""

    def __init__(self, sup: SupervisorProcess, token: str | None):
        if token is None:
            self.channel = grpc.secure_channel(
                sup.address, grpc.local_channel_credentials(grpc.LocalConnectionType.LOCAL_TCP))
        else:
            self.channel = sup.connect(token)
        self.lifecycle = caxton_pb2_grpc.AgentLifecycleStub(self.channel)
        self.messaging = caxton_pb2_grpc.MessagingStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def call(self, name: str) -> grpc.RpcError | None:
        """Make call `name` in a way that needs no agent; the error it ends with."""
        nobody = "auth-nobody"
        lifecycle, messaging = self.lifecycle, self.messaging
        calls = {
            "DeployAgent": lambda: lifecycle.DeployAgent(
                caxton_pb2.DeployAgentRequest(name=nobody, module=b"not a module"), timeout=30),
            "StopAgent": lambda: lifecycle.StopAgent(caxton_pb2.StopAgentRequest(name=nobody), timeout=30),
            "StartAgent": lambda: lifecycle.StartAgent(caxton_pb2.StartAgentRequest(name=nobody), timeout=30),
            "RemoveAgent": lambda: lifecycle.RemoveAgent(caxton_pb2.RemoveAgentRequest(name=nobody), timeout=30),
            "HotReloadAgent": lambda: lifecycle.HotReloadAgent(
                caxton_pb2.HotReloadAgentRequest(name=nobody, module=module("echo")), timeout=30),
            "RollbackAgent": lambda: lifecycle.RollbackAgent(caxton_pb2.RollbackAgentRequest(name=nobody), timeout=30),
            "ControlRollout": lambda: lifecycle.ControlRollout(
                caxton_pb2.ControlRolloutRequest(name=nobody, action="abort"), timeout=30),
            "GetAgentStatus": lambda: lifecycle.GetAgentStatus(
                caxton_pb2.GetAgentStatusRequest(name=nobody), timeout=30),
            "ListAgents": lambda: lifecycle.ListAgents(caxton_pb2.ListAgentsRequest(), timeout=30),
            "ValidateModule": lambda: lifecycle.ValidateModule(
                caxton_pb2.ValidateModuleRequest(module=module("echo")), timeout=30),
            "WatchEvents": lambda: next(iter(lifecycle.WatchEvents(caxton_pb2.WatchEventsRequest(), timeout=30))),
            "AgentLogs": lambda: list(lifecycle.AgentLogs(caxton_pb2.AgentLogsRequest(name=nobody), timeout=30)),
            "TraceConversation": lambda: list(lifecycle.TraceConversation(
                caxton_pb2.TraceConversationRequest(conversation_id=nobody), timeout=30)),
            "Send": lambda: messaging.Send(
                caxton_pb2.SendRequest(message=caxton_pb2.AgentMessage(receiver=nobody)), timeout=30),
            "SendStream": lambda: list(messaging.SendStream(iter([caxton_pb2.SendStreamRequest(
                items=[caxton_pb2.StreamItem(id=1, message=caxton_pb2.AgentMessage(receiver=nobody))])]), timeout=30)),
        }
        try:
            calls[name]()
        except grpc.RpcError as exc:
            return exc
        return None


@pytest.fixture(scope="module")
def tokens() -> dict[str, tuple[str, str]]:
    """role -> (token name, token), each made by `caxton-supervisor token create`."""
    return {role.value: (f"ci-{role.value}", _token_create(f"ci-{role.value}", role.value)[0]) for role in Role}


@pytest.fixture(scope="module")
def secured(tmp_path_factory, tokens):
    """A supervisor whose config names a token of each role."""
    config = "worker_pool = 1\n"
    for role, (name, token) in tokens.items():
        config += f'[[auth.tokens]]\nname = "{name}"\nrole = "{role}"\nsha256 = "{token_sha256(token)}"\n'
    sup = SupervisorProcess(tmp_path_factory.mktemp("secured") / "state", config=config, token=tokens["admin"][1])
    sup.start()
    yield sup
    sup.stop()


@pytest.mark.parametrize("role", [role.value for role in Role])
def test_each_role_against_each_service(secured, tokens, role):
    callers = Callers(secured, tokens[role][1])
    try:
        for call in sorted(NEEDED):
            error = callers.call(call)
            code = error.code() if error is not None else grpc.StatusCode.OK
            if call in ALLOWED[role]:
                assert code not in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED), \
                    f"{role} refused {call}: {error.details() if error else ''}"
            else:
                assert code == grpc.StatusCode.PERMISSION_DENIED, f"{role} got {code.name} for {call}"
                assert error.details() == (f"{call} needs the {NEEDED[call]} role; "
                                           f"token 'ci-{role}' has the {role} role")
    finally:
        callers.close()


@pytest.mark.parametrize("token", [None, "not-a-token"])
def test_no_token_or_an_unknown_one_is_unauthenticated(secured, token):
    callers = Callers(secured, token)
    try:
        for call in sorted(NEEDED):
            error = callers.call(call)
            assert error is not None and error.code() == grpc.StatusCode.UNAUTHENTICATED, call
            assert error.details() == ("unknown token" if token else
                                       "missing token: send 'authorization: Bearer <token>' "
                                       "(the caxton CLI takes --token or --token-file)")
        # the standard services stay open: probes and grpcurl carry no token
        health = health_pb2_grpc.HealthStub(callers.channel)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == \
            health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(callers.channel)
        answer = next(iter(reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)))
        assert "caxton.v1.Messaging" in [s.name for s in answer.list_services_response.service]
    finally:
        callers.close()


def test_no_admin_token_file_when_the_config_names_tokens(secured):
    assert not (secured.state_dir / ADMIN_TOKEN_FILE).exists()


def _envelope(response: caxton_pb2.SendResponse) -> dict:
    assert response.has_reply
    return json.loads(response.reply.content)


def test_the_sender_is_bound_to_the_token(secured, tokens):
    secured.deploy("auth-info", "info")
    sender = Callers(secured, tokens["sender"][1])
    try:
        message = caxton_pb2.AgentMessage(receiver="auth-info", sender="ci-admin", content=b"x")
        response = sender.messaging.Send(caxton_pb2.SendRequest(message=message), timeout=30)
        assert _envelope(response)["sender"] == "ci-sender"
        assert response.reply.receiver == "ci-sender"
        stream = sender.messaging.SendStream(iter([caxton_pb2.SendStreamRequest(
            items=[caxton_pb2.StreamItem(id=7, message=message)])]), timeout=30)
        (frame,) = list(stream)
        (result,) = frame.results
        assert json.loads(result.reply.content)["sender"] == "ci-sender"
        # admin may speak for anyone: the envelope keeps the sender it gave
        assert _envelope(secured.send("auth-info", b"x", sender="ops-console"))["sender"] == "ops-console"
    finally:
        sender.close()


def test_lifecycle_calls_are_audited(secured, tokens):
    deployer, reader = Callers(secured, tokens["deployer"][1]), Callers(secured, tokens["reader"][1])
    watch = secured.lifecycle.WatchEvents(caxton_pb2.WatchEventsRequest(agent="auth-audited"), timeout=60)
    try:
        events = iter(watch)
        assert next(events).kind == "watching"
        deployer.lifecycle.DeployAgent(caxton_pb2.DeployAgentRequest(name="auth-audited", module=module("echo")),
                                       timeout=60)
        with pytest.raises(grpc.RpcError):
            reader.lifecycle.StopAgent(caxton_pb2.StopAgentRequest(name="auth-audited"), timeout=30)
        with pytest.raises(grpc.RpcError):
            deployer.lifecycle.StartAgent(caxton_pb2.StartAgentRequest(name="auth-audited"), timeout=30)

        wait_until(lambda: "token=ci-deployer call=DeployAgent agent='auth-audited' outcome=OK"
                   in secured.log_text(), 10, "the audit line of the deploy")
        log = secured.log_text()
        assert ("token=ci-reader call=StopAgent agent='' outcome=PERMISSION_DENIED: StopAgent needs the "
                "deployer role; token 'ci-reader' has the reader role") in log
        assert "token=ci-deployer call=StartAgent agent='auth-audited' outcome=FAILED_PRECONDITION: " in log
        # the first audit event on the agent (the watch's own deadline bounds the wait)
        audit = next(event for event in events if event.kind == "audit")
        assert audit.message == "DeployAgent by ci-deployer: OK"
    finally:
        watch.cancel()
        deployer.close()
        reader.close()


def test_choosing_a_validation_policy_takes_admin(secured, tokens):
    deployer, reader = Callers(secured, tokens["deployer"][1]), Callers(secured, tokens["reader"][1])
    simd = module("simd")
    try:
        with pytest.raises(grpc.RpcError) as denied:
            deployer.lifecycle.DeployAgent(
                caxton_pb2.DeployAgentRequest(name="auth-simd", module=simd, policy="permissive"), timeout=60)
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "choosing the validation policy 'permissive' needs the admin role" in denied.value.details()
        with pytest.raises(grpc.RpcError) as denied:
            reader.lifecycle.ValidateModule(caxton_pb2.ValidateModuleRequest(module=simd, policy="permissive"),
                                            timeout=30)
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        # the default policy, named or not, is every deployer's
        with pytest.raises(grpc.RpcError) as rejected:
            deployer.lifecycle.DeployAgent(
                caxton_pb2.DeployAgentRequest(name="auth-simd", module=simd, policy="default"), timeout=60)
        assert rejected.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        deployer.lifecycle.DeployAgent(caxton_pb2.DeployAgentRequest(name="auth-plain", module=module("echo")),
                                       timeout=60)
        with pytest.raises(grpc.RpcError) as denied:
            deployer.lifecycle.HotReloadAgent(
                caxton_pb2.HotReloadAgentRequest(name="auth-plain", module=simd, policy="permissive"), timeout=60)
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        # the admin may choose
        status = secured.lifecycle.DeployAgent(
            caxton_pb2.DeployAgentRequest(name="auth-simd", module=simd, policy="permissive"), timeout=60).status
        assert status.policy == "permissive"
    finally:
        deployer.close()
        reader.close()


def test_the_admin_token_survives_a_restart(tmp_path):
    state = tmp_path / "state"
    first = SupervisorProcess(state).start()
    try:
        token = first.token
        assert token and first.token_file.read_text().strip() == token
        assert stat.S_IMODE(first.token_file.stat().st_mode) == 0o600
        first.lifecycle.ListAgents(caxton_pb2.ListAgentsRequest(), timeout=30)
    finally:
        first.stop()
    second = SupervisorProcess(state).start()
    try:
        assert second.token == token
        second.lifecycle.ListAgents(caxton_pb2.ListAgentsRequest(), timeout=30)
    finally:
        second.stop()


def test_an_admin_token_file_others_can_read_stops_the_start(tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    admin_token(state)
    (state / ADMIN_TOKEN_FILE).chmod(0o640)
    result = subprocess.run([sys.executable, "-m", "caxton.supervisor", "--listen", "127.0.0.1:0",
                             "--state-dir", str(state)], capture_output=True, text=True, cwd=ROOT, timeout=60,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 1
    assert f"{state / ADMIN_TOKEN_FILE} is readable or writable by others (mode 0640)" in result.stderr


def test_the_log_names_the_admin_token_file_but_never_the_token(tmp_path):
    sup = SupervisorProcess(tmp_path / "state").start()
    try:
        sup.lifecycle.DeployAgent(caxton_pb2.DeployAgentRequest(name="auth-logged", module=module("echo")),
                                  timeout=60)
    finally:
        sup.stop()
    log = sup.log_text()
    assert f"created an admin token in {sup.token_file}" in log
    assert "token=admin call=DeployAgent agent='auth-logged' outcome=OK" in log
    assert sup.token not in log
