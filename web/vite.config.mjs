// Vite builds web/ into web/dist: index.html plus hashed files in assets/,
// which the nginx front serves at / and /assets/ (nginx/confab-web.conf).
//
// `npm run dev` serves the app with hot reload and passes the API and the
// WebSocket to a running cluster: CONFAB_URL (default http://127.0.0.1:8080,
// the address `scripts/cluster.sh up` prints).
import { defineConfig } from "vite";

const target = process.env.CONFAB_URL ?? "http://127.0.0.1:8080";
const api = "^/(register|login|logout|token|sessions|users|rooms|messages|contacts|presence|notifications|readyz|healthz|ws)(/|$|\\?)";

export default defineConfig({
  oxc: { jsx: { runtime: "automatic", importSource: "preact" } },
  build: { target: "es2022", modulePreload: { polyfill: false } },
  server: {
    proxy: { [api]: { target, changeOrigin: true, ws: true } },
  },
});
