/* The chat page: rendering and UI on the chat client (client.js), no framework, no build step.
 *
 * The client speaks the protocol (reconnects, pings, parts, the index
 * contract): each event it gives carries only text not shown yet, in its
 * place. Here, live answer text is appended as text (never parsed as HTML);
 * each complete Markdown block then arrives as HTML the server rendered and
 * sanitized, and replaces its text, so work per delta stays proportional to
 * the delta.
 */
import { connectChat } from "./client.js";

const config = JSON.parse(document.getElementById("chat-config").textContent);
const el = {
  messages: document.getElementById("messages"),
  empty: document.getElementById("empty"),
  conversations: document.getElementById("conversations"),
  composer: document.getElementById("composer"),
  prompt: document.getElementById("prompt"),
  send: document.getElementById("send"),
  stop: document.getElementById("stop"),
  newChat: document.getElementById("new-chat"),
  error: document.getElementById("error"),
  connection: document.getElementById("connection"),
};
const basePath = window.location.pathname.replace(/c\/[0-9a-f-]+\/?$/, "");

const chat = connectChat({ url: "/ws/chat/", conversation: config.conversation || null });
let entries = {}; // message id -> what shows it (see addMessage)
let streamingId = null;
let pending = null; // {answer, text}: what was sent, to give back if the server refuses it
let stickToBottom = true;

// ---- connection ----------------------------------------------------------

function onOpen() {
  document.body.dataset.connected = "true";
  showConnection("");
}

function onClose(event) {
  document.body.dataset.connected = "false";
  setStreaming(null);
  if (!event.reconnect && event.code === 4403) {
    showConnection("You are not allowed to chat here.");
  } else if (!event.reconnect) {
    showConnection("Disconnected. Log in and reload the page to chat.");
  } else if (event.code === 1012 || event.code === 4503) {
    // The server process is restarting (a deploy): another one takes over at once,
    // and the answer being written goes on there.
    showConnection("Reconnecting…");
  } else {
    showConnection("Connection lost. Reconnecting…");
  }
}

// ---- events ----------------------------------------------------------

function onConversation(event) {
  const id = event.conversation.id;
  window.history.pushState({ conversation: id }, "", basePath + "c/" + id + "/");
  addToSidebar(event.conversation);
}

function onHistory(event) {
  clearMessages();
  markActive(event.conversation.id);
  event.messages.forEach(addMessage);
  scrollToBottom(true);
}

function onMessage(event) {
  // A new message replaces the branch shown after its parent (an edit, a regenerated answer).
  event.replaced.forEach((id) => {
    if (entries[id]) {
      entries[id].node.remove();
      delete entries[id];
    }
  });
  addMessage(event.message);
  if (event.message.role === "user" && pending && event.answer === pending.answer) {
    pending = null;
  }
  scrollToBottom(false);
}

function onDelta(event) {
  const entry = entries[event.id];
  if (!entry) {
    return;
  }
  const fresh = event.index - entry.rendered < 3; // the tail's start may change
  entry.tail.appendData(event.text);
  if (fresh) {
    markTail(entry, entry.tail.data.slice(0, 3));
  }
  scrollToBottom(false);
}

// A code block being written looks like one (monospace, on the code
// background) until the server sends it highlighted. ``start`` is the tail's
// first characters, looked at only when a new block starts.
function markTail(entry, start) {
  if (entry.role !== "assistant") {
    return; // a question is shown as typed
  }
  entry.tailBox.classList.toggle("chat-tail-code", start === "```" || start === "~~~");
}

// Complete Markdown blocks of a streaming answer, rendered and sanitized by
// the server: they replace the start of the raw tail, so the page only ever
// lays out the block being written as plain text. (The client passes on only
// blocks that follow the last one, after their text.)
function onHtml(event) {
  const entry = entries[event.id];
  if (!entry || event.index !== entry.rendered) {
    return;
  }
  appendHtml(entry, event.html);
  const tail = entry.tail.data; // read once: it can be a long block being written
  const cut = utf16Length(tail, event.end - event.index);
  entry.tail.deleteData(0, cut);
  entry.rendered = event.end;
  markTail(entry, tail.slice(cut, cut + 3));
  scrollToBottom(false);
}

function onReasoning(event) {
  const entry = entries[event.id];
  if (entry) {
    reasoningNode(entry).appendData(event.text);
  }
}

function onDone(event) {
  const entry = entries[event.id];
  if (!entry) {
    return;
  }
  finishMessage(entry, event);
  scrollToBottom(false);
}

function onTitle(event) {
  const link = el.conversations.querySelector(
    'a[data-id="' + CSS.escape(event.conversation) + '"]',
  );
  if (link) {
    link.textContent = event.title;
  }
}

function onError(event) {
  if (pending && event.answer === pending.answer) {
    if (!el.prompt.value) {
      el.prompt.value = pending.text;
    }
    pending = null;
  }
  showError(event.detail || event.code);
}

// ---- messages ----------------------------------------------------------

function clearMessages() {
  entries = {};
  setStreaming(null);
  while (el.messages.firstChild) {
    el.messages.removeChild(el.messages.firstChild);
  }
  el.messages.appendChild(el.empty);
  el.empty.hidden = false;
}

// `message` is the client's: it stays current (content, status) as frames arrive.
function addMessage(message) {
  el.empty.hidden = true;
  const node = document.createElement("article");
  node.className = "chat-message chat-" + message.role;
  node.dataset.id = message.id;
  const body = document.createElement("div");
  body.className = "chat-body";
  node.appendChild(body);
  const entry = {
    id: message.id,
    role: message.role,
    message: message,
    node: node,
    body: body,
    html: null,
    tail: document.createTextNode(""),
    tailBox: document.createElement("span"),
    rendered: 0, // how much of the text the HTML shown covers, in code points
    reasoningText: null,
  };
  entries[message.id] = entry;
  if (message.reasoning) {
    reasoningNode(entry).appendData(message.reasoning);
  }
  if (message.role === "assistant") {
    entry.html = document.createElement("div");
    entry.html.className = "markdown";
    body.appendChild(entry.html);
    if (message.html) {
      appendHtml(entry, message.html);
    }
    entry.rendered = message.rendered;
    entry.tail.data = message.tail;
  } else {
    entry.tail.data = message.content;
  }
  entry.tailBox.className = "chat-tail";
  entry.tailBox.appendChild(entry.tail);
  body.appendChild(entry.tailBox);
  markTail(entry, entry.tail.data.slice(0, 3));
  node.appendChild(versionsNav(message));
  el.messages.appendChild(node);
  if (message.role === "user") {
    node.appendChild(actions(entry, [["Edit", "Edit this message", editMessage]]));
  } else if (message.status === "streaming") {
    node.classList.add("chat-streaming");
    appendNote(entry, "chat-live", "Writing…");
    setStreaming(message.id);
  } else {
    finishMessage(entry, message);
  }
  return entry;
}

function appendHtml(entry, html) {
  const template = document.createElement("template");
  template.innerHTML = html; // sanitized by the server (markdown-it-py + nh3)
  for (const block of template.content.querySelectorAll("pre")) {
    const wrap = document.createElement("div");
    wrap.className = "chat-code";
    block.replaceWith(wrap);
    wrap.appendChild(block);
    wrap.appendChild(codeCopyButton());
  }
  entry.html.appendChild(template.content);
}

function reasoningNode(entry) {
  if (!entry.reasoningText) {
    const details = document.createElement("details");
    details.className = "chat-reasoning";
    const summary = document.createElement("summary");
    summary.textContent = "Reasoning";
    details.appendChild(summary);
    entry.reasoningText = document.createTextNode("");
    details.appendChild(entry.reasoningText);
    entry.node.insertBefore(details, entry.body);
  }
  return entry.reasoningText;
}

// `result` is a `done` event, or a finished message of a history.
function finishMessage(entry, result) {
  entry.node.classList.remove("chat-streaming");
  entry.node.classList.add("chat-" + result.status);
  const live = entry.node.querySelector(".chat-live");
  if (live) {
    live.remove();
  }
  if (entry.rendered !== entry.message.length && result.html) {
    // Blocks were missed (a gap): show the whole answer as the server rendered it.
    entry.html.innerHTML = "";
    appendHtml(entry, result.html);
  }
  if (result.html) {
    entry.tail.data = "";
    entry.rendered = entry.message.length;
    markTail(entry, "");
  }
  if (result.refusal) {
    appendNote(entry, "chat-refusal", result.refusal);
  }
  if (result.status !== "complete") {
    const label = { stopped: "Stopped", failed: "Failed", interrupted: "Interrupted" }[
      result.status
    ];
    const detail = result.error && result.error.detail ? ": " + result.error.detail : "";
    appendNote(entry, "chat-status", (label || result.status) + detail);
  }
  const bar = actions(entry, [
    ["Copy", "Copy the answer", copyAnswer],
    ["Regenerate", "Answer this again", regenerate],
  ]);
  const usage = result.usage;
  if (usage && usage.total_tokens) {
    // none (null), or nothing spent (0): nothing to say
    const tokens = document.createElement("span");
    tokens.className = "chat-usage";
    tokens.textContent = usage.estimated
      ? "~" + usage.total_tokens + " tokens (estimated)"
      : usage.total_tokens + " tokens";
    bar.appendChild(tokens);
  }
  entry.node.appendChild(bar);
  if (streamingId === entry.id) {
    setStreaming(null);
  }
}

function appendNote(entry, className, text) {
  const note = document.createElement("p");
  note.className = className;
  note.textContent = text;
  entry.node.appendChild(note);
}

function utf16Length(text, points) {
  // The UTF-16 length of the first `points` code points of `text` (positions count code points).
  if (!/[\uD800-\uDFFF]/.test(text)) {
    return Math.min(points, text.length);
  }
  let units = 0;
  for (let i = 0; i < points && units < text.length; i++) {
    units += text.codePointAt(units) > 0xffff ? 2 : 1;
  }
  return units;
}

// ---- versions, edit, regenerate, copy --------------------------------------

function versionsNav(message) {
  const nav = document.createElement("div");
  nav.className = "chat-versions";
  const versions = message.versions || [message.id];
  const at = versions.indexOf(message.id);
  if (versions.length < 2) {
    nav.hidden = true;
    return nav;
  }
  nav.setAttribute("aria-label", "Versions of this message");
  nav.appendChild(versionButton("‹", "Previous version", versions[at - 1]));
  const label = document.createElement("span");
  label.textContent = at + 1 + "/" + versions.length;
  nav.appendChild(label);
  nav.appendChild(versionButton("›", "Next version", versions[at + 1]));
  return nav;
}

function versionButton(text, name, target) {
  const button = document.createElement("button");
  button.type = "button";
  button.textContent = text;
  button.setAttribute("aria-label", name);
  button.disabled = !target;
  button.addEventListener("click", () => chat.switch(target));
  return button;
}

function actions(entry, list) {
  const bar = document.createElement("div");
  bar.className = "chat-actions";
  for (const [text, name, action] of list) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = text;
    button.setAttribute("aria-label", name);
    button.addEventListener("click", () => action(entry, button));
    bar.appendChild(button);
  }
  return bar;
}

function codeCopyButton() {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "chat-copy";
  button.textContent = "Copy";
  button.setAttribute("aria-label", "Copy code");
  return button;
}

function copyCode(button) {
  copyText(button.parentNode.querySelector("pre").textContent, button);
}

function copyAnswer(entry, button) {
  copyText(entry.message.content, button); // the Markdown source
}

function copyText(text, button) {
  navigator.clipboard.writeText(text).then(
    () => {
      button.textContent = "Copied";
      window.setTimeout(() => {
        button.textContent = "Copy";
      }, 1500);
    },
    () => showError("Could not copy: the browser refused access to the clipboard."),
  );
}

function onMessagesClick(event) {
  const button = event.target.closest("button.chat-copy");
  if (button) {
    copyCode(button);
  }
}

function regenerate(entry) {
  if (streamingId === null) {
    hideError();
    chat.regenerate(entry.id);
  }
}

function editMessage(entry) {
  if (entry.node.querySelector("form") || streamingId !== null) {
    return;
  }
  const form = document.createElement("form");
  form.className = "chat-edit";
  const area = document.createElement("textarea");
  area.value = entry.message.content;
  area.setAttribute("aria-label", "Edited message");
  form.appendChild(area);
  const bar = entry.node.querySelector(".chat-actions"); // its Edit button, hidden while editing
  function close() {
    form.remove();
    entry.body.hidden = false;
    if (bar) {
      bar.hidden = false;
    }
  }
  form.appendChild(
    actions(entry, [
      ["Save and ask", "Ask the edited message", () => form.requestSubmit()],
      ["Cancel", "Keep the message as it was", close],
    ]),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (area.value.trim() && chat.edit(entry.id, area.value).status !== "refused") {
      close();
    }
  });
  entry.body.hidden = true;
  if (bar) {
    bar.hidden = true;
  }
  entry.node.insertBefore(form, entry.body.nextSibling);
  area.focus();
}

// ---- composer, stop, navigation -----------------------------------------

function setStreaming(id) {
  streamingId = id;
  el.stop.hidden = id === null;
  el.send.hidden = id !== null;
  // A screen reader reads the answer once it is whole, not token by token.
  el.messages.setAttribute("aria-busy", id === null ? "false" : "true");
}

function submit(event) {
  event.preventDefault();
  const content = el.prompt.value;
  if (!content.trim() || streamingId !== null) {
    return;
  }
  hideError();
  // After the answer shown last (the client's default): another tab may have
  // moved the conversation's active path.
  const answer = chat.send(content);
  if (answer.status !== "refused") {
    pending = { answer: answer, text: content };
    el.prompt.value = "";
    stickToBottom = true;
  }
}

function onKeyDown(event) {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    submit(event);
  }
}

function stop() {
  if (streamingId !== null) {
    chat.stop(streamingId);
  }
}

function newChat() {
  chat.watch(null);
  clearMessages();
  markActive(null);
  window.history.pushState({ conversation: null }, "", basePath);
  el.prompt.focus();
}

function openConversation(id, push) {
  chat.watch(id);
  clearMessages();
  markActive(id);
  if (push) {
    window.history.pushState({ conversation: id }, "", basePath + "c/" + id + "/");
  }
}

function onSidebarClick(event) {
  const link = event.target.closest("a[data-id]");
  if (link) {
    event.preventDefault();
    openConversation(link.dataset.id, true);
  }
}

function onPopState(event) {
  const id = event.state && event.state.conversation;
  if (id) {
    openConversation(id, false);
  } else {
    chat.watch(null);
    clearMessages();
    markActive(null);
  }
}

function addToSidebar(conversation) {
  const item = document.createElement("li");
  const link = document.createElement("a");
  link.href = basePath + "c/" + conversation.id + "/";
  link.dataset.id = conversation.id;
  link.textContent = conversation.title || "New conversation";
  item.appendChild(link);
  el.conversations.insertBefore(item, el.conversations.firstChild);
  markActive(conversation.id);
}

function markActive(id) {
  for (const link of el.conversations.querySelectorAll("a[data-id]")) {
    if (link.dataset.id === id) {
      link.setAttribute("aria-current", "page");
    } else {
      link.removeAttribute("aria-current");
    }
  }
}

// ---- scrolling and notices -----------------------------------------------

// Follow the answer until the person scrolls up; follow again once they are
// back at the bottom. Intent comes from input events, which arrive before any
// delta can scroll the box back down (a scroll event may come too late).
function onScroll() {
  const box = el.messages;
  if (box.scrollHeight - box.scrollTop - box.clientHeight < 40) {
    stickToBottom = true;
  }
}

function onWheel(event) {
  if (event.deltaY < 0) {
    stickToBottom = false;
  }
}

function onScrollKey(event) {
  if (["PageUp", "ArrowUp", "Home"].includes(event.key)) {
    stickToBottom = false;
  }
}

let scrollPending = false;

// One scroll a frame, however many deltas came in it: reading scrollHeight
// forces a layout, which per delta would cost the page its speed.
function scrollToBottom(force) {
  if (force) {
    el.messages.scrollTop = el.messages.scrollHeight;
    return;
  }
  if (!stickToBottom || scrollPending) {
    return;
  }
  scrollPending = true;
  window.requestAnimationFrame(() => {
    scrollPending = false;
    if (stickToBottom) {
      el.messages.scrollTop = el.messages.scrollHeight;
    }
  });
}

function showError(text) {
  el.error.textContent = text;
  el.error.hidden = false;
}

function hideError() {
  el.error.hidden = true;
  el.error.textContent = "";
}

function showConnection(text) {
  el.connection.textContent = text;
  el.connection.hidden = !text;
}

chat.on("open", onOpen);
chat.on("close", onClose);
chat.on("conversation", onConversation);
chat.on("history", onHistory);
chat.on("message", onMessage);
chat.on("delta", onDelta);
chat.on("html", onHtml);
chat.on("reasoning", onReasoning);
chat.on("done", onDone);
chat.on("title", onTitle);
chat.on("error", onError);
el.composer.addEventListener("submit", submit);
el.prompt.addEventListener("keydown", onKeyDown);
el.stop.addEventListener("click", stop);
el.newChat.addEventListener("click", newChat);
el.conversations.addEventListener("click", onSidebarClick);
el.messages.addEventListener("click", onMessagesClick);
el.messages.addEventListener("scroll", onScroll);
el.messages.addEventListener("wheel", onWheel, { passive: true });
el.messages.addEventListener(
  "touchmove",
  () => {
    stickToBottom = false;
  },
  { passive: true },
);
el.messages.addEventListener("keydown", onScrollKey);
window.addEventListener("popstate", onPopState);
window.history.replaceState({ conversation: chat.conversation }, "", window.location.href);
markActive(chat.conversation);
showConnection("");
