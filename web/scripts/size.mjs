// Prints what the committed bundle costs on first load: each JavaScript and
// CSS file index.html references, raw, gzipped and brotli (the .gz/.br
// files the gateway sends), and the totals.   npm run size
import { readFileSync } from "node:fs";
import { join } from "node:path";

const dist = join(import.meta.dirname, "..", "dist");
const index = readFileSync(join(dist, "index.html"), "utf8");
const files = [...index.matchAll(/(?:src|href)="\/(assets\/[^"]+\.(?:js|css))"/g)].map((m) => m[1]);
const size = (name) => {
  try {
    return readFileSync(join(dist, name)).length;
  } catch {
    return readFileSync(join(dist, name.replace(/\.(gz|br)$/, ""))).length;
  }
};
const kb = (n) => `${(n / 1024).toFixed(1)} KB`;
let total = { raw: 0, gz: 0, br: 0 };
for (const file of files) {
  const raw = size(file), gz = size(`${file}.gz`), br = size(`${file}.br`);
  total = { raw: total.raw + raw, gz: total.gz + gz, br: total.br + br };
  console.log(`${file.padEnd(32)} ${kb(raw).padStart(9)} raw ${kb(gz).padStart(9)} gzip ${kb(br).padStart(9)} brotli`);
}
console.log(`${"first load (JS + CSS)".padEnd(32)} ${kb(total.raw).padStart(9)} raw ${kb(total.gz).padStart(9)} gzip ${kb(total.br).padStart(9)} brotli`);
