#!/usr/bin/env python3
"""Watch a Zaqar queue over Zaqar's WebSocket transport, the way a user's program is told of
events instead of polling: subscribe to the queue on the socket (subscription_create, no
subscriber URL), then print each message Zaqar pushes as it arrives.

Uses websocket-client, the library python-zaqarclient's WebSocket transport is built on, and
speaks the same frames (action, headers with Client-ID and X-Project-ID, body). With --token
(a Keystone-protected Zaqar) it authenticates first, as python-zaqarclient does."""
import argparse
import json
import sys
import time
import uuid

import websocket


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True, help="Zaqar's WebSocket endpoint, e.g. ws://127.0.0.1:9000")
    parser.add_argument("--project", required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--token", help="a Keystone token (omit for a noauth Zaqar)")
    parser.add_argument("--expect", type=int, help="stop after this many pushed messages")
    parser.add_argument("--wait", type=float, default=60, help="stop after this many seconds")
    parser.add_argument("--ready-file", help="touch this file once subscribed")
    args = parser.parse_args()

    client_id = str(uuid.uuid4())
    socket = websocket.create_connection(args.url, timeout=args.wait)

    def request(action, body=None, headers=None):
        frame = {"action": action, "headers": {"Client-ID": client_id, "X-Project-ID": args.project, **(headers or {})}}
        if body is not None:
            frame["body"] = body
        socket.send(json.dumps(frame))
        # Pushed messages may come before the answer; the answer names the action.
        while True:
            answer = parse(socket.recv())
            if isinstance(answer.get("request"), dict) and answer["request"].get("action") == action:
                return answer
            show(answer)

    def status(answer):
        headers = answer.get("headers")
        return headers.get("status") if isinstance(headers, dict) else None

    if args.token:
        answer = request("authenticate", headers={"X-Auth-Token": args.token})
        if status(answer) != 200:
            sys.exit("authenticate: %s" % answer.get("body"))
    answer = request("subscription_create", {"queue_name": args.queue, "ttl": int(args.wait) + 60})
    if status(answer) != 201:
        sys.exit("subscription_create: %s" % answer.get("body"))
    print("subscribed to queue %s of project %s over %s; waiting for pushes" % (args.queue, args.project, args.url), flush=True)
    if args.ready_file:
        open(args.ready_file, "w").close()

    deadline = time.monotonic() + args.wait
    pushed = 0
    while args.expect is None or pushed < args.expect:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        socket.settimeout(left)
        try:
            frame = parse(socket.recv())
        except websocket.WebSocketTimeoutException:
            break
        if show(frame):
            pushed += 1
    socket.close()
    print("%d messages pushed" % pushed, flush=True)
    if args.expect is not None and pushed < args.expect:
        sys.exit("expected %d pushed messages, got %d" % (args.expect, pushed))


def parse(text):
    """A frame as a dict (anything else as an empty one)."""
    try:
        frame = json.loads(text)
    except ValueError:
        return {}
    return frame if isinstance(frame, dict) else {}


def show(frame):
    """Prints a pushed message (Zaqar marks them Message_Type: Notification), in Herald's envelope
    or as a CloudEvent; answers whether it was one."""
    if frame.get("Message_Type") is None:
        return False
    body = frame.get("body") if isinstance(frame.get("body"), dict) else {}
    if body.get("specversion"):
        data = body.get("data") if isinstance(body.get("data"), dict) else {}
        event, herald = {"event_type": body.get("type"), "payload": data}, {"event_id": str(body.get("id", "")), "project": body.get("heraldproject")}
    else:
        event = body.get("event") if isinstance(body.get("event"), dict) else {}
        herald = body.get("herald") if isinstance(body.get("herald"), dict) else {}
    payload = event.get("payload", {}) if isinstance(event.get("payload"), dict) else {}
    shown = {k: payload[k] for k in sorted(payload) if k in ("instance_id", "volume_id", "state", "size")}
    print("%s pushed  %-28s %-24s event_id=%s project=%s" % (
        time.strftime("%H:%M:%S"), event.get("event_type"), json.dumps(shown), herald.get("event_id", "")[:8], herald.get("project", "-")), flush=True)
    return True


if __name__ == "__main__":
    main()
