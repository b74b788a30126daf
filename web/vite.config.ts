// Builds web/src into web/dist (committed, embedded in the gateway).
// Deterministic: content-hashed names, no timestamps; the .gz and .br
// siblings are made here so the gateway can send them precompressed.
import { brotliCompressSync, constants, gzipSync } from "node:zlib";
import { defineConfig, type Plugin } from "vite";

function precompress(): Plugin {
  return {
    name: "munity-precompress",
    apply: "build",
    generateBundle(_options, bundle) {
      for (const [name, file] of Object.entries(bundle)) {
        if (!/\.(js|css|html|svg|json)$/.test(name)) continue;
        const source = file.type === "chunk" ? file.code : file.source;
        const bytes = typeof source === "string" ? Buffer.from(source) : Buffer.from(source);
        if (bytes.length < 1024) continue;
        this.emitFile({ type: "asset", fileName: `${name}.gz`, source: gzipSync(bytes, { level: 9 }) });
        this.emitFile({
          type: "asset",
          fileName: `${name}.br`,
          source: brotliCompressSync(bytes, {
            params: { [constants.BROTLI_PARAM_QUALITY]: 11, [constants.BROTLI_PARAM_SIZE_HINT]: bytes.length },
          }),
        });
      }
    },
  };
}

// `npm run dev`: Vite serves the app, the gateway (cargo run -p munity)
// everything else: gRPC-web calls are POSTs to /<package>.<Service>/<Method>.
const gateway = process.env.MUNITY_GATEWAY ?? "http://127.0.0.1:8080";

export default defineConfig({
  oxc: { jsx: { runtime: "automatic", importSource: "preact" } },
  build: {
    target: "es2022",
    modulePreload: { polyfill: false },
    sourcemap: false,
    reportCompressedSize: false,
  },
  plugins: [precompress()],
  server: {
    proxy: {
      "^/[a-z0-9_.]+\\.[A-Za-z0-9_]+/[A-Za-z0-9_]+$": { target: gateway },
      "/v1": { target: gateway },
    },
  },
});
