// Types of client.js, the chat websocket client (docs/client.md; the frames: docs/protocol.md).

export interface ChatOptions {
  /** The socket: a path of this site or a full URL (default "/ws/chat/"; wss: on https pages). */
  url?: string;
  /** A conversation to show (watch) from the start. */
  conversation?: string | null;
}

export type Role = "user" | "assistant";
export type MessageStatus = "streaming" | "complete" | "stopped" | "failed" | "interrupted";
/** "sending" until the answer's message comes; "refused" if the turn never started. */
export type AnswerStatus = "sending" | MessageStatus | "refused";

/** Codes of refused client frames (docs/protocol.md, "Error codes"). */
export type ServerErrorCode =
  | "invalid_json"
  | "invalid_frame"
  | "unknown_type"
  | "empty_content"
  | "content_too_long"
  | "too_large"
  | "not_found"
  | "busy"
  | "too_many_answers"
  | "slow_down"
  | "not_running"
  | "not_authenticated"
  | "forbidden"
  | "restarting"
  | "not_configured"
  | "budget_exhausted";

/**
 * Codes of the client's own errors: "not_connected" (a frame could not be sent:
 * the socket is reconnecting), "disconnected" (the connection was lost before a
 * turn's answer started: it may or may not have reached the server), "closed"
 * (`close()` was called while the answer was written).
 */
export type ClientErrorCode = "not_connected" | "disconnected" | "closed";

export type ErrorCode = ServerErrorCode | ClientErrorCode;

/** Why an answer failed or was stopped (`done.error`; docs/protocol.md, "Failed answers"). */
export interface ErrorInfo {
  code: string;
  detail: string;
}

export interface Usage {
  prompt_tokens: number | null;
  completion_tokens: number | null;
  total_tokens: number | null;
  /** True when the upstream reported nothing and the figures are estimated from the text. */
  estimated: boolean;
}

export interface Conversation {
  id: string;
  title: string;
  model: string;
  created_at: string;
  updated_at: string;
}

/** A `<message>` as the server sends it. */
export interface MessageInfo {
  id: string;
  conversation: string;
  parent: string | null;
  versions: string[];
  role: Role;
  content: string;
  reasoning: string;
  refusal: string;
  status: MessageStatus;
  finish_reason: string | null;
  error: ErrorInfo | null;
  usage: Usage;
  model: string;
  created_at: string;
  html: string;
  rendered: number;
}

/**
 * A message, kept current as its frames arrive: `content` grows by its deltas,
 * `html` (sanitized by the server) by its complete blocks, `status` and the rest
 * change with `done`. Read it; do not change it.
 */
export interface Message extends MessageInfo {
  /** `content`'s length in code points (positions in the protocol count code points). */
  length: number;
  /** `reasoning`'s length in code points. */
  reasoningLength: number;
  /** The text after what `html` covers: the block being written. Show it as text, never as HTML. */
  readonly tail: string;
}

// ---- events ---------------------------------------------------------------

/** New answer text at `index` (code points): never text already seen, never out of place. */
export interface DeltaEvent {
  type: "delta";
  id: string;
  index: number;
  text: string;
  message: Message;
}

/** Complete Markdown blocks as sanitized HTML, in place of the text from `index` to `end`. */
export interface HtmlEvent {
  type: "html";
  id: string;
  index: number;
  end: number;
  html: string;
  message: Message;
}

/** New reasoning text (reasoning models), indexed like deltas. */
export interface ReasoningEvent {
  type: "reasoning";
  id: string;
  index: number;
  text: string;
  message: Message;
}

/** The answer is saved: its status, usage, error and whole HTML. */
export interface DoneEvent {
  type: "done";
  id: string;
  conversation: string;
  status: Exclude<MessageStatus, "streaming">;
  length: number;
  finish_reason: string | null;
  usage: Usage;
  error: ErrorInfo | null;
  html: string;
  refusal: string;
  message: Message;
}

/**
 * What an answer had is not the start of what the server stored (a reconnect
 * after its process was killed): show `message` afresh. Answers only; rare.
 */
export interface ResetEvent {
  type: "reset";
  id: string;
  message: Message;
}

/** A refused frame, or the client's own error; `answer` is the turn it ended, if any. */
export interface ChatErrorEvent {
  type: "error";
  code: ErrorCode;
  detail: string;
  answer: Answer | null;
}

export interface OpenEvent {
  type: "open";
}

/** The socket closed; unless `reconnect` is false (4401, 4403, `close()`), it reconnects in `delay`ms. */
export interface ChatCloseEvent {
  type: "close";
  code: number;
  reason: string;
  reconnect: boolean;
  delay: number;
}

/** A `send` created this conversation; it is the one shown now. */
export interface ConversationEvent {
  type: "conversation";
  conversation: Conversation;
}

/** The branch of a conversation shown, afresh (after `watch`, `switch`, a reconnect, a gap). */
export interface HistoryEvent {
  type: "history";
  conversation: Conversation;
  messages: Message[];
}

/**
 * A message joined the branch shown, after its parent; `replaced` are the ids
 * of the messages it took the place of (an edit, a regenerated answer).
 */
export interface ChatMessageEvent {
  type: "message";
  message: Message;
  replaced: string[];
  answer: Answer | null;
}

export interface TitleEvent {
  type: "title";
  conversation: string;
  title: string;
}

/** Events of one answer, in order; the last is `done` or `error`. */
export type AnswerEvent =
  DeltaEvent | HtmlEvent | ReasoningEvent | ResetEvent | DoneEvent | ChatErrorEvent;

/** Events of the client (`chat.on`), for the messages of the conversation shown. */
export type ChatEvent =
  | OpenEvent
  | ChatCloseEvent
  | ConversationEvent
  | HistoryEvent
  | ChatMessageEvent
  | DeltaEvent
  | HtmlEvent
  | ReasoningEvent
  | DoneEvent
  | TitleEvent
  | ChatErrorEvent;

export type ChatEventType = ChatEvent["type"];
export type ChatEventOf<T extends ChatEventType> = Extract<ChatEvent, { type: T }>;

// ---- the client -------------------------------------------------------------

/** One turn (`send`, `edit`, `regenerate`): its state now, and its events. */
export interface Answer extends AsyncIterable<AnswerEvent> {
  readonly kind: "send" | "edit" | "regenerate";
  /** The answer message's id, once it started. */
  readonly id: string | null;
  readonly conversation: string | null;
  readonly status: AnswerStatus;
  /** The answer text so far (plain text: Markdown as the model wrote it). */
  readonly text: string;
  /** Sanitized HTML of its complete blocks (of all of it once done). */
  readonly html: string;
  /** The text `html` does not cover yet. Show it as text (`textContent`), never as HTML. */
  readonly tail: string;
  readonly reasoning: string;
  /** The question asked (not for `regenerate`), once stored. */
  readonly question: Message | null;
  /** The answer message, once it started. */
  readonly message: Message | null;
  /** Why it was refused, failed or stopped, if it was. */
  readonly error: ErrorInfo | null;
  /** True after its last event. */
  readonly ended: boolean;
  /** Resolves with the answer after its last event (`done` or `error`); never rejects. */
  readonly finished: Promise<Answer>;
  /** Stop it (as soon as it starts, if it has not yet). False if it cannot be sent. */
  stop(): boolean;
}

export interface ChatClient {
  /** The conversation shown (watched), or null. */
  readonly conversation: string | null;
  readonly connected: boolean;
  /** The messages of the branch shown, in order. */
  readonly messages: Message[];
  message(id: string): Message | undefined;

  /**
   * Ask in `conversation` (default: the one shown; null starts one), after `parent`
   * (default: the answer shown last).
   */
  send(content: string, options?: { conversation?: string | null; parent?: string | null }): Answer;
  /** Ask an edited version of the question `message`. */
  edit(message: string, content: string): Answer;
  /** Answer the question of `message` (an answer) again. */
  regenerate(message: string): Answer;
  /** Stop `message`, else the answer being written in the branch shown. */
  stop(message?: string | null): boolean;
  /** Show another version of a message (a `history` follows). */
  switch(message: string): boolean;
  /** Show a conversation, or none (null); watched again after every reconnect. */
  watch(conversation: string | null): void;
  /** Close the socket for good. */
  close(): void;

  /** Listen to an event; returns the function that stops listening. */
  on<T extends ChatEventType>(type: T, listener: (event: ChatEventOf<T>) => void): () => void;
  off<T extends ChatEventType>(type: T, listener: (event: ChatEventOf<T>) => void): void;
}

/** Open the chat socket (`/ws/chat/` of this site by default) and keep it open. */
export function connectChat(options?: ChatOptions): ChatClient;
