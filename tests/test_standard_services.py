"""The standard gRPC services that tools like grpcurl rely on."""

from __future__ import annotations

from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc


def test_health_reports_serving(shared_supervisor):
    stub = health_pb2_grpc.HealthStub(shared_supervisor.channel)
    for service in ("", "caxton.v1.AgentLifecycle", "caxton.v1.Messaging"):
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_public_services(shared_supervisor):
    stub = reflection_pb2_grpc.ServerReflectionStub(shared_supervisor.channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    (response,) = list(stub.ServerReflectionInfo(iter([request]), timeout=10))
    names = {service.name for service in response.list_services_response.service}
    assert {"caxton.v1.AgentLifecycle", "caxton.v1.Messaging", "grpc.health.v1.Health"} <= names
    # And the descriptors are there, so a client can build requests.
    request = reflection_pb2.ServerReflectionRequest(file_containing_symbol="caxton.v1.Messaging")
    (response,) = list(stub.ServerReflectionInfo(iter([request]), timeout=10))
    assert response.file_descriptor_response.file_descriptor_proto
