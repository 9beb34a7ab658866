"""Measures the official Python client (google-cloud-tasks over grpcio) the way benches/enqueue.rs
measures the Rust one: CreateTask calls against the same mock server, building each task as the
Python backend did, with process CPU time from getrusage around the timed loop only (imports,
client construction and warm-up excluded).

Concurrency N means N threads sharing one client (one grpcio channel), each taking the next call
from a shared counter: what a synchronous backend (a thread pool of request handlers) does under
load, and the same shape as the Rust benchmark's N tasks on one channel.

Usage: python benches/python_client.py HOST:PORT TASKS [CONCURRENCY]
Prints one JSON object: tasks, concurrency, wall_s, cpu_s, user_s, p50_us, p99_us, max_rss_kb.
"""

import itertools
import json
import resource
import sys
import threading
import time
import uuid

import grpc
from google.cloud import tasks_v2
from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport
from google.protobuf import duration_pb2

PARENT = "projects/bench-project/locations/us-central1/queues/document-processing"
SERVICE_URL = "https://backend-abc123-uc.a.run.app"
SERVICE_ACCOUNT = "tasks-invoker@bench-project.iam.gserviceaccount.com"


def create_document_processing_task(client, document_id, filename):
    # The seed backend's code path: payload, task, create_task.
    payload = {"document_id": str(document_id), "filename": filename}
    task = tasks_v2.Task(
        http_request=tasks_v2.HttpRequest(
            http_method=tasks_v2.HttpMethod.POST,
            url=f"{SERVICE_URL}/api/tasks/process-document",
            headers={"Content-Type": "application/json"},
            body=json.dumps(payload).encode(),
            oidc_token=tasks_v2.OidcToken(
                service_account_email=SERVICE_ACCOUNT, audience=SERVICE_URL
            ),
        ),
        dispatch_deadline=duration_pb2.Duration(seconds=600),
    )
    return client.create_task(parent=PARENT, task=task)


def cpu_seconds():
    """(user + system, user) CPU seconds of this process, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime, usage.ru_utime


def run_calls(client, count, concurrency):
    """Makes `count` calls with `concurrency` in flight; returns each call's latency (s)."""
    if concurrency == 1:
        latencies = []
        for index in range(count):
            started = time.perf_counter()
            create_document_processing_task(client, uuid.uuid4(), f"scan-{index}.pdf")
            latencies.append(time.perf_counter() - started)
        return latencies
    # next() on itertools.count is atomic under the GIL: each index is taken once.
    indexes = itertools.count()
    per_thread = []

    def worker():
        latencies = []
        per_thread.append(latencies)
        while (index := next(indexes)) < count:
            started = time.perf_counter()
            create_document_processing_task(client, uuid.uuid4(), f"scan-{index}.pdf")
            latencies.append(time.perf_counter() - started)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [latency for latencies in per_thread for latency in latencies]


def main():
    host, count = sys.argv[1], int(sys.argv[2])
    concurrency = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    channel = grpc.insecure_channel(host)
    client = tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))
    for index in range(50):
        create_document_processing_task(client, uuid.uuid4(), f"warmup-{index}.pdf")
    cpu_before, wall_before = cpu_seconds(), time.perf_counter()
    latencies = run_calls(client, count, concurrency)
    wall = time.perf_counter() - wall_before
    cpu_after = cpu_seconds()
    assert len(latencies) == count, (len(latencies), count)
    cpu, user = cpu_after[0] - cpu_before[0], cpu_after[1] - cpu_before[1]
    latencies.sort()
    print(
        json.dumps(
            {
                "tasks": count,
                "concurrency": concurrency,
                "wall_s": wall,
                "cpu_s": cpu,
                "user_s": user,
                "p50_us": latencies[len(latencies) // 2] * 1e6,
                "p99_us": latencies[min(len(latencies) - 1, len(latencies) * 99 // 100)] * 1e6,
                "max_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            }
        )
    )


if __name__ == "__main__":
    main()
