// The signed-in user's account: who they are, and their Telegram chats.
// "Link Telegram" asks users-svc for a one-time code (CreateLinkCode) that
// the user sends to the bot as `/link CODE`, so no password is ever typed
// into a chat; the linked chats are listed (ListChatLinks) and can be
// unlinked here (Unlink), which the bot notices at its next call.
import { useState } from "preact/hooks";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { session, users } from "../api";
import type { LinkCode } from "../gen/munity/users/v1/users_pb";
import { useStore } from "../store";
import { Empty, ErrorBox, Loading, formatDate, useAction, useLoad } from "../ui";

export function Account() {
  const me = useStore(session);
  const links = useLoad(() => users.listChatLinks({}), []);
  const [code, setCode] = useState<LinkCode | null>(null);
  const create = useAction();
  const unlink = useAction();
  const newCode = () =>
    create.act(async () => {
      setCode(await users.createLinkCode({}));
    });
  const remove = (chatId: bigint) =>
    unlink.act(async () => {
      await users.unlink({ chatId });
      links.reload();
    });
  const chats = links.data?.links ?? [];
  return (
    <section>
      <h1>Account</h1>
      {me && (
        <p>
          Signed in as <strong>{me.displayName}</strong> ({me.email}).
        </p>
      )}
      <h2>Telegram</h2>
      <p class="muted">Get meetings, votes and reminders in Telegram: link a chat with the Munity bot. Never send your password to a chat.</p>
      <button type="button" disabled={create.busy} onClick={newCode}>
        Link Telegram
      </button>
      <ErrorBox error={create.error} />
      {code && (
        <div class="link-code" data-testid="link-code" role="status" aria-live="polite">
          <p>
            Send <code>/link {code.code}</code> to the bot in Telegram.
          </p>
          <p>
            Your code: <strong data-testid="link-code-value">{code.code}</strong>. It works once, until{" "}
            <span data-testid="link-code-expiry">{code.expiresAt ? formatDate(timestampDate(code.expiresAt).getTime()) : "?"}</span>.
          </p>
        </div>
      )}
      <h3>Linked chats</h3>
      {links.state === "loading" && !links.data && <Loading what="your linked chats" />}
      <ErrorBox error={links.error} retry={links.reload} />
      <ErrorBox error={unlink.error} />
      {links.data && chats.length === 0 && <Empty>No chat is linked.</Empty>}
      {chats.length > 0 && (
        <ul aria-label="Linked chats">
          {chats.map((link) => (
            <li key={String(link.chatId)}>
              <span>
                Chat {String(link.chatId)}
                {link.linkedAt ? `, linked ${formatDate(timestampDate(link.linkedAt).getTime())}` : ""}
              </span>{" "}
              <button type="button" class="small secondary" disabled={unlink.busy} onClick={() => remove(link.chatId)}>
                Unlink
              </button>
            </li>
          ))}
        </ul>
      )}
      <button type="button" class="small secondary" onClick={() => links.reload()}>
        Refresh
      </button>
    </section>
  );
}
