/* The chat page: one websocket, small named functions, no framework, no build step.
 *
 * Live answer text is appended as text (never parsed as HTML); each complete
 * Markdown block then arrives as HTML the server rendered and sanitized, and
 * replaces its text, so work per delta stays proportional to the delta. Every
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
  var socketPath = "/ws/chat/";
  var basePath = window.location.pathname.replace(/c\/[0-9a-f-]+\/?$/, "");

  var socket = null;
  var retries = 0;
  var conversationId = config.conversation || null;
  var messages = {}; // id -> entry (see addMessage)
  var path = []; // ids of the messages shown, in order: the branch on screen
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
    parts = [];
    resyncing = false; // the watch sent on reconnecting replaces it
    document.body.dataset.connected = "false";
    setStreaming(null);
    if (event.code === 4401) {
      showConnection("Disconnected. Log in and reload the page to chat.");
      return;
    }
    if (event.code === 1012 || event.code === 4503) {
      // The server process is restarting (a deploy): another one takes over at once,
      // and the answer being written goes on there.
      showConnection("Reconnecting…");
      window.setTimeout(connect, 100 + Math.random() * 400);
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
    html: onHtml,
    reasoning: onReasoning,
    done: onDone,
    error: onError,
    ping: onPing,
    title: onTitle,
  };

  var parts = []; // slices of a frame too large to send whole, until its last part

  function onFrame(event) {
    var frame;
    try {
      frame = JSON.parse(event.data);
      if (frame.type === "part") {
        parts.push(frame.data);
        if (!frame.last) {
          return;
        }
        frame = JSON.parse(parts.join(""));
        parts = [];
      }
    } catch (e) {
      parts = [];
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
    resyncing = false;
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
    // A new message replaces the branch shown after its parent (an edit, a regenerated answer).
    var at = message.parent === null ? 0 : path.indexOf(message.parent) + 1;
    if (at === 0 && message.parent !== null) {
      resync(); // a branch this page lacks
      return;
    }
    path.splice(at).forEach(function (id) {
      messages[id].node.remove();
      delete messages[id];
    });
    addMessage(message);
    if (message.role === "user") {
      pendingText = null;
    }
    scrollToBottom(false);
  }

  function onDelta(frame) {
    var entry = messages[frame.message];
    if (!entry) {
      return;
    }
    var text = frame.text;
    if (frame.index > entry.length) {
      // A gap: ask for the conversation again rather than show wrong text (once:
      // the frames that follow have the same gap until the history comes).
      resync();
      return;
    }
    if (frame.index < entry.length) {
      text = Array.from(text).slice(entry.length - frame.index).join("");
    }
    if (text) {
      var fresh = entry.length - entry.rendered < 3; // the tail's start may change
      entry.text += text;
      entry.tail.appendData(text);
      entry.length += codePoints(text);
      if (fresh) {
        markTail(entry, entry.tail.data.slice(0, 3));
      }
      scrollToBottom(false);
    }
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
  // lays out the block being written as plain text.
  function onHtml(frame) {
    var entry = messages[frame.message];
    if (!entry || frame.index !== entry.rendered || frame.end > entry.length) {
      return; // shown already, or after a gap: `done` brings the whole answer
    }
    appendHtml(entry, frame.html);
    var tail = entry.tail.data; // read once: it can be a long block being written
    var cut = utf16Length(tail, frame.end - frame.index);
    entry.tail.deleteData(0, cut);
    entry.rendered = frame.end;
    markTail(entry, tail.slice(cut, cut + 3));
    scrollToBottom(false);
  }

  function onReasoning(frame) {
    var entry = messages[frame.message];
    if (!entry || frame.index > entry.reasoningLength) {
      return; // a gap: `done` and any history bring the whole reasoning
    }
    var text = frame.text;
    if (frame.index < entry.reasoningLength) {
      // Overlapping text: keep only what this page does not have yet.
      text = Array.from(text).slice(entry.reasoningLength - frame.index).join("");
    }
    if (text) {
      reasoningNode(entry).appendData(text);
      entry.reasoningLength += codePoints(text);
    }
  }

  var resyncing = false; // a `watch` for a gap is on its way: one is enough

  function resync() {
    if (!resyncing && sendFrame({ type: "watch", conversation: conversationId })) {
      resyncing = true;
    }
  }

  function onDone(frame) {
    var entry = messages[frame.message];
    if (!entry) {
      return;
    }
    finishMessage(entry, frame);
    scrollToBottom(false);
  }

  function onTitle(frame) {
    var link = el.conversations.querySelector('a[data-id="' + CSS.escape(frame.conversation) + '"]');
    if (link) {
      link.textContent = frame.title;
    }
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
    path = [];
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
      id: message.id,
      role: message.role,
      node: node,
      body: body,
      html: null,
      tail: document.createTextNode(""),
      tailBox: document.createElement("span"),
      text: message.content,
      length: codePoints(message.content),
      rendered: 0,
      reasoningLength: codePoints(message.reasoning || ""),
      reasoningText: null,
    };
    messages[message.id] = entry;
    path.push(message.id);
    if (message.reasoning) {
      reasoningNode(entry).appendData(message.reasoning);
    }
    if (message.role === "assistant") {
      entry.html = document.createElement("div");
      entry.html.className = "markdown";
      body.appendChild(entry.html);
      if (message.html) {
        appendHtml(entry, message.html);
        entry.rendered = message.rendered;
      }
      entry.tail.data = Array.from(message.content).slice(entry.rendered).join("");
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
    var template = document.createElement("template");
    template.innerHTML = html; // sanitized by the server (markdown-it-py + nh3)
    var blocks = template.content.querySelectorAll("pre");
    for (var i = 0; i < blocks.length; i++) {
      var wrap = document.createElement("div");
      wrap.className = "chat-code";
      blocks[i].replaceWith(wrap);
      wrap.appendChild(blocks[i]);
      wrap.appendChild(codeCopyButton());
    }
    entry.html.appendChild(template.content);
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
    entry.node.classList.remove("chat-streaming");
    entry.node.classList.add("chat-" + result.status);
    var live = entry.node.querySelector(".chat-live");
    if (live) {
      live.remove();
    }
    if (entry.rendered !== entry.length && result.html) {
      // Blocks were missed (a gap): show the whole answer as the server rendered it.
      entry.html.innerHTML = "";
      appendHtml(entry, result.html);
    }
    if (result.html) {
      entry.tail.data = "";
      entry.rendered = entry.length;
      markTail(entry, "");
    }
    if (result.refusal) {
      appendNote(entry, "chat-refusal", result.refusal);
    }
    if (result.status !== "complete") {
      var label = { stopped: "Stopped", failed: "Failed", interrupted: "Interrupted" }[result.status];
      var detail = result.error && result.error.detail ? ": " + result.error.detail : "";
      appendNote(entry, "chat-status", (label || result.status) + detail);
    }
    var bar = actions(entry, [
      ["Copy", "Copy the answer", copyAnswer],
      ["Regenerate", "Answer this again", regenerate],
    ]);
    var usage = result.usage;
    if (usage && usage.total_tokens) { // none (null), or nothing spent (0): nothing to say
      var tokens = document.createElement("span");
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
    var note = document.createElement("p");
    note.className = className;
    note.textContent = text;
    entry.node.appendChild(note);
  }

  // ---- versions, edit, regenerate, copy --------------------------------------

  function versionsNav(message) {
    var nav = document.createElement("div");
    nav.className = "chat-versions";
    var versions = message.versions || [message.id];
    var at = versions.indexOf(message.id);
    if (versions.length < 2) {
      nav.hidden = true;
      return nav;
    }
    nav.setAttribute("aria-label", "Versions of this message");
    nav.appendChild(versionButton("‹", "Previous version", versions[at - 1]));
    var label = document.createElement("span");
    label.textContent = at + 1 + "/" + versions.length;
    nav.appendChild(label);
    nav.appendChild(versionButton("›", "Next version", versions[at + 1]));
    return nav;
  }

  function versionButton(text, name, target) {
    var button = document.createElement("button");
    button.type = "button";
    button.textContent = text;
    button.setAttribute("aria-label", name);
    button.disabled = !target;
    button.addEventListener("click", function () {
      sendFrame({ type: "switch", message: target });
    });
    return button;
  }

  function actions(entry, list) {
    var bar = document.createElement("div");
    bar.className = "chat-actions";
    list.forEach(function (item) {
      var button = document.createElement("button");
      button.type = "button";
      button.textContent = item[0];
      button.setAttribute("aria-label", item[1]);
      button.addEventListener("click", function () {
        item[2](entry, button);
      });
      bar.appendChild(button);
    });
    return bar;
  }

  function codeCopyButton() {
    var button = document.createElement("button");
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
    copyText(entry.text, button);
  }

  function copyText(text, button) {
    navigator.clipboard.writeText(text).then(
      function () {
        button.textContent = "Copied";
        window.setTimeout(function () { button.textContent = "Copy"; }, 1500);
      },
      function () {
        showError("Could not copy: the browser refused access to the clipboard.");
      }
    );
  }

  function onMessagesClick(event) {
    var button = event.target.closest("button.chat-copy");
    if (button) {
      copyCode(button);
    }
  }

  function regenerate(entry) {
    if (streamingId === null) {
      hideError();
      sendFrame({ type: "regenerate", message: entry.id });
    }
  }

  function editMessage(entry) {
    if (entry.node.querySelector("form") || streamingId !== null) {
      return;
    }
    var form = document.createElement("form");
    form.className = "chat-edit";
    var area = document.createElement("textarea");
    area.value = entry.text;
    area.setAttribute("aria-label", "Edited message");
    form.appendChild(area);
    var bar = entry.node.querySelector(".chat-actions"); // its Edit button, hidden while editing
    function close() {
      form.remove();
      entry.body.hidden = false;
      if (bar) {
        bar.hidden = false;
      }
    }
    form.appendChild(actions(entry, [
      ["Save and ask", "Ask the edited message", function () { form.requestSubmit(); }],
      ["Cancel", "Keep the message as it was", close],
    ]));
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      if (area.value.trim() && sendFrame({ type: "edit", message: entry.id, content: area.value })) {
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

  function codePoints(text) {
    // Indexes count code points, as Python does; JS strings count UTF-16 units.
    return /[\uD800-\uDFFF]/.test(text) ? Array.from(text).length : text.length;
  }

  function utf16Length(text, points) {
    // The UTF-16 length of the first `points` code points of `text`.
    if (!/[\uD800-\uDFFF]/.test(text)) {
      return Math.min(points, text.length);
    }
    var units = 0;
    for (var i = 0; i < points && units < text.length; i++) {
      units += text.codePointAt(units) > 0xffff ? 2 : 1;
    }
    return units;
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
    var content = el.prompt.value;
    if (!content.trim() || streamingId !== null) {
      return;
    }
    hideError();
    var parent = conversationId ? lastAnswerShown() : null;
    if (sendFrame({ type: "send", conversation: conversationId, content: content, parent: parent })) {
      pendingText = content;
      el.prompt.value = "";
      stickToBottom = true;
    }
  }

  function lastAnswerShown() {
    for (var i = path.length - 1; i >= 0; i--) {
      if (messages[path[i]].role === "assistant") {
        return path[i];
      }
    }
    return null;
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

  var scrollPending = false;

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
    window.requestAnimationFrame(function () {
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

  el.composer.addEventListener("submit", submit);
  el.prompt.addEventListener("keydown", onKeyDown);
  el.stop.addEventListener("click", stop);
  el.newChat.addEventListener("click", newChat);
  el.conversations.addEventListener("click", onSidebarClick);
  el.messages.addEventListener("click", onMessagesClick);
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
