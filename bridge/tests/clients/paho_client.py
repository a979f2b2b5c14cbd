#!/usr/bin/python3
"""The Paho Python client (Debian's python3-paho-mqtt) on Sluice's device port, for
bridge/tests/conformance.rs. Prints one JSON object with what the client saw.
  paho_client.py connack PORT             MQTT 5 CONNACK reason and properties
  paho_client.py alias PORT DEVICE        3 QoS 1 readings, the last two by topic alias only
  paho_client.py empty-id PORT            zero-length client ids, MQTT 3.1.1 and 5
  paho_client.py subscriber PORT PREFIX   which MQTT 5 subscriber features the broker has
  paho_client.py filters PORT PREFIX      SUBACK/UNSUBACK codes for refused and unknown filters
  paho_client.py session PORT ID EXPIRY WAIT [HOW]
                                          a session with that expiry interval: subscribe,
                                          disconnect, messages are published, WAIT seconds,
                                          reconnect: session present? messages? (see session)
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
    """Measures what MQTT 5 subscribers get through the device port."""
    from paho.mqtt.subscribeoptions import SubscribeOptions
    qos1 = SubscribeOptions(qos=1)
    pub, _, _ = connect(port, f"{prefix}-pub")

    def send(topic, body, retain=False, qos=1, **props):
        p = Properties(PacketTypes.PUBLISH)
        for k, v in props.items():
            setattr(p, k, v)
        pub.publish(topic, body, qos=qos, retain=retain, properties=p if props else None).wait_for_publish(10)

    def sid(n):
        p = Properties(PacketTypes.SUBSCRIBE)
        p.SubscriptionIdentifier = n
        return p

    out = {}
    send(f"{prefix}/retained", b"kept", retain=True)
    send(f"{prefix}/expiring", b"stale", retain=True, MessageExpiryInterval=1)
    time.sleep(2)
    inbox = Inbox(port, f"{prefix}-sub", [
        (f"{prefix}/retained", qos1, None),
        (f"{prefix}/expiring", qos1, None),
        (f"{prefix}/props", qos1, sid(42)),
        (f"{prefix}/nolocal", SubscribeOptions(qos=1, noLocal=True), None),
        (f"{prefix}/rap", SubscribeOptions(qos=1, retainAsPublished=True), None),
        (f"{prefix}/notrap", qos1, None),
        (f"{prefix}/o/#", qos1, sid(1)),
        (f"{prefix}/o/+", SubscribeOptions(qos=0), sid(2)),
        (f"{prefix}/qos", SubscribeOptions(qos=2), None),
    ])
    noretain = Inbox(port, f"{prefix}-noretain",
                     [(f"{prefix}/retained", SubscribeOptions(qos=1, retainHandling=2), None)])
    # Retain handling 1 (only for a new subscription) and 0 (every subscribe), twice each.
    resub = {}
    for rh in (0, 1):
        box = Inbox(port, f"{prefix}-rh{rh}", [(f"{prefix}/retained", SubscribeOptions(qos=1, retainHandling=rh), None)] * 2)
        resub[rh] = len(box.close())
    shared = [Inbox(port, f"{prefix}-share{i}", [(f"$share/g/{prefix}/shared", qos1, None)])
              for i in range(2)]
    send(f"{prefix}/props", b"p", UserProperty=("k", "v"), ContentType="text/plain",
         MessageExpiryInterval=300, ResponseTopic=f"{prefix}/reply", CorrelationData=b"\x00\x01abc")
    inbox.client.publish(f"{prefix}/nolocal", b"mine", qos=1).wait_for_publish(10)
    send(f"{prefix}/rap", b"r", retain=True)
    send(f"{prefix}/notrap", b"r", retain=True)
    send(f"{prefix}/o/x", b"o")
    send(f"{prefix}/qos", b"q0", qos=0)
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
    out["response_topic"] = getattr(pp, "ResponseTopic", None) == f"{prefix}/reply" if pp else False
    out["correlation_data"] = getattr(pp, "CorrelationData", None) == b"\x00\x01abc" if pp else False
    out["subscription_identifier"] = (getattr(pp, "SubscriptionIdentifier", None) or None) if pp else None
    out["no_local_respected"] = f"{prefix}/nolocal" not in by_topic
    out["retain_as_published"] = [bool(by_topic[t].retain) for t in (f"{prefix}/rap", f"{prefix}/notrap") if t in by_topic]
    out["overlapping_identifiers"] = sorted(
        getattr(m.properties, "SubscriptionIdentifier", []) for m in got if m.topic == f"{prefix}/o/x")
    out["qos0_publish_delivered_at"] = [m.qos for m in got if m.topic == f"{prefix}/qos"]
    out["retain_handling_2_respected"] = not noretain.close()
    out["retained_copies_for_two_subscribes"] = resub
    out["shared_deliveries"] = sorted(len(s.close()) for s in shared)
    pub.disconnect()
    return out


def filters(port, prefix):
    """SUBACK and UNSUBACK reason codes for filters a broker must refuse or cannot find."""
    codes = {}
    done = threading.Event()
    client, _, _ = connect(port, f"{prefix}-filters")

    def on_subscribe(_c, _u, _mid, rcs, _p=None):
        codes["suback"] = [rc.value for rc in rcs]
        done.set()

    def on_unsubscribe(_c, _u, _mid, _p=None, rcs=None):
        codes["unsuback"] = [rc.value for rc in (rcs if isinstance(rcs, list) else [rcs])] if rcs else None
        done.set()

    client.on_subscribe = on_subscribe
    client.on_unsubscribe = on_unsubscribe
    client.subscribe([(f"{prefix}/ok", 1), ("$SYS/#", 0), (f"{prefix}/ok2", 0)])
    codes["suback_in_time"] = done.wait(10)
    done.clear()
    client.unsubscribe([f"{prefix}/ok", f"{prefix}/never"])
    codes["unsuback_in_time"] = done.wait(10)
    codes["still_connected"] = client.is_connected()
    client.disconnect()
    return codes


def session(port, client_id, expiry, wait, how="persistent"):
    """A session with that expiry interval: subscribe (QoS 1 and 2), disconnect, messages
    are published, WAIT seconds, reconnect (clean start 0): session present? messages?
    how: "persistent" (clean start 0), "clean-start" (clean start 1 with the expiry),
    "disconnect-0" (DISCONNECT sets expiry 0), "expiring" (one message with expiry 1 s,
    one with 60 s), "v311" (MQTT 3.1.1, clean session 0; the expiry is not sent)."""
    flags = {}
    messages = []

    v311 = how == "v311"

    def connected(clean_start, expiry):
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = expiry
        done = threading.Event()
        if v311:
            client = mqtt.Client(client_id=client_id, protocol=mqtt.MQTTv311, clean_session=False)
        else:
            client = mqtt.Client(client_id=client_id, protocol=mqtt.MQTTv5)

        def on_connect(_c, _u, f, _rc, _p=None):
            flags.setdefault("session_present", []).append(f.get("session present"))
            done.set()

        def on_message(_c, _u, m):
            props = getattr(m, "properties", None)
            left = getattr(props, "MessageExpiryInterval", None) if props else None
            messages.append([m.payload.decode(), m.qos] + ([left] if left is not None else []))

        client.on_connect = on_connect
        client.on_message = on_message
        if v311:
            client.connect("127.0.0.1", port)
        else:
            client.connect("127.0.0.1", port, clean_start=clean_start, properties=props)
        client.loop_start()
        if not done.wait(10):
            sys.exit("no CONNACK within 10 s")
        return client

    first = connected(how == "clean-start", expiry)
    first.subscribe([(f"{client_id}/q1", 1), (f"{client_id}/q2", 2)])
    time.sleep(0.5)
    if how == "disconnect-0":
        p = Properties(PacketTypes.DISCONNECT)
        p.SessionExpiryInterval = 0
        first.disconnect(properties=p)
    else:
        first.disconnect()
    first.loop_stop()
    pub, _, _ = connect(port, f"{client_id}-pub")
    if how == "expiring":
        p = Properties(PacketTypes.PUBLISH)
        p.MessageExpiryInterval = 1
        pub.publish(f"{client_id}/q1", b"short", qos=1, properties=p).wait_for_publish(10)
        p = Properties(PacketTypes.PUBLISH)
        p.MessageExpiryInterval = 60
        pub.publish(f"{client_id}/q1", b"long", qos=1, properties=p).wait_for_publish(10)
    else:
        for qos in (1, 2):
            pub.publish(f"{client_id}/q{qos}", f"queued-{qos}".encode(), qos=qos).wait_for_publish(10)
    pub.disconnect()
    time.sleep(wait)
    second = connected(False, expiry)
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
        how = sys.argv[6] if len(sys.argv) > 6 else "persistent"
        print(json.dumps(session(port, sys.argv[3], int(sys.argv[4]), float(sys.argv[5]), how)))
    elif cmd == "subscriber":
        print(json.dumps(subscriber_features(port, sys.argv[3])))
    elif cmd == "filters":
        print(json.dumps(filters(port, sys.argv[3])))
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
