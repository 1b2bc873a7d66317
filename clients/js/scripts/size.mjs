// Prints the size of dist/index.js bundled and minified with esbuild, raw and gzipped.
import { gzipSync } from "node:zlib";
import { build } from "esbuild";

const result = await build({
  entryPoints: ["dist/index.js"],
  bundle: true,
  minify: true,
  format: "esm",
  platform: "neutral",
  target: "es2022",
  write: false,
});
const code = result.outputFiles[0].contents;
const gzipped = gzipSync(code, { level: 9 }).length;
console.log(`dist/index.js bundled and minified: ${code.length} bytes, ${gzipped} bytes gzipped`);
