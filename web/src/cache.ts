// The last state each screen loaded, kept in IndexedDB per user, so a
// screen the gateway cannot serve (offline, or the server down) shows what
// it had, marked with when it was loaded. Reads only: writes are never
// queued (see ui.tsx's useAction).
import { fromBinary, toBinary, type DescMessage, type MessageShape } from "@bufbuild/protobuf";

const DB = "munity";
const STORE = "screens";

let opened: Promise<IDBDatabase> | null = null;

function db(): Promise<IDBDatabase> {
  opened ??= new Promise((resolve, reject) => {
    const request = indexedDB.open(DB, 1);
    request.onupgradeneeded = () => request.result.createObjectStore(STORE);
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
  return opened;
}

export interface Cached<T> {
  value: T;
  at: number;
}

export async function put(key: string, value: unknown): Promise<void> {
  try {
    const store = (await db()).transaction(STORE, "readwrite").objectStore(STORE);
    store.put({ value, at: Date.now() }, key);
  } catch {
    // No IndexedDB (private mode): nothing is kept, nothing breaks.
  }
}

export async function get(key: string): Promise<Cached<unknown> | undefined> {
  try {
    const store = (await db()).transaction(STORE, "readonly").objectStore(STORE);
    return await new Promise((resolve, reject) => {
      const request = store.get(key);
      request.onsuccess = () => resolve(request.result as Cached<unknown> | undefined);
      request.onerror = () => reject(request.error);
    });
  } catch {
    return undefined;
  }
}

/** How a screen's data is kept: a key, and how to store and restore it. */
export interface CacheSpec<T> {
  key: string;
  save: (value: T) => unknown;
  restore: (stored: unknown) => T;
}

/** A protobuf message kept as its binary encoding. */
export function protoCache<Desc extends DescMessage>(key: string, schema: Desc): CacheSpec<MessageShape<Desc>> {
  return {
    key,
    save: (value) => toBinary(schema, value),
    restore: (stored) => fromBinary(schema, stored as Uint8Array),
  };
}
