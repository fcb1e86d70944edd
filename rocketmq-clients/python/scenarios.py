"""Runs the RocketMQ scenario matrix with the official Python client
(rocketmq-python-client, from PyPI) against one endpoint.

It grades nothing itself: it prints one JSON line per message it sent,
received or acknowledged (scenario, message id, the body as hex, and what
the scenario needs to check), and the Rust test that starts the broker checks
those lines against its own expectations.

Usage: python scenarios.py ENDPOINT RUN_ID SCENARIO...
Topics and groups are named <scenario>-<RUN_ID>; the test creates them.
"""

import json
import sys
import threading
import time

from rocketmq import (ClientConfiguration, ConsumeResult, Credentials,
                      FilterExpression, Message, MessageListener, Producer,
                      PushConsumer, SimpleConsumer, TransactionChecker,
                      TransactionResolution)
from rocketmq.grpc_protocol import FilterType

# Long enough for the broker to answer a long poll, short enough to finish.
AWAIT_SECONDS = 2
DEADLINE_SECONDS = 60


# The push consumer calls its listener from several threads: one line is
# written whole, under this lock, or two could interleave.
OUTPUT = threading.Lock()


def emit(event, scenario, message_id, body, **extra):
    line = {
        "event": event,
        "scenario": scenario,
        "id": message_id,
        "body": body.hex(),
    }
    line.update(extra)
    say(line)


def say(line):
    with OUTPUT:
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()


def config(endpoint):
    return ClientConfiguration(endpoint, Credentials())


def producer(endpoint, topic, checker=None):
    p = Producer(config(endpoint), (topic,), checker)
    p.startup()
    return p


def consumer(endpoint, name, expression=None):
    c = SimpleConsumer(config(endpoint), name, {name: expression or FilterExpression()},
                       await_duration=AWAIT_SECONDS)
    c.startup()
    return c


def message(topic, body, tag=None, keys=(), props=None):
    m = Message()
    m.topic = topic
    m.body = body
    if tag:
        m.tag = tag
    if keys:
        m.keys = keys[0]
    for k, v in (props or {}).items():
        m.add_property(k, v)
    return m


def received_all(c, scenario, count, invisible=10, ack=True, within=DEADLINE_SECONDS):
    """Receives until `count` messages came (or `within` seconds passed),
    acking each."""
    got = []
    deadline = time.time() + within
    while len(got) < count and time.time() < deadline:
        for m in c.receive(32, invisible) or []:
            emit("received", scenario, m.message_id, m.body, tag=m.tag,
                 keys=sorted(m.keys), properties=m.properties,
                 group=m.message_group, attempt=m.delivery_attempt,
                 at_ms=int(time.time() * 1000))
            if ack:
                c.ack(m)
                emit("acked", scenario, m.message_id, m.body)
            got.append(m)
    return got


def normal(endpoint, name):
    p = producer(endpoint, name)
    for i in range(20):
        body = f"normal-{i}".encode() * (i + 1)
        r = p.send(message(name, body, tag="TagA", keys=(f"key-{i}",),
                           props={"n": str(i)}))
        emit("sent", "normal", r.message_id, body, tag="TagA")
    p.shutdown()
    c = consumer(endpoint, name)
    received_all(c, "normal", 20)
    c.shutdown()


def fifo(endpoint, name):
    p = producer(endpoint, name)
    for i in range(5):
        for g in ("g1", "g2", "g3"):
            body = f"{g}-{i}".encode()
            m = message(name, body)
            m.message_group = g
            r = p.send(m)
            emit("sent", "fifo", r.message_id, body, group=g, seq=i)
    p.shutdown()
    c = consumer(endpoint, name)
    received_all(c, "fifo", 15)
    c.shutdown()


def delay(endpoint, name):
    p = producer(endpoint, name)
    due = int(time.time()) + 3
    for i in range(3):
        body = f"delay-{i}".encode()
        m = message(name, body)
        m.delivery_timestamp = due
        r = p.send(m)
        emit("sent", "delay", r.message_id, body, due_ms=due * 1000)
    p.shutdown()
    c = consumer(endpoint, name)
    received_all(c, "delay", 3)
    c.shutdown()


class CommitChecked(TransactionChecker):
    """Commits what the broker asks about, and says so."""

    def __init__(self):
        self.checked = threading.Event()

    def check(self, message):
        emit("checked", "transaction", message.message_id, message.body)
        self.checked.set()
        return TransactionResolution.COMMIT


def transaction(endpoint, name):
    checker = CommitChecked()
    p = producer(endpoint, name, checker)
    for outcome in ("commit", "rollback", "check"):
        body = f"tx-{outcome}".encode()
        t = p.begin_transaction()
        r = p.send(message(name, body), t)
        emit("sent", "transaction", r.message_id, body, outcome=outcome)
        if outcome == "commit":
            t.commit()
        elif outcome == "rollback":
            t.rollback()
    # The third stays open until the broker checks it back.
    checker.checked.wait(DEADLINE_SECONDS)
    c = consumer(endpoint, name)
    received_all(c, "transaction", 2)
    # Nothing else arrives: the rolled-back one never does.
    received_all(c, "transaction", 1, within=3)
    c.shutdown()
    p.shutdown()


def redeliver(endpoint, name):
    p = producer(endpoint, name)
    body = b"redeliver-me"
    r = p.send(message(name, body))
    emit("sent", "redeliver", r.message_id, body)
    p.shutdown()
    c = consumer(endpoint, name)
    first = received_all(c, "redeliver", 1, ack=False)
    if first:
        # Visible again in a second instead of the ten asked for at receive.
        c.change_invisible_duration(first[0], 1)
    received_all(c, "redeliver", 1)
    c.shutdown()


def filters(endpoint, name):
    p = producer(endpoint, name)
    for i in range(6):
        tag = "TagA" if i % 2 == 0 else "TagB"
        body = f"filter-{i}".encode()
        r = p.send(message(name, body, tag=tag, props={"n": str(i)}))
        emit("sent", "filters", r.message_id, body, tag=tag, n=i)
    p.shutdown()
    # One group per filter; each sees what it selects.
    tags = SimpleConsumer(config(endpoint), name + "-tag",
                          {name: FilterExpression("TagB")}, await_duration=AWAIT_SECONDS)
    tags.startup()
    received_all(tags, "filters-tag", 3)
    tags.shutdown()
    sql = SimpleConsumer(config(endpoint), name + "-sql",
                         {name: FilterExpression("n > 3", FilterType.SQL)},
                         await_duration=AWAIT_SECONDS)
    sql.startup()
    received_all(sql, "filters-sql", 2)
    sql.shutdown()


def interop_send(endpoint, name):
    """Sends for our SDK to receive."""
    p = producer(endpoint, name)
    for i in range(5):
        body = bytes(range(i, i + 200))
        r = p.send(message(name, body, tag="FromPython", keys=(f"py-{i}",),
                           props={"lang": "python"}))
        emit("sent", "interop-send", r.message_id, body)
    p.shutdown()


def interop_receive(endpoint, name):
    """Receives what our SDK sent (the test sent 5 first)."""
    c = consumer(endpoint, name)
    received_all(c, "interop-receive", 5)
    c.shutdown()


class FailsOne(MessageListener):
    """Acknowledges every message but the one with body `bad`, which fails
    each time; says when its third attempt came."""

    def __init__(self, bad):
        self.bad = bad
        self.third = threading.Event()

    def consume(self, message):
        emit("received", "push-dlq", message.message_id, message.body,
             attempt=message.delivery_attempt)
        if message.body == self.bad:
            if message.delivery_attempt >= 3:
                self.third.set()
            return ConsumeResult.FAILURE
        emit("acked", "push-dlq", message.message_id, message.body)
        return ConsumeResult.SUCCESS


def push_dlq(endpoint, name):
    """A push consumer whose failing message is retried, then dead-lettered
    (the group allows three attempts)."""
    good, bad = b"push-ok", b"push-fails"
    p = producer(endpoint, name)
    for body, fails in ((good, False), (bad, True)):
        r = p.send(message(name, body))
        emit("sent", "push-dlq", r.message_id, body, fails=fails)
    p.shutdown()
    listener = FailsOne(bad)
    c = PushConsumer(config(endpoint), name, listener, {name: FilterExpression()})
    c.startup()
    listener.third.wait(DEADLINE_SECONDS)
    # Time for the broker to dead-letter it after its last attempt.
    time.sleep(3)
    c.shutdown()


def bad_input(endpoint, name):
    """Errors the client must see, each printed as a refusal."""
    p = producer(endpoint, name)
    for what, m in (
        ("unknown-topic", message("no-such-topic-" + name, b"x")),
        ("oversize-body", message(name, b"x" * (5 << 20))),
    ):
        try:
            p.send(m)
            say({"event": "accepted", "scenario": "bad-input", "what": what})
        except Exception as e:  # the client raises its own exception types
            say({"event": "refused", "scenario": "bad-input", "what": what,
                 "error": str(e)[:300]})
    p.shutdown()


SCENARIOS = {
    "normal": normal,
    "fifo": fifo,
    "delay": delay,
    "transaction": transaction,
    "redeliver": redeliver,
    "filters": filters,
    "interop-send": interop_send,
    "interop-receive": interop_receive,
    "push-dlq": push_dlq,
    "bad-input": bad_input,
}


def main():
    endpoint, run_id, names = sys.argv[1], sys.argv[2], sys.argv[3:]
    for scenario in names:
        SCENARIOS[scenario](endpoint, f"{scenario}-{run_id}")
        say({"event": "done", "scenario": scenario})


if __name__ == "__main__":
    main()
