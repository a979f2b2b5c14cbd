#!/usr/bin/python3
"""The Paho Python client (Debian's python3-paho-mqtt) on Sluice's device port, for
bridge/tests/conformance.rs. Prints one JSON object with what the client saw.
  paho_client.py connack PORT             MQTT 5 CONNACK reason and properties
  paho_client.py alias PORT DEVICE        3 QoS 1 readings, the last two by topic alias only
  paho_client.py empty-id PORT            zero-length client ids, MQTT 3.1.1 and 5
"""
import json
import sys
import threading

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
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
