#!/usr/bin/env python3
"""Misbehaving MQTT clients for the bad-neighbours drill, on raw sockets (they must break
the rules): non-readers, slowloris, amplifying SenML packs, PUBREL storms, duplicate packet
ids, reconnect storms and garbage frames. Runs them all until DURATION seconds have passed
and prints how often each was connected and cut off.

usage: bad_clients.py HOST PORT DURATION"""

import os
import random
import socket
import struct
import sys
import threading
import time

HOST, PORT, DURATION = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
DEADLINE = time.monotonic() + DURATION
counts = {}
lock = threading.Lock()


def count(what):
    with lock:
        counts[what] = counts.get(what, 0) + 1


def length(n):
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def packet(first, body):
    return bytes([first]) + length(len(body)) + body


def string(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack(">H", len(b)) + b


def connect(client_id, level=4, keep_alive=60):
    body = string("MQTT") + bytes([level, 0x02]) + struct.pack(">H", keep_alive)
    if level == 5:
        body += b"\x00"
    return packet(0x10, body + string(client_id))


def publish(topic, pkid, payload, level=4, qos=1, dup=False):
    body = string(topic) + (struct.pack(">H", pkid) if qos else b"")
    if level == 5:
        body += b"\x00"
    return packet(0x30 | (qos << 1) | (0x08 if dup else 0), body + payload)


def session(client_id, level=4, keep_alive=60, rcvbuf=None):
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(10)
    s.connect((HOST, PORT))
    s.sendall(connect(client_id, level, keep_alive))
    if s.recv(1) != b"\x20":
        raise ConnectionError("no CONNACK")
    s.recv(64)
    count("connected")
    return s


def drain(s):
    """Reads and drops whatever the server sent, without waiting."""
    s.setblocking(False)
    try:
        while s.recv(65536):
            pass
    except (BlockingIOError, InterruptedError):
        pass
    finally:
        s.setblocking(True)


def forever(name, body):
    """Runs `body` again whenever the server cuts it off, until the deadline."""
    while time.monotonic() < DEADLINE:
        try:
            body()
        except (OSError, ConnectionError):
            count(f"{name} cut off")
            time.sleep(0.2)


def ts():
    return int(time.time() * 1000)


def non_reader(n):
    """Subscribes to its own topic, publishes large readings (20 a second: how fast a device
    may publish is a rate limit's business, not this drill's), never reads."""
    topic = f"sensors/bad-deaf-{n}/temp"

    def body():
        s = session(f"bad-deaf-{n}", rcvbuf=4096)
        s.sendall(packet(0x82, struct.pack(">H", 1) + string(topic) + b"\x00"))
        pad = "x" * 60000
        pkid = 0
        while time.monotonic() < DEADLINE:
            pkid = pkid % 65535 + 1
            reading = f'{{"value": 1, "ts": {ts()}, "pad": "{pad}"}}'.encode()
            s.sendall(publish(topic, pkid, reading))
            time.sleep(0.05)

    forever("non-reader", body)


def slowloris(n):
    """Keep alive 5 s; then one byte of a packet every 2 s."""

    def body():
        s = session(f"bad-slow-{n}", keep_alive=5)
        for b in publish(f"sensors/bad-slow-{n}/temp", 1, b'{"value": 1}'):
            time.sleep(2)
            if time.monotonic() > DEADLINE:
                return
            s.send(bytes([b]))

    forever("slowloris", body)


def amplifier(n):
    """MQTT 5: SenML packs whose base unit would be copied into 500 readings."""
    pack = '[{"bu":"%s","n":"m","v":1},%s]' % (
        "x" * 55000,
        ",".join('{"n":"m%d","v":1}' % i for i in range(500)),
    )

    def body():
        s = session(f"bad-amp-{n}", level=5)
        pkid = 0
        while time.monotonic() < DEADLINE:
            pkid = pkid % 65535 + 1
            s.sendall(publish(f"devices/bad-amp-{n}/senml", pkid, pack.encode(), level=5))
            time.sleep(0.5)
            drain(s)

    forever("amplifier", body)


def pubrel_storm(n):
    """PUBRELs for packet ids nothing was published under."""

    def body():
        s = session(f"bad-pubrel-{n}", level=5)
        while time.monotonic() < DEADLINE:
            burst = b"".join(
                bytes([0x62, 2]) + struct.pack(">H", random.randint(1, 65535))
                for _ in range(50)
            )
            s.sendall(burst)
            time.sleep(0.1)
            drain(s)

    forever("pubrel storm", body)


def duplicates(n):
    """Every QoS 1 publish sent twice back to back, the second marked DUP."""
    topic = f"sensors/bad-dup-{n}/temp"

    def body():
        s = session(f"bad-dup-{n}")
        pkid = 0
        while time.monotonic() < DEADLINE:
            pkid = pkid % 65535 + 1
            reading = f'{{"value": {pkid}, "ts": {ts()}}}'.encode()
            s.sendall(publish(topic, pkid, reading) + publish(topic, pkid, reading, dup=True))
            time.sleep(0.05)
            drain(s)

    forever("duplicates", body)


def reconnect_storm(n):
    """Connects, publishes one reading and drops the connection, twenty times a second."""

    def body():
        s = session(f"bad-storm-{n}")
        s.sendall(publish(f"sensors/bad-storm-{n}/temp", 1, f'{{"value": 1, "ts": {ts()}}}'.encode()))
        s.close()
        time.sleep(0.05)

    forever("reconnect storm", body)


def garbage(n):
    """Random bytes after CONNECT, or instead of it."""

    def body():
        s = socket.create_connection((HOST, PORT), timeout=10)
        if random.random() < 0.5:
            s.sendall(connect(f"bad-garbage-{n}"))
        s.sendall(os.urandom(random.randint(1, 4096)))
        time.sleep(0.1)
        s.close()
        count("garbage sent")

    forever("garbage", body)


def main():
    kinds = [(non_reader, 5), (slowloris, 20), (amplifier, 2), (pubrel_storm, 2),
             (duplicates, 2), (reconnect_storm, 3), (garbage, 2)]
    threads = [
        threading.Thread(target=kind, args=(n,), daemon=True)
        for kind, many in kinds
        for n in range(many)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, DEADLINE - time.monotonic()) + 15)
    print("bad clients: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))


if __name__ == "__main__":
    main()
