// Socket.IO peer for the Confab load comparison.
//
// The same semantics as Confab's hot path minus storage: a client joins a
// room (`join`, acknowledged once the socket is in the room) and publishes
// into it (`msg`, acknowledged once handed to the adapter); every socket in
// the room, on any process sharing the Redis, receives `msg` with the
// content. WebSocket transport only.
//
//   PORT=3001 REDIS_URL=redis://127.0.0.1:6379 node server.js
//
// Environment: PORT (default 3000), HOST (default 127.0.0.1),
// REDIS_URL (default redis://127.0.0.1:6379).
"use strict";

const http = require("node:http");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");

const port = Number(process.env.PORT || 3000);
const host = process.env.HOST || "127.0.0.1";
const redisUrl = process.env.REDIS_URL || "redis://127.0.0.1:6379";

async function main() {
  const pubClient = createClient({ url: redisUrl });
  const subClient = pubClient.duplicate();
  for (const c of [pubClient, subClient]) {
    c.on("error", (err) => console.error("redis:", err.message));
  }
  await Promise.all([pubClient.connect(), subClient.connect()]);

  const httpServer = http.createServer((req, res) => {
    res.writeHead(404).end();
  });
  const io = new Server(httpServer, {
    transports: ["websocket"],
    serveClient: false,
    cors: { origin: true },
    maxHttpBufferSize: 1e6,
    adapter: createAdapter(pubClient, subClient),
  });

  io.on("connection", (socket) => {
    socket.on("join", (room, ack) => {
      if (typeof room !== "string" || room.length === 0) {
        if (typeof ack === "function") ack({ error: "room must be a non-empty string" });
        return;
      }
      socket.join(room);
      if (typeof ack === "function") ack({ ok: true, room });
    });

    socket.on("msg", (payload, ack) => {
      const room = payload && payload.room;
      const c = payload && payload.c;
      if (typeof room !== "string" || typeof c !== "string") {
        if (typeof ack === "function") ack({ error: "expected {room, c}" });
        return;
      }
      io.to(room).emit("msg", { c });
      if (typeof ack === "function") ack({ ok: true });
    });
  });

  httpServer.listen(port, host, () => {
    console.log(`socket.io peer listening on ${host}:${port} (pid ${process.pid}, redis ${redisUrl})`);
  });

  const stop = () => {
    io.close();
    Promise.allSettled([pubClient.quit(), subClient.quit()]).finally(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
