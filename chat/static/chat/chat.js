/* The chat page: one websocket, small named functions, no framework, no build step.
 *
 * Live answer text is appended as text (never parsed as HTML); a finished
 * answer is replaced by the HTML the server rendered and sanitized. Every
 * delta carries `index`, its position in the answer in code points, so text
 * already shown is never shown twice, and a gap makes the page ask again.
 */
(function () {
  "use strict";

  var config = JSON.parse(document.getElementById("chat-config").textContent);
  var el = {
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
  var socketPath = config.socket || "/ws/chat/";
  var basePath = window.location.pathname.replace(/c\/[0-9a-f-]+\/?$/, "");

  var socket = null;
  var retries = 0;
  var conversationId = config.conversation || null;
  var messages = {}; // id -> {node, body, text, length, status}
  var streamingId = null;
  var pendingText = null; // what was sent, to give back if the server refuses it
  var stickToBottom = true;

  // ---- socket ----------------------------------------------------------

  function socketUrl() {
    var scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    return scheme + window.location.host + socketPath;
  }

  function connect() {
    socket = new WebSocket(socketUrl());
    socket.addEventListener("open", onOpen);
    socket.addEventListener("message", onFrame);
    socket.addEventListener("close", onClose);
  }

  function onOpen() {
    retries = 0;
    document.body.dataset.connected = "true";
    showConnection("");
    if (conversationId) {
      sendFrame({ type: "watch", conversation: conversationId });
    }
  }

  function onClose(event) {
    socket = null;
    document.body.dataset.connected = "false";
    setStreaming(null);
    if (event.code === 4401) {
      showConnection("Disconnected. Log in and reload the page to chat.");
      return;
    }
    var delay = Math.min(10000, 500 * Math.pow(2, retries)) * (0.75 + Math.random() / 2);
    retries += 1;
    showConnection("Connection lost. Reconnecting…");
    window.setTimeout(connect, delay);
  }

  function sendFrame(frame) {
    if (!socket || socket.readyState !== WebSocket.OPEN) {
      showError("Not connected to the server; reconnecting. Try again in a moment.");
      return false;
    }
    socket.send(JSON.stringify(frame));
    return true;
  }

  var handlers = {
    conversation: onConversation,
    history: onHistory,
    message: onMessage,
    delta: onDelta,
    reasoning: onReasoning,
    done: onDone,
    error: onError,
    ping: onPing,
  };

  function onFrame(event) {
    var frame;
    try {
      frame = JSON.parse(event.data);
    } catch (e) {
      return;
    }
    var handler = Object.prototype.hasOwnProperty.call(handlers, frame.type) && handlers[frame.type];
    if (handler) {
      handler(frame);
    }
  }

  // ---- frames ----------------------------------------------------------

  function onConversation(frame) {
    var conversation = frame.conversation;
    conversationId = conversation.id;
    window.history.pushState({ conversation: conversation.id }, "", basePath + "c/" + conversation.id + "/");
    addToSidebar(conversation);
  }

  function onHistory(frame) {
    clearMessages();
    conversationId = frame.conversation.id;
    markActive(conversationId);
    frame.messages.forEach(function (message) {
      addMessage(message);
    });
    scrollToBottom(true);
  }

  function onMessage(frame) {
    var message = frame.message;
    if (message.conversation !== conversationId || messages[message.id]) {
      return;
    }
    addMessage(message);
    if (message.role === "user") {
      pendingText = null;
    }
    scrollToBottom(false);
  }

  function onDelta(frame) {
    var message = messages[frame.message];
    if (!message) {
      return;
    }
    var text = frame.text;
    if (frame.index > message.length) {
      // A gap: ask for the conversation again rather than show wrong text.
      sendFrame({ type: "watch", conversation: conversationId });
      return;
    }
    if (frame.index < message.length) {
      text = Array.from(text).slice(message.length - frame.index).join("");
    }
    if (text) {
      message.textNode.appendData(text);
      message.length += codePoints(text);
      scrollToBottom(false);
    }
  }

  function onReasoning(frame) {
    var message = messages[frame.message];
    if (!message || frame.index < message.reasoningLength) {
      return;
    }
    reasoningNode(message).appendData(frame.text);
    message.reasoningLength += codePoints(frame.text);
  }

  function onDone(frame) {
    var message = messages[frame.message];
    if (!message) {
      return;
    }
    finishMessage(message, frame);
    scrollToBottom(false);
  }

  function onPing(frame) {
    // The echo proves this page read everything before the ping (see docs/protocol.md).
    sendFrame({ type: "pong", nonce: frame.nonce });
  }

  function onError(frame) {
    if (pendingText !== null) {
      if (!el.prompt.value) {
        el.prompt.value = pendingText;
      }
      pendingText = null;
    }
    showError(frame.detail || frame.code);
  }

  // ---- messages ----------------------------------------------------------

  function clearMessages() {
    messages = {};
    setStreaming(null);
    while (el.messages.firstChild) {
      el.messages.removeChild(el.messages.firstChild);
    }
    el.messages.appendChild(el.empty);
    el.empty.hidden = false;
  }

  function addMessage(message) {
    el.empty.hidden = true;
    var node = document.createElement("article");
    node.className = "chat-message chat-" + message.role;
    node.dataset.id = message.id;
    var body = document.createElement("div");
    body.className = "chat-body";
    node.appendChild(body);
    var entry = {
      node: node,
      body: body,
      textNode: document.createTextNode(message.content),
      length: codePoints(message.content),
      reasoningLength: codePoints(message.reasoning || ""),
      reasoningText: null,
      status: message.status,
    };
    messages[message.id] = entry;
    if (message.reasoning) {
      reasoningNode(entry).appendData(message.reasoning);
    }
    body.appendChild(entry.textNode);
    el.messages.appendChild(node);
    if (message.role === "assistant") {
      if (message.status === "streaming") {
        node.classList.add("chat-streaming");
        setStreaming(message.id);
      } else {
        finishMessage(entry, message);
      }
    }
    return entry;
  }

  function reasoningNode(entry) {
    if (!entry.reasoningText) {
      var details = document.createElement("details");
      details.className = "chat-reasoning";
      var summary = document.createElement("summary");
      summary.textContent = "Reasoning";
      details.appendChild(summary);
      entry.reasoningText = document.createTextNode("");
      details.appendChild(entry.reasoningText);
      entry.node.insertBefore(details, entry.body);
    }
    return entry.reasoningText;
  }

  function finishMessage(entry, result) {
    entry.status = result.status;
    entry.node.classList.remove("chat-streaming");
    entry.node.classList.add("chat-" + result.status);
    if (result.html) {
      // Rendered and sanitized on the server (markdown-it-py + nh3).
      entry.body.innerHTML = result.html;
      entry.body.classList.add("markdown");
    }
    if (result.refusal) {
      appendNote(entry, "chat-refusal", result.refusal);
    }
    if (result.status !== "complete") {
      var label = { stopped: "Stopped", failed: "Failed", interrupted: "Interrupted" }[result.status];
      var detail = result.error && result.error.detail ? ": " + result.error.detail : "";
      appendNote(entry, "chat-status", (label || result.status) + detail);
    }
    if (streamingId === entry.node.dataset.id) {
      setStreaming(null);
    }
  }

  function appendNote(entry, className, text) {
    var note = document.createElement("p");
    note.className = className;
    note.textContent = text;
    entry.node.appendChild(note);
  }

  function codePoints(text) {
    // Indexes count code points, as Python does; JS strings count UTF-16 units.
    return /[\uD800-\uDFFF]/.test(text) ? Array.from(text).length : text.length;
  }

  // ---- composer, stop, navigation -----------------------------------------

  function setStreaming(id) {
    streamingId = id;
    el.stop.hidden = id === null;
    el.send.hidden = id !== null;
  }

  function submit(event) {
    event.preventDefault();
    var content = el.prompt.value;
    if (!content.trim() || streamingId !== null) {
      return;
    }
    hideError();
    if (sendFrame({ type: "send", conversation: conversationId, content: content })) {
      pendingText = content;
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
      sendFrame({ type: "stop", message: streamingId });
    }
  }

  function newChat() {
    conversationId = null;
    clearMessages();
    markActive(null);
    window.history.pushState({ conversation: null }, "", basePath);
    el.prompt.focus();
  }

  function openConversation(id, push) {
    conversationId = id;
    clearMessages();
    markActive(id);
    if (push) {
      window.history.pushState({ conversation: id }, "", basePath + "c/" + id + "/");
    }
    sendFrame({ type: "watch", conversation: id });
  }

  function onSidebarClick(event) {
    var link = event.target.closest("a[data-id]");
    if (link) {
      event.preventDefault();
      openConversation(link.dataset.id, true);
    }
  }

  function onPopState(event) {
    var id = event.state && event.state.conversation;
    if (id) {
      openConversation(id, false);
    } else {
      conversationId = null;
      clearMessages();
      markActive(null);
    }
  }

  function addToSidebar(conversation) {
    var item = document.createElement("li");
    var link = document.createElement("a");
    link.href = basePath + "c/" + conversation.id + "/";
    link.dataset.id = conversation.id;
    link.textContent = conversation.title || "New conversation";
    item.appendChild(link);
    el.conversations.insertBefore(item, el.conversations.firstChild);
    markActive(conversation.id);
  }

  function markActive(id) {
    var links = el.conversations.querySelectorAll("a[data-id]");
    for (var i = 0; i < links.length; i++) {
      if (links[i].dataset.id === id) {
        links[i].setAttribute("aria-current", "page");
      } else {
        links[i].removeAttribute("aria-current");
      }
    }
  }

  // ---- scrolling and notices -----------------------------------------------

  // Follow the answer until the person scrolls up; follow again once they are
  // back at the bottom. Intent comes from input events, which arrive before any
  // delta can scroll the box back down (a scroll event may come too late).
  function onScroll() {
    var box = el.messages;
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
    if (["PageUp", "ArrowUp", "Home"].indexOf(event.key) !== -1) {
      stickToBottom = false;
    }
  }

  function scrollToBottom(force) {
    if (force || stickToBottom) {
      el.messages.scrollTop = el.messages.scrollHeight;
    }
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

  el.composer.addEventListener("submit", submit);
  el.prompt.addEventListener("keydown", onKeyDown);
  el.stop.addEventListener("click", stop);
  el.newChat.addEventListener("click", newChat);
  el.conversations.addEventListener("click", onSidebarClick);
  el.messages.addEventListener("scroll", onScroll);
  el.messages.addEventListener("wheel", onWheel, { passive: true });
  el.messages.addEventListener("touchmove", function () { stickToBottom = false; }, { passive: true });
  el.messages.addEventListener("keydown", onScrollKey);
  window.addEventListener("popstate", onPopState);
  window.history.replaceState({ conversation: conversationId }, "", window.location.href);
  markActive(conversationId);
  showConnection("");
  connect();
})();
