#!/usr/bin/env python3
"""Publish notifications the way OpenStack services do: through oslo.messaging.

Reads JSON lines from --input (or stdin). Each line is one of:
  {"exchange": "nova", "driver": "messagingv2", "event_type": "compute.instance.create.end",
   "priority": "info", "publisher_id": "compute.host1", "project": "p1", "payload": {...}}
  {"raw": "<body text>", "raw_base64": "...", "exchange": "nova", "routing_key": "notifications.info"}
The first kind goes through an oslo_messaging.Notifier on a transport whose control
exchange is `exchange` (driver `messaging` or `messagingv2`; optional "topic", default
"notifications", and "priority", default "info": Ceilometer's event publisher is
exchange "ceilometer", topic "event", priority "sample"), with an
oslo_context RequestContext carrying the project (or "context": {"project_id",
"user_id", "roles"} for a whole one). The second is published as raw
bytes through kombu, for malformed input. Prints one summary line.

oslo.messaging drops a notification it cannot send (it logs "Could not send notification"
and goes on): a service loses it. The tests measure Herald's losses, not the publisher's,
so a notification the notifier failed to send is sent again (up to 10 times, a second
apart) and counted as resent; one that never goes out makes the script exit 1.
"""
import argparse
import base64
import json
import logging
import sys
import time

import kombu
import oslo_messaging
from oslo_config import cfg
from oslo_context import context as oslo_context


def kombu_url(url):
    """oslo.messaging's multi-host form (amqp://u:p@h1:5672,u:p@h2:5672/vhost) as kombu's
    failover list (amqp://u:p@h1:5672/vhost;amqp://u:p@h2:5672/vhost); kombu reads the
    comma form as one host and its login fails."""
    scheme, rest = url.split("://", 1)
    hosts, _, vhost = rest.partition("/")
    vhost = "" if vhost in ("", "%2F") else vhost
    return ";".join("%s://%s/%s" % (scheme, host, vhost) for host in hosts.split(","))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="amqp://user:password@host:port/vhost")
    parser.add_argument("--input", help="JSON lines file (default: stdin)")
    args = parser.parse_args()

    class FailedSends(logging.Handler):
        """Counts the notifier's "Could not send notification" errors."""

        def __init__(self):
            super().__init__(logging.ERROR)
            self.count = 0

        def emit(self, record):
            if "Could not send notification" in str(record.msg):
                self.count += 1

    failed = FailedSends()
    logging.getLogger("oslo_messaging").addHandler(failed)
    resent = 0

    source = open(args.input) if args.input else sys.stdin
    items = [json.loads(line) for line in source if line.strip()]
    rabbit_url = args.url.replace("amqp://", "rabbit://", 1)
    notifiers = {}
    counts = {}

    def notifier(exchange, driver, publisher_id, topic):
        key = (exchange, driver, publisher_id, topic)
        if key not in notifiers:
            # The exchange comes from the transport defaults, set before the transport is made.
            oslo_messaging.set_transport_defaults(exchange)
            conf = cfg.ConfigOpts()
            conf([], project="herald-publisher")
            transport = oslo_messaging.get_notification_transport(conf, url=rabbit_url)
            notifiers[key] = oslo_messaging.Notifier(transport, publisher_id=publisher_id, driver=driver, topics=[topic])
        return notifiers[key]

    with kombu.Connection(kombu_url(args.url)) as raw_connection:
        producer = raw_connection.Producer()
        for done, item in enumerate(items):
            if done % 200 == 0:
                print("progress %d" % done, flush=True)
            if "raw" in item or "raw_base64" in item:
                body = base64.b64decode(item["raw_base64"]) if "raw_base64" in item else item["raw"].encode("utf-8")
                exchange = kombu.Exchange(item.get("exchange", "nova"), type="topic", durable=False)
                producer.publish(body, exchange=exchange, routing_key=item.get("routing_key", "notifications.info"),
                                 content_type="application/json", content_encoding="binary", declare=[exchange])
                counts["raw"] = counts.get("raw", 0) + 1
                continue
            if "context" in item:
                # A whole request context, as the service would have it (an admin acting for a tenant,
                # nova's service user acting for a user, keystone's empty one).
                ctx = item["context"] or {}
                context = oslo_context.RequestContext(project_id=ctx.get("project_id"), user_id=ctx.get("user_id"),
                                                      roles=ctx.get("roles", []), request_id=None)
            else:
                context = oslo_context.RequestContext(project_id=item.get("project"), user_id="publisher", request_id=None)
            n = notifier(item["exchange"], item.get("driver", "messagingv2"), item.get("publisher_id", "herald.test"), item.get("topic", "notifications"))
            for attempt in range(10):
                before = failed.count
                getattr(n, item.get("priority", "info"))(context, item["event_type"], item["payload"])
                if failed.count == before:
                    break
                resent += 1
                time.sleep(1)
            else:
                sys.exit("publish-notifications: could not send %s after 10 tries" % item["event_type"])
            label = "%s/%s" % (item["exchange"], item.get("driver", "messagingv2"))
            counts[label] = counts.get(label, 0) + 1
    print("published %d: %s%s" % (len(items), ", ".join("%s=%d" % kv for kv in sorted(counts.items())),
                                  " (%d sent again after the notifier failed)" % resent if resent else ""))


if __name__ == "__main__":
    main()
