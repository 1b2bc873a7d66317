export { connect, Client } from "./client.js";
export type {
  ClientEvents,
  ConnectOptions,
  ConnectionState,
  HistoryOptions,
  StateChange,
  WebSocketConstructor,
  WebSocketLike,
} from "./client.js";
export { ConfabError, login, refresh, tokenRefresher } from "./rest.js";
export type { FetchLike, GetToken, HttpRequest, HttpResponse, RestOptions } from "./rest.js";
export type {
  ClientFrame,
  Envelope,
  Json,
  MemberChange,
  Message,
  MessageChange,
  MessagePage,
  Notification,
  Presence,
  PresenceStatus,
  ReadCursors,
  Receipt,
  Role,
  RoomChange,
  TokenPair,
  Typing,
} from "./types.js";
