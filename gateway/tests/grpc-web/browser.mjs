// gRPC-web from a real browser: headless Chromium (Debian's, driven by
// playwright-core) loads a page from an origin the gateway allows and runs
// browser-app.mjs there, so CORS is enforced by the browser itself, not
// simulated. A second page, on an origin the gateway does not allow, must
// be blocked by the browser.
//
// The pages are served by this script: an import map points the bare
// module names at the ES modules in node_modules (no bundler).
//
//   node browser.mjs --gateway http://127.0.0.1:PORT --allowed-port P \
//     --refused-port Q --descriptors users.fds --descriptors health.fds \
//     --email someone@example.com
//
// The Chromium binary: $CHROMIUM, else Debian's /usr/lib/chromium/chromium.

import { existsSync, readFileSync } from "node:fs";
import { createServer } from "node:http";
import { dirname, extname, join, normalize, sep } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { check, equal, parseArgs, run } from "./lib.mjs";

const args = parseArgs();
const here = dirname(fileURLToPath(import.meta.url));
const modules = join(here, "node_modules");
const descriptors = [args.descriptors].flat();

/** Import map entries for every `exports` subpath of the packages the page imports. */
function importMap(packages) {
  const imports = {};
  for (const name of packages) {
    const manifest = JSON.parse(readFileSync(join(modules, name, "package.json"), "utf8"));
    for (const [subpath, targets] of Object.entries(manifest.exports)) {
      const target = typeof targets === "string" ? targets : targets.import;
      if (!target) continue;
      imports[join(name, subpath)] = `/node_modules/${name}/${target.replace(/^\.\//, "")}`;
    }
  }
  return { imports };
}

const page = `<!doctype html>
<html><head><meta charset="utf-8"><title>munity gRPC-web</title>
<script type="importmap">${JSON.stringify(
  importMap(["@connectrpc/connect", "@connectrpc/connect-web", "@bufbuild/protobuf"]),
)}</script>
<script type="module" src="/browser-app.mjs"></script>
</head><body></body></html>`;

const types = { ".js": "text/javascript", ".mjs": "text/javascript", ".bin": "application/octet-stream" };

function serve(port) {
  const server = createServer((request, response) => {
    const path = new URL(request.url, "http://page").pathname;
    let file;
    if (path === "/") {
      response.writeHead(200, { "content-type": "text/html" });
      return response.end(page);
    } else if (path === "/browser-app.mjs") {
      file = join(here, "browser-app.mjs");
    } else if (/^\/descriptors\/\d+\.bin$/.test(path)) {
      file = descriptors[Number(path.match(/\d+/)[0])];
    } else if (path.startsWith("/node_modules/")) {
      file = normalize(join(here, path));
      if (!file.startsWith(modules + sep)) file = undefined;
    }
    if (!file || !existsSync(file)) {
      response.writeHead(404);
      return response.end();
    }
    response.writeHead(200, { "content-type": types[extname(file)] ?? "application/octet-stream" });
    response.end(readFileSync(file));
  });
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(Number(port), "127.0.0.1", () => resolve(server));
  });
}

function chromiumPath() {
  const candidates = [process.env.CHROMIUM, "/usr/lib/chromium/chromium", "/usr/bin/chromium"];
  const found = candidates.find((path) => path && existsSync(path));
  if (!found) throw new Error("no Chromium: apt-get install chromium, or set CHROMIUM");
  return found;
}

async function openPage(browser, port, consoleLines) {
  const page = await browser.newPage();
  page.on("console", (message) => consoleLines.push(`[${port}] ${message.type()}: ${message.text()}`));
  page.on("pageerror", (error) => consoleLines.push(`[${port}] pageerror: ${error.message}`));
  await page.goto(`http://127.0.0.1:${port}/`);
  await page.waitForFunction(() => window.munity !== undefined, null, { timeout: 15_000 });
  return page;
}

run("browser grpc-web (Chromium)", async () => {
  const servers = [await serve(args["allowed-port"]), await serve(args["refused-port"])];
  const browser = await chromium.launch({
    executablePath: chromiumPath(),
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
  });
  const consoleLines = [];
  try {
    const options = { gateway: args.gateway, email: args.email, descriptorCount: descriptors.length };

    const allowed = await openPage(browser, args["allowed-port"], consoleLines);
    const result = await allowed.evaluate((o) => window.munity.allowedOrigin(o), options);
    console.log(`from ${result.origin}: ${JSON.stringify(result)}`);
    equal(result.registeredEmail, args.email, "Register's user");
    equal(result.me, { email: args.email, displayName: "Browser", sameId: true }, "GetMe");
    equal(result.unauthenticated.code, "Unauthenticated", "GetMe without a token");
    check(result.unauthenticated.message.length > 0, "the refusal has a message");
    equal(result.invalid.code, "InvalidArgument", "bad Register");
    check(
      result.invalid.message.includes("email") && result.invalid.message.includes("password"),
      `InvalidArgument names the fields: ${result.invalid.message}`,
    );
    equal(result.invalid.detailTypes, ["google.rpc.BadRequest"], "error details reach the page");
    equal(result.watchFirst, 1, "first Health/Watch message (SERVING)");
    equal(result.afterCancel.code, "Canceled", "the stream after the page cancelled it");

    const refusedPage = await openPage(browser, args["refused-port"], consoleLines);
    const refused = await refusedPage.evaluate((o) => window.munity.refusedOrigin(o), options);
    console.log(`from ${refused.origin}: ${JSON.stringify(refused)}`);
    check(refused.call.code !== "OK", "a call from a refused origin fails");
    check(
      consoleLines.some((line) => line.includes(`[${args["refused-port"]}]`) && line.includes("CORS policy")),
      `the browser reports the CORS block:\n${consoleLines.join("\n")}`,
    );
  } catch (error) {
    console.error(`browser console:\n${consoleLines.join("\n")}`);
    throw error;
  } finally {
    await browser.close();
    for (const server of servers) server.close();
  }
});
