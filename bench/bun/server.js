// The bar for Relaydesk's fan-out: Bun's built-in WebSocket pub/sub (uWebSockets inside)
// speaking just the subset of wire protocol v1 that `loadtest fanout` uses, so that the
// same client measures it and a Relaydesk edge side by side (`cargo xtask bench-fanout`).
//
// It persists nothing, verifies no token (it only reads the claims to shape `welcome`
// and `from`), replays nothing on `sub` and keeps one counter per conversation: it does
// strictly less work than any real system, so its figures are a lower bound, not a peer.
//
//   hello → welcome (shaped like the edge's)    sub → subscribe + subbed (head, no replay)
//   send  → next seq, one `msg` frame serialized once and published to the conversation's
//           topic, `accepted` to the sender     ping → pong           unsub → unsubscribe
//
// Slow subscribers are treated like the edge treats them (OUTBOUND_QUEUE_BYTES, close 4008):
// past 1 MiB of backpressure the socket is closed rather than buffered without bound.
//
// Usage: bun server.js [PORT]   (or PORT=…; 0 picks a free port). HOST defaults to 127.0.0.1.
// Prints the WebSocket URL on its first line of output once listening.

const HEARTBEAT_MS = 25000;
const MAX_MESSAGE = 65536;

const hostname = process.env.HOST || "127.0.0.1";
const port = Number(process.argv[2] ?? process.env.PORT ?? 8090);

/** Last seq per conversation. */
const heads = new Map();
let connections = 0;

/** The JWT's claims, unverified (base64url of the middle part). */
function claims(token) {
  try {
    return JSON.parse(Buffer.from(String(token).split(".")[1], "base64url").toString());
  } catch {
    return {};
  }
}

function error(ws, code, message, id) {
  ws.send(JSON.stringify(id ? { t: "error", id, code, message } : { t: "error", code, message }));
}

const server = Bun.serve({
  hostname,
  port,
  fetch(req, server) {
    const { pathname } = new URL(req.url);
    if (pathname === "/v1/ws") {
      if (server.upgrade(req, { data: { conn: String(++connections), from: null } })) return;
      return new Response("upgrade required", { status: 426 });
    }
    if (pathname === "/healthz" || pathname === "/readyz") return new Response("ok");
    return new Response("not found", { status: 404 });
  },
  websocket: {
    maxPayloadLength: MAX_MESSAGE,
    backpressureLimit: 1 << 20,
    closeOnBackpressureLimit: true,
    idleTimeout: (2 * HEARTBEAT_MS) / 1000,
    sendPings: true,
    perMessageDeflate: false,
    message(ws, text) {
      let f;
      try {
        f = JSON.parse(text);
      } catch {
        return error(ws, "bad_request", "invalid JSON");
      }
      const me = ws.data;
      if (me.from === null) {
        if (f.t !== "hello") return ws.close(4501, "hello first");
        const c = claims(f.token);
        const principal = c.sub ?? crypto.randomUUID();
        const role = c.role ?? "admin";
        me.from = c.name ? { id: principal, role, name: c.name } : { id: principal, role };
        ws.send(JSON.stringify({
          t: "welcome", conn: me.conn, tenant: c.tid ?? crypto.randomUUID(), principal, role,
          heartbeat_ms: HEARTBEAT_MS, max_message: MAX_MESSAGE,
        }));
        return;
      }
      switch (f.t) {
        case "sub":
          ws.subscribe(f.conv);
          ws.send(JSON.stringify({ t: "subbed", conv: f.conv, head: heads.get(f.conv) ?? 0 }));
          return;
        case "unsub":
          ws.unsubscribe(f.conv);
          return;
        case "send": {
          // Numbers past 2^53 (the harness's `t0` nanoseconds) lose their last ~8 bits
          // through JSON.parse: at most 256 ns of latency, far below what is measured.
          const seq = (heads.get(f.conv) ?? 0) + 1;
          heads.set(f.conv, seq);
          const msg = crypto.randomUUID();
          const ts = Date.now();
          server.publish(f.conv, JSON.stringify({
            t: "msg", conv: f.conv, seq, msg, from: me.from, kind: f.kind ?? "text", body: f.body, ts,
          }));
          ws.send(JSON.stringify({ t: "accepted", id: f.id, conv: f.conv, seq, msg, ts }));
          return;
        }
        case "ping":
          ws.send('{"t":"pong"}');
          return;
        case "ack":
        case "read":
        case "typing":
          return;
        default:
          return error(ws, "bad_request", `unknown frame ${JSON.stringify(f.t)}`);
      }
    },
  },
});

console.log(`ws://${server.hostname}:${server.port}/v1/ws`);
