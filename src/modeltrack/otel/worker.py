"""The span exporter's own process: ``python -m modeltrack.otel.worker TARGET_JSON``, started by
:class:`modeltrack.otel.spans.SpanExport`.

Why a process: building an SDK span and encoding it for OTLP costs about 100 µs of Python per event, more than
the proxy spends on the request itself. On a thread of the proxy's process that work holds the GIL the request
loop needs, and halved the proxy's throughput (bench/results/latest.md). Here it runs beside the proxy, at a
lower CPU priority: ``SCHED_IDLE``, set by the parent, while it keeps up, and ``NICE`` when it has fallen behind
(:class:`~modeltrack.otel.spans.SpanExport`). The request path keeps its cores, and spans are built and sent from
what the requests leave.

The protocol on its pipes: the parent writes frames (4-byte big-endian length, then the stored cost events, one
JSON object per line, as the store was given them) to stdin; for each frame the worker exports one span per event
and writes one line to stdout, ``<exported> <failed>``. End of stdin: export what is left, shut the exporter
down, exit. Nothing else is on stdout; the SDK's own warnings go to stderr, as the proxy's logs do. Held by
tests/test_otel.py.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys

import orjson

NICE = 19
"""How much lower the worker's CPU priority is than the proxy's (``nice``) when it is not at ``SCHED_IDLE``: under
full load the requests come first, and the export still gets a share; with free CPU, it changes nothing."""


def main(argv: list[str]) -> int:
    from opentelemetry.sdk.trace.export import SpanExportResult

    from ..events import CostEvent
    from .build import EXPORT_CHUNK, SpanBuilder
    from .target import Target

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("modeltrack.otel")
    config = orjson.loads(argv[0])
    with contextlib.suppress(OSError):  # a platform without nice: the export runs at the proxy's priority
        os.nice(NICE)
    # A Ctrl-C or a SIGTERM sent to the whole process group is the proxy's to handle: it drains, hands over what
    # is queued, and closes our stdin, which is when we stop (a proxy killed outright closes it too).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    target = Target(**config["target"])
    builder = SpanBuilder(target)
    exporter = target.span_exporter(config.get("timeout"))
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    try:
        while True:
            head = stdin.read(4)
            if len(head) < 4:
                return 0
            payload = stdin.read(int.from_bytes(head, "big"))
            events = [CostEvent.from_dict(orjson.loads(line)) for line in payload.splitlines()]
            exported = failed = 0
            for i in range(0, len(events), EXPORT_CHUNK):
                part = events[i : i + EXPORT_CHUNK]
                try:
                    ok = exporter.export(builder.spans(part)) == SpanExportResult.SUCCESS
                except Exception as exc:  # noqa: BLE001 - an export problem costs these spans, never the worker
                    log.warning("otel: spans not exported (%s)", type(exc).__name__)
                    ok = False
                if ok:
                    exported += len(part)
                else:
                    failed += len(part)
            stdout.write(b"%d %d\n" % (exported, failed))
            stdout.flush()
    finally:
        exporter.shutdown()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
