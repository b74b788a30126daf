// State several screens share: which communities the user is in (the
// protos list every community, and members per community), and names of
// users by id.
import { MemberRole, type Community } from "./gen/munity/users/v1/users_pb";
import { session, users } from "./api";
import { Store } from "./store";

export interface Mine {
  communities: Community[];
  /** community id → the user's role there. */
  roles: Map<string, MemberRole>;
}

export const mine = new Store<Mine | null>(null);

/** Every community (up to 500), and the user's role in each. */
export async function loadCommunities(): Promise<Mine> {
  const me = session.get()?.userId;
  const communities: Community[] = [];
  let pageToken = "";
  do {
    const page = await users.listCommunities({ pageSize: 100, pageToken });
    communities.push(...page.communities);
    pageToken = page.nextPageToken;
  } while (pageToken && communities.length < 500);
  const roles = new Map<string, MemberRole>();
  await Promise.all(
    communities.map(async (c) => {
      const members = await users.listMembers({ communityId: c.id, pageSize: 500 });
      const m = members.members.find((m) => m.userId === me);
      if (m) roles.set(c.id, m.role);
    }),
  );
  const result = { communities, roles };
  mine.set(result);
  return result;
}

session.subscribe((s) => {
  if (!s) mine.set(null);
});

const names = new Map<string, Promise<string>>();

/** A user's display name (cached). */
export function userName(id: string): Promise<string> {
  let name = names.get(id);
  if (!name) {
    name = users.getUser({ userId: id }).then(
      (u) => u.displayName || u.email,
      () => {
        names.delete(id);
        return id.slice(0, 8);
      },
    );
    names.set(id, name);
  }
  return name;
}

export const roleName: Record<number, string> = {
  [MemberRole.MEMBER]: "member",
  [MemberRole.MODERATOR]: "moderator",
  [MemberRole.OWNER]: "owner",
};
