#!/usr/bin/env python3
"""An OTLP/gRPC trace sink for benchmarks: accepts TraceService/Export, counts the
requests and bytes received, and drops them (answers an empty ExportTraceServiceResponse,
which is a valid "all accepted"). Needs `grpcio` (pip install grpcio).

    python3 tests/bench/otlp_sink.py --listen 127.0.0.1:14317

Prints the totals on SIGINT/SIGTERM. It decodes nothing, so its own CPU cost per span is
as small as a real collector's receive path can be.
"""

import argparse
import signal
import sys
import threading
from concurrent import futures

try:
    import grpc
except ImportError:
    sys.exit("otlp_sink.py needs grpcio: pip install grpcio")

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listen", default="127.0.0.1:14317")
    args = ap.parse_args()
    lock = threading.Lock()
    totals = {"requests": 0, "bytes": 0}

    def export(request: bytes, _context) -> bytes:
        with lock:
            totals["requests"] += 1
            totals["bytes"] += len(request)
        return b""

    class Handler(grpc.GenericRpcHandler):
        def service(self, details):
            if details.method == EXPORT:
                return grpc.unary_unary_rpc_method_handler(
                    export,
                    request_deserializer=None,
                    response_serializer=None,
                )
            return None

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)],
    )
    server.add_generic_rpc_handlers((Handler(),))
    if server.add_insecure_port(args.listen) == 0:
        sys.exit(f"otlp_sink.py: cannot listen on {args.listen}")
    server.start()
    print(f"otlp sink listening on {args.listen}", flush=True)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    server.stop(0)
    print(f"export requests: {totals['requests']}, bytes: {totals['bytes']}", flush=True)


if __name__ == "__main__":
    main()
