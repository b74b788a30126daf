import { useEffect } from "preact/hooks";
import { session, signOut } from "./api";
import { loadCommunities, mine } from "./data";
import { follow, live, onTopic, online } from "./live";
import { Link, navigate, usePath } from "./router";
import { useStore } from "./store";
import { Account } from "./screens/Account";
import { Admin } from "./screens/Admin";
import { Warehouse } from "./screens/Warehouse";
import { Register, SignIn } from "./screens/Auth";
import { Communities, CommunityPage } from "./screens/Communities";
import { Feed, Inbox, refreshUnread, unread } from "./screens/Inbox";
import { EditMeeting, MeetingPage, Meetings, NewMeeting } from "./screens/Meetings";

function Nav() {
  const me = useStore(session);
  const path = usePath();
  const count = useStore(unread);
  const live_ = useStore(live);
  const state = useStore(online) ? live_ : { state: "offline" };
  const item = (href: string, label: string, extra?: preact.ComponentChildren) => (
    <li>
      <Link href={href} current={path === href || (href !== "/" && path.startsWith(`${href}/`))}>
        {label}
        {extra}
      </Link>
    </li>
  );
  return (
    <header>
      <nav aria-label="Main">
        <Link href="/" class="brand">
          Munity
        </Link>
        {me ? (
          <ul>
            {item("/meetings", "Meetings")}
            {item("/communities", "Communities")}
            {item("/feed", "Live feed")}
            {item(
              "/inbox",
              "Inbox",
              count > 0 ? (
                <span class="count" data-testid="unread">
                  {count}
                  <span class="visually-hidden"> unread</span>
                </span>
              ) : null,
            )}
            {me.admin && item("/admin", "Admin")}
            {me.admin && item("/warehouse", "Warehouse")}
          </ul>
        ) : (
          <ul>
            {item("/signin", "Sign in")}
            {item("/register", "Register")}
          </ul>
        )}
        {me && (
          <div class="me">
            <span class={`live live-${state.state}`} title={`Live updates: ${state.state}`}>
              <span class="visually-hidden">Live updates: </span>
              {state.state}
            </span>
            <Link href="/account" current={path === "/account"}>
              {me.displayName}
              <span class="visually-hidden"> (account)</span>
            </Link>
            <button type="button" class="small secondary" onClick={() => void signOut().then(() => navigate("/signin"))}>
              Sign out
            </button>
          </div>
        )}
      </nav>
    </header>
  );
}

/** Follows the `community:` topic of each community the user is in. */
function useCommunityTopics() {
  const me = useStore(session)?.userId;
  const communities = useStore(mine);
  useEffect(() => {
    if (me) void loadCommunities().catch(() => undefined);
  }, [me]);
  const ids = communities ? [...communities.roles.keys()].sort().join(",") : "";
  useEffect(() => {
    const stops = ids ? ids.split(",").map((id) => follow(`community:${id}`)) : [];
    return () => stops.forEach((stop) => stop());
  }, [ids]);
  useEffect(() => {
    if (!me) return;
    void refreshUnread();
    return onTopic(`user:${me}`, () => void refreshUnread());
  }, [me]);
}

function Screen() {
  const path = usePath();
  const me = useStore(session);
  if (!me) {
    if (path === "/register") return <Register />;
    return <SignIn />;
  }
  const [, first, second] = path.split("/");
  switch (first) {
    case "":
    case "meetings":
      if (second === "new") return <NewMeeting />;
      if (second && path.split("/")[3] === "edit") return <EditMeeting id={second} />;
      if (second) return <MeetingPage id={second} />;
      return <Meetings />;
    case "communities":
      return second ? <CommunityPage id={second} /> : <Communities />;
    case "inbox":
      return <Inbox />;
    case "feed":
      return <Feed />;
    case "account":
      return <Account />;
    case "admin":
      return <Admin />;
    case "warehouse":
      return <Warehouse />;
    case "signin":
    case "register":
      return <Meetings />;
    default:
      return (
        <section>
          <h1>Not found</h1>
          <p>
            Nothing lives at {path}. <Link href="/meetings">Go to the meetings</Link>.
          </p>
        </section>
      );
  }
}

export function App() {
  useCommunityTopics();
  return (
    <>
      <a class="skip" href="#main">
        Skip to content
      </a>
      <Nav />
      <main id="main">
        <Screen />
      </main>
    </>
  );
}
