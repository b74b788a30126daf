// What the committed bundle costs and how the meetings screen scores, by
// hand (no test runs this):
//   1. the JavaScript and CSS of the first load, gzipped (scripts/size.mjs);
//   2. Lighthouse (npm, installed on demand into ~/.cache/munity-lighthouse,
//      not a devDependency: it would add ~110 packages to every `npm ci`)
//      driving Debian's Chromium against a real `munity dev` on free ports,
//      signed in as a user with a community and two meetings: performance
//      and accessibility scores and the largest contentful paint of
//      /meetings, with Lighthouse's mobile defaults (simulated slow 4G,
//      4x CPU slowdown) and its desktop preset.
//
//   node scripts/lighthouse.mjs            (npm run lighthouse)
// Env: MUNITY_BIN (a built `munity`; else $CARGO_TARGET_DIR/debug/munity
// if present, else `cargo run -p munity`), CHROME_PATH (/usr/bin/chromium),
// LIGHTHOUSE_HOME (~/.cache/munity-lighthouse).
import { spawn, execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { homedir, tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const LIGHTHOUSE_VERSION = "13.5.0";
const web = join(import.meta.dirname, "..");
const repo = join(web, "..");

console.log("## Bundle (committed web/dist)");
await import("./size.mjs");

// --- Lighthouse, on demand ----------------------------------------------------
const home = process.env.LIGHTHOUSE_HOME ?? join(homedir(), ".cache", "munity-lighthouse");
const installed = join(home, "node_modules", "lighthouse", "package.json");
if (!existsSync(installed) || JSON.parse(readFileSync(installed, "utf8")).version !== LIGHTHOUSE_VERSION) {
  console.log(`installing lighthouse@${LIGHTHOUSE_VERSION} into ${home}`);
  execFileSync("npm", ["install", "--prefix", home, "--no-save", "--no-audit", "--no-fund", `lighthouse@${LIGHTHOUSE_VERSION}`], {
    stdio: "inherit",
  });
}
const need = createRequire(join(home, "node_modules", "x.js"));
const load = async (name, entry) => import(pathToFileURL(need.resolve(entry ?? name)).href);
const { default: lighthouse, desktopConfig } = await load("lighthouse");
const chromeLauncher = await load("chrome-launcher");
const { default: puppeteer } = await load("puppeteer-core");
const chromePath = process.env.CHROME_PATH ?? "/usr/bin/chromium";
if (!existsSync(chromePath)) throw new Error(`no Chromium at ${chromePath}: apt-get install chromium, or set CHROME_PATH`);

// --- munity dev on free ports ---------------------------------------------------
const data = mkdtempSync(join(tmpdir(), "munity-lighthouse-"));
const readyFile = join(data, "ready.json");
const target = process.env.CARGO_TARGET_DIR ?? join(repo, "target");
const built = process.env.MUNITY_BIN ?? (existsSync(join(target, "debug", "munity")) ? join(target, "debug", "munity") : null);
const [cmd, args] = built ? [built, []] : ["cargo", ["run", "-q", "-p", "munity", "--"]];
console.log(`\nstarting ${[cmd, ...args].join(" ")} dev (data in ${data})`);
const dev = spawn(cmd, [...args, "dev", "--data-dir", data], {
  cwd: repo,
  env: { ...process.env, MUNITY_DEV__ANY_PORT: "true", MUNITY_READY_FILE: readyFile, RUST_LOG: "warn" },
  stdio: ["ignore", "ignore", "inherit"],
  detached: true,
});
let chrome;
const stop = () => {
  try {
    process.kill(-dev.pid, "SIGTERM");
  } catch {}
  chrome?.kill();
};
process.on("exit", () => {
  stop();
  rmSync(data, { recursive: true, force: true });
});
process.on("SIGINT", () => process.exit(130));

const started = Date.now();
while (!existsSync(readyFile)) {
  if (dev.exitCode !== null) throw new Error(`munity dev exited with ${dev.exitCode} before it was ready`);
  if (Date.now() - started > 600_000) throw new Error("munity dev not ready within 10 minutes");
  await new Promise((r) => setTimeout(r, 100));
}
const base = `http://${JSON.parse(readFileSync(readyFile, "utf8")).gateway}`;
console.log(`munity dev's gateway at ${base}`);

// --- a user with something to show, over the gateway's HTTP/JSON API --------------
async function call(method, path, body, token) {
  const response = await fetch(`${base}${path}`, {
    method,
    headers: { "content-type": "application/json", ...(token ? { authorization: `Bearer ${token}` } : {}) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${text}`);
  return text ? JSON.parse(text) : {};
}
async function retry(attempt) {
  for (let i = 0; ; i++) {
    try {
      return await attempt();
    } catch (e) {
      if (i >= 50) throw e;
      await new Promise((r) => setTimeout(r, 200));
    }
  }
}
const auth = await call("POST", "/v1/auth/register", {
  email: `lighthouse-${Date.now()}@example.com`,
  password: "correct horse battery",
  displayName: "Lighthouse",
});
const token = auth.accessToken;
const community = await call("POST", "/v1/communities", { name: "Hikers", description: "Walks on weekends" }, token);
const hours = (h) => new Date(Date.now() + h * 3_600_000).toISOString();
for (const [title, location] of [["Ridge walk", "North gate"], ["Lake swim", "South beach"]]) {
  // The community's membership reaches events-svc a moment later: retry a refusal.
  await retry(() => call("POST", "/v1/events", {
    title,
    location,
    communityId: community.id ?? community.community?.id,
    options: [{ start: hours(48), end: hours(49) }, { start: hours(72), end: hours(73) }],
    votingDeadline: hours(24),
    capacity: 10,
  }, token));
}
// The session as the app keeps it (web/src/api.ts, adopt()).
const session = {
  userId: auth.user.id,
  email: auth.user.email,
  displayName: auth.user.displayName,
  admin: false,
  accessToken: auth.accessToken,
  accessExpiresAt: auth.accessTokenExpiresAt ? Date.parse(auth.accessTokenExpiresAt) : Date.now() + 60_000,
  refreshToken: auth.refreshToken,
};

// --- Lighthouse on /meetings ---------------------------------------------------------
chrome = await chromeLauncher.launch({
  chromePath,
  chromeFlags: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
});
const browser = await puppeteer.connect({ browserURL: `http://127.0.0.1:${chrome.port}`, defaultViewport: null });
const url = `${base}/meetings`;
const results = [];
for (const [form, config] of [["mobile (Lighthouse defaults)", undefined], ["desktop preset", desktopConfig]]) {
  const page = await browser.newPage();
  // Signed in: the session in localStorage, as after a sign-in; storage is
  // kept (disableStorageReset), the HTTP cache cleared so the load is cold.
  await page.goto(`${base}/signin`);
  await page.evaluate((s) => localStorage.setItem("munity.session", JSON.stringify(s)), session);
  const cdp = await page.createCDPSession();
  await cdp.send("Network.clearBrowserCache");
  await page.goto("about:blank");
  const result = await lighthouse(
    url,
    { port: chrome.port, output: "json", logLevel: "error", onlyCategories: ["performance", "accessibility"], disableStorageReset: true },
    config,
    page,
  );
  const lhr = result.lhr;
  if (lhr.runtimeError) console.log(`runtime error: ${lhr.runtimeError.code} ${lhr.runtimeError.message}`);
  for (const w of lhr.runWarnings ?? []) console.log(`warning: ${w}`);
  writeFileSync(join(tmpdir(), `munity-lighthouse-${form.split(" ")[0]}.json`), JSON.stringify(lhr));
  const score = (c) => (lhr.categories[c]?.score == null ? "n/a" : Math.round(lhr.categories[c].score * 100));
  const audit = (a) => lhr.audits[a]?.displayValue ?? "n/a";
  const shown = lhr.finalDisplayedUrl ?? lhr.finalUrl;
  results.push({ form, performance: score("performance"), accessibility: score("accessibility"), lcp: audit("largest-contentful-paint"),
    fcp: audit("first-contentful-paint"), tbt: audit("total-blocking-time"), cls: audit("cumulative-layout-shift"), shown });
  await page.close();
}
console.log(`\n## Lighthouse ${lhVersion()} on ${url}, ${await browser.version()}`);
for (const r of results) {
  console.log(
    `${r.form.padEnd(30)} performance ${String(r.performance).padStart(3)}  accessibility ${String(r.accessibility).padStart(3)}  ` +
      `LCP ${r.lcp}  (FCP ${r.fcp}, TBT ${r.tbt}, CLS ${r.cls})${r.shown.endsWith("/meetings") ? "" : `  ended at ${r.shown}`}`,
  );
}
await browser.disconnect();
process.exit(0);

function lhVersion() {
  return JSON.parse(readFileSync(installed, "utf8")).version;
}
