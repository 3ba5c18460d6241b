#!/usr/bin/env node
// MQTT.js (npm `mqtt` 5.x) behind simqtt's driver protocol, version 1
// (docs/client-certification.md): commands on stdin, events on stdout, one JSON object a line.
//
// Written the way MQTT.js documents its client: `mqtt.connect` with `reconnectPeriod` (it
// reconnects by itself) and `resubscribe: true` (the library subscribes again after a
// reconnect, by its own rule); in-flight messages in MQTT.js's default in-memory stores (no
// persistence across a restart of the process). MQTT.js reports no event for its own
// resubscriptions, so this adapter watches the packets it sends (`packetsend`) and receives
// (`packetreceive`): a SUBACK to a SUBSCRIBE the application did not make is a resubscription.
//
// Run: NODE_PATH=~/.cache/simqtt-bench-peers/node/node_modules node adapters/mqttjs/adapter.js
// (scripts/install-peers installs mqtt 5.16.0 there).
'use strict';
const mqtt = require('mqtt');
const readline = require('readline');

function emit(event) {
  process.stdout.write(JSON.stringify(event) + '\n');
}

let client = null;
// Subscribe commands whose SUBSCRIBE has not been seen on the way out yet (filters joined).
const appPending = [];
// SUBSCRIBE packets sent: messageId -> {app: bool, filters}.
const sentSubscribes = new Map();

function connect(cmd) {
  const options = {
    clientId: cmd.client_id,
    clean: cmd.clean_session,
    keepalive: cmd.keepalive,
    protocolVersion: cmd.version === '5' ? 5 : 4,
    reconnectPeriod: cmd.automatic_reconnect ? 1000 : 0,
    connectTimeout: 5000,
    resubscribe: !!cmd.resubscribe,
  };
  if (cmd.username !== undefined) options.username = cmd.username;
  if (cmd.password !== undefined) options.password = cmd.password;
  if (cmd.will) {
    options.will = {
      topic: cmd.will.topic,
      payload: Buffer.from(cmd.will.payload),
      qos: cmd.will.qos,
      retain: cmd.will.retain,
    };
  }
  if (options.protocolVersion === 5 && cmd.session_expiry !== undefined) {
    options.properties = { sessionExpiryInterval: cmd.session_expiry };
  }
  let connectedBefore = false;
  client = mqtt.connect('mqtt://' + cmd.server, options);
  client.on('connect', (connack) => {
    emit({ event: 'connect_complete', reconnect: connectedBefore, session_present: !!connack.sessionPresent });
    connectedBefore = true;
  });
  client.on('close', () => emit({ event: 'connection_lost', cause: 'close' }));
  client.on('error', (e) => emit({ event: 'error', message: String(e && e.message) }));
  client.on('message', (topic, payload, packet) => {
    emit({
      event: 'message', topic, qos: packet.qos, retain: !!packet.retain, dup: !!packet.dup,
      payload: payload.toString('utf8'),
    });
  });
  client.on('packetsend', (packet) => {
    if (packet.cmd !== 'subscribe') return;
    const filters = packet.subscriptions.map((s) => ({ filter: s.topic, qos: s.qos }));
    const key = filters.map((f) => f.filter).join('\u0000');
    const i = appPending.indexOf(key);
    if (i >= 0) appPending.splice(i, 1);
    sentSubscribes.set(packet.messageId, { app: i >= 0, filters });
  });
  client.on('packetreceive', (packet) => {
    if (packet.cmd !== 'suback') return;
    const sent = sentSubscribes.get(packet.messageId);
    sentSubscribes.delete(packet.messageId);
    if (sent && !sent.app) {
      emit({ event: 'subscribed', filters: sent.filters, granted: packet.granted });
    }
  });
}

function command(cmd) {
  switch (cmd.cmd) {
    case 'subscribe': {
      const map = {};
      for (const f of cmd.filters) map[f.filter] = { qos: f.qos };
      appPending.push(cmd.filters.map((f) => f.filter).join('\u0000'));
      client.subscribe(map, (err, granted) => {
        if (err) return emit({ event: 'error', id: cmd.id, message: String(err.message) });
        emit({
          event: 'subscribed', id: cmd.id,
          filters: cmd.filters, granted: granted.map((g) => g.qos),
        });
      });
      break;
    }
    case 'unsubscribe':
      client.unsubscribe(cmd.filters, (err) => {
        if (err) return emit({ event: 'error', id: cmd.id, message: String(err.message) });
        emit({ event: 'unsubscribed', id: cmd.id });
      });
      break;
    case 'publish':
      client.publish(cmd.topic, Buffer.from(cmd.payload), { qos: cmd.qos, retain: cmd.retain }, (err) => {
        if (cmd.qos === 0) return;
        if (err) return emit({ event: 'error', id: cmd.id, message: String(err.message) });
        emit({ event: 'delivery_complete', id: cmd.id });
      });
      break;
    case 'disconnect':
      client.end(false, {}, () => emit({ event: 'disconnected' }));
      break;
    default:
      emit({ event: 'error', id: cmd.id, message: 'unknown command ' + cmd.cmd });
  }
}

emit({ event: 'ready', protocol: 1, client: 'mqtt.js ' + require('mqtt/package.json').version });
const lines = readline.createInterface({ input: process.stdin });
lines.on('line', (line) => {
  if (!line.trim()) return;
  const cmd = JSON.parse(line);
  if (cmd.cmd === 'connect') return connect(cmd);
  if (cmd.cmd === 'exit') process.exit(0);
  if (!client) return emit({ event: 'error', id: cmd.id, message: 'not connected: send connect first' });
  command(cmd);
});
lines.on('close', () => process.exit(0));
process.stdout.on('error', () => process.exit(0));
