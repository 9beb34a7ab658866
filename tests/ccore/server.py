#!/usr/bin/env python3
"""Cloud Tasks' CreateTask and BatchCreateTasks on gRPC's C-core server (the `grpcio` package).

A second HTTP/2 implementation for the transport tests: C-core is what gRPC's own servers run,
with its own stream limits, connection ageing (GOAWAY) and PING policing, none of it shared with
the h2 crate the client and the crate's mock use. tests/ccore.rs drives it.

It compiles the vendored protos in proto/ with grpcio-tools at start, prints `PORT <port>` once
it listens, and serves until its standard input closes; then it prints one JSON line, what it
stored (task count per document ID, ALREADY_EXISTS answers, peers seen), and exits.
"""

import argparse
import asyncio
import collections
import json
import os
import sys
import tempfile
import uuid

import grpc
from grpc_tools import protoc

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROTO_DIR = os.path.join(ROOT, "proto")


def compile_protos(out_dir):
    wanted = []
    for base, _, files in os.walk(PROTO_DIR):
        for name in files:
            if name.endswith(".proto"):
                wanted.append(os.path.relpath(os.path.join(base, name), PROTO_DIR))
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    args = ["protoc", f"-I{PROTO_DIR}", f"-I{include}", f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}"] + sorted(wanted)
    # protoc warns about unused imports in Google's own protos: noise, unless it fails.
    log = os.path.join(out_dir, "protoc.log")
    saved = os.dup(2)
    with open(log, "w") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            failed = protoc.main(args) != 0
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    if failed:
        sys.exit("protoc failed on proto/:\n" + open(log).read())
    sys.path.insert(0, out_dir)


def parse_args():
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--max-streams", type=int, default=100,
                        help="concurrent streams per connection (Google's front ends: 100)")
    parser.add_argument("--max-age-ms", type=int, default=0,
                        help="retire each connection with GOAWAY after this long (0: never)")
    parser.add_argument("--max-age-grace-ms", type=int, default=30000)
    parser.add_argument("--permit-pings-ms", type=int, default=0,
                        help="accept client PINGs this often, even without calls (0: C-core's "
                             "defaults, which answer idle PINGs with GOAWAY too_many_pings)")
    parser.add_argument("--min-ping-interval-ms", type=int, default=0,
                        help="C-core's default PING policy (2 strikes, no PING without calls for "
                             "2 hours) with this minimum between PINGs without data instead of "
                             "5 minutes (0: 5 minutes)")
    parser.add_argument("--delay-ms", type=float, default=2.0,
                        help="time each call takes, so that calls overlap")
    return parser.parse_args()


async def main():
    args = parse_args()
    compile_protos(tempfile.mkdtemp(prefix="ccore-protos-"))
    from google.cloud.tasks.v2 import cloudtasks_pb2, cloudtasks_pb2_grpc
    from google.longrunning import operations_pb2
    from google.rpc import status_pb2

    documents = collections.Counter()
    names = set()
    state = {"already_exists": 0, "calls": 0}
    peers = set()
    operations = {}

    def store(request):
        task = request.task
        if task.name:
            if task.name in names:
                return None
        else:
            task.name = f"{request.parent}/tasks/{uuid.uuid4().int}"
        names.add(task.name)
        body = json.loads(task.http_request.body or b"{}")
        documents[body.get("document_id", "?")] += 1
        return task

    class CloudTasks(cloudtasks_pb2_grpc.CloudTasksServicer):
        async def CreateTask(self, request, context):
            state["calls"] += 1
            peers.add(context.peer())
            await asyncio.sleep(args.delay_ms / 1000)
            task = store(request)
            if task is None:
                state["already_exists"] += 1
                await context.abort(grpc.StatusCode.ALREADY_EXISTS, "Requested entity already exists")
            return task

        async def BatchCreateTasks(self, request, context):
            state["calls"] += 1
            peers.add(context.peer())
            await asyncio.sleep(args.delay_ms / 1000)
            if request.request_id in operations:
                return operations[request.request_id]
            created, failed = [], {}
            for index, create in enumerate(request.requests):
                task = store(create)
                if task is None:
                    state["already_exists"] += 1
                    failed[index] = status_pb2.Status(code=grpc.StatusCode.ALREADY_EXISTS.value[0],
                                                      message="Requested entity already exists")
                else:
                    created.append(task)
            metadata = cloudtasks_pb2.BatchCreateTasksMetadata(
                state=(cloudtasks_pb2.BatchCreateTasksMetadata.PARTIALLY_SUCCEEDED if failed
                       else cloudtasks_pb2.BatchCreateTasksMetadata.SUCCEEDED))
            for index, status in failed.items():
                metadata.failed_requests[index].CopyFrom(status)
            location = request.parent.split("/queues/")[0]
            operation = operations_pb2.Operation(name=f"{location}/operations/{uuid.uuid4().hex}",
                                                 done=True)
            operation.metadata.Pack(metadata)
            operation.response.Pack(cloudtasks_pb2.BatchCreateTasksResponse(tasks=created))
            if request.request_id:
                operations[request.request_id] = operation
            return operation

    options = [("grpc.max_concurrent_streams", args.max_streams)]
    if args.max_age_ms:
        options += [("grpc.max_connection_age_ms", args.max_age_ms),
                    ("grpc.max_connection_age_grace_ms", args.max_age_grace_ms)]
    if args.permit_pings_ms:
        options += [("grpc.keepalive_permit_without_calls", 1),
                    ("grpc.http2.min_ping_interval_without_data_ms", args.permit_pings_ms),
                    ("grpc.http2.max_ping_strikes", 0)]
    if args.min_ping_interval_ms:
        options += [("grpc.http2.min_ping_interval_without_data_ms", args.min_ping_interval_ms)]
    server = grpc.aio.server(options=options)
    cloudtasks_pb2_grpc.add_CloudTasksServicer_to_server(CloudTasks(), server)
    host = f"[{args.host}]" if ":" in args.host else args.host
    port = server.add_insecure_port(f"{host}:{args.port}")
    await server.start()
    print(f"PORT {port}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await server.stop(grace=None)
    print(json.dumps({
        "documents": documents,
        "already_exists": state["already_exists"],
        "calls": state["calls"],
        "peers": len(peers),
    }), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
