#!/usr/bin/env python3
"""Read a Zaqar queue the way a subscriber would, with python-zaqarclient (noauth), and print its messages (or delete the queue)."""
import argparse
import json
import sys
import time

from zaqarclient.queues import client as zaqar_client


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--project", required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--expect", type=int, help="wait up to --wait seconds for this many messages; exit 1 if the count differs")
    parser.add_argument("--wait", type=float, default=20)
    parser.add_argument("--delete", action="store_true", help="delete the queue (and its messages) instead of reading it")
    args = parser.parse_args()
    client = zaqar_client.Client(args.url, version=2, conf={"auth_opts": {"backend": "noauth", "options": {"os_project_id": args.project}}})
    if args.delete:
        client.queue(args.queue).delete()
        return
    deadline = time.monotonic() + args.wait
    while True:
        messages = read_all(client.queue(args.queue))
        if args.expect is None or len(messages) >= args.expect or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    print("queue %s of project %s: %d messages" % (args.queue, args.project, len(messages)))
    for message in messages:
        body = message.body
        event, herald = body.get("event", {}), body.get("herald", {})
        payload = event.get("payload", {})
        shown = {k: payload[k] for k in sorted(payload) if k in ("instance_id", "volume_id", "state", "size")} if isinstance(payload, dict) else {}
        print("  %-28s %-24s event_id=%s partition=%s epoch=%s project=%s actor=%s resource=%s" % (
            event.get("event_type"), json.dumps(shown),
            herald.get("event_id", "")[:8], herald.get("partition"), herald.get("epoch"),
            herald.get("project", "-"), herald.get("actor_project", "-"), herald.get("resource_id", "-")))
    if args.expect is not None and len(messages) != args.expect:
        print("expected %d messages in %s, found %d" % (args.expect, args.queue, len(messages)), file=sys.stderr)
        sys.exit(1)


def read_all(queue):
    """Every message, page by page. A page shorter than the limit is the last: Zaqar's Redis
    store restarts from the head when the marker is the queue's first message, so following
    the next link after a one-message page would repeat that message forever."""
    messages, seen, marker, limit = [], set(), None, 10
    while True:
        params = {"echo": True, "limit": limit}
        if marker:
            params["marker"] = marker
        page = [m for m in queue.messages(**params) if m.id not in seen]
        seen.update(m.id for m in page)
        messages += page
        if len(page) < limit:
            return messages
        marker = page[-1].id


if __name__ == "__main__":
    main()
