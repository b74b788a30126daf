// Pieces every screen uses: calls with loading/error states, form fields
// with their server-side messages, names.
import type { ComponentChildren, InputHTMLAttributes } from "preact";
import { useCallback, useEffect, useRef, useState } from "preact/hooks";
import { callError, session, unreachable, type CallError } from "./api";
import { get, put, type CacheSpec } from "./cache";
import { userName } from "./data";

export type Loaded<T> =
  | { state: "loading"; data?: T; error?: undefined }
  | { state: "error"; data?: T; error: CallError }
  | { state: "ready"; data: T; error?: undefined };

/**
 * Runs `load` now, whenever `deps` change and when the browser comes back
 * online; `reload` runs it again. With `cache`, what loaded is kept in
 * IndexedDB, and shown (the error saying since when) when the server cannot
 * be reached.
 */
export function useLoad<T>(load: () => Promise<T>, deps: unknown[], cache?: CacheSpec<T>): Loaded<T> & { reload: () => void } {
  const [result, setResult] = useState<Loaded<T>>({ state: "loading" });
  const generation = useRef(0);
  const run = useCallback(() => {
    const mine = ++generation.current;
    const key = cache && `${session.get()?.userId ?? ""}:${cache.key}`;
    setResult((r) => ({ state: "loading", data: r.data }));
    load().then(
      (data) => {
        if (mine !== generation.current) return;
        setResult({ state: "ready", data });
        if (cache && key) void put(key, cache.save(data));
      },
      async (failure) => {
        const error = callError(failure);
        const kept = cache && key && unreachable(error) ? await get(key) : undefined;
        if (mine !== generation.current) return;
        if (kept && cache) {
          setResult({ state: "error", data: cache.restore(kept.value), error: { ...error, offlineAt: kept.at } });
        } else {
          setResult((r) => ({ state: "error", data: r.data, error }));
        }
      },
    );
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, deps);
  useEffect(run, [run]);
  useEffect(() => {
    window.addEventListener("online", run);
    return () => window.removeEventListener("online", run);
  }, [run]);
  return { ...result, reload: run };
}

const OFFLINE: CallError = {
  code: "Unavailable",
  message: "You are offline: nothing was changed. Try again once you are back online.",
  fields: {},
};

/** A write: `busy` while it runs, its error kept for the form to show. */
export function useAction() {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<CallError | null>(null);
  const act = useCallback(async (action: () => Promise<unknown>): Promise<boolean> => {
    // A change is made now or not at all: never queued for later.
    if (!navigator.onLine) {
      setError(OFFLINE);
      return false;
    }
    setBusy(true);
    setError(null);
    try {
      await action();
      return true;
    } catch (e) {
      setError(callError(e));
      return false;
    } finally {
      setBusy(false);
    }
  }, []);
  return { busy, error, act, clear: () => setError(null) };
}

export function Loading(props: { what: string }) {
  return (
    <p class="muted" role="status" aria-live="polite">
      Loading {props.what}…
    </p>
  );
}

export function ErrorBox(props: { error: CallError | null | undefined; retry?: () => void }) {
  const { error } = props;
  if (!error) return null;
  if (error.offlineAt) {
    return (
      <div class="notice offline" role="status">
        <strong>Offline</strong>, last updated at {formatDate(error.offlineAt)}.{" "}
        {navigator.onLine ? "The server cannot be reached." : ""}
        {props.retry && (
          <button type="button" class="link" onClick={props.retry}>
            Retry
          </button>
        )}
      </div>
    );
  }
  // Refused by a rate limit: say when to try again (the gateway's retry-after).
  const message = error.retryAfter ? `Too many attempts. Try again in ${error.retryAfter} s.` : error.message;
  return (
    <div class="error" role="alert">
      <strong>{error.code}:</strong> {message}
      {props.retry && (
        <button type="button" class="link" onClick={props.retry}>
          Retry
        </button>
      )}
    </div>
  );
}

export function Empty(props: { children: ComponentChildren }) {
  return <p class="empty">{props.children}</p>;
}

/** A labelled input, with the server's message for this field under it. */
export function Field(
  props: {
    label: string;
    name: string;
    error?: CallError | null;
    hint?: string;
  } & InputHTMLAttributes,
) {
  const { label, name, error, hint, ...input } = props;
  const id = `field-${name}`;
  const problem = error?.fields[name];
  const described = [hint && `${id}-hint`, problem && `${id}-error`].filter(Boolean).join(" ") || undefined;
  return (
    <div class="field">
      <label for={id}>{label}</label>
      <input id={id} name={name} aria-invalid={problem ? "true" : undefined} aria-describedby={described} {...input} />
      {hint && (
        <small id={`${id}-hint`} class="muted">
          {hint}
        </small>
      )}
      {problem && (
        <small id={`${id}-error`} class="field-error" data-field={name}>
          {problem}
        </small>
      )}
    </div>
  );
}

/** Violations for fields the form has no input for (e.g. `options[0].start`). */
export function OtherViolations(props: { error: CallError | null | undefined; shown: string[] }) {
  const rest = Object.entries(props.error?.fields ?? {}).filter(([f]) => !props.shown.includes(f));
  if (rest.length === 0) return null;
  return (
    <ul class="field-error">
      {rest.map(([field, why]) => (
        <li key={field}>
          {field}: {why}
        </li>
      ))}
    </ul>
  );
}

export function UserName(props: { id: string }) {
  const [name, setName] = useState(props.id.slice(0, 8));
  useEffect(() => {
    let live = true;
    void userName(props.id).then((n) => live && setName(n));
    return () => {
      live = false;
    };
  }, [props.id]);
  return <span>{name}</span>;
}

export function formatDate(ms: number): string {
  return new Date(ms).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}
