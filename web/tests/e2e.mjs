// The main story in a real browser: Debian's headless Chromium, driven by
// playwright-core, against the app as `munity dev`'s gateway serves it
// (munity/tests/web_app.rs starts it). Two users in two browser contexts
// (A and B), then a third (C):
//   A registers and creates a community; B registers and joins it; A
//   proposes a meeting with capacity 1; B sees it appear without reloading
//   and votes; A sees the count change live; A closes voting and both see
//   the chosen time; B joins; C is refused with the capacity message.
//   B goes offline; meanwhile A edits the meeting (a bad title first,
//   refused by field) and proposes a second one; B comes back, sees both,
//   and its feed has each missed notification once, its kept positions
//   advanced by exactly what it missed. A cancels the second meeting; B,
//   on its page, sees that live.
// Before that, a bad email shows the field violation next to the field.
// A screenshot of each screen goes to --shots.
//
//   node tests/e2e.mjs --base http://127.0.0.1:PORT --shots DIR
import { existsSync, mkdirSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { chromium } from "playwright-core";

const args = Object.fromEntries(
  process.argv.slice(2).reduce((pairs, arg, i, all) => (arg.startsWith("--") ? [...pairs, [arg.slice(2), all[i + 1]]] : pairs), []),
);
const base = args.base;
const shots = args.shots;
mkdirSync(shots, { recursive: true });

function chromiumPath() {
  const found = [process.env.CHROMIUM, "/usr/lib/chromium/chromium", "/usr/bin/chromium"].find((p) => p && existsSync(p));
  if (!found) throw new Error("no Chromium: apt-get install chromium, or set CHROMIUM");
  return found;
}

let checks = 0;
function check(condition, what) {
  if (!condition) throw new Error(`check failed: ${what}`);
  checks++;
  console.log(`ok ${checks} - ${what}`);
}

const problems = [];
const pages = [];
async function user(browser, name) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 900 } });
  const page = await context.newPage();
  page.on("pageerror", (error) => problems.push(`[${name}] pageerror: ${error.message}`));
  if (process.env.E2E_TRACE) page.on("request", (r) => r.method() === "POST" && console.log(`[${name}] ${r.url().split("/").slice(3).join("/")}`));
  page.on("console", (message) => {
    const text = message.text();
    // Failed calls the story expects are shown in the page; the browser also
    // logs their HTTP status. Anything about CSP or scripts is a problem.
    if (/Content Security Policy|Refused to/i.test(text)) problems.push(`[${name}] ${text}`);
  });
  pages.push({ page, name });
  return { context, page, name };
}

// axe-core checks every screen shot below: no critical or serious
// accessibility violation. Evaluated over the DevTools protocol, so the
// page's Content-Security-Policy stays as the gateway sends it.
const require = createRequire(import.meta.url);
const axeSource = readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");
const axeVersion = require("axe-core/package.json").version;
const accessibility = [];
let audited = 0;

async function audit(page, name) {
  if (!(await page.evaluate(() => typeof window.axe !== "undefined"))) await page.evaluate(axeSource);
  const violations = await page.evaluate(async () => {
    const result = await window.axe.run(document, { resultTypes: ["violations"] });
    return result.violations
      .filter((v) => v.impact === "critical" || v.impact === "serious")
      .map((v) => `${v.impact} ${v.id}: ${v.help} (${v.nodes.map((n) => n.target.join(" ")).join(", ")})`);
  });
  for (const v of violations) accessibility.push(`${name}: ${v}`);
  audited++;
}

async function shot(page, name) {
  await audit(page, name);
  // Not fullPage: resizing the page for it makes the next click miss (Chromium 156).
  await page.screenshot({ path: join(shots, `${name}.png`) });
}

async function text(page, selector, expected, what, timeout = 15_000) {
  try {
    await page.waitForFunction(
      ([s, e]) => [...document.querySelectorAll(s)].some((n) => n.textContent?.includes(e)),
      [selector, expected],
      { timeout },
    );
  } catch {
    const seen = await page.locator(selector).allTextContents().catch(() => []);
    throw new Error(`${what}: no ${selector} with "${expected}" (saw ${JSON.stringify(seen)})`);
  }
  check(true, what);
}

async function register(page, name, email) {
  await page.goto(`${base}/register`);
  await page.getByLabel("Display name").fill(name);
  await page.getByLabel("Email").fill(email);
  await page.getByLabel("Password").fill("correct horse battery");
  await page.getByRole("button", { name: "Create account" }).click();
  await page.waitForURL(`${base}/communities`);
  await page.getByRole("heading", { name: "Communities", level: 1 }).waitFor();
}

const run = Date.now().toString(36);
const browser = await chromium.launch({
  executablePath: chromiumPath(),
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
});
try {
  const a = await user(browser, "A");
  const b = await user(browser, "B");
  const c = await user(browser, "C");

  // Signed out, any client route shows the sign-in screen.
  await a.page.goto(`${base}/meetings`);
  await a.page.getByRole("heading", { name: "Sign in" }).waitFor();
  await shot(a.page, "01-sign-in");

  // A bad email: the server's field violation shows next to the field.
  await a.page.goto(`${base}/register`);
  await a.page.getByLabel("Display name").fill("Ann");
  await a.page.getByLabel("Email").fill("not-an-email");
  await a.page.getByLabel("Password").fill("correct horse battery");
  await a.page.getByRole("button", { name: "Create account" }).click();
  await text(a.page, "#field-email-error", "email", "a bad email shows the field violation under the email field");
  const invalid = await a.page.getByLabel("Email").getAttribute("aria-invalid");
  check(invalid === "true", "the email input is marked aria-invalid");
  await text(a.page, "[role=alert]", "InvalidArgument", "the status shows with its code");
  await shot(a.page, "02-register-bad-email");

  // A registers and creates a community.
  // A is the instance's admin (`[users] admin_emails`), when the test says who that is.
  await register(a.page, "Ann", args["admin-email"] ?? `ann-${run}@example.com`);
  await shot(a.page, "03-communities-empty");
  await a.page.getByLabel("Name").fill(`Hikers ${run}`);
  await a.page.getByLabel("Description").fill("Walks on weekends");
  await a.page.getByRole("button", { name: "Create community" }).click();
  await a.page.waitForURL(/\/communities\/[0-9a-f-]{36}$/);
  const communityId = a.page.url().split("/").pop();
  await text(a.page, "td", "owner", "A owns the new community");

  // B registers and joins it.
  await register(b.page, "Ben", `ben-${run}@example.com`);
  await b.page.getByRole("button", { name: `Join Hikers ${run}` }).click();
  await text(b.page, ".card", "You are a member", "B joined the community");
  await shot(b.page, "04-communities");
  await b.page.getByRole("link", { name: "Meetings", exact: true }).click();
  await text(b.page, ".empty", "No upcoming meeting", "B's upcoming list starts empty");

  // A proposes a meeting with capacity 1.
  await a.page.goto(`${base}/communities/${communityId}`);
  await text(a.page, "td", "Ben", "A sees B among the members");
  await shot(a.page, "05-community-members");
  await a.page.getByRole("link", { name: "Propose a meeting" }).first().click();
  await a.page.waitForURL(/\/meetings\/new/);
  await a.page.getByLabel("Title").fill("Ridge walk");
  await a.page.getByLabel("Location").fill("North gate");
  await a.page.getByLabel("Capacity").fill("1");
  await shot(a.page, "06-propose-meeting");
  await a.page.getByRole("button", { name: "Propose meeting" }).click();
  await a.page.waitForURL(/\/meetings\/[0-9a-f-]{36}$/);
  const meetingUrl = a.page.url();
  await text(a.page, "[data-testid=votes-0]", "0 votes", "A sees the new meeting's options");

  // B sees it appear without reloading, opens it and votes.
  await text(b.page, ".card h2", "Ridge walk", "B's upcoming list shows the meeting live, without a reload");
  await shot(b.page, "07-meetings");
  await b.page.getByRole("link", { name: "Ridge walk" }).click();
  await text(b.page, "[data-testid=votes-0]", "0 votes", "B opens the meeting");
  await b.page.getByRole("button", { name: "Vote for option 1" }).click();
  await text(b.page, "[data-testid=votes-0]", "1 vote", "B's vote counts");
  check((await b.page.getByRole("button", { name: "Unvote option 1" }).getAttribute("aria-pressed")) === "true", "the vote button toggles to Unvote");

  // A sees the count change live.
  await text(a.page, "[data-testid=votes-0]", "1 vote", "A sees B's vote live");
  await shot(a.page, "08-meeting-voting");

  // A closes voting; both see the chosen time.
  await a.page.getByRole("button", { name: "Close voting" }).click();
  await a.page.locator("[data-testid=chosen-time]").waitFor();
  const chosenA = await a.page.locator("[data-testid=chosen-time]").textContent();
  await text(b.page, "[data-testid=chosen-time]", chosenA, "B sees the chosen time live");
  check(chosenA.length > 0, `A sees the chosen time (${chosenA})`);

  // B joins: 1 of 1.
  await b.page.getByRole("button", { name: "Join meeting" }).click();
  await text(b.page, "[data-testid=capacity]", "1 of 1 going", "B joined: 1 of 1");
  await shot(b.page, "09-meeting-scheduled");

  // A third user is refused with the capacity message.
  await register(c.page, "Cleo", `cleo-${run}@example.com`);
  await c.page.goto(`${base}/communities/${communityId}`);
  await c.page.getByRole("button", { name: "Join", exact: true }).click();
  await c.page.getByRole("link", { name: "Propose a meeting" }).waitFor();
  await c.page.goto(meetingUrl);
  await c.page.getByRole("button", { name: "Join meeting" }).click();
  await text(c.page, "[role=alert]", "event is full (capacity 1)", "C is refused: the meeting is full");
  await shot(c.page, "10-meeting-full");

  // Wrong passwords: refused each time; the sixth Login in a minute is
  // refused by the gateway's quota, with its retry-after.
  await c.page.getByRole("button", { name: "Sign out" }).click();
  await c.page.getByRole("heading", { name: "Sign in" }).waitFor();
  for (let attempt = 1; attempt <= 6; attempt++) {
    await c.page.getByLabel("Email").fill(`cleo-${run}@example.com`);
    await c.page.getByLabel("Password").fill(`wrong password ${attempt}`);
    await Promise.all([
      c.page.waitForResponse((r) => r.url().endsWith("/munity.users.v1.Users/Login")),
      c.page.getByRole("button", { name: "Sign in" }).click(),
    ]);
    await c.page.getByRole("button", { name: "Sign in" }).waitFor();
  }
  await text(c.page, "[role=alert]", "Try again in", "the sixth Login in a minute says when to try again");
  await shot(c.page, "13-sign-in-throttled");

  // A, the owner, hears personally that voting closed and that B joined:
  // unread badge, inbox, mark read.
  await text(a.page, "[data-testid=unread]", "2", "A's unread badge counts the close and B's join");
  await a.page.getByRole("link", { name: /Inbox/ }).click();
  await text(a.page, ".feed li", "Someone joined a meeting", "A's inbox lists the join");
  await shot(a.page, "11-inbox");
  await a.page.getByRole("button", { name: "Mark all read" }).click();
  await a.page.locator("[data-testid=unread]").waitFor({ state: "detached" });
  check(true, "marking read clears the badge");

  // Where B's feed stands before it goes offline: the (epoch, offset) the
  // app keeps per topic.
  const positionsOf = async (page) =>
    page.evaluate(() => {
      const me = JSON.parse(localStorage.getItem("munity.session")).userId;
      return JSON.parse(localStorage.getItem(`munity.positions.${me}`) ?? "{}");
    });
  const meetingId = meetingUrl.split("/").pop();
  const communityTopic = `community:${communityId}`, meetingTopic = `event:${meetingId}`;
  const before = await positionsOf(b.page);
  check(before[communityTopic] && before[meetingTopic], `B keeps its positions on ${communityTopic} and ${meetingTopic}`);

  // B goes offline: its screens show what they last loaded, marked
  // offline, and a change is refused, never queued.
  await b.context.setOffline(true);
  await b.page.getByRole("link", { name: "Meetings", exact: true }).click();
  await text(b.page, ".offline", "Offline", "offline, B's meetings show the kept list, marked offline");
  await text(b.page, ".card h2", "Ridge walk", "the kept list has the meeting");
  await shot(b.page, "14-offline-meetings");
  await b.page.getByRole("link", { name: "Ridge walk" }).click();
  await text(b.page, ".offline", "last updated at", "the meeting page shows its kept state");
  await b.page.getByRole("button", { name: "Leave meeting" }).click();
  await text(b.page, "[role=alert]", "You are offline: nothing was changed", "a change while offline is refused, not queued");
  await shot(b.page, "15-offline-meeting");

  // Meanwhile A edits the meeting: a title too long is refused next to the
  // field; then a new title and a capacity of 2.
  await a.page.goto(meetingUrl);
  await a.page.getByRole("link", { name: "Edit meeting" }).click();
  await a.page.waitForURL(`${meetingUrl}/edit`);
  await a.page.getByLabel("Title").fill("x".repeat(201));
  await a.page.getByRole("button", { name: "Save changes" }).click();
  await text(a.page, "#field-title-error", "", "a title too long shows the field violation under the title");
  check((await a.page.getByLabel("Title").getAttribute("aria-invalid")) === "true", "the title input is marked aria-invalid");
  await shot(a.page, "19-edit-meeting-bad-title");
  await a.page.getByLabel("Title").fill("Ridge walk at dawn");
  await a.page.getByLabel("Capacity").fill("2");
  await a.page.getByRole("button", { name: "Save changes" }).click();
  await a.page.waitForURL(meetingUrl);
  await text(a.page, "h1", "Ridge walk at dawn", "A's edit is saved");
  await text(a.page, "[data-testid=capacity]", "1 of 2 going", "with the new capacity");

  // And A proposes a second meeting.
  await a.page.goto(`${base}/meetings/new?community=${communityId}`);
  await a.page.getByLabel("Title").fill("Lake swim");
  await a.page.getByRole("button", { name: "Propose meeting" }).click();
  await a.page.waitForURL(/\/meetings\/[0-9a-f-]{36}$/);

  // B is back: the screen reloads, the feed resumes from its offsets.
  await b.context.setOffline(false);
  await text(b.page, "[data-testid=capacity]", "1 of 2 going", "back online, B's meeting page reloads: B is still in (nothing was queued), with A's new capacity");
  await text(b.page, "h1", "Ridge walk at dawn", "B sees A's new title");
  check((await b.page.locator(".offline").count()) === 0, "the offline mark is gone");
  await b.page.getByRole("link", { name: "Meetings", exact: true }).click();
  await text(b.page, ".card h2", "Lake swim", "B sees the meeting proposed while it was offline");
  await text(b.page, ".card h2", "Ridge walk at dawn", "and the edited one under its new title");

  // B's live feed, and a reload keeps the session and the feed.
  await b.page.getByRole("link", { name: "Live feed" }).click();
  await text(b.page, ".feed li", "Voting closed", "B's feed shows the closing");
  await b.page.reload();
  await text(b.page, ".feed li", "New meeting “Ridge walk”", "after a reload B is still signed in and the feed is kept");
  await text(b.page, ".feed li", "New meeting “Lake swim”", "B's feed has what it missed while offline");
  const swims = await b.page.locator(".feed li", { hasText: "Lake swim" }).count();
  check(swims === 1, `the missed notification shows once (${swims})`);
  await text(b.page, ".feed li", "Meeting “Ridge walk at dawn” was updated", "B's feed has the edit it missed");
  const updates = await b.page.locator(".feed li", { hasText: "was updated" }).count();
  check(updates === 1, `the missed edit shows once (${updates})`);
  const keys = await b.page.locator(".feed li").evaluateAll((items) => items.map((i) => i.dataset.id));
  check(keys.length >= 4 && new Set(keys).size === keys.length, `no notification twice in B's feed (${keys.length} items)`);
  // Offsets: B missed two notifications on the community's topic (the edit,
  // the new meeting) and one on the meeting's (the edit); its positions moved
  // by exactly that, and the feed's entries past the old positions are those
  // two, each at its own (topic, offset).
  const after = await positionsOf(b.page);
  for (const [topic, missed] of [[communityTopic, 2], [meetingTopic, 1]]) {
    check(
      after[topic].epoch === before[topic].epoch && BigInt(after[topic].offset) === BigInt(before[topic].offset) + BigInt(missed),
      `${topic.split(":")[0]} topic: B's position went from ${before[topic].offset} to ${after[topic].offset} (${missed} missed)`,
    );
  }
  const entries = await b.page
    .locator(".feed li")
    .evaluateAll((items) => items.map((i) => ({ topic: i.dataset.topic, offset: i.dataset.offset, text: i.textContent })));
  const places = entries.map((e) => `${e.topic}#${e.offset}`);
  check(new Set(places).size === places.length, "each feed entry has its own (topic, offset)");
  const missedEntries = entries.filter((e) => before[e.topic] && BigInt(e.offset) > BigInt(before[e.topic].offset));
  check(
    missedEntries.length === 2 && missedEntries.some((e) => e.text.includes("Lake swim")) && missedEntries.some((e) => e.text.includes("was updated")),
    `the feed's entries past B's old positions are the two it missed (${JSON.stringify(missedEntries.map((e) => `${e.topic.split(":")[0]}#${e.offset}`))})`,
  );
  await shot(b.page, "12-live-feed");

  // A cancels the second meeting; B, on its page, sees it live.
  const swimUrl = a.page.url();
  await b.page.goto(swimUrl);
  await text(b.page, "h1", "Lake swim", "B opens the second meeting");
  await a.page.getByRole("button", { name: "Cancel meeting" }).click();
  await shot(a.page, "20-cancel-meeting");
  await a.page.getByRole("button", { name: "Yes, cancel the meeting" }).click();
  await text(a.page, "[role=status]", "This meeting was cancelled", "A cancels the meeting");
  await text(b.page, "[role=status]", "This meeting was cancelled", "B sees the cancellation live");
  check((await b.page.getByRole("button", { name: "Join meeting" }).count()) === 0, "a cancelled meeting cannot be joined");

  // The admin's activity screen: the day's totals and charts per hour.
  if (args["admin-email"]) {
    await a.page.getByRole("link", { name: "Admin" }).click();
    await text(a.page, "[data-testid=votes-cast]", "1", "the admin sees B's vote counted");
    await text(a.page, "[data-testid=joins]", "1", "and B's join");
    check((await a.page.locator("figure.chart svg[role=img]").count()) === 3, "three charts per hour");
    await shot(a.page, "16-admin-activity");
    check((await b.page.getByRole("link", { name: "Admin" }).count()) === 0, "B, no admin, has no Admin link");

    // The warehouse keeps every domain event as activity: the admin's live
    // tail of `domain.events` shows the story so far, then B leaving as it
    // is stored.
    await a.page.getByRole("link", { name: "Warehouse" }).click();
    await text(a.page, "[data-testid=record] td", "EventCreated", "A's warehouse screen lists the meetings' domain events");
    await text(a.page, "h2", "(live)", "the tail is live");
    await b.page.goto(meetingUrl);
    await b.page.getByRole("button", { name: "Leave meeting" }).click();
    await b.page.getByRole("button", { name: "Join meeting" }).waitFor();
    await text(a.page, "[data-testid=record] td", "ParticipantLeft", "A's live tail shows B leaving, without a reload");
    await shot(a.page, "18-warehouse");
  }

  // B's refresh token used elsewhere (copied into another browser, which
  // refreshes first): B's own refresh is then refused, the session revoked,
  // and B is signed out with the reason.
  const stolen = JSON.parse(await b.page.evaluate(() => localStorage.getItem("munity.session")));
  const d = await user(browser, "D");
  await d.context.addInitScript((s) => {
    if (!sessionStorage.getItem("seeded")) {
      localStorage.setItem("munity.session", JSON.stringify(s));
      sessionStorage.setItem("seeded", "1");
    }
  }, { ...stolen, accessExpiresAt: 0 });
  await d.page.goto(`${base}/meetings`);
  await d.page.getByRole("heading", { name: "Upcoming meetings" }).waitFor();
  await d.page.waitForFunction((old) => JSON.parse(localStorage.getItem("munity.session") ?? "{}").refreshToken !== old, stolen.refreshToken);
  check(true, "another browser refreshed with B's refresh token");
  await b.page.evaluate(() => {
    const s = JSON.parse(localStorage.getItem("munity.session"));
    localStorage.setItem("munity.session", JSON.stringify({ ...s, accessExpiresAt: 0 }));
  });
  await b.page.reload();
  await text(b.page, "[role=status]", "Your session ended", "B's refresh is refused: signed out, saying why");
  await shot(b.page, "17-session-ended");

  // The account screen: "Link Telegram" shows a one-time code (8 of
  // users-svc's alphabet), when it expires, and what to send the bot.
  await a.page.getByRole("link", { name: "Ann (account)" }).click();
  await a.page.getByRole("heading", { name: "Account", level: 1 }).waitFor();
  await text(a.page, ".empty", "No chat is linked", "A's account lists no linked chat yet");
  await a.page.getByRole("button", { name: "Link Telegram" }).click();
  await a.page.getByTestId("link-code-value").waitFor();
  const linkCode = (await a.page.getByTestId("link-code-value").innerText()).trim();
  check(/^[ABCDEFGHJKLMNPQRSTUVWXYZ23456789]{8}$/.test(linkCode), `the link code has the right shape (${linkCode})`);
  await text(a.page, "[data-testid=link-code]", `/link ${linkCode}`, "the screen says to send /link CODE to the bot");
  check(!/^\?$/.test((await a.page.getByTestId("link-code-expiry").innerText()).trim()), "the code's expiry is shown");
  await shot(a.page, "21-account-link-telegram");

  // Signing out shows the sign-in screen.
  await a.page.getByRole("button", { name: "Sign out" }).click();
  await a.page.getByRole("heading", { name: "Sign in" }).waitFor();
  check(true, "A signs out");

  check(accessibility.length === 0, `axe-core ${axeVersion}: no critical or serious violation on ${audited} screens${accessibility.length ? `:\n${accessibility.join("\n")}` : ""}`);
  check(problems.length === 0, `no page errors or CSP refusals${problems.length ? `:\n${problems.join("\n")}` : ""}`);
  console.log(`${checks} passed, 0 failed`);
} catch (error) {
  // What each user saw when it failed.
  for (const { page, name } of pages) {
    await page.screenshot({ path: join(shots, `failure-${name}.png`), fullPage: true }).catch(() => undefined);
    const main = await page.locator("main").innerText().catch(() => "");
    console.log(`--- ${name} at ${page.url()}\n${main}`);
  }
  if (problems.length) console.log(problems.join("\n"));
  throw error;
} finally {
  await browser.close();
}
