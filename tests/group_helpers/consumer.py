"""A confluent-kafka group member in its own process, for tests that kill it.

Subscribes to one topic and prints one JSON object per line on stdout:
  {"event": "started", "pid": ...}
  {"event": "assigned", "partitions": [...]}   whenever its assignment changes
  {"event": "error", "error": "..."}           consumer error events
  {"event": "closed"}                          after a clean close (SIGTERM or --max-seconds)
SIGTERM makes it close cleanly (LeaveGroup); SIGKILL leaves the group without a word.
"""

import argparse
import json
import signal
import sys
import time

from confluent_kafka import Consumer


def emit(**obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--group", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--client-id", default="group-helper")
    ap.add_argument("--session-timeout-ms", type=int, default=6000)
    ap.add_argument("--heartbeat-ms", type=int, default=100)
    ap.add_argument("--max-seconds", type=float, default=60.0)
    args = ap.parse_args()

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))

    c = Consumer({
        "bootstrap.servers": args.bootstrap,
        "broker.address.family": "v4",
        "group.id": args.group,
        "client.id": args.client_id,
        "session.timeout.ms": args.session_timeout_ms,
        "heartbeat.interval.ms": args.heartbeat_ms,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": False,
        "log_level": 3,
    })
    c.subscribe([args.topic])
    emit(event="started")
    last = None
    deadline = time.monotonic() + args.max_seconds
    while not stop and time.monotonic() < deadline:
        m = c.poll(0.05)
        if m is not None and m.error():
            emit(event="error", error=str(m.error()))
        parts = sorted(tp.partition for tp in c.assignment() if tp.topic == args.topic)
        if parts != last:
            last = parts
            emit(event="assigned", partitions=parts)
    c.close()
    emit(event="closed")


if __name__ == "__main__":
    main()
