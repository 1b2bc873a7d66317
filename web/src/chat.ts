// The app's state and everything that changes it: one object, driven by the
// SDK's client events and by the user; the view re-renders on `changed`.
import { connect, ConfabError, type Client, type ConnectionState, type Message, type PresenceStatus } from "confab-client";
import { Api, baseUrl, clearSession, type Member, type NotificationItem, type Profile, type Room, type Session } from "./api";

const PAGE = 50;
const TYPING_SHOWN_MS = 4000;

export interface Conversation {
  /** null for a direct conversation not started yet (its room comes with the first message). */
  roomId: string | null;
  peer: { id: string; username: string } | null;
  messages: Message[];
  hasMore: boolean;
  loading: boolean;
  loadingOlder: boolean;
  members: Member[];
  /** Per member: the highest seq their read cursor passed. */
  readSeq: Map<string, number>;
  /** Per user typing: until when it is shown (ms). */
  typing: Map<string, number>;
  /** The newest seq this app marked read. */
  markedSeq: number;
}

function conversation(roomId: string | null, peer: Conversation["peer"] = null): Conversation {
  return {
    roomId,
    peer,
    messages: [],
    hasMore: false,
    loading: roomId !== null,
    loadingOlder: false,
    members: [],
    readSeq: new Map(),
    typing: new Map(),
    markedSeq: 0,
  };
}

export class Chat {
  readonly me: Profile;
  readonly api: Api;
  readonly client: Client;
  conn: ConnectionState = "connecting";
  rooms: Room[] = [];
  roomsLoaded = false;
  presence = new Map<string, PresenceStatus>();
  names = new Map<string, string>();
  current: Conversation | null = null;
  notifCount = 0;
  notifs: NotificationItem[] | null = null;
  error: string | null = null;
  ended: string | null = null;

  private listeners = new Set<() => void>();
  private generation = 0;
  private roomsTimer: ReturnType<typeof setTimeout> | undefined;
  private lookups = new Set<string>();
  private memberReloads = new Set<string>();
  private readonly offs: Array<() => void> = [];

  constructor(session: Session, private readonly onEnd: (reason: string) => void) {
    this.me = session.me;
    this.names.set(this.me.id, this.me.username);
    this.api = new Api(session);
    this.client = connect({ url: baseUrl, getToken: this.api.getToken });
    this.listen();
  }

  subscribe(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private changed(): void {
    for (const listener of this.listeners) listener();
  }

  fail(error: unknown): void {
    this.error = error instanceof Error ? error.message : String(error);
    this.changed();
  }

  dismissError(): void {
    this.error = null;
    this.changed();
  }

  async start(): Promise<void> {
    const hash = /^#\/r\/([0-9a-f]{24})$/.exec(location.hash);
    await Promise.all([this.loadRooms(), this.loadNotifCount()]);
    if (hash?.[1]) await this.openRoom(hash[1]);
  }

  private listen(): void {
    const c = this.client;
    const visible = (): void => void this.markRead();
    document.addEventListener("visibilitychange", visible);
    this.offs.push(
      () => document.removeEventListener("visibilitychange", visible),
      c.on("state", ({ state }) => {
        this.conn = state;
        if (state === "revoked") this.end("Your session ended. Log in again.");
        else if (state === "failed") this.fail("The connection to the server failed. Reload the page to try again.");
        this.changed();
      }),
      c.on("message", (m) => this.onMessage(m)),
      c.on("message_updated", ({ message }) => this.replace(message)),
      c.on("message_deleted", ({ message }) => this.replace(message)),
      c.on("typing", ({ room_id, user_id }) => {
        const cur = this.current;
        if (!cur || cur.roomId !== room_id || user_id === this.me.id) return;
        cur.typing.set(user_id, Date.now() + TYPING_SHOWN_MS);
        setTimeout(() => this.changed(), TYPING_SHOWN_MS + 50);
        this.changed();
      }),
      c.on("presence", ({ user_id, status }) => {
        this.presence.set(user_id, status);
        this.changed();
      }),
      c.on("receipt", ({ room_id, user_id, status, seq }) => {
        const cur = this.current;
        if (status !== "read" || !cur || cur.roomId !== room_id) return;
        if (seq > (cur.readSeq.get(user_id) ?? 0)) cur.readSeq.set(user_id, seq);
        this.noticeMember(cur, user_id);
        this.changed();
      }),
      c.on("notification", () => {
        this.notifCount += 1;
        if (this.notifs) void this.loadNotifs();
        this.refreshRoomsSoon();
        this.changed();
      }),
      c.on("room_added", () => this.refreshRoomsSoon()),
      c.on("room_removed", ({ room_id }) => {
        if (this.current?.roomId === room_id) this.current = null;
        this.refreshRoomsSoon();
        this.changed();
      }),
      c.on("member_added", () => void this.loadMembers()),
      c.on("member_removed", () => void this.loadMembers()),
      c.on("error", (e) => console.warn("confab:", e.code, e.message)),
    );
  }

  private end(reason: string): void {
    this.close();
    clearSession();
    this.onEnd(reason);
  }

  close(): void {
    for (const off of this.offs.splice(0)) off();
    clearTimeout(this.roomsTimer);
    this.client.close();
  }

  async logout(): Promise<void> {
    try {
      await this.api.req("POST", "/logout");
    } catch {
      // The session ends here whatever the server said.
    }
    this.end("");
  }

  // ----- rooms -----

  async loadRooms(): Promise<void> {
    try {
      const page = await this.api.req<{ rooms: Room[] }>("GET", "/rooms", { query: { limit: 200 } });
      this.rooms = page.rooms;
      this.roomsLoaded = true;
      for (const room of page.rooms) if (room.peer) this.names.set(room.peer.id, room.peer.username);
      if (this.current?.roomId) this.clearUnread(this.current.roomId);
      const peers = page.rooms.flatMap((r) => (r.peer ? [r.peer.id] : []));
      this.changed();
      await this.loadPresence(peers);
    } catch (error) {
      this.fail(error);
    }
  }

  private refreshRoomsSoon(): void {
    clearTimeout(this.roomsTimer);
    this.roomsTimer = setTimeout(() => void this.loadRooms(), 150);
  }

  private async loadPresence(ids: string[]): Promise<void> {
    const unique = [...new Set(ids)].filter((id) => id !== this.me.id).slice(0, 500);
    if (unique.length === 0) return;
    try {
      const answer = await this.api.req<{ presence: Array<{ user_id: string; status: PresenceStatus }> }>("GET", "/presence", {
        query: { user_ids: unique.join(",") },
      });
      for (const p of answer.presence) this.presence.set(p.user_id, p.status);
      this.changed();
    } catch {
      // Presence is a nicety: no dots is better than an error banner.
    }
  }

  async createRoom(name: string, isPrivate: boolean): Promise<boolean> {
    try {
      const room = await this.api.req<{ id: string }>("POST", "/rooms", { body: { name, type: isPrivate ? "private" : "public" } });
      await this.loadRooms();
      await this.openRoom(room.id);
      return true;
    } catch (error) {
      this.fail(error);
      return false;
    }
  }

  async searchUsers(q: string): Promise<Profile[]> {
    const answer = await this.api.req<{ users: Profile[] }>("GET", "/users/search", { query: { q, limit: 10 } });
    return answer.users.filter((u) => u.id !== this.me.id);
  }

  /** Opens the direct conversation with a user: their room if it exists, else an empty one the first message creates. */
  async openDirect(user: { id: string; username: string }): Promise<void> {
    this.names.set(user.id, user.username);
    const existing = this.rooms.find((r) => r.type === "direct" && r.peer?.id === user.id);
    if (existing) return this.openRoom(existing.id);
    this.leaveCurrent();
    this.generation++;
    this.current = { ...conversation(null, user), loading: false };
    history.replaceState(null, "", location.pathname);
    this.changed();
    await this.loadPresence([user.id]);
  }

  private leaveCurrent(): void {
    const room = this.current?.roomId;
    // Rooms not on screen come as notifications (and unread counts), not as messages.
    if (room) this.client.leave(room).catch(() => {});
  }

  async openRoom(roomId: string): Promise<void> {
    if (this.current?.roomId === roomId) return;
    const generation = ++this.generation;
    this.leaveCurrent();
    const info = this.rooms.find((r) => r.id === roomId);
    const cur = conversation(roomId, info?.peer ?? null);
    this.current = cur;
    history.replaceState(null, "", `#/r/${roomId}`);
    this.changed();
    const stale = (): boolean => generation !== this.generation;
    try {
      const page = await this.client.history(roomId, { limit: PAGE });
      if (stale()) return;
      this.merge(cur, page.messages);
      cur.hasMore = page.has_more;
      // Live from the page's end: every later message once, in order, across reconnects.
      await this.client.join(roomId, { afterSeq: page.messages.at(-1)?.seq ?? 0 });
      if (stale()) return;
      cur.loading = false;
      this.changed();
      await this.loadMembers();
      if (stale()) return;
      await this.markRead();
      if (info?.role === null || !info) this.refreshRoomsSoon();
      void this.readRoomNotifications(roomId);
    } catch (error) {
      if (stale()) return;
      cur.loading = false;
      this.fail(error);
    }
  }

  private async loadMembers(): Promise<void> {
    const cur = this.current;
    if (!cur?.roomId) return;
    const answer = await this.api.req<{ members: Member[] }>("GET", `/rooms/${cur.roomId}/members`).catch(() => null);
    if (!answer || this.current !== cur) return;
    cur.members = answer.members;
    for (const m of answer.members) {
      this.names.set(m.user_id, m.username);
      const read = cur.messages.find((x) => x.id === m.read_up_to);
      if (read && read.seq > (cur.readSeq.get(m.user_id) ?? 0)) cur.readSeq.set(m.user_id, read.seq);
    }
    if (!cur.peer && answer.members.length === 2 && this.rooms.find((r) => r.id === cur.roomId)?.type === "direct") {
      const other = answer.members.find((m) => m.user_id !== this.me.id);
      if (other) cur.peer = { id: other.user_id, username: other.username };
    }
    this.changed();
    await this.loadPresence(answer.members.slice(0, 200).map((m) => m.user_id));
  }

  /** Joining a public room announces nothing: a member first seen acting brings the member list up to date. */
  private noticeMember(cur: Conversation, userId: string): void {
    if (cur.loading || cur.members.some((m) => m.user_id === userId) || this.memberReloads.has(userId)) return;
    this.memberReloads.add(userId);
    void this.loadMembers();
  }

  async loadOlder(): Promise<void> {
    const cur = this.current;
    const first = cur?.messages[0];
    if (!cur?.roomId || !first || !cur.hasMore || cur.loadingOlder) return;
    cur.loadingOlder = true;
    this.changed();
    try {
      const page = await this.client.history(cur.roomId, { before: first.id, limit: PAGE });
      this.merge(cur, page.messages);
      cur.hasMore = page.has_more;
    } catch (error) {
      this.fail(error);
    } finally {
      cur.loadingOlder = false;
      this.changed();
    }
  }

  // ----- messages -----

  private merge(cur: Conversation, messages: Message[]): void {
    const byId = new Map(cur.messages.map((m) => [m.id, m]));
    for (const m of messages) byId.set(m.id, m);
    cur.messages = [...byId.values()].sort((a, b) => a.seq - b.seq);
    for (const m of messages) if (!this.names.has(m.sender_id)) void this.lookUp(m.sender_id);
  }

  private async lookUp(userId: string): Promise<void> {
    if (this.lookups.has(userId)) return;
    this.lookups.add(userId);
    const user = await this.api.req<Profile>("GET", `/users/${userId}`).catch(() => null);
    if (user) {
      this.names.set(user.id, user.username);
      this.changed();
    }
  }

  private onMessage(m: Message): void {
    const cur = this.current;
    if (cur && cur.roomId === m.room_id) {
      this.merge(cur, [m]);
      cur.typing.delete(m.sender_id);
      this.noticeMember(cur, m.sender_id);
      void this.markRead();
    }
    this.bumpRoom(m);
    this.changed();
  }

  /** The room list follows the messages seen here: last message, most recent first. */
  private bumpRoom(m: Message): void {
    const i = this.rooms.findIndex((r) => r.id === m.room_id);
    const room = this.rooms[i];
    if (!room) return this.refreshRoomsSoon();
    if (room.last_message && room.last_message.seq > m.seq) return;
    this.rooms.splice(i, 1);
    this.rooms.unshift({ ...room, last_message: m });
  }

  private replace(m: Message): void {
    const cur = this.current;
    if (cur && cur.roomId === m.room_id && cur.messages.some((x) => x.id === m.id)) this.merge(cur, [m]);
    const room = this.rooms.find((r) => r.id === m.room_id);
    if (room?.last_message?.id === m.id) room.last_message = m;
    this.changed();
  }

  async send(text: string): Promise<boolean> {
    const cur = this.current;
    const content = text.trim();
    if (!cur || !content) return false;
    try {
      if (cur.roomId) {
        const stored = await this.client.send(cur.roomId, content);
        if (this.current === cur) this.merge(cur, [stored]);
        this.bumpRoom(stored);
      } else if (cur.peer) {
        // The first direct message creates the room.
        const stored = await this.api.req<Message>("POST", "/messages", {
          body: { to_user_id: cur.peer.id, content, client_msg_id: crypto.randomUUID() },
        });
        await this.loadRooms();
        if (this.current === cur) await this.openRoom(stored.room_id);
      }
      this.changed();
      return true;
    } catch (error) {
      this.fail(error);
      return false;
    }
  }

  async edit(id: string, content: string): Promise<boolean> {
    try {
      this.replace(await this.api.req<Message>("PATCH", `/messages/${id}`, { body: { content } }));
      return true;
    } catch (error) {
      this.fail(error);
      return false;
    }
  }

  async remove(id: string): Promise<void> {
    try {
      this.replace(await this.api.req<Message>("DELETE", `/messages/${id}`));
    } catch (error) {
      this.fail(error);
    }
  }

  typing(): void {
    const room = this.current?.roomId;
    if (room) this.client.typing(room);
  }

  /** Moves the read cursor to the newest message on screen, while the page is visible. */
  private async markRead(): Promise<void> {
    const cur = this.current;
    const newest = cur?.messages.at(-1);
    if (!cur?.roomId || !newest || cur.loading || document.visibilityState !== "visible") return;
    if (newest.seq <= cur.markedSeq) return;
    cur.markedSeq = newest.seq;
    this.clearUnread(cur.roomId);
    try {
      await this.client.markRead(cur.roomId, newest.id);
    } catch (error) {
      if (!(error instanceof ConfabError && error.code === "forbidden")) console.warn("confab: read", error);
    }
  }

  private clearUnread(roomId: string): void {
    const room = this.rooms.find((r) => r.id === roomId);
    if (room && room.unread_count) {
      room.unread_count = 0;
      this.changed();
    }
  }

  // ----- notifications -----

  private async loadNotifCount(): Promise<void> {
    try {
      const answer = await this.api.req<{ unread_count: number }>("GET", "/notifications/unread_count");
      this.notifCount = answer.unread_count;
      this.changed();
    } catch (error) {
      this.fail(error);
    }
  }

  async toggleNotifs(): Promise<void> {
    if (this.notifs) {
      this.notifs = null;
      this.changed();
      return;
    }
    this.notifs = [];
    this.changed();
    await this.loadNotifs();
  }

  private async loadNotifs(): Promise<void> {
    try {
      const answer = await this.api.req<{ notifications: NotificationItem[] }>("GET", "/notifications", { query: { limit: 20 } });
      if (this.notifs) this.notifs = answer.notifications;
      this.changed();
    } catch (error) {
      this.fail(error);
    }
  }

  async readAllNotifs(): Promise<void> {
    try {
      await this.api.req("POST", "/notifications/read", { body: { all: true } });
      this.notifCount = 0;
      if (this.notifs) this.notifs = this.notifs.map((n) => ({ ...n, read: true }));
      this.changed();
    } catch (error) {
      this.fail(error);
    }
  }

  async openNotification(n: NotificationItem): Promise<void> {
    this.notifs = null;
    this.changed();
    if (n.data.room_id) await this.openRoom(n.data.room_id);
  }

  /** Opening a room answers its notifications: they are marked read. */
  private async readRoomNotifications(roomId: string): Promise<void> {
    try {
      const answer = await this.api.req<{ notifications: NotificationItem[] }>("GET", "/notifications", { query: { limit: 100 } });
      const ids = answer.notifications.filter((n) => !n.read && n.data.room_id === roomId).map((n) => n.id);
      if (ids.length === 0) return;
      await this.api.req("POST", "/notifications/read", { body: { ids } });
      await this.loadNotifCount();
    } catch {
      // The badge stays as it was.
    }
  }
}
