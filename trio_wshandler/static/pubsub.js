// The browser client of trio_wshandler's PubSubConnection (plain JavaScript, no build step).
//
//   const client = new TrioPubSub("wss://example.com/ws", {
//     onMessage: (topic, data, envelope) => ...,       // every publication, replayed or live
//     onSubscribed: (topic, answer, since) => ...,     // answer.recovered, answer.reason
//     onStatus: (status) => ...,   // "connecting", "connected", "disconnected", "closed" (terminal)
//     onOther: (message) => ...,                       // anything else the server sends
//   });
//   client.subscribe("room");
//   client.publish("room", "text");  // where the server's may_publish allows it
//
// It keeps the last position (offset, epoch) of every topic (a publication is shown once: what
// arrives between a subscription and its answer is in the replay), and when the connection
// drops it
// reconnects with exponential backoff and jitter and subscribes again from those positions: the
// server replays what was missed and says recovered: true, or says why it could not (the page
// then reloads what it shows from its own source).  It comes back only after a close that asks
// for it (TrioPubSub.shouldReconnect: going away 1001, a restart 1012, try again later 1013, a
// lost connection, ...); after a terminal one (1002/1007 protocol, 1008 policy, 1009 too big,
// ...) it stays closed.
(function (global) {
  "use strict";

  class TrioPubSub {
    constructor(url, options = {}) {
      this.url = url;
      this.options = options;
      this.minDelay = options.minDelay ?? 500; // ms before the first reconnection
      this.maxDelay = options.maxDelay ?? 10000; // ms, the longest wait between attempts
      this.topics = new Map(); // topic -> last position {offset, epoch} or null
      this.pending = new Map(); // topic -> the position it was subscribed from
      this.attempt = 0;
      this.closed = false;
      this.ws = null;
      this.connect();
    }

    connect() {
      this.status("connecting");
      let ws;
      try {
        ws = new WebSocket(this.url);
      } catch (e) {
        this.reconnectLater();
        return;
      }
      this.ws = ws;
      ws.onopen = () => {
        this.status("connected");
        for (const topic of this.topics.keys()) this.sendSubscribe(topic);
      };
      ws.onmessage = (event) => this.received(event.data);
      ws.onclose = (event) => {
        if (this.ws !== ws) return;
        if (!TrioPubSub.shouldReconnect(event.code)) {
          // a terminal code (the server is going away, a protocol or policy error): not on our
          // own; the page may call connect() again on the user's action
          this.closedWith = event.code;
          this.status("closed");
          return;
        }
        this.status("disconnected");
        if (!this.closed) this.reconnectLater();
      };
    }

    // The server's rule (trio_wshandler/_close_codes.py, should_reconnect): 1001, 1011, 1012,
    // 1013, a lost connection (1005, 1006), 3000-3499 and 4000-4499 reconnect; others do not.
    static shouldReconnect(code) {
      if (code === undefined || code === null || code === 1005 || code === 1006) return true;
      if (code === 1001 || code === 1011 || code === 1012 || code === 1013) return true;
      return (code >= 3000 && code <= 3499) || (code >= 4000 && code <= 4499);
    }

    reconnectLater() {
      const ceiling = Math.min(this.maxDelay, this.minDelay * 2 ** this.attempt);
      this.attempt += 1;
      const delay = ceiling / 2 + (Math.random() * ceiling) / 2; // jitter: no reconnect storms
      setTimeout(() => { if (!this.closed) this.connect(); }, delay);
    }

    subscribe(topic) {
      if (!this.topics.has(topic)) this.topics.set(topic, null);
      if (this.ws && this.ws.readyState === WebSocket.OPEN) this.sendSubscribe(topic);
    }

    unsubscribe(topic) {
      this.topics.delete(topic);
      this.send({ op: "unsubscribe", topic });
    }

    publish(topic, data) {
      return this.send({ op: "publish", topic, data });
    }

    send(command) {
      if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
      this.ws.send(JSON.stringify(command));
      return true;
    }

    close() {
      this.closed = true;
      if (this.ws) this.ws.close(1000);
    }

    sendSubscribe(topic) {
      const since = this.topics.get(topic) ?? null;
      this.pending.set(topic, since);
      this.send({ op: "subscribe", topic, since });
    }

    received(text) {
      let message;
      try {
        message = JSON.parse(text);
      } catch (e) {
        this.call("onOther", text);
        return;
      }
      if (message.op === "subscribed") {
        this.attempt = 0; // a server that answers: the backoff starts again from the shortest
        const since = this.pending.get(message.topic) ?? null;
        this.pending.delete(message.topic);
        // recovered: the replay follows and moves the position on; otherwise start from now
        if (this.topics.has(message.topic) && !message.recovered) {
          this.topics.set(message.topic, message.position);
        }
        this.call("onSubscribed", message.topic, message, since);
      } else if (typeof message.offset === "number" && this.topics.has(message.topic)) {
        // sent before the server took our subscription: the replay that follows its answer
        // holds it (or, if it cannot recover, the page starts again from the answer's position)
        if (this.pending.has(message.topic)) return;
        const last = this.topics.get(message.topic);
        if (last && last.epoch === message.epoch) {
          if (message.offset <= last.offset) return; // seen
          if (message.offset > last.offset + 1) {
            // a gap (the server dropped a message for this client: slow_consumer="drop"):
            // ask again from the last one seen, and show nothing until the answer
            this.sendSubscribe(message.topic);
            return;
          }
        }
        this.topics.set(message.topic, { offset: message.offset, epoch: message.epoch });
        let data = message;  // an envelope of the server's own shape: the whole object
        if ("data" in message) data = message.data;
        else if ("data_b64" in message) data = atob(message.data_b64);
        this.call("onMessage", message.topic, data, message);
      } else {
        if (message.op === "error") this.pending.delete(message.topic);
        this.call("onOther", message);
      }
    }

    status(value) {
      this.state = value;
      this.call("onStatus", value);
    }

    call(name, ...args) {
      const f = this.options[name];
      if (typeof f === "function") f(...args);
    }
  }

  global.TrioPubSub = TrioPubSub;
})(typeof window !== "undefined" ? window : globalThis);
