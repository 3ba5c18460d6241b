#!/usr/bin/env python3
"""paho-mqtt 2.x (Python) behind simqtt's driver protocol, version 1
(docs/client-certification.md): commands on stdin, events on stdout, one JSON object a line.

Written the way paho-mqtt documents its client: the network loop in a thread (loop_start),
which reconnects by itself after a lost connection (reconnect_delay_set), and subscriptions
made again in on_connect when the broker kept no session ("subscribing in on_connect() means
that if we lose the connection and reconnect then subscriptions will be renewed"). paho-mqtt
keeps in-flight messages in memory only: no persistence across a restart of the process.

Run: target/venv/bin/python adapters/paho-python/adapter.py (scripts/install-peers makes the
venv with paho-mqtt 2.x).
"""
import json
import os
import sys
import threading

import paho.mqtt
import paho.mqtt.client as mqtt

out_lock = threading.Lock()
state = threading.RLock()
client = None
want_resubscribe = False
subscriptions = {}  # filter -> qos, what the application holds
publish_ids = {}  # mid -> command id
sub_requests = {}  # mid -> (command id or None, [(filter, qos)])
unsub_requests = {}  # mid -> command id
# Completions that came (on paho's network thread) before the call that caused them had
# returned its mid: paho's callbacks may run while its call is still under way, so no lock of
# ours is held across a paho call.
early = {"publish": set(), "subscribe": {}, "unsubscribe": set()}
connected_before = False


def emit(event):
    line = json.dumps(event, separators=(",", ":"))
    with out_lock:
        try:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        except BrokenPipeError:
            # simqtt has gone (the run ended, or it killed this process's reader first).
            os._exit(0)


def subscribed(command_id, filters, granted):
    event = {"event": "subscribed",
             "filters": [{"filter": f, "qos": q} for f, q in filters],
             "granted": granted}
    if command_id is not None:
        event["id"] = command_id
    emit(event)


def subscribe(filters, command_id):
    result, mid = client.subscribe([(f, q) for f, q in filters])
    if result != mqtt.MQTT_ERR_SUCCESS:
        emit({"event": "error", "id": command_id, "message": "subscribe: %s" % mqtt.error_string(result)})
        return
    with state:
        granted = early["subscribe"].pop(mid, None)
        if granted is None:
            sub_requests[mid] = (command_id, filters)
    if granted is not None:
        subscribed(command_id, filters, granted)


def on_connect(c, userdata, flags, reason_code, properties):
    global connected_before
    if reason_code.is_failure:
        emit({"event": "error", "message": "connect refused: %s" % reason_code})
        return
    emit({"event": "connect_complete", "reconnect": connected_before,
          "session_present": bool(flags.session_present)})
    connected_before = True
    with state:
        held = sorted(subscriptions.items())
    if want_resubscribe and not flags.session_present and held:
        subscribe(held, None)


def on_disconnect(c, userdata, flags, reason_code, properties):
    emit({"event": "connection_lost", "cause": str(reason_code)})


def on_message(c, userdata, m):
    emit({"event": "message", "topic": m.topic, "qos": m.qos, "retain": bool(m.retain),
          "dup": bool(m.dup), "payload": m.payload.decode("utf-8", "replace")})


def on_publish(c, userdata, mid, reason_code, properties):
    with state:
        command_id = publish_ids.pop(mid, None)
        if command_id is None:
            early["publish"].add(mid)
    if command_id is not None:
        emit({"event": "delivery_complete", "id": command_id})


def on_subscribe(c, userdata, mid, reason_codes, properties):
    granted = [rc.value for rc in reason_codes]
    with state:
        request = sub_requests.pop(mid, None)
        if request is None:
            early["subscribe"][mid] = granted
    if request is not None:
        subscribed(request[0], request[1], granted)


def on_unsubscribe(c, userdata, mid, reason_codes, properties):
    with state:
        command_id = unsub_requests.pop(mid, None)
        if command_id is None:
            early["unsubscribe"].add(mid)
    if command_id is not None:
        emit({"event": "unsubscribed", "id": command_id})


def connect(cmd):
    global client, want_resubscribe
    version = mqtt.MQTTv5 if cmd.get("version") == "5" else mqtt.MQTTv311
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cmd["client_id"],
                         clean_session=cmd["clean_session"] if version == mqtt.MQTTv311 else None,
                         protocol=version)
    want_resubscribe = bool(cmd.get("resubscribe"))
    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.on_message = on_message
    client.on_publish = on_publish
    client.on_subscribe = on_subscribe
    client.on_unsubscribe = on_unsubscribe
    client.reconnect_delay_set(min_delay=1, max_delay=4)
    client.max_queued_messages_set(1000)
    if cmd.get("username") is not None:
        client.username_pw_set(cmd["username"], cmd.get("password"))
    will = cmd.get("will")
    if will:
        client.will_set(will["topic"], will["payload"], will["qos"], will["retain"])
    host, port = cmd["server"].rsplit(":", 1)
    client.connect_async(host, int(port), keepalive=cmd["keepalive"])
    client.loop_start()


def main():
    emit({"event": "ready", "protocol": 1, "client": "paho-mqtt %s" % paho.mqtt.__version__})
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        kind = cmd.get("cmd")
        if kind == "connect":
            connect(cmd)
        elif kind == "exit":
            break
        elif client is None:
            emit({"event": "error", "id": cmd.get("id"), "message": "not connected: send connect first"})
        elif kind == "subscribe":
            filters = [(f["filter"], f["qos"]) for f in cmd["filters"]]
            with state:
                for f, q in filters:
                    subscriptions[f] = q
            subscribe(filters, cmd["id"])
        elif kind == "unsubscribe":
            with state:
                for f in cmd["filters"]:
                    subscriptions.pop(f, None)
            result, mid = client.unsubscribe(cmd["filters"])
            with state:
                done = mid in early["unsubscribe"]
                early["unsubscribe"].discard(mid)
                if not done:
                    unsub_requests[mid] = cmd["id"]
            if done:
                emit({"event": "unsubscribed", "id": cmd["id"]})
        elif kind == "publish":
            info = client.publish(cmd["topic"], cmd["payload"].encode(), cmd["qos"], cmd["retain"])
            if cmd["qos"] == 0:
                continue
            if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                emit({"event": "error", "id": cmd["id"], "message": mqtt.error_string(info.rc)})
                continue
            with state:
                done = info.mid in early["publish"]
                early["publish"].discard(info.mid)
                if not done:
                    publish_ids[info.mid] = cmd["id"]
            if done:
                emit({"event": "delivery_complete", "id": cmd["id"]})
        elif kind == "disconnect":
            client.disconnect()
            client.loop_stop()
            emit({"event": "disconnected"})
    if client is not None:
        client.loop_stop()


if __name__ == "__main__":
    main()
