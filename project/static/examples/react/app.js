/* The React example: a chat box on the useChat hook, with no JSX and no build step. */
import { createElement as h, useState } from "react";
import { createRoot } from "react-dom/client";
import { useChat } from "./use-chat.js";

function Message({ message }) {
  if (message.role === "user") {
    return h("p", { className: "question" }, message.content);
  }
  return h(
    "article",
    { className: "answer", "data-status": message.status },
    // The only HTML shown: complete blocks as the server rendered and sanitized them.
    h("div", { className: "markdown", dangerouslySetInnerHTML: { __html: message.html } }),
    // The block being written, as text (React never parses a string as HTML).
    h("span", { className: "tail" }, message.tail),
  );
}

function Chat() {
  const { messages, connected, streaming, error, send, stop } = useChat();
  const [text, setText] = useState("");

  function submit(event) {
    event.preventDefault();
    if (text.trim() && send(text).status !== "refused") {
      setText("");
    }
  }

  return h(
    "main",
    { "aria-busy": streaming },
    h("p", { id: "connection", role: "status" }, connected ? "Connected" : "Connecting…"),
    messages.map((message) => h(Message, { key: message.id, message })),
    error && h("p", { role: "alert" }, error.detail),
    h(
      "form",
      { onSubmit: submit },
      h("input", {
        value: text,
        onChange: (event) => setText(event.target.value),
        "aria-label": "Message",
      }),
      streaming
        ? h("button", { type: "button", onClick: stop }, "Stop")
        : h("button", { type: "submit", disabled: !connected }, "Send"),
    ),
  );
}

createRoot(document.getElementById("root")).render(h(Chat));
