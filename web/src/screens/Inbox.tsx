import { useEffect } from "preact/hooks";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { notify, session } from "../api";
import { describe, feed, live, onTopic } from "../live";
import { protoCache } from "../cache";
import { ListInboxResponseSchema } from "../gen/munity/notify/v1/notify_pb";
import { Link } from "../router";
import { Store, useStore } from "../store";
import { Empty, ErrorBox, Loading, formatDate, useAction, useLoad } from "../ui";

/** Unread items in the inbox, for the navigation bar's badge. */
export const unread = new Store<number>(0);

export async function refreshUnread() {
  if (!session.get()) return unread.set(0);
  try {
    unread.set(Number((await notify.unreadCount({})).unread));
  } catch {
    // The badge keeps its last count; the inbox screen shows errors.
  }
}

export function Inbox() {
  const me = useStore(session)?.userId ?? "";
  const inbox = useLoad(() => notify.listInbox({ pageSize: 50 }), [], protoCache("inbox", ListInboxResponseSchema));
  const mark = useAction();
  useEffect(() => onTopic(`user:${me}`, () => inbox.reload()), [me, inbox.reload]);
  const items = inbox.data?.items ?? [];
  const markRead = (ids: string[], all = false) =>
    mark.act(async () => {
      unread.set(Number((await notify.markRead({ ids, all })).unread));
      inbox.reload();
    });
  return (
    <section>
      <div class="heading">
        <h1>Inbox</h1>
        <button type="button" class="secondary" disabled={mark.busy || items.every((i) => i.readAt)} onClick={() => markRead([], true)}>
          Mark all read
        </button>
      </div>
      {inbox.state === "loading" && !inbox.data && <Loading what="the inbox" />}
      <ErrorBox error={inbox.error} retry={inbox.reload} />
      <ErrorBox error={mark.error} />
      {inbox.data && items.length === 0 && <Empty>Nothing here yet: when someone joins or leaves your meetings, you will hear about it here.</Empty>}
      {items.length > 0 && (
        <ul class="feed" aria-label="Inbox">
          {items.map((item) => {
            const n = item.notification;
            const said = n ? describe(n, me) : undefined;
            const eventId = said?.eventId ?? "";
            return (
              <li key={item.id} class={item.readAt ? "read" : "unread"}>
                <span>
                  {item.readAt ? "" : <span class="dot" role="img" aria-label="unread" />} {said?.text}
                </span>
                <span class="muted">{n?.at ? formatDate(timestampDate(n.at).getTime()) : ""}</span>
                {eventId && <Link href={`/meetings/${eventId}`}>Open meeting</Link>}
                {!item.readAt && (
                  <button type="button" class="small secondary" disabled={mark.busy} onClick={() => markRead([item.id])}>
                    Mark read
                  </button>
                )}
              </li>
            );
          })}
        </ul>
      )}
    </section>
  );
}

export function Feed() {
  const items = useStore(feed);
  const state = useStore(live);
  return (
    <section>
      <h1>Live feed</h1>
      <p class="muted" role="status">
        {state.state === "live" ? "Live: new notifications appear here as they happen." : `Connection: ${state.state}${state.detail ? ` (${state.detail})` : ""}`}
      </p>
      {items.length === 0 && <Empty>No notification yet. Votes, joins and new meetings you follow show up here.</Empty>}
      {items.length > 0 && (
        <ol class="feed" aria-label="Notifications">
          {items.map((item) => (
            <li key={item.key} data-topic={item.topic} data-offset={item.offset} data-id={item.domainId}>
              <span>{item.text}</span>
              <span class="muted">{formatDate(item.at)}</span>
              {item.eventId && <Link href={`/meetings/${item.eventId}`}>Open</Link>}
            </li>
          ))}
        </ol>
      )}
    </section>
  );
}
