// The seed design's relay: express + ws + eventsource-parser, as a benchmark yardstick.
// It speaks the chat protocol's send -> delta/done subset, one delta frame per upstream
// network read (all events of a read batched, as the original did), no auth, no database.
import http from "node:http";
import { randomUUID } from "node:crypto";
import express from "express";
import { WebSocketServer } from "ws";
import { createParser } from "eventsource-parser";

const upstream = process.argv[2];
const app = express();
app.get("/health", (req, res) => res.send("ok"));
const server = http.createServer(app);
const wss = new WebSocketServer({ server, path: "/ws/chat/", perMessageDeflate: false });

async function relay(ws, content) {
  const message = randomUUID();
  ws.send(JSON.stringify({ type: "message", message: { id: message } }));
  const response = await fetch(upstream + "/chat/completions", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ model: "bench", stream: true, messages: [{ role: "user", content }] }),
  });
  let index = 0;
  let texts = [];
  const parser = createParser({
    onEvent(event) {
      if (event.data === "[DONE]") return;
      const choices = JSON.parse(event.data).choices;
      const text = choices.length ? choices[0].delta.content : null;
      if (text) texts.push(text);
    },
  });
  const decoder = new TextDecoder();
  for await (const part of response.body) {
    parser.feed(decoder.decode(part, { stream: true }));
    if (texts.length) {
      const text = texts.join("");
      texts = [];
      ws.send(JSON.stringify({ type: "delta", message, index, text }));
      index += [...text].length;
    }
  }
  ws.send(JSON.stringify({ type: "done", message, status: "complete" }));
}

wss.on("connection", (ws) => {
  ws.on("message", (data) => {
    const frame = JSON.parse(data);
    if (frame.type === "send") relay(ws, frame.content).catch((e) => console.error(e));
  });
});

server.listen(Number(process.argv[3] || 0), "127.0.0.1", () => {
  console.log("listening " + server.address().port);
});
