#!/usr/bin/env python3
"""Interop peer in Python (Debian python3-grpcio, a C-core wrapper with its
own channel stack): calls Health/Check and one method of a server, and checks
the status codes.

    peer_python.py ADDR --proto-dir DIR --gen-dir DIR [--target fixture|pruner|agent]

The _pb2 modules are generated at run time with `protoc --python_out` into
--gen-dir. --target fixture expects tests/rpc/rpc_test_server's fake
handlers; pruner / agent only check behaviour any real server must have.
"""
import argparse
import importlib.util
import os
import subprocess
import sys
import uuid

import grpc

PROTOS = ["agentprune/v1/common.proto", "agentprune/v1/pruner.proto",
          "agentprune/v1/agent.proto", "grpc/health/v1/health.proto"]

failures = 0


def check(cond, what):
    global failures
    if cond:
        print("ok   " + what)
    else:
        failures += 1
        print("FAIL " + what)


def generate(proto_dir, gen_dir, protoc):
    os.makedirs(gen_dir, exist_ok=True)
    subprocess.run([protoc, "--proto_path=" + proto_dir, "--python_out=" + gen_dir] + PROTOS, check=True)
    # Appended, not prepended: the generated "grpc/health" folder must not
    # shadow the grpc library; health_pb2 is loaded by file path instead.
    sys.path.append(gen_dir)
    spec = importlib.util.spec_from_file_location(
        "health_pb2", os.path.join(gen_dir, "grpc", "health", "v1", "health_pb2.py"))
    health = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(health)
    from agentprune.v1 import agent_pb2, pruner_pb2
    return health, pruner_pb2, agent_pb2


def unary(channel, path, req, resp_cls, timeout=10):
    """Returns (status code, response or None, details)."""
    fn = channel.unary_unary(path, request_serializer=lambda m: m.SerializeToString(),
                             response_deserializer=resp_cls.FromString)
    try:
        return grpc.StatusCode.OK, fn(req, timeout=timeout), ""
    except grpc.RpcError as e:
        return e.code(), None, e.details()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("addr")
    ap.add_argument("--proto-dir", required=True)
    ap.add_argument("--gen-dir", required=True)
    ap.add_argument("--protoc", default="protoc")
    ap.add_argument("--target", choices=["fixture", "pruner", "agent"], default="fixture")
    args = ap.parse_args()
    health, pruner, agent = generate(args.proto_dir, args.gen_dir, args.protoc)

    with grpc.insecure_channel(args.addr) as ch:
        code, resp, _ = unary(ch, "/grpc.health.v1.Health/Check", health.HealthCheckRequest(service=""),
                              health.HealthCheckResponse)
        check(code == grpc.StatusCode.OK and resp.status == health.HealthCheckResponse.SERVING,
              "Health/Check \"\" is SERVING (%s)" % code)
        code, _, _ = unary(ch, "/grpc.health.v1.Health/Check",
                           health.HealthCheckRequest(service="no.such.Service"), health.HealthCheckResponse)
        check(code == grpc.StatusCode.NOT_FOUND, "Health/Check of an unknown service is NOT_FOUND (%s)" % code)

        unknown_id = uuid.uuid4().hex  # a well-formed id (32 hex digits) that names nothing
        if args.target == "fixture":
            code, job, _ = unary(ch, "/agentprune.v1.Pruner/GetJob", pruner.GetJobRequest(job_id="py-abc"),
                                 pruner.Job)
            check(code == grpc.StatusCode.OK and job.id == "py-abc", "GetJob echoes the id (%s)" % code)
            code, _, details = unary(ch, "/agentprune.v1.Pruner/GetJob", pruner.GetJobRequest(job_id="missing"),
                                     pruner.Job)
            check(code == grpc.StatusCode.NOT_FOUND and details == "no job missing",
                  "GetJob(missing) is NOT_FOUND with the handler's message (%s, %r)" % (code, details))
            code, _, _ = unary(ch, "/agentprune.v1.Pruner/SubmitJob", pruner.JobSpec(target_sparsity=2.0),
                               pruner.Job)
            check(code == grpc.StatusCode.INVALID_ARGUMENT, "SubmitJob(bad sparsity) is INVALID_ARGUMENT (%s)" % code)
            watch = ch.unary_stream("/agentprune.v1.Pruner/WatchJob",
                                    request_serializer=lambda m: m.SerializeToString(),
                                    response_deserializer=pruner.JobEvent.FromString)
            events = list(watch(pruner.WatchJobRequest(job_id="n=7,sleep=0", from_seq=3), timeout=10))
            check([e.seq for e in events] == list(range(3, 10)), "WatchJob streams 7 events in order")
            code, _, _ = unary(ch, "/agentprune.v1.Pruner/Profile", pruner.ProfileSpec(), pruner.ProfileResult)
            check(code == grpc.StatusCode.UNIMPLEMENTED, "an unregistered method is UNIMPLEMENTED (%s)" % code)
        elif args.target == "pruner":
            code, _, _ = unary(ch, "/agentprune.v1.Pruner/ListJobs", pruner.ListJobsRequest(limit=1),
                               pruner.ListJobsResponse)
            check(code == grpc.StatusCode.OK, "ListJobs is OK (%s)" % code)
            code, _, _ = unary(ch, "/agentprune.v1.Pruner/GetJob", pruner.GetJobRequest(job_id=unknown_id),
                               pruner.Job)
            check(code == grpc.StatusCode.NOT_FOUND, "GetJob of an unknown job is NOT_FOUND (%s)" % code)
        else:
            code, _, _ = unary(ch, "/agentprune.v1.Agent/GetHistory",
                               agent.GetHistoryRequest(session_id=unknown_id), agent.History)
            check(code == grpc.StatusCode.NOT_FOUND, "GetHistory of an unknown session is NOT_FOUND (%s)" % code)

    print("%d failed" % failures)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
