#!/usr/bin/python3
"""The Paho Python client (Debian's python3-paho-mqtt) on Sluice's device port, for
bridge/tests/conformance.rs. Prints one JSON object with what the client saw.
  paho_client.py connack PORT             MQTT 5 CONNACK reason and properties
  paho_client.py alias PORT DEVICE        3 QoS 1 readings, the last two by topic alias only
  paho_client.py empty-id PORT            zero-length client ids, MQTT 3.1.1 and 5
  paho_client.py subscriber PORT PREFIX   which MQTT 5 subscriber features the broker has
  paho_client.py session PORT ID EXPIRY WAIT
                                          a persistent session with that expiry interval:
                                          subscribe, disconnect, a message is published,
                                          WAIT seconds, reconnect: session present? message?
"""
import json
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


def connect(port, client_id, protocol=mqtt.MQTTv5, **kw):
    """Connects and waits for CONNACK; returns (client, reason code, properties)."""
    seen = {}
    done = threading.Event()
    client = mqtt.Client(client_id=client_id, protocol=protocol, **kw)

    def on_connect(_c, _u, _flags, rc, props=None):
        seen["rc"] = rc.value if hasattr(rc, "value") else rc
        seen["props"] = props.json() if props else {}
        done.set()

    client.on_connect = on_connect
    client.connect("127.0.0.1", port, keepalive=30)
    client.loop_start()
    if not done.wait(10):
        sys.exit("no CONNACK within 10 s")
    return client, seen["rc"], seen["props"]


def publish_props(alias, **extra):
    p = Properties(PacketTypes.PUBLISH)
    p.TopicAlias = alias
    for k, v in extra.items():
        setattr(p, k, v)
    return p


class Inbox:
    """A subscriber that keeps every message it gets with its properties."""

    def __init__(self, port, client_id, subscriptions):
        self.messages = []
        self.client, _, _ = connect(port, client_id)
        self.client.on_message = lambda _c, _u, m: self.messages.append(m)
        done = threading.Event()
        self.client.on_subscribe = lambda *_a: done.set()
        for topic, options, props in subscriptions:
            done.clear()
            self.client.subscribe(topic, options=options, properties=props)
            if not done.wait(10):
                sys.exit(f"no SUBACK for {topic}")

    def close(self):
        time.sleep(1)
        self.client.disconnect()
        return self.messages


def subscriber_features(port, prefix):
    """Measures what subscribers get from the embedded broker through the device port."""
    from paho.mqtt.subscribeoptions import SubscribeOptions
    qos1 = SubscribeOptions(qos=1)
    pub, _, _ = connect(port, f"{prefix}-pub")

    def send(topic, body, retain=False, **props):
        p = Properties(PacketTypes.PUBLISH)
        for k, v in props.items():
            setattr(p, k, v)
        pub.publish(topic, body, qos=1, retain=retain, properties=p if props else None).wait_for_publish(10)

    out = {}
    send(f"{prefix}/retained", b"kept", retain=True)
    send(f"{prefix}/expiring", b"stale", retain=True, MessageExpiryInterval=1)
    time.sleep(2)
    sid = Properties(PacketTypes.SUBSCRIBE)
    sid.SubscriptionIdentifier = 42
    inbox = Inbox(port, f"{prefix}-sub", [
        (f"{prefix}/retained", qos1, None),
        (f"{prefix}/expiring", qos1, None),
        (f"{prefix}/props", qos1, sid),
        (f"{prefix}/nolocal", SubscribeOptions(qos=1, noLocal=True), None),
    ])
    noretain = Inbox(port, f"{prefix}-noretain",
                     [(f"{prefix}/retained", SubscribeOptions(qos=1, retainHandling=2), None)])
    shared = [Inbox(port, f"{prefix}-share{i}", [(f"$share/g/{prefix}/shared", qos1, None)])
              for i in range(2)]
    send(f"{prefix}/props", b"p", UserProperty=("k", "v"), ContentType="text/plain",
         MessageExpiryInterval=300)
    inbox.client.publish(f"{prefix}/nolocal", b"mine", qos=1).wait_for_publish(10)
    for i in range(4):
        send(f"{prefix}/shared", str(i).encode())
    got = inbox.close()
    by_topic = {m.topic: m for m in got}
    props = by_topic.get(f"{prefix}/props")
    pp = props.properties if props else None
    out["retained_delivered"] = f"{prefix}/retained" in by_topic
    out["retained_flag"] = bool(by_topic[f"{prefix}/retained"].retain) if out["retained_delivered"] else None
    out["expired_retained_delivered"] = f"{prefix}/expiring" in by_topic
    out["user_properties"] = bool(pp and getattr(pp, "UserProperty", None))
    out["content_type"] = bool(pp and getattr(pp, "ContentType", None))
    out["message_expiry_forwarded"] = bool(pp and getattr(pp, "MessageExpiryInterval", None))
    out["subscription_identifier"] = (getattr(pp, "SubscriptionIdentifier", None) or None) if pp else None
    out["no_local_respected"] = f"{prefix}/nolocal" not in by_topic
    out["retain_handling_2_respected"] = not noretain.close()
    out["shared_deliveries"] = sorted(len(s.close()) for s in shared)
    pub.disconnect()
    return out


def session(port, client_id, expiry, wait):
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = expiry
    flags = {}
    messages = []

    def persistent():
        done = threading.Event()
        client = mqtt.Client(client_id=client_id, protocol=mqtt.MQTTv5)

        def on_connect(_c, _u, f, _rc, _p=None):
            flags.setdefault("session_present", []).append(f.get("session present"))
            done.set()

        client.on_connect = on_connect
        client.on_message = lambda _c, _u, m: messages.append(m.payload.decode())
        client.connect("127.0.0.1", port, clean_start=False, properties=props)
        client.loop_start()
        if not done.wait(10):
            sys.exit("no CONNACK within 10 s")
        return client

    first = persistent()
    first.subscribe(f"{client_id}/inbox", qos=1)
    time.sleep(0.5)
    first.disconnect()
    first.loop_stop()
    pub, _, _ = connect(port, f"{client_id}-pub")
    pub.publish(f"{client_id}/inbox", b"queued", qos=1).wait_for_publish(10)
    pub.disconnect()
    time.sleep(wait)
    second = persistent()
    time.sleep(1)
    second.disconnect()
    return {"session_present": flags["session_present"], "messages": messages}


def main():
    cmd, port = sys.argv[1], int(sys.argv[2])
    if cmd == "connack":
        client, rc, props = connect(port, "paho-connack")
        client.disconnect()
        print(json.dumps({"reason": rc, "properties": props}))
    elif cmd == "alias":
        device = sys.argv[3]
        client, rc, _ = connect(port, device)
        topic = f"sensors/{device}/temp"
        sent = []
        for i, t in enumerate([topic, "", ""]):
            props = publish_props(1, UserProperty=("site", "north"), ContentType="application/json")
            body = json.dumps({"value": i, "ts": 1700000000000 + i}).encode()
            sent.append(client.publish(t, body, qos=1, properties=props))
        for m in sent:
            m.wait_for_publish(10)
        client.disconnect()
        print(json.dumps({"reason": rc, "acked": sum(m.is_published() for m in sent)}))
    elif cmd == "empty-id":
        v5, rc5, props = connect(port, "")
        v5.disconnect()
        v4, rc4, _ = connect(port, "", protocol=mqtt.MQTTv311, clean_session=True)
        v4.disconnect()
        print(json.dumps({"v5_reason": rc5, "v5_assigned": props.get("AssignedClientIdentifier"),
                          "v311_reason": rc4}))
    elif cmd == "session":
        print(json.dumps(session(port, sys.argv[3], int(sys.argv[4]), float(sys.argv[5]))))
    elif cmd == "subscriber":
        print(json.dumps(subscriber_features(port, sys.argv[3])))
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
