// Node's `ws` as an independent client for tests/test_interop_node.py.
//
//   node client.mjs URL MODE BROADCAST
//
// MODE is "default" (ws's default options: it offers permessage-deflate as it always does) or
// "no-deflate" (perMessageDeflate: false).  The client round-trips text and binary messages of
// every size in SIZES, one at a time, checking each echo byte for byte; then sends the text
// "ready" and waits for one message, which must be the text BROADCAST; then closes with 1000.
//
// Besides what ws tells (the negotiated extensions), it watches the bytes on the socket in
// both directions with a frame parser of its own (headers only), and reports for each data
// message whether its first frame had RSV1 set (compressed, RFC 7692) and its size on the
// wire.  It prints one JSON line on stdout and exits 0 if everything matched, 1 if not, 2 if
// it ran out of time.

import { randomBytes } from "node:crypto";
import { createRequire } from "node:module";
import WebSocket from "ws";

const SIZES = [0, 1, 100, 127, 128, 1023, 1024, 10 * 1024, 64 * 1024, 1024 * 1024];
const KINDS = ["text", "binary-random", "binary-pattern"];
const READY = "ready";
const DEADLINE_MS = 15000;

const [url, mode, broadcast] = process.argv.slice(2);
if (!url || !["default", "no-deflate"].includes(mode) || broadcast === undefined) {
  process.stderr.write("usage: node client.mjs URL default|no-deflate BROADCAST\n");
  process.exit(64);
}

const result = {
  mode,
  ws_version: null,
  extensions: null, // ws.extensions: the names of the extensions in force
  extensions_header: null, // Sec-WebSocket-Extensions of the 101 response
  messages: [], // one per echo: {kind, size, ok, problem, sent, received} (wire records)
  broadcast: null, // {size, ok, problem, received}
  ready: null, // {sent}: the wire record of "ready"
  close: null, // {code, reason} of the server's Close
  errors: [],
  ok: false,
};

const wire = { sent: [], received: [] }; // every data message on the socket, in order

// ------------------------------------------------------------------ a frame parser for the wire

/** Parses WebSocket frame headers from a byte stream; records each data message. */
class WireWatcher {
  constructor(records) {
    this.records = records;
    this.buffer = Buffer.alloc(0);
    this.skip = 0; // payload bytes of the current frame still to pass
    this.message = null; // the data message being received (its frames so far)
  }

  feed(chunk) {
    let data = Buffer.from(chunk);
    while (data.length > 0) {
      if (this.skip > 0) {
        const n = Math.min(this.skip, data.length);
        this.skip -= n;
        data = data.subarray(n);
        continue;
      }
      this.buffer = Buffer.concat([this.buffer, data]);
      data = Buffer.alloc(0);
      const header = this.parseHeader();
      if (header === null) return; // need more bytes
      const rest = this.buffer.subarray(header.headerLength);
      this.buffer = Buffer.alloc(0);
      this.frame(header);
      this.skip = header.length;
      data = rest;
    }
  }

  parseHeader() {
    const b = this.buffer;
    if (b.length < 2) return null;
    let length = b[1] & 0x7f;
    let pos = 2;
    if (length === 126) {
      if (b.length < 4) return null;
      length = b.readUInt16BE(2);
      pos = 4;
    } else if (length === 127) {
      if (b.length < 10) return null;
      length = Number(b.readBigUInt64BE(2));
      pos = 10;
    }
    if (b[1] & 0x80) pos += 4; // masking key
    if (b.length < pos) return null;
    return {
      fin: Boolean(b[0] & 0x80),
      rsv1: Boolean(b[0] & 0x40),
      opcode: b[0] & 0x0f,
      masked: Boolean(b[1] & 0x80),
      length,
      headerLength: pos,
    };
  }

  frame(h) {
    if (h.opcode >= 0x8) return; // control frames may come between fragments
    if (h.opcode !== 0x0) {
      this.message = { opcode: h.opcode, rsv1: h.rsv1, frames: 0, wire_bytes: 0, masked: h.masked };
    }
    if (this.message === null) return; // a continuation without a start: not ours to judge
    this.message.frames += 1;
    this.message.wire_bytes += h.length;
    if (h.fin) {
      this.records.push(this.message);
      this.message = null;
    }
  }
}

// ------------------------------------------------------------------ the messages

function jsonText(size) {
  const rows = [];
  for (let i = 0; i < 50; i++) {
    rows.push({ id: i, user: ["alice", "bob", "carol"][i % 3], price: i * 1.25, tags: ["x", "y"] });
  }
  const unit = JSON.stringify(rows);
  return unit.repeat(Math.ceil(size / unit.length) + 1).slice(0, size); // ASCII: chars = bytes
}

function makeMessage(kind, size) {
  if (kind === "text") return jsonText(size);
  if (kind === "binary-random") return randomBytes(size);
  const pattern = Buffer.alloc(size);
  for (let i = 0; i < size; i++) pattern[i] = (i * 13) % 32; // period 32: compressible
  return pattern;
}

function describeMismatch(expected, isText, data, isBinary) {
  const want = isText ? Buffer.from(expected, "utf8") : expected;
  if (isBinary === isText) return `type: expected ${isText ? "text" : "binary"}`;
  if (data.length !== want.length) return `length: expected ${want.length}, got ${data.length}`;
  for (let i = 0; i < want.length; i++) {
    if (data[i] !== want[i]) return `byte ${i}: expected ${want[i]}, got ${data[i]}`;
  }
  return null;
}

// ------------------------------------------------------------------ the run

function report(exitCode) {
  process.stdout.write(`${JSON.stringify(result)}\n`);
  process.exitCode = exitCode;
}

const deadline = setTimeout(() => {
  result.errors.push(`no result within ${DEADLINE_MS} ms`);
  report(2);
  process.exit(2);
}, DEADLINE_MS);

result.ws_version = createRequire(import.meta.url)("ws/package.json").version;

const options = mode === "default" ? undefined : { perMessageDeflate: false };
const ws = new WebSocket(url, options);

const inbox = [];
let waiter = null; // {resolve, reject} of the nextMessage() being awaited
ws.on("message", (data, isBinary) => {
  inbox.push({ data, isBinary });
  if (waiter) {
    waiter.resolve(inbox.shift());
    waiter = null;
  }
});
ws.on("close", (code) => {
  if (waiter) {
    waiter.reject(new Error(`connection closed (${code}) while waiting for a message`));
    waiter = null;
  }
});

function nextMessage() {
  if (inbox.length > 0) return Promise.resolve(inbox.shift());
  return new Promise((resolve, reject) => {
    waiter = { resolve, reject };
  });
}

ws.on("upgrade", (response) => {
  result.extensions_header = response.headers["sec-websocket-extensions"] ?? null;
  // ws takes the socket over right after this event (same tick): watch both directions.  (Bytes
  // that came with the 101 would be missed, but the server sends nothing before our first.)
  const socket = response.socket;
  const received = new WireWatcher(wire.received);
  const sent = new WireWatcher(wire.sent);
  socket.on("data", (chunk) => received.feed(chunk));
  const write = socket.write;
  socket.write = function (chunk, ...rest) {
    if (typeof chunk !== "string") sent.feed(chunk);
    return write.call(this, chunk, ...rest);
  };
});

const closed = new Promise((resolve) => {
  ws.on("close", (code, reason) => resolve({ code, reason: reason.toString() }));
});
ws.on("error", (err) => result.errors.push(`error: ${err.message}`));

try {
  await new Promise((resolve, reject) => {
    ws.once("open", resolve);
    ws.once("error", reject);
  });
  result.extensions = ws.extensions;

  for (const size of SIZES) {
    for (const kind of KINDS) {
      const message = makeMessage(kind, size);
      const isText = typeof message === "string";
      ws.send(message);
      const { data, isBinary } = await nextMessage();
      const problem = describeMismatch(message, isText, data, isBinary);
      result.messages.push({ kind, size, ok: problem === null, problem });
      if (problem !== null) result.errors.push(`${kind} ${size} B: ${problem}`);
    }
  }

  ws.send(READY);
  const { data, isBinary } = await nextMessage();
  const problem = describeMismatch(broadcast, true, data, isBinary);
  result.broadcast = { size: data.length, ok: problem === null, problem };
  if (problem !== null) result.errors.push(`broadcast: ${problem}`);

  ws.close(1000, "done");
} catch (err) {
  result.errors.push(`failed: ${err.message}`);
  ws.terminate();
}

result.close = await closed;
clearTimeout(deadline);

// the wire records in order: N echoes and "ready" sent, N echoes and the broadcast received
const n = result.messages.length;
result.messages.forEach((m, i) => {
  m.sent = wire.sent[i] ?? null;
  m.received = wire.received[i] ?? null;
});
result.ready = { sent: wire.sent[n] ?? null };
if (result.broadcast) result.broadcast.received = wire.received[n] ?? null;
if (wire.sent.length !== n + 1) {
  result.errors.push(`wire: ${wire.sent.length} data messages sent, expected ${n + 1}`);
}
if (wire.received.length !== n + 1) {
  result.errors.push(`wire: ${wire.received.length} data messages received, expected ${n + 1}`);
}
if (result.close.code !== 1000) result.errors.push(`close code ${result.close.code}`);

result.ok = result.errors.length === 0 && n === SIZES.length * KINDS.length;
report(result.ok ? 0 : 1);
