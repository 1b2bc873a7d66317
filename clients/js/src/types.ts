// The Confab protocol's shapes, as the server sends and expects them.
// Field names are the wire's own (snake_case), so a value can be passed
// through, logged or stored without translation.

/** A JSON value. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** A stored message, or the tombstone of a deleted one (`content: null`, `deleted: true`). */
export interface Message {
  id: string;
  room_id: string;
  /** The room's storage order: only grows, never reused, may skip a number. */
  seq: number;
  sender_id: string;
  content: string | null;
  client_msg_id: string | null;
  /** RFC 3339 UTC with milliseconds. */
  timestamp: string;
  edited_at: string | null;
  deleted: boolean;
  /** Present (true) on a message a backend posted through the server API. */
  system?: true;
}

/** A page of `GET /messages`, always in seq order. */
export interface MessagePage {
  messages: Message[];
  has_more: boolean;
}

/** The pair `POST /login` and `POST /token/refresh` return. */
export interface TokenPair {
  access_token: string;
  token_type: "Bearer";
  /** Seconds. */
  expires_in: number;
  refresh_token: string;
  /** Seconds. */
  refresh_expires_in: number;
  session_id: string;
}

/** The read cursors of a member in a room (message ids). */
export interface ReadCursors {
  room_id: string;
  delivered_up_to: string | null;
  read_up_to: string | null;
}

export type PresenceStatus = "online" | "away" | "busy" | "offline";

/** A user's presence; `last_seen` is RFC 3339, or null if never. */
export interface Presence {
  user_id: string;
  status: PresenceStatus;
  last_seen: string | null;
}

/** A member's cursor passed your messages. */
export interface Receipt {
  room_id: string;
  /** The reader. */
  user_id: string;
  status: "delivered" | "read";
  message_id: string;
  seq: number;
}

/** A notification as its live frame carries it. */
export interface Notification {
  id: string;
  type: string;
  title: string;
  message: string;
  data: { [key: string]: Json };
  /** RFC 3339. */
  timestamp: string;
}

export type Role = "owner" | "moderator" | "member";

/** A room membership, with who changed it. */
export interface MemberChange {
  room_id: string;
  user_id: string;
  role: Role;
  joined_at: string;
  delivered_up_to: string | null;
  read_up_to: string | null;
  by: string;
}

/** You were added to or removed from a room. */
export interface RoomChange {
  room_id: string;
  by: string;
}

/** A message was edited or deleted: its current form, who did it, and when (Unix ms). */
export interface MessageChange {
  message: Message;
  by: string;
  timestamp: number;
}

/** Someone else is typing in a joined room. */
export interface Typing {
  room_id: string;
  user_id: string;
}

/** The envelope of every frame, both ways. */
export interface Envelope {
  type: string;
  channel?: string;
  data?: Json;
  /** Unix milliseconds (server frames). */
  timestamp?: number;
  user_id?: string;
  ref?: Json;
}

/** What a client frame may ask. */
export type ClientFrame =
  | { type: "join_channel"; channel: string; data?: { after_seq: number } }
  | { type: "leave_channel"; channel: string }
  | { type: "send_message"; channel: string; data: { content: string; client_msg_id: string } }
  | { type: "delivered" | "read"; channel: string; data: { message_id: string } }
  | { type: "ping" }
  | { type: "set_status"; data: { status: "online" | "away" | "busy" } }
  | { type: "user_typing"; channel: string }
  | { type: "refresh"; data: { access_token: string } };
