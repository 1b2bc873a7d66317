import { useEffect, useLayoutEffect, useMemo, useRef, useState } from "preact/hooks";
import type { Message } from "confab-client";
import { loadSession, register, signIn, type Profile, type Room, type Session } from "./api";
import { Chat, type Conversation } from "./chat";

export function App() {
  const [session, setSession] = useState<Session | null>(() => loadSession());
  const [notice, setNotice] = useState("");
  if (!session) return <Auth notice={notice} onSession={setSession} />;
  return (
    <Main
      key={session.me.id}
      session={session}
      onEnd={(reason) => {
        setNotice(reason);
        setSession(null);
      }}
    />
  );
}

// ----- log in / register -----

function Auth({ notice, onSession }: { notice: string; onSession: (s: Session) => void }) {
  const [mode, setMode] = useState<"login" | "register">("login");
  const [username, setUsername] = useState("");
  const [email, setEmail] = useState("");
  const [password, setPassword] = useState("");
  const [error, setError] = useState(notice);
  const [busy, setBusy] = useState(false);

  const submit = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    setError("");
    try {
      if (mode === "register") await register(username.trim(), email.trim(), password);
      onSession(await signIn(username.trim(), password));
    } catch (err) {
      setError(err instanceof Error ? err.message : String(err));
      setBusy(false);
    }
  };

  return (
    <div class="auth">
      <form class="auth-box" onSubmit={submit} data-testid="auth-form">
        <h1>Confab</h1>
        <div class="tabs">
          <button type="button" class={mode === "login" ? "on" : ""} data-testid="auth-mode-login" onClick={() => setMode("login")}>
            Log in
          </button>
          <button type="button" class={mode === "register" ? "on" : ""} data-testid="auth-mode-register" onClick={() => setMode("register")}>
            Register
          </button>
        </div>
        <label>
          {mode === "login" ? "Username or email" : "Username"}
          <input data-testid="auth-username" autocomplete="username" required value={username} onInput={(e) => setUsername(e.currentTarget.value)} />
        </label>
        {mode === "register" && (
          <label>
            Email
            <input data-testid="auth-email" type="email" autocomplete="email" required value={email} onInput={(e) => setEmail(e.currentTarget.value)} />
          </label>
        )}
        <label>
          Password
          <input
            data-testid="auth-password"
            type="password"
            autocomplete={mode === "login" ? "current-password" : "new-password"}
            required
            value={password}
            onInput={(e) => setPassword(e.currentTarget.value)}
          />
        </label>
        {error && (
          <p class="error" role="alert" data-testid="auth-error">
            {error}
          </p>
        )}
        <button type="submit" class="primary" disabled={busy} data-testid="auth-submit">
          {mode === "login" ? "Log in" : "Create account"}
        </button>
      </form>
    </div>
  );
}

// ----- the signed-in app -----

function useChat(session: Session, onEnd: (reason: string) => void): Chat {
  const chat = useMemo(() => new Chat(session, onEnd), [session]);
  const [, setVersion] = useState(0);
  useEffect(() => {
    const off = chat.subscribe(() => setVersion((v) => v + 1));
    void chat.start();
    return () => {
      off();
      chat.close();
    };
  }, [chat]);
  return chat;
}

function Main({ session, onEnd }: { session: Session; onEnd: (reason: string) => void }) {
  const chat = useChat(session, onEnd);
  return (
    <div class="app">
      <aside class="sidebar">
        <header class="me">
          <Dot status={chat.conn === "open" ? "online" : "offline"} />
          <strong data-testid="me">{chat.me.username}</strong>
          <span class={`conn ${chat.conn}`} data-testid="conn-state" data-state={chat.conn}>
            {chat.conn === "open" ? "" : chat.conn}
          </span>
          <button class="bell" title="Notifications" aria-label="Notifications" data-testid="notif-bell" onClick={() => void chat.toggleNotifs()}>
            <svg width="18" height="18" viewBox="0 0 24 24" aria-hidden="true">
              <path
                fill="currentColor"
                d="M12 22a2.5 2.5 0 0 0 2.45-2h-4.9A2.5 2.5 0 0 0 12 22zm7-6V11a7 7 0 0 0-5.5-6.84V3.5a1.5 1.5 0 0 0-3 0v.66A7 7 0 0 0 5 11v5l-2 2v1h18v-1z"
              />
            </svg>
            {chat.notifCount > 0 && (
              <span class="badge" data-testid="notif-badge">
                {chat.notifCount > 999 ? "999+" : chat.notifCount}
              </span>
            )}
          </button>
          <button class="link" data-testid="logout" onClick={() => void chat.logout()}>
            Log out
          </button>
        </header>
        {chat.notifs && <Notifications chat={chat} />}
        <NewRoom chat={chat} />
        <FindUser chat={chat} />
        <RoomList chat={chat} />
      </aside>
      <main class="pane">
        {chat.error && (
          <div class="banner" role="alert" data-testid="error-banner">
            <span data-testid="error-message">{chat.error}</span>
            <button class="link" onClick={() => chat.dismissError()}>
              Dismiss
            </button>
          </div>
        )}
        {chat.current ? <ConversationView chat={chat} cur={chat.current} /> : <p class="empty">Pick a conversation, or start one.</p>}
      </main>
    </div>
  );
}

function Dot({ status, name }: { status: string; name?: string }) {
  return <span class={`dot ${status}`} title={status} data-testid="presence-dot" data-user={name} data-status={status} />;
}

function Notifications({ chat }: { chat: Chat }) {
  const list = chat.notifs ?? [];
  return (
    <section class="notifs" data-testid="notif-panel">
      <div class="row">
        <strong>Notifications</strong>
        <button class="link" data-testid="notif-read-all" onClick={() => void chat.readAllNotifs()}>
          Mark all read
        </button>
      </div>
      {list.length === 0 && <p class="muted">Nothing new.</p>}
      {list.map((n) => (
        <button key={n.id} class={`notif ${n.read ? "" : "unread"}`} data-testid="notif-item" onClick={() => void chat.openNotification(n)}>
          <strong>{n.title}</strong>
          <span>{n.message}</span>
        </button>
      ))}
    </section>
  );
}

function NewRoom({ chat }: { chat: Chat }) {
  const [name, setName] = useState("");
  const [priv, setPriv] = useState(false);
  const submit = async (e: Event) => {
    e.preventDefault();
    const submitted = name;
    // Cleared unless something else was typed meanwhile.
    if (await chat.createRoom(submitted.trim(), priv)) setName((now) => (now === submitted ? "" : now));
  };
  return (
    <form class="new-room" onSubmit={submit}>
      <input placeholder="New room name" data-testid="new-room-name" required value={name} onInput={(e) => setName(e.currentTarget.value)} />
      <label title="Only members you add can read it">
        <input type="checkbox" data-testid="new-room-private" checked={priv} onChange={(e) => setPriv(e.currentTarget.checked)} />
        private
      </label>
      <button type="submit" data-testid="new-room-submit">
        Create
      </button>
    </form>
  );
}

function FindUser({ chat }: { chat: Chat }) {
  const [q, setQ] = useState("");
  const [users, setUsers] = useState<Profile[]>([]);
  useEffect(() => {
    const query = q.trim();
    if (!query) return setUsers([]);
    let live = true;
    const timer = setTimeout(() => {
      chat.searchUsers(query).then(
        (found) => live && setUsers(found),
        (error: unknown) => live && chat.fail(error),
      );
    }, 200);
    return () => {
      live = false;
      clearTimeout(timer);
    };
  }, [q]);
  return (
    <div class="find">
      <input placeholder="Message a user…" data-testid="dm-search" value={q} onInput={(e) => setQ(e.currentTarget.value)} />
      {users.map((u) => (
        <button
          key={u.id}
          class="result"
          data-testid="dm-result"
          data-username={u.username}
          onClick={() => {
            setQ("");
            void chat.openDirect(u);
          }}
        >
          {u.username}
          {u.display_name && <span class="muted"> {u.display_name}</span>}
        </button>
      ))}
    </div>
  );
}

function roomTitle(room: Room): string {
  return room.type === "direct" ? (room.peer?.username ?? "direct") : `# ${room.name}`;
}

function RoomList({ chat }: { chat: Chat }) {
  const mine = chat.rooms.filter((r) => r.role !== null);
  const discover = chat.rooms.filter((r) => r.role === null);
  const item = (room: Room) => {
    const active = chat.current?.roomId === room.id;
    const last = room.last_message;
    const unread = active ? 0 : (room.unread_count ?? 0);
    const preview = last ? (last.deleted ? "message deleted" : `${last.sender_id === chat.me.id ? "You: " : ""}${last.content ?? ""}`) : "";
    return (
      <li key={room.id}>
        <button
          class={`room ${active ? "active" : ""} ${unread ? "has-unread" : ""}`}
          data-testid="room-item"
          data-room-id={room.id}
          data-room-name={room.type === "direct" ? room.peer?.username : room.name}
          onClick={() => void chat.openRoom(room.id)}
        >
          <span class="title">
            {room.peer && <Dot status={chat.presence.get(room.peer.id) ?? "offline"} name={room.peer.username} />}
            {roomTitle(room)}
            {room.type === "private" && <span class="muted"> (private)</span>}
          </span>
          {unread > 0 && (
            <span class="badge" data-testid="room-unread">
              {unread >= 1000 ? "999+" : unread}
            </span>
          )}
          <span class="preview" data-testid="room-last">
            {preview}
          </span>
        </button>
      </li>
    );
  };
  return (
    <nav class="rooms">
      <h2>Conversations</h2>
      {chat.roomsLoaded && mine.length === 0 && <p class="muted">None yet.</p>}
      <ul data-testid="my-rooms">{mine.map(item)}</ul>
      {discover.length > 0 && (
        <>
          <h2>Public rooms</h2>
          <ul data-testid="public-rooms">{discover.map(item)}</ul>
        </>
      )}
    </nav>
  );
}

// ----- one conversation -----

function ConversationView({ chat, cur }: { chat: Chat; cur: Conversation }) {
  const room = chat.rooms.find((r) => r.id === cur.roomId);
  const title = cur.peer ? cur.peer.username : room ? roomTitle(room) : "";
  const others = cur.peer ? [{ user_id: cur.peer.id, username: cur.peer.username }] : cur.members.filter((m) => m.user_id !== chat.me.id);
  const now = Date.now();
  const typing = [...cur.typing].filter(([, until]) => until > now).map(([id]) => chat.names.get(id) ?? "someone");
  return (
    <section class="conversation" data-testid="conversation" data-room-id={cur.roomId ?? ""}>
      <header class="conv-head">
        <h2 data-testid="conv-title">{title}</h2>
        <div class="members">
          {others.slice(0, 20).map((m) => (
            <span key={m.user_id} class="member" data-testid="member" data-username={m.username}>
              <Dot status={chat.presence.get(m.user_id) ?? "offline"} name={m.username} />
              {cur.peer ? (chat.presence.get(m.user_id) ?? "offline") : m.username}
            </span>
          ))}
        </div>
      </header>
      <MessageList chat={chat} cur={cur} />
      <div class="typing" data-testid="typing-indicator" aria-live="polite">
        {typing.length > 0 && `${typing.join(", ")} ${typing.length > 1 ? "are" : "is"} typing…`}
      </div>
      <Composer chat={chat} key={cur.roomId ?? cur.peer?.id} />
    </section>
  );
}

function MessageList({ chat, cur }: { chat: Chat; cur: Conversation }) {
  const ref = useRef<HTMLDivElement>(null);
  const fromBottom = useRef(0);
  const firstId = useRef<string | undefined>(undefined);
  const [editing, setEditing] = useState<string | null>(null);

  useLayoutEffect(() => {
    const el = ref.current;
    if (!el) return;
    const first = cur.messages[0]?.id;
    if (firstId.current !== undefined && first !== firstId.current) {
      // Older messages came in above: keep the view where it was.
      el.scrollTop = el.scrollHeight - el.clientHeight - fromBottom.current;
    } else if (fromBottom.current < 80) {
      el.scrollTop = el.scrollHeight;
    }
    firstId.current = first;
    fromBottom.current = el.scrollHeight - el.clientHeight - el.scrollTop;
  });

  const onScroll = () => {
    const el = ref.current;
    if (!el) return;
    fromBottom.current = el.scrollHeight - el.clientHeight - el.scrollTop;
    if (el.scrollTop < 40) void chat.loadOlder();
  };

  // "Seen" under my newest message, once another member's read cursor passed it.
  const mine = [...cur.messages].reverse().find((m) => m.sender_id === chat.me.id && !m.deleted);
  const readers = mine ? [...cur.readSeq].filter(([id, seq]) => id !== chat.me.id && seq >= mine.seq).map(([id]) => chat.names.get(id) ?? "someone") : [];
  const direct = cur.peer !== null;

  return (
    <div class="messages" ref={ref} onScroll={onScroll} data-testid="messages">
      {cur.hasMore && (
        <button class="link older" data-testid="load-older" disabled={cur.loadingOlder} onClick={() => void chat.loadOlder()}>
          {cur.loadingOlder ? "Loading…" : "Load older messages"}
        </button>
      )}
      {cur.loading && <p class="muted">Loading…</p>}
      {!cur.loading && cur.messages.length === 0 && <p class="muted">No messages yet. Say hello.</p>}
      {cur.messages.map((m) => (
        <div key={m.id}>
          <MessageRow chat={chat} m={m} editing={editing === m.id} setEditing={setEditing} />
          {m === mine && readers.length > 0 && (
            <div class="seen" data-testid="seen">
              {direct ? "Seen" : `Seen by ${readers.join(", ")}`}
            </div>
          )}
        </div>
      ))}
    </div>
  );
}

function time(ts: string): string {
  return new Date(ts).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

function MessageRow({ chat, m, editing, setEditing }: { chat: Chat; m: Message; editing: boolean; setEditing: (id: string | null) => void }) {
  const own = m.sender_id === chat.me.id;
  const sender = chat.names.get(m.sender_id) ?? "…";
  const [draft, setDraft] = useState(m.content ?? "");
  const save = async (e: Event) => {
    e.preventDefault();
    if (await chat.edit(m.id, draft)) setEditing(null);
  };
  return (
    <div
      class={`msg ${own ? "own" : ""} ${m.deleted ? "deleted" : ""}`}
      data-testid="message"
      data-id={m.id}
      data-seq={m.seq}
      data-sender={sender}
      data-deleted={m.deleted ? "true" : "false"}
    >
      <div class="meta">
        <strong>{sender}</strong> <time dateTime={m.timestamp}>{time(m.timestamp)}</time>
        {m.edited_at && !m.deleted && (
          <span class="muted" data-testid="message-edited">
            {" "}
            (edited)
          </span>
        )}
        {own && !m.deleted && !editing && (
          <span class="actions">
            <button
              class="link"
              data-testid="msg-edit"
              onClick={() => {
                setDraft(m.content ?? "");
                setEditing(m.id);
              }}
            >
              Edit
            </button>
            <button class="link" data-testid="msg-delete" onClick={() => confirm("Delete this message for everyone?") && void chat.remove(m.id)}>
              Delete
            </button>
          </span>
        )}
      </div>
      {editing ? (
        <form class="edit" onSubmit={save}>
          <input
            data-testid="msg-edit-input"
            value={draft}
            maxLength={4000}
            ref={(el) => el?.focus()}
            onInput={(e) => setDraft(e.currentTarget.value)}
            onKeyDown={(e) => e.key === "Escape" && setEditing(null)}
          />
          <button type="submit" data-testid="msg-edit-save">
            Save
          </button>
          <button type="button" class="link" onClick={() => setEditing(null)}>
            Cancel
          </button>
        </form>
      ) : (
        <div class="content" data-testid="message-content">
          {m.deleted ? "message deleted" : m.content}
        </div>
      )}
    </div>
  );
}

function Composer({ chat }: { chat: Chat }) {
  const [text, setText] = useState("");
  const [busy, setBusy] = useState(false);
  const submit = async (e: Event) => {
    e.preventDefault();
    if (!text.trim() || busy) return;
    setBusy(true);
    if (await chat.send(text)) setText("");
    setBusy(false);
  };
  return (
    <form class="composer" onSubmit={submit}>
      <input
        data-testid="composer-input"
        placeholder="Write a message"
        autocomplete="off"
        maxLength={4000}
        value={text}
        onInput={(e) => {
          setText(e.currentTarget.value);
          chat.typing();
        }}
      />
      <button type="submit" class="primary" data-testid="composer-send" disabled={busy || !text.trim()}>
        Send
      </button>
    </form>
  );
}
