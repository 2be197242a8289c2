// @ts-check
/* The chat websocket (docs/protocol.md) as one dependency-free ES module.
 *
 *   import { connectChat } from "/static/chat/client.js";
 *   const chat = connectChat();
 *   const answer = chat.send("Hello");
 *   for await (const event of answer) console.log(event.type, answer.text);
 *
 * It keeps the socket open (reconnecting as the close code says, then
 * watching again), echoes pings, joins `part` frames, and holds the index
 * contract: every event carries only text not seen before, in its place; a
 * gap asks for the conversation again, once. Rendering is left to the page.
 * docs/client.md is the guide; client.d.ts has the types.
 */

/** @typedef {import("./client.js").ChatOptions} ChatOptions */
/** @typedef {import("./client.js").ChatEvent} ChatEvent */
/** @typedef {import("./client.js").AnswerEvent} AnswerEvent */
/** @typedef {import("./client.js").ChatErrorEvent} ChatErrorEvent */
/** @typedef {import("./client.js").DoneEvent} DoneEvent */
/** @typedef {import("./client.js").MessageInfo} MessageInfo */
/** @typedef {import("./client.js").AnswerStatus} AnswerStatus */
/** @typedef {import("./client.js").ErrorCode} ErrorCode */
/** @typedef {import("./client.js").ErrorInfo} ErrorInfo */
/** @typedef {import("./client.js").Usage} Usage */
/**
 * @typedef {Record<string, any>} Frame a frame from the server, checked field by field where used
 */
/** @typedef {"send" | "edit" | "regenerate"} TurnKind */

const OPEN = 1; // WebSocket.OPEN, as a number: a test may stand in a WebSocket of its own
const RETRY_FIRST = 500; // ms; doubled at each failed try, up to RETRY_MAX
const RETRY_MAX = 10000;
const NOT_CONNECTED = "Not connected to the server; reconnecting. Try again in a moment.";
const GAP = "gap"; // what applying a frame returns when text before it is missing

// ---- text positions -------------------------------------------------------

const SURROGATE = /[\uD800-\uDFFF]/;

/**
 * Code points in `text`: positions count them, as Python does; JS strings count UTF-16 units.
 * @param {string} text
 */
function codePoints(text) {
  return SURROGATE.test(text) ? Array.from(text).length : text.length;
}

/**
 * The UTF-16 length of the first `points` code points of `text`.
 * @param {string} text
 * @param {number} points
 */
function utf16Length(text, points) {
  if (!SURROGATE.test(text)) {
    return Math.min(points, text.length);
  }
  let units = 0;
  for (let i = 0; i < points && units < text.length; i++) {
    units += /** @type {number} */ (text.codePointAt(units)) > 0xffff ? 2 : 1;
  }
  return units;
}

// ---- messages -------------------------------------------------------------

/** Where each message's `tail` starts, in UTF-16 units (the end of the text its `html` covers). */
const tailStarts = new WeakMap();

/** A `<message>` of the protocol, kept current as its frames arrive. */
class ChatMessage {
  /** @param {MessageInfo} info */
  constructor(info) {
    this.id = info.id;
    this.conversation = info.conversation;
    this.parent = info.parent;
    this.versions = info.versions || [info.id];
    this.role = info.role;
    this.content = info.content;
    this.reasoning = info.reasoning || "";
    this.refusal = info.refusal || "";
    this.status = info.status;
    this.finish_reason = info.finish_reason;
    this.error = info.error;
    this.usage = info.usage;
    this.model = info.model;
    this.created_at = info.created_at;
    this.html = info.html || "";
    this.rendered = info.rendered || 0;
    this.length = codePoints(this.content);
    this.reasoningLength = codePoints(this.reasoning);
    tailStarts.set(this, utf16Length(this.content, this.rendered));
  }

  /** The text `html` does not cover yet: the block being written (plain text, never HTML). */
  get tail() {
    return this.content.slice(tailStarts.get(this));
  }
}

/**
 * Apply a `delta` frame. Returns the event of the text new to `message` (the
 * part of the frame it already has is cut off), null if it has all of it, or
 * GAP if text before the frame is missing.
 * @param {ChatMessage} message @param {Frame} frame
 */
function applyDelta(message, frame) {
  if (frame.index > message.length) {
    return GAP;
  }
  let text = String(frame.text);
  if (frame.index < message.length) {
    text = text.slice(utf16Length(text, message.length - frame.index));
  }
  if (!text) {
    return null;
  }
  const event = { type: "delta", id: message.id, index: message.length, text, message };
  message.content += text;
  message.length += codePoints(text);
  return event;
}

/**
 * Apply an `html` frame: complete blocks that take the place of their text.
 * @param {ChatMessage} message
 * @param {Frame} frame
 */
function applyHtml(message, frame) {
  if (frame.index !== message.rendered || frame.end > message.length) {
    return null; // shown already, or after a gap: `done` brings the whole answer's HTML
  }
  const start = tailStarts.get(message);
  const covered = frame.end - frame.index;
  // No surrogate pairs (the two lengths agree): code points are UTF-16 units, no scan needed.
  const bmpOnly = message.length === message.content.length;
  tailStarts.set(
    message,
    start + (bmpOnly ? covered : utf16Length(message.content.slice(start), covered)),
  );
  message.html += frame.html;
  message.rendered = frame.end;
  return {
    type: "html",
    id: message.id,
    index: frame.index,
    end: frame.end,
    html: frame.html,
    message,
  };
}

/**
 * Apply a `reasoning` frame, indexed like deltas.
 * @param {ChatMessage} message
 * @param {Frame} frame
 */
function applyReasoning(message, frame) {
  if (frame.index > message.reasoningLength) {
    return null; // a gap: a history brings the whole reasoning
  }
  let text = String(frame.text);
  if (frame.index < message.reasoningLength) {
    text = text.slice(utf16Length(text, message.reasoningLength - frame.index));
  }
  if (!text) {
    return null;
  }
  const event = {
    type: "reasoning",
    id: message.id,
    index: message.reasoningLength,
    text,
    message,
  };
  message.reasoning += text;
  message.reasoningLength += codePoints(text);
  return event;
}

/**
 * Apply a `done` frame: the answer is saved, its HTML whole.
 * @param {ChatMessage} message
 * @param {Frame} frame
 */
function applyDone(message, frame) {
  message.status = frame.status;
  message.finish_reason = frame.finish_reason;
  message.usage = frame.usage;
  message.error = frame.error;
  message.refusal = frame.refusal || "";
  if (frame.html) {
    message.html = frame.html;
    message.rendered = message.length;
    tailStarts.set(message, message.content.length);
  }
  return doneEvent(message);
}

/** @param {ChatMessage} message @returns {DoneEvent} */
function doneEvent(message) {
  return {
    type: "done",
    id: message.id,
    conversation: message.conversation,
    status: /** @type {DoneEvent["status"]} */ (message.status),
    length: message.length,
    finish_reason: message.finish_reason,
    usage: message.usage,
    error: message.error,
    html: message.html,
    refusal: message.refusal,
    message,
  };
}

/**
 * The events that take an answer from what it had (`old`) to the same message
 * in a history (`fresh`): the text it lacks, or a `reset` when what it had is
 * not the start of what is stored (a killed process kept less than it sent).
 * @param {ChatMessage} old @param {ChatMessage} fresh @param {boolean} stale
 * @returns {AnswerEvent[]}
 */
function catchUp(old, fresh, stale) {
  const follows =
    !stale &&
    fresh.content.startsWith(old.content) &&
    fresh.reasoning.startsWith(old.reasoning) &&
    fresh.html.startsWith(old.html) &&
    fresh.rendered >= old.rendered;
  if (!follows) {
    return [{ type: "reset", id: fresh.id, message: fresh }];
  }
  /** @type {AnswerEvent[]} */
  const events = [];
  const id = fresh.id;
  if (fresh.length > old.length) {
    events.push({
      type: "delta",
      id,
      index: old.length,
      text: fresh.content.slice(old.content.length),
      message: fresh,
    });
  }
  if (fresh.rendered > old.rendered) {
    const html = fresh.html.slice(old.html.length);
    events.push({
      type: "html",
      id,
      index: old.rendered,
      end: fresh.rendered,
      html,
      message: fresh,
    });
  }
  if (fresh.reasoningLength > old.reasoningLength) {
    const text = fresh.reasoning.slice(old.reasoning.length);
    events.push({ type: "reasoning", id, index: old.reasoningLength, text, message: fresh });
  }
  return events;
}

/** @param {string} text */
function storable(text) {
  return text.replace(/\u0000/g, "\uFFFD"); // as the server stores it (docs/protocol.md)
}

// ---- answers --------------------------------------------------------------

// Methods the client calls on its answers, out of the public API's reach.
const PUSH = Symbol("push");
const END = Symbol("end");

/** One turn: its state now, and its events as an async iterable. */
class Answer {
  /**
   * @param {TurnKind} kind
   * @param {string | null} conversation
   * @param {(answer: Answer) => boolean} stop
   */
  constructor(kind, conversation, stop) {
    this.kind = kind;
    /** @type {string | null} */
    this.id = null;
    this.conversation = conversation;
    /** @type {ChatMessage | null} */
    this.question = null;
    /** @type {ChatMessage | null} */
    this.message = null;
    /** @type {AnswerStatus} */
    this.status = "sending";
    /** @type {ErrorInfo | null} */
    this.error = null;
    this.ended = false;
    /** @type {AnswerEvent[]} */
    this.#log = [];
    this.#stop = stop;
    /** @type {Promise<Answer>} */
    this.finished = new Promise((resolve) => {
      this.#resolve = resolve;
    });
  }

  /** @type {AnswerEvent[]} */
  #log;
  /** @type {(() => void)[]} */
  #waiters = [];
  /** @type {(answer: Answer) => void} */
  #resolve = () => {};
  /** @type {(answer: Answer) => boolean} */
  #stop;

  get text() {
    return this.message ? this.message.content : "";
  }

  get html() {
    return this.message ? this.message.html : "";
  }

  get tail() {
    return this.message ? this.message.tail : "";
  }

  get reasoning() {
    return this.message ? this.message.reasoning : "";
  }

  /** Stop the answer (once it started, if it has not yet). */
  stop() {
    return this.#stop(this);
  }

  /** Every event of the answer from its start, then the ones to come, until it ends. */
  [Symbol.asyncIterator]() {
    let at = 0;
    /** @returns {Promise<IteratorResult<AnswerEvent, undefined>>} */
    const next = () =>
      new Promise((resolve) => {
        const settle = () => {
          if (at < this.#log.length) {
            resolve({ value: this.#log[at++], done: false });
          } else if (this.ended) {
            resolve({ value: undefined, done: true });
          } else {
            this.#waiters.push(settle);
          }
        };
        settle();
      });
    return {
      next,
      /** @returns {Promise<IteratorResult<AnswerEvent, undefined>>} */
      return: async () => {
        at = Infinity;
        return { value: undefined, done: true };
      },
      [Symbol.asyncIterator]() {
        return this;
      },
    };
  }

  /** @param {AnswerEvent} event */
  [PUSH](event) {
    this.#log.push(event);
    this.#wake();
  }

  [END]() {
    this.ended = true;
    this.#wake();
    this.#resolve(this);
  }

  #wake() {
    const waiting = this.#waiters;
    this.#waiters = [];
    waiting.forEach((settle) => settle());
  }
}

/**
 * A turn sent whose answer is not known yet, and what its messages will look like.
 * @typedef {{answer: Answer, kind: TurnKind, content: string, target: string | null,
 *   parent: string | null, stop: boolean}} Turn
 */

// ---- the client -----------------------------------------------------------

/**
 * The socket URL for `url` (a path, or an http(s) or ws(s) URL): wss: on https pages.
 * @param {string} url
 */
function socketUrl(url) {
  const resolved = new URL(url, window.location.href);
  resolved.protocol = resolved.protocol.replace(/^http/, "ws");
  return resolved.href;
}

/** @param {unknown} error */
function report(error) {
  // A listener's bug must not stop the protocol (pongs, the index contract): report it and go on.
  if (typeof window.reportError === "function") {
    window.reportError(error);
  } else {
    window.setTimeout(() => {
      throw error;
    });
  }
}

/** Close codes after which reconnecting cannot help: not logged in, not allowed to chat. */
const FINAL_CODES = new Map([
  [4401, ["not_authenticated", "Not logged in: log in and reload the page to chat."]],
  [4403, ["forbidden", "You are not allowed to chat here."]],
]);

/**
 * The error of what a socket closed for good ends: not logged in (4401), not allowed
 * (4403), or closed by us.
 * @param {number} code
 * @returns {[ErrorCode, string]}
 */
function finalError(code) {
  return /** @type {[ErrorCode, string]} */ (
    FINAL_CODES.get(code) ?? ["closed", "The chat connection is closed."]
  );
}

class ChatClient {
  /** @param {ChatOptions} options */
  constructor({ url = "/ws/chat/", conversation = null } = {}) {
    this.#url = socketUrl(url);
    this.#conversation = conversation;
    this.#connect();
  }

  #url;
  /** @type {WebSocket | null} */
  #socket = null;
  #retries = 0;
  #timer = 0;
  #closed = false;
  /** @type {string | null} */
  #conversation;
  /** @type {Map<string, Set<(event: any) => void>>} */
  #listeners = new Map();
  /** @type {Map<string, ChatMessage>} */
  #messages = new Map(); // the messages shown, by id
  /** @type {string[]} */
  #path = []; // their ids in order: the branch shown
  /** @type {string[]} */
  #parts = []; // slices of a frame too large to send whole, until its last part
  #resyncing = false; // a `watch` for a gap is on its way: one is enough
  /** @type {Turn[]} */
  #waiting = []; // turns sent, their answer message not seen yet
  /** @type {Map<string, Answer>} */
  #running = new Map(); // answers under way, by message id
  /** @type {Set<Answer>} */
  #stale = new Set(); // answers whose `done` disagreed with their text: the next history has it

  /** The id of the conversation shown (watched), or null. */
  get conversation() {
    return this.#conversation;
  }

  get connected() {
    return this.#socket !== null && this.#socket.readyState === OPEN;
  }

  /** The messages of the branch shown, in order. */
  get messages() {
    return this.#path.map((id) => /** @type {ChatMessage} */ (this.#messages.get(id)));
  }

  /** @param {string} id */
  message(id) {
    return this.#messages.get(id);
  }

  /** @param {string} type @param {(event: any) => void} listener */
  on(type, listener) {
    let set = this.#listeners.get(type);
    if (!set) {
      set = new Set();
      this.#listeners.set(type, set);
    }
    set.add(listener);
    return () => this.off(type, listener);
  }

  /** @param {string} type @param {(event: any) => void} listener */
  off(type, listener) {
    this.#listeners.get(type)?.delete(listener);
  }

  // ---- requests ------------------------------------------------------------

  /**
   * Ask `content` in `conversation` (the one shown by default; null: a new one), after `parent`.
   * @param {string} content
   * @param {{conversation?: string | null, parent?: string | null}} [options]
   */
  send(content, { conversation = this.#conversation, parent = undefined } = {}) {
    if (parent === undefined) {
      // The answer shown last: another tab may have moved the conversation's active path.
      parent = conversation === this.#conversation ? this.#lastAnswer() : null;
    }
    return this.#turn(
      { type: "send", conversation, content, parent },
      { kind: "send", content: storable(content), target: null, parent },
      conversation,
    );
  }

  /**
   * Ask an edited version of the question `message`.
   * @param {string} message
   * @param {string} content
   */
  edit(message, content) {
    const turn = {
      kind: /** @type {const} */ ("edit"),
      content: storable(content),
      target: message,
      parent: null,
    };
    return this.#turn({ type: "edit", message, content }, turn, this.#conversation);
  }

  /** Answer the question of the answer `message` again. @param {string} message */
  regenerate(message) {
    const turn = {
      kind: /** @type {const} */ ("regenerate"),
      content: "",
      target: message,
      parent: null,
    };
    return this.#turn({ type: "regenerate", message }, turn, this.#conversation);
  }

  /**
   * Stop an answer: `message`, else the one being written in the branch shown.
   * @param {string | null} [message]
   */
  stop(message) {
    const id = message || this.#streaming();
    return id ? this.#request({ type: "stop", message: id }) : false;
  }

  /** Show another version of a message (answered with a `history`). @param {string} message */
  switch(message) {
    return this.#request({ type: "switch", message });
  }

  /**
   * Show a conversation (null: none, as for a new chat); it is watched again after each reconnect.
   * @param {string | null} conversation
   */
  watch(conversation) {
    this.#show(conversation);
    if (conversation && this.connected) {
      this.#send({ type: "watch", conversation });
    }
  }

  /** Close the socket for good. */
  close() {
    this.#closed = true;
    window.clearTimeout(this.#timer);
    if (this.#socket) {
      this.#socket.close(1000); // its close event does the rest
    } else {
      this.#emit({ type: "close", code: 1000, reason: "", reconnect: false, delay: 0 });
      this.#closedForGood(1000, "");
    }
  }

  // ---- the socket ------------------------------------------------------------

  #connect() {
    this.#timer = 0;
    const socket = new WebSocket(this.#url);
    this.#socket = socket;
    socket.addEventListener("open", () => this.#onOpen());
    socket.addEventListener("message", (event) => this.#onFrame(event.data));
    socket.addEventListener("close", (event) => this.#onClose(event));
  }

  #onOpen() {
    this.#retries = 0;
    if (this.#conversation) {
      this.#send({ type: "watch", conversation: this.#conversation }); // rebuilds from the history
    }
    this.#emit({ type: "open" });
  }

  /** @param {CloseEvent} event */
  #onClose(event) {
    this.#socket = null;
    this.#parts = [];
    this.#resyncing = false; // the watch sent on reconnecting replaces it
    const final = this.#closed || FINAL_CODES.has(event.code);
    // A turn not yet started may or may not have reached the server: say so.
    for (const turn of this.#waiting.splice(0)) {
      const detail =
        "The connection was lost before the answer started; it may not have been sent.";
      this.#refuse(turn.answer, final ? finalError(event.code)[0] : "disconnected", detail);
    }
    if (final) {
      // Closed by us, or not logged in or allowed (any more): reconnecting would not help.
      this.#emit({
        type: "close",
        code: event.code,
        reason: event.reason,
        reconnect: false,
        delay: 0,
      });
      this.#closedForGood(event.code, event.reason);
      return;
    }
    const delay = this.#retryDelay(event.code);
    this.#emit({ type: "close", code: event.code, reason: event.reason, reconnect: true, delay });
    this.#timer = window.setTimeout(() => this.#connect(), delay);
  }

  /** @param {number} code */
  #retryDelay(code) {
    if (code === 1012 || code === 4503) {
      // A deploy: another process takes over at once and a running answer goes on there.
      return 100 + Math.random() * 400;
    }
    // The server is gone, failed to send (1011, 4500), found us slow (4408) or flooding
    // (4429): back off, with jitter so that a restarted server is not hit by every page at once.
    const delay =
      Math.min(RETRY_MAX, RETRY_FIRST * 2 ** this.#retries) * (0.75 + Math.random() / 2);
    this.#retries += 1;
    return delay;
  }

  /** @param {number} code @param {string} reason */
  #closedForGood(code, reason) {
    const [why, detail] = finalError(code);
    for (const answer of Array.from(this.#running.values())) {
      this.#fail(answer, why, reason ? `${detail} (${reason})` : detail);
    }
  }

  /** @param {object} frame */
  #send(frame) {
    if (!this.#socket || this.#socket.readyState !== OPEN) {
      return false;
    }
    this.#socket.send(JSON.stringify(frame));
    return true;
  }

  /** Send `frame`, or tell the listeners it could not be sent. @param {object} frame */
  #request(frame) {
    if (this.#send(frame)) {
      return true;
    }
    this.#emit({ type: "error", code: "not_connected", detail: NOT_CONNECTED, answer: null });
    return false;
  }

  /** @param {ChatEvent} event */
  #emit(event) {
    const listeners = this.#listeners.get(event.type);
    if (!listeners) {
      return;
    }
    for (const listener of Array.from(listeners)) {
      try {
        listener(event);
      } catch (error) {
        report(error);
      }
    }
  }

  // ---- frames ----------------------------------------------------------------

  /** @param {unknown} data */
  #onFrame(data) {
    /** @type {Frame} */
    let frame;
    try {
      frame = JSON.parse(String(data));
      if (frame.type === "part") {
        this.#parts.push(frame.data);
        if (!frame.last) {
          return;
        }
        frame = JSON.parse(this.#parts.join(""));
        this.#parts = [];
      }
    } catch (e) {
      this.#parts = [];
      return;
    }
    if (!frame || typeof frame !== "object") {
      return;
    }
    switch (frame.type) {
      case "ping":
        // Echoed at once: it proves this page read everything sent before it.
        this.#send({ type: "pong", nonce: frame.nonce });
        break;
      case "conversation":
        this.#onConversation(frame);
        break;
      case "history":
        this.#onHistory(frame);
        break;
      case "message":
        this.#onMessage(frame);
        break;
      case "delta":
        this.#apply(frame, applyDelta);
        break;
      case "html":
        this.#apply(frame, applyHtml);
        break;
      case "reasoning":
        this.#apply(frame, applyReasoning);
        break;
      case "done":
        this.#onDone(frame);
        break;
      case "title":
        this.#emit({ type: "title", conversation: frame.conversation, title: frame.title });
        break;
      case "error":
        this.#onError(frame);
        break;
    }
  }

  /** @param {Frame} frame */
  #onConversation(frame) {
    const conversation = frame.conversation;
    this.#show(conversation.id); // the server moved this socket to it
    // Sent only for a `send` that created it, before its messages: the oldest such turn's.
    const turn = this.#waiting.find((t) => t.kind === "send" && t.answer.conversation === null);
    if (turn) {
      turn.answer.conversation = conversation.id;
    }
    this.#emit({ type: "conversation", conversation });
  }

  /** @param {Frame} frame */
  #onHistory(frame) {
    this.#resyncing = false;
    this.#conversation = frame.conversation.id;
    const messages = frame.messages.map((/** @type {MessageInfo} */ info) => new ChatMessage(info));
    this.#messages = new Map(messages.map((/** @type {ChatMessage} */ m) => [m.id, m]));
    this.#path = messages.map((/** @type {ChatMessage} */ m) => m.id);
    this.#emit({ type: "history", conversation: frame.conversation, messages });
    for (const message of messages) {
      const answer = this.#running.get(message.id);
      if (answer && answer.message) {
        const stale = this.#stale.delete(answer);
        catchUp(answer.message, message, stale).forEach((event) => answer[PUSH](event));
        answer.message = message;
        answer.status = /** @type {AnswerStatus} */ (message.status);
        if (message.status !== "streaming") {
          this.#finish(answer, doneEvent(message));
        }
      }
    }
  }

  /** @param {Frame} frame */
  #onMessage(frame) {
    const known = this.#messages.get(frame.message.id);
    const message = known || new ChatMessage(frame.message);
    const answer = this.#claim(message);
    if (answer && message.conversation !== this.#conversation) {
      // A turn of ours in another conversation: the server moved this socket there.
      this.#show(message.conversation);
    }
    if (known || message.conversation !== this.#conversation) {
      return;
    }
    // A new message replaces the branch shown after its parent (an edit, a regenerated answer).
    const at = message.parent === null ? 0 : this.#path.indexOf(message.parent) + 1;
    if (at === 0 && message.parent !== null) {
      this.#resync(); // a branch this page lacks
      return;
    }
    const replaced = this.#path.splice(at);
    replaced.forEach((id) => this.#messages.delete(id));
    this.#messages.set(message.id, message);
    this.#path.push(message.id);
    this.#emit({ type: "message", message, replaced, answer });
  }

  /**
   * The answer `message` belongs to, among the turns sent: its question has the
   * content asked (as stored), after the parent asked, or is an edit of the
   * question edited; its answer follows that question, or is a new version of
   * the answer regenerated.
   * @param {ChatMessage} message
   */
  #claim(message) {
    for (const turn of this.#waiting) {
      const answer = turn.answer;
      if (answer.conversation !== null && answer.conversation !== message.conversation) {
        continue;
      }
      if (message.role === "user" && turn.kind !== "regenerate" && answer.question === null) {
        const asked =
          turn.kind === "send"
            ? turn.parent === null || message.parent === turn.parent
            : message.id !== turn.target &&
              message.versions.includes(/** @type {string} */ (turn.target));
        if (asked && message.content === turn.content) {
          answer.question = message;
          return answer;
        }
      } else if (message.role === "assistant") {
        const ours =
          turn.kind === "regenerate"
            ? message.id !== turn.target &&
              message.versions.includes(/** @type {string} */ (turn.target))
            : answer.question !== null && message.parent === answer.question.id;
        if (ours) {
          this.#waiting.splice(this.#waiting.indexOf(turn), 1);
          answer.id = message.id;
          answer.conversation = message.conversation;
          answer.message = message;
          answer.status = /** @type {AnswerStatus} */ (message.status);
          this.#running.set(message.id, answer);
          if (turn.stop) {
            this.#send({ type: "stop", message: message.id });
          }
          return answer;
        }
      }
    }
    return null;
  }

  /**
   * Apply a frame of an answer's text to the message shown and to the answer of
   * ours that it belongs to (they are one object unless the page shows another
   * branch or conversation).
   * @param {Frame} frame @param {(message: ChatMessage, frame: Frame) => any} apply
   */
  #apply(frame, apply) {
    const message = this.#messages.get(frame.message);
    const answer = this.#running.get(frame.message);
    let event = null;
    if (message) {
      event = apply(message, frame);
      if (event === GAP) {
        // Ask for the conversation again rather than show wrong text (once: the
        // frames that follow have the same gap until the history comes).
        this.#resync();
      } else if (event) {
        this.#emit(event);
      }
    }
    if (answer && answer.message) {
      if (answer.message !== message) {
        event = apply(answer.message, frame);
        if (event === GAP) {
          this.#resync();
        }
      }
      if (event && event !== GAP) {
        answer[PUSH](event);
      }
    }
  }

  /** @param {Frame} frame */
  #onDone(frame) {
    const shown = this.#messages.get(frame.message);
    const answer = this.#running.get(frame.message);
    let event = null;
    if (shown) {
      event = applyDone(shown, frame);
      this.#emit(event);
      if (shown.length !== frame.length) {
        // Text was missed, or the answer kept less than it sent (its process was
        // killed): the history has the exact text.
        this.#resync();
      }
    }
    if (!answer || !answer.message) {
      return;
    }
    if (answer.message.length !== frame.length) {
      this.#stale.add(answer); // it ends with the history, text and all
      this.#resync();
      return;
    }
    if (answer.message !== shown) {
      event = applyDone(answer.message, frame);
    }
    answer.status = frame.status;
    this.#finish(answer, event);
  }

  /** @param {Frame} frame */
  #onError(frame) {
    // An error names no request. One that refuses a turn comes before its
    // messages: it is the oldest turn not started.
    const turn = this.#waiting.find((t) => t.answer.question === null);
    if (turn) {
      this.#waiting.splice(this.#waiting.indexOf(turn), 1);
      this.#refuse(turn.answer, frame.code, frame.detail);
    } else {
      this.#emit({ type: "error", code: frame.code, detail: frame.detail, answer: null });
    }
  }

  // ---- state -------------------------------------------------------------

  /**
   * @param {object} frame
   * @param {Omit<Turn, "answer" | "stop">} match
   * @param {string | null} conversation
   */
  #turn(frame, match, conversation) {
    const answer = new Answer(match.kind, conversation, (a) => this.#stopAnswer(a));
    if (!this.#send(frame)) {
      this.#refuse(answer, "not_connected", NOT_CONNECTED);
    } else {
      this.#waiting.push({ answer, stop: false, ...match });
    }
    return answer;
  }

  /** @param {Answer} answer */
  #stopAnswer(answer) {
    if (answer.id) {
      return answer.ended ? false : this.stop(answer.id);
    }
    const turn = this.#waiting.find((t) => t.answer === answer);
    if (turn) {
      turn.stop = true; // sent once its message is known
    }
    return Boolean(turn);
  }

  /**
   * A turn refused before it started.
   * @param {Answer} answer
   * @param {ErrorCode} code
   * @param {string} detail
   */
  #refuse(answer, code, detail) {
    answer.status = "refused";
    this.#fail(answer, code, detail);
  }

  /** @param {Answer} answer @param {ErrorCode} code @param {string} detail */
  #fail(answer, code, detail) {
    answer.error = { code, detail };
    /** @type {ChatErrorEvent} */
    const event = { type: "error", code, detail, answer };
    this.#emit(event);
    this.#finish(answer, event);
  }

  /** @param {Answer} answer @param {AnswerEvent | null} event */
  #finish(answer, event) {
    if (answer.ended) {
      return;
    }
    if (event) {
      answer[PUSH](event);
    }
    if (answer.id) {
      this.#running.delete(answer.id);
    }
    answer.error = answer.error || (answer.message && answer.message.error) || null;
    answer[END]();
  }

  /** @param {string | null} conversation */
  #show(conversation) {
    this.#conversation = conversation;
    this.#messages = new Map();
    this.#path = [];
  }

  #resync() {
    if (
      !this.#resyncing &&
      this.#conversation &&
      this.#send({ type: "watch", conversation: this.#conversation })
    ) {
      this.#resyncing = true;
    }
  }

  #lastAnswer() {
    for (let i = this.#path.length - 1; i >= 0; i--) {
      if (/** @type {ChatMessage} */ (this.#messages.get(this.#path[i])).role === "assistant") {
        return this.#path[i];
      }
    }
    return null;
  }

  #streaming() {
    const running = this.messages.filter((m) => m.status === "streaming");
    return running.length ? running[running.length - 1].id : null;
  }
}

/**
 * Open a chat socket (`/ws/chat/` of this site by default) and keep it open.
 * @param {ChatOptions} [options]
 */
export function connectChat(options) {
  return new ChatClient(options);
}
