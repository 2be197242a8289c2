/* useChat: the chat client (chat/static/chat/client.js) as a React hook.
 *
 *   const { messages, connected, streaming, error, send, stop } = useChat();
 *
 * `messages` are the client's own objects, kept current as frames arrive: the
 * hook re-renders on each event, and a message's `html` (sanitized by the
 * server) and `tail` (plain text) are what to show.
 */
import { useEffect, useReducer, useState } from "react";
import { connectChat } from "chat-client";

// The events that change what is shown.
const CHANGES = [
  "open",
  "close",
  "conversation",
  "history",
  "message",
  "delta",
  "html",
  "reasoning",
  "done",
];

export function useChat({ url = "/ws/chat/", conversation = null } = {}) {
  const [chat, setChat] = useState(null);
  const [error, setError] = useState(null);
  const [, changed] = useReducer((n) => n + 1, 0);

  // One client per mounted component (and per url and conversation), closed on unmount.
  useEffect(() => {
    const client = connectChat({ url, conversation });
    const stops = CHANGES.map((type) => client.on(type, changed));
    stops.push(client.on("error", setError));
    setChat(client);
    return () => {
      stops.forEach((stop) => stop());
      client.close();
    };
  }, [url, conversation]);

  const messages = chat ? chat.messages : [];
  const last = messages[messages.length - 1];
  return {
    messages,
    connected: Boolean(chat && chat.connected),
    streaming: Boolean(last && last.status === "streaming"),
    error,
    send(text) {
      setError(null);
      return chat.send(text);
    },
    stop() {
      return chat.stop();
    },
  };
}
