// Every call the app makes: Connect clients generated from proto/, over the
// gRPC-web transport to the page's own origin (the gateway serves both).
// The session (tokens) lives here too: the access token goes on every call,
// and is refreshed with Users/Refresh before it expires.
import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { Role, Users, type AuthResponse, type User } from "./gen/munity/users/v1/users_pb";
import { Events } from "./gen/munity/events/v1/events_pb";
import { Notify } from "./gen/munity/notify/v1/notify_pb";
import { Warehouse } from "./gen/munity/warehouse/v1/warehouse_pb";
import { BadRequestSchema } from "./gen/google/rpc/error_details_pb";
import { Store } from "./store";

export interface Session {
  userId: string;
  email: string;
  displayName: string;
  /** Holds the admin role (what the token was issued with; the services
   * check storage themselves). */
  admin?: boolean;
  accessToken: string;
  accessExpiresAt: number;
  refreshToken: string;
}

const SESSION_KEY = "munity.session";

function loadSession(): Session | null {
  try {
    const raw = localStorage.getItem(SESSION_KEY);
    return raw ? (JSON.parse(raw) as Session) : null;
  } catch {
    return null;
  }
}

/** The signed-in user (null: signed out), and why the last session ended. */
export const session = new Store<Session | null>(loadSession());
export const signedOutReason = new Store<string>("");

const SESSION_METHODS = new Set(["Register", "Login", "Refresh", "Logout"]);

const withToken: Interceptor = (next) => async (request) => {
  const current = session.get();
  const sessionCall = SESSION_METHODS.has(request.method.name);
  if (current && !sessionCall && current.accessExpiresAt - Date.now() < 5_000) {
    // Woken from sleep, or the timer was late: refresh first.
    await refreshNow();
  }
  const token = session.get()?.accessToken;
  if (token) request.header.set("authorization", `Bearer ${token}`);
  try {
    return await next(request);
  } catch (error) {
    // A token revoked before it expired (a role change, or the session
    // ended elsewhere): refresh once and try again; a refused refresh ends
    // the session here, saying why. Streams resume by themselves (live.ts).
    if (sessionCall || request.stream || !token || ConnectError.from(error).code !== Code.Unauthenticated) {
      throw error;
    }
    await refreshNow();
    const fresh = session.get()?.accessToken;
    if (!fresh || fresh === token) throw error;
    request.header.set("authorization", `Bearer ${fresh}`);
    return await next(request);
  }
};

const transport = createGrpcWebTransport({
  baseUrl: location.origin,
  useBinaryFormat: true,
  interceptors: [withToken],
});

export const users = createClient(Users, transport);
export const events = createClient(Events, transport);
export const notify = createClient(Notify, transport);
export const warehouse = createClient(Warehouse, transport);

/** A failed call, as the screens show it. */
export interface CallError {
  code: string;
  message: string;
  /** Field name → what is wrong with it (google.rpc.BadRequest). */
  fields: Record<string, string>;
  /** Seconds to wait, when the gateway said (rate limits). */
  retryAfter?: number;
  /** Set when the screen shows what it last loaded instead (ms since epoch). */
  offlineAt?: number;
}

/** The server could not be reached at all (no answer, not a refusal). */
export function unreachable(error: CallError): boolean {
  return error.code === "Unavailable" || !navigator.onLine;
}

export function callError(error: unknown): CallError {
  const e = ConnectError.from(error);
  const fields: Record<string, string> = {};
  for (const bad of e.findDetails(BadRequestSchema)) {
    for (const v of bad.fieldViolations) fields[v.field] = v.description;
  }
  const retry = Number(e.metadata.get("retry-after") ?? "");
  let message = e.rawMessage || Code[e.code];
  let code = e.code;
  // fetch itself failed: no answer came (offline, or the server is down).
  if ((code === Code.Unknown || code === Code.Unavailable) && /failed to fetch|networkerror|network error/i.test(message)) {
    code = Code.Unavailable;
    message = "The server cannot be reached. Check your connection and try again.";
  }
  return {
    code: Code[code],
    message,
    fields,
    retryAfter: Number.isFinite(retry) && retry > 0 ? retry : undefined,
  };
}

// --- the session ---------------------------------------------------------

let refreshTimer: ReturnType<typeof setTimeout> | undefined;

function adopt(response: AuthResponse) {
  const user = response.user as User;
  const next: Session = {
    userId: user.id,
    email: user.email,
    displayName: user.displayName,
    admin: user.roles.includes(Role.ADMIN),
    accessToken: response.accessToken,
    accessExpiresAt: response.accessTokenExpiresAt
      ? timestampDate(response.accessTokenExpiresAt).getTime()
      : Date.now() + 60_000,
    refreshToken: response.refreshToken,
  };
  localStorage.setItem(SESSION_KEY, JSON.stringify(next));
  signedOutReason.set("");
  session.set(next);
  scheduleRefresh();
}

/** Ends the session here (and says why, when it was not the user's choice). */
export function endSession(reason: string) {
  clearTimeout(refreshTimer);
  localStorage.removeItem(SESSION_KEY);
  signedOutReason.set(reason);
  session.set(null);
}

export async function register(email: string, password: string, displayName: string) {
  adopt(await users.register({ email, password, displayName }));
}

export async function signIn(email: string, password: string) {
  adopt(await users.login({ email, password }));
}

export async function signOut() {
  const current = session.get();
  endSession("");
  if (current) {
    try {
      await users.logout({ refreshToken: current.refreshToken });
    } catch {
      // Signed out here either way; the refresh token expires on its own.
    }
  }
}

let refreshing: Promise<void> | null = null;

/** Trades the refresh token for new tokens; a refusal ends the session. */
export function refreshNow(): Promise<void> {
  if (refreshing) return refreshing;
  refreshing = (async () => {
    // Another tab may have refreshed already (a refresh token works once).
    const stored = loadSession();
    const current = session.get();
    if (stored && current && stored.refreshToken !== current.refreshToken) {
      session.set(stored);
      scheduleRefresh();
      return;
    }
    if (!current) return;
    try {
      adopt(await users.refresh({ refreshToken: current.refreshToken }));
    } catch (error) {
      const e = callError(error);
      if (e.code === "Unavailable") {
        // Offline: try again shortly, the session may still be good.
        refreshTimer = setTimeout(() => void refreshNow(), 5_000);
        return;
      }
      endSession(`Your session ended: ${e.message}. Please sign in again.`);
    }
  })().finally(() => {
    refreshing = null;
  });
  return refreshing;
}

function scheduleRefresh() {
  clearTimeout(refreshTimer);
  const current = session.get();
  if (!current) return;
  // A minute before expiry (or at 80% of a shorter lifetime).
  const left = current.accessExpiresAt - Date.now();
  const wait = Math.max(0, Math.min(left - 60_000, left * 0.8));
  refreshTimer = setTimeout(() => void refreshNow(), wait);
}

scheduleRefresh();
window.addEventListener("storage", (event) => {
  if (event.key !== SESSION_KEY) return;
  const stored = loadSession();
  if (!stored) endSession("You signed out in another tab.");
  else {
    session.set(stored);
    scheduleRefresh();
  }
});
