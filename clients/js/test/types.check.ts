// Compiled, never run (`npm run typecheck`): the public types accept the
// WebSocket and fetch implementations applications pass in.
import { WebSocket as NodeWebSocket } from "ws";
import { connect, login, tokenRefresher, type Client, type Message, type StateChange } from "../src/index.js";

export async function check(url: string): Promise<void> {
  const tokens = await login(url, "alice", "correct horse", { fetch: globalThis.fetch });
  const browser: Client = connect({ url, token: tokens.access_token, WebSocket: globalThis.WebSocket, fetch });
  const node: Client = connect({ url, getToken: tokenRefresher(url, tokens), WebSocket: NodeWebSocket });
  const off: () => void = browser.on("message", (m: Message) => void m.seq.toFixed());
  node.on("state", (s: StateChange) => void s.state);
  off();
  const stored: Message = await node.send("room", "hi");
  void stored.client_msg_id;
}
