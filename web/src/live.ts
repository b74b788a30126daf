// The live feed: one Notify/Subscribe server stream (over gRPC-web) on the
// topics the app follows: `user:<me>`, `community:<id>` of each community
// the user is in (new meetings), and `event:<id>` of the open meeting.
// Positions (epoch, offset) are kept per topic in localStorage, so after a
// drop or a reload the stream resumes where it was and the server sends
// exactly what was missed; `resync` tells the screens to reload.
import { anyUnpack, timestampDate } from "@bufbuild/protobuf/wkt";
import { createRegistry, type Message } from "@bufbuild/protobuf";
import { file_munity_events_v1_events } from "./gen/munity/events/v1/events_pb";
import type { Notification } from "./gen/munity/notify/v1/notify_pb";
import { callError, notify, refreshNow, session } from "./api";
import { Store } from "./store";

export interface FeedItem {
  key: string;
  topic: string;
  offset: string;
  at: number;
  kind: string;
  text: string;
  /** The meeting it is about, when it is about one. */
  eventId: string;
  /** The domain event's id: the same event on two topics (a meeting's and
   * its community's) is one item. */
  domainId: string;
}

export type LiveState = { state: "off" | "connecting" | "live" | "reconnecting"; detail?: string };

export const feed = new Store<FeedItem[]>([]);
/** Whether the browser says it is online. */
export const online = new Store<boolean>(navigator.onLine);
window.addEventListener("offline", () => online.set(false));
export const live = new Store<LiveState>({ state: "off" });

type Listener = (item: FeedItem | "resync") => void;
const listeners = new Map<string, Set<Listener>>();

/** Calls `listener` for each notification on `topic` (and on `resync`). */
export function onTopic(topic: string, listener: Listener): () => void {
  let set = listeners.get(topic);
  if (!set) listeners.set(topic, (set = new Set()));
  set.add(listener);
  return () => set.delete(listener);
}

function emit(topic: string, item: FeedItem | "resync") {
  for (const listener of listeners.get(topic) ?? []) listener(item);
  for (const listener of listeners.get("*") ?? []) listener(item);
}

// --- positions, per user ---------------------------------------------------

interface Position {
  epoch: string;
  offset: string;
}
let positions = new Map<string, Position>();
let owner = "";

function storageKey(kind: string) {
  return `munity.${kind}.${owner}`;
}

function loadState(userId: string) {
  owner = userId;
  try {
    positions = new Map(Object.entries(JSON.parse(localStorage.getItem(storageKey("positions")) ?? "{}")));
    feed.set(JSON.parse(localStorage.getItem(storageKey("feed")) ?? "[]"));
  } catch {
    positions = new Map();
    feed.set([]);
  }
}

function saveState() {
  if (!owner) return;
  localStorage.setItem(storageKey("positions"), JSON.stringify(Object.fromEntries(positions)));
  localStorage.setItem(storageKey("feed"), JSON.stringify(feed.get().slice(0, 50)));
}

// --- what a notification says ------------------------------------------------

const registry = createRegistry(file_munity_events_v1_events);

/** A notification in words, for the feed and the inbox. */
export function describe(n: Notification, me: string): FeedItem {
  const kind = n.kind.split(".").pop() ?? n.kind;
  const message = n.payload ? (anyUnpack(n.payload, registry) as (Message & Record<string, any>) | undefined) : undefined;
  const who = (id: string) => (id === me ? "You" : "Someone");
  const when = (t: any) =>
    t ? timestampDate(t).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" }) : "";
  let text = kind;
  let eventId = message?.eventId ?? message?.event?.id ?? "";
  switch (kind) {
    case "EventCreated":
      text = `New meeting “${message?.event?.title}”`;
      break;
    case "EventUpdated":
      text = `Meeting “${message?.event?.title}” was updated`;
      break;
    case "EventCancelled":
      text = "A meeting was cancelled";
      break;
    case "VoteCast":
      text = `${who(message?.userId)} voted for option ${(message?.optionId ?? 0) + 1}`;
      break;
    case "VoteWithdrawn":
      text = `${who(message?.userId)} took back a vote for option ${(message?.optionId ?? 0) + 1}`;
      break;
    case "VotingClosed":
      text = `Voting closed: it happens ${when(message?.start)}`;
      break;
    case "ParticipantJoined":
      text = `${who(message?.userId)} joined a meeting`;
      break;
    case "ParticipantLeft":
      text = `${who(message?.userId)} left a meeting`;
      break;
    case "ReminderDue":
      text = `A meeting starts ${when(message?.start)}`;
      break;
  }
  if (!eventId && n.topic.startsWith("event:")) eventId = n.topic.slice(6);
  return {
    key: `${n.topic}#${n.epoch}#${n.offset}`,
    topic: n.topic,
    offset: n.offset.toString(),
    at: n.at ? timestampDate(n.at).getTime() : Date.now(),
    kind,
    text,
    eventId,
    domainId: n.eventId,
  };
}

// --- the stream ------------------------------------------------------------------

const followed = new Map<string, number>();
let controller: AbortController | null = null;
let runningTopics = "";

/** Follows `topic` while the returned function is not called. */
export function follow(topic: string): () => void {
  followed.set(topic, (followed.get(topic) ?? 0) + 1);
  queueMicrotask(reconcile);
  return () => {
    const n = (followed.get(topic) ?? 1) - 1;
    if (n <= 0) followed.delete(topic);
    else followed.set(topic, n);
    queueMicrotask(reconcile);
  };
}

function wantedTopics(): string[] {
  const me = session.get();
  if (!me) return [];
  return [...new Set([`user:${me.userId}`, ...followed.keys()])].sort().slice(0, 32);
}

function reconcile() {
  const topics = wantedTopics();
  const key = topics.join(" ");
  if (key === runningTopics && controller) return;
  restart();
}

function restart() {
  controller?.abort();
  controller = null;
  const topics = wantedTopics();
  runningTopics = topics.join(" ");
  if (topics.length === 0) {
    live.set({ state: "off" });
    return;
  }
  controller = new AbortController();
  void run(topics, controller.signal);
}

function sleep(ms: number, signal: AbortSignal) {
  return new Promise<void>((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

async function run(topics: string[], signal: AbortSignal) {
  let backoff = 1_000;
  let attempt = 0;
  while (!signal.aborted) {
    live.set({ state: attempt++ ? "reconnecting" : "connecting" });
    const resume = topics
      .filter((t) => positions.has(t))
      .map((t) => ({ topic: t, epoch: positions.get(t)!.epoch, offset: BigInt(positions.get(t)!.offset) }));
    const fresh = topics.filter((t) => !positions.has(t));
    try {
      for await (const response of notify.subscribe({ topics: fresh, resume }, { signal })) {
        const me = session.get()?.userId ?? "";
        const m = response.message;
        if (m.case === "subscribed") {
          for (const p of m.value.positions) {
            if (!positions.has(p.topic)) positions.set(p.topic, { epoch: p.epoch, offset: p.offset.toString() });
          }
          saveState();
          backoff = 1_000;
          live.set({ state: "live" });
        } else if (m.case === "notification") {
          const n = m.value;
          const seen = positions.get(n.topic);
          if (seen && seen.epoch === n.epoch && BigInt(seen.offset) >= n.offset) continue;
          positions.set(n.topic, { epoch: n.epoch, offset: n.offset.toString() });
          const item = describe(n, me);
          if (!item.domainId || !feed.get().some((f) => f.domainId === item.domainId)) {
            feed.set([item, ...feed.get()].slice(0, 50));
          }
          saveState();
          emit(n.topic, item);
        } else if (m.case === "resync") {
          const p = m.value.position;
          if (p) positions.set(p.topic, { epoch: p.epoch, offset: p.offset.toString() });
          saveState();
          if (p) emit(p.topic, "resync");
        } else if (m.case === "heartbeat") {
          if (live.get().state !== "live") live.set({ state: "live" });
        }
      }
    } catch (error) {
      if (signal.aborted) return;
      const e = callError(error);
      if (e.code === "Unauthenticated") {
        await refreshNow();
        if (!session.get()) return;
      } else if (e.code !== "Unavailable" && e.code !== "Canceled" && e.code !== "Unknown") {
        live.set({ state: "reconnecting", detail: e.message });
        backoff = 15_000;
      }
    }
    if (signal.aborted) return;
    live.set({ state: "reconnecting", detail: live.get().detail });
    await sleep(backoff, signal);
    backoff = Math.min(backoff * 2, 15_000);
  }
}

let sessionUser = "";
function onSession() {
  const me = session.get();
  const id = me?.userId ?? "";
  if (id !== sessionUser) {
    sessionUser = id;
    if (id) loadState(id);
    else {
      owner = "";
      positions = new Map();
      feed.set([]);
    }
  }
  reconcile();
}
session.subscribe(onSession);
onSession();
window.addEventListener("online", () => {
  online.set(true);
  if (session.get()) restart();
});
