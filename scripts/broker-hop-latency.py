#!/usr/bin/env python3
"""The broker's own latency for one and two queue hops, without Herald (BENCHMARKS.md, "The broker's
own latency"): publish at a fixed rate into queue A; a forwarder consumes A and publishes each body
into B; a sink consumes B (or A, for one hop) and records now minus the intended send time. Quorum
or classic queues on the test RabbitMQ ($HERALD_TEST_AMQP_URL: `eval "$(scripts/servers env)"`).

    .local/venv/bin/python scripts/broker-hop-latency.py quorum|classic HOPS RATE SECONDS

One Python process: above about 1,000 messages a second its own threads fall behind and the
figures are the script's, not the broker's (the received count and a rising p50 show it).
"""
import amqp, os, sys, threading, time, uuid, urllib.parse

url = urllib.parse.urlparse(os.environ["HERALD_TEST_AMQP_URL"])
host = f"{url.hostname}:{url.port}"
qtype, hops, rate, duration = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
run = uuid.uuid4().hex[:8]
qa, qb = f"lat-{run}-a", f"lat-{run}-b"

def connect():
    c = amqp.Connection(host=host, userid=url.username or "guest", password=url.password or "guest")
    c.connect()
    return c

setup = connect()
ch = setup.channel()
for q in (qa, qb):
    ch.queue_declare(queue=q, durable=True, auto_delete=False, arguments={"x-queue-type": qtype})
latencies = []
stop = threading.Event()

def consume(queue, handle):
    c = connect()
    ch = c.channel()
    ch.basic_qos(0, 200, False)
    ch.basic_consume(queue=queue, callback=lambda m: handle(ch, m))
    while not stop.is_set():
        try:
            c.drain_events(timeout=0.2)
        except Exception:
            pass
    c.close()

def forward_factory():
    c = connect()
    out = c.channel()
    def handle(ch, m):
        out.basic_publish(amqp.Message(m.body, delivery_mode=2), exchange="", routing_key=qb)
        ch.basic_ack(m.delivery_tag)
    return handle

def sink(ch, m):
    latencies.append(time.monotonic() - float(m.body))
    ch.basic_ack(m.delivery_tag)

threads = [threading.Thread(target=consume, args=(qb if hops == 2 else qa, sink))]
if hops == 2:
    threads.append(threading.Thread(target=consume, args=(qa, forward_factory())))
for t in threads: t.start()
time.sleep(1)
pub = connect().channel()
start = time.monotonic()
n = rate * duration
for i in range(n):
    due = start + i / rate
    now = time.monotonic()
    if due > now: time.sleep(due - now)
    pub.basic_publish(amqp.Message(repr(due), delivery_mode=2), exchange="", routing_key=qa)
deadline = time.monotonic() + 20
while len(latencies) < n and time.monotonic() < deadline: time.sleep(0.1)
stop.set()
for t in threads: t.join()
for q in (qa, qb): ch.queue_delete(q)
setup.close()
xs = sorted(latencies[len(latencies) // 6:])  # the first sixth is warm-up
def pct(p): return xs[min(len(xs) - 1, int(p * len(xs)))] * 1000
print(f"{qtype} hops={hops} rate={rate}/s received {len(latencies)}/{n}: p50 {pct(0.5):.1f} ms  p99 {pct(0.99):.1f} ms")
