"""gcloud-tasks-emulator for tests/gcloud_tasks_emulator.rs.

Usage: serve.py QUEUE

Starts the emulator as its own `Server.start` does (gcloud_tasks_emulator/server.py: the same
servicer, queue state and dispatching thread, two gRPC workers), with the queue QUEUE created,
but listening on 127.0.0.1 at a port the system picks rather than on every interface at a fixed
one. Prints `PORT <n>` once the gRPC server serves, and stops when stdin closes.

The emulator dispatches each task to its own URL (`http_request.url`), so the handler the test
runs receives the deliveries; it sends no OIDC token.
"""

import logging
import sys
import warnings
from concurrent import futures

# google-api-core warns of Python versions it will stop supporting one day.
warnings.filterwarnings("ignore", category=FutureWarning)

import grpc  # noqa: E402
from gcloud_tasks_emulator import server as emulator  # noqa: E402


def main():
    queue = sys.argv[1]
    # Warnings and dispatch errors only: the emulator logs every task at INFO.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    # A call it lacks raises NotImplementedError in the servicer, which grpc logs with a
    # traceback; the client's error says the same in one line.
    logging.getLogger("grpc._server").setLevel(logging.CRITICAL)
    state = emulator.QueueState(
        emulator.DEFAULT_TARGET_HOST, emulator.DEFAULT_TARGET_PORT, max_retries=-1
    )
    state.create_queue(queue.rsplit("/", 2)[0], emulator.Queue(name=queue))
    api = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    emulator.add_CloudTasksServicer_to_server(emulator.Greeter(state), api)
    port = api.add_insecure_port("127.0.0.1:0")
    api.start()
    processor = emulator.Processor(state)
    processor.start()
    print(f"PORT {port}", flush=True)
    sys.stdin.read()
    processor.join(timeout=1)
    api.stop(grace=0)


if __name__ == "__main__":
    main()
