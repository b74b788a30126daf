import { useState } from "preact/hooks";
import { session, users } from "../api";
import { loadCommunities, mine, roleName } from "../data";
import { create } from "@bufbuild/protobuf";
import { protoCache, type CacheSpec } from "../cache";
import type { Mine } from "../data";
import {
  CommunitySchema,
  ListCommunitiesResponseSchema,
  ListMembersResponseSchema,
  MemberRole,
} from "../gen/munity/users/v1/users_pb";
import { fromBinary, toBinary } from "@bufbuild/protobuf";

const communitiesCache: CacheSpec<Mine> = {
  key: "communities",
  save: (mine) => ({
    list: toBinary(ListCommunitiesResponseSchema, create(ListCommunitiesResponseSchema, { communities: mine.communities })),
    roles: [...mine.roles],
  }),
  restore: (stored) => {
    const { list, roles } = stored as { list: Uint8Array; roles: [string, MemberRole][] };
    return { communities: fromBinary(ListCommunitiesResponseSchema, list).communities, roles: new Map(roles) };
  },
};
import { Link, navigate } from "../router";
import { useStore } from "../store";
import { Empty, ErrorBox, Field, Loading, UserName, formatDate, useAction, useLoad } from "../ui";
import { timestampDate } from "@bufbuild/protobuf/wkt";

export function Communities() {
  const list = useLoad(loadCommunities, [], communitiesCache);
  const [name, setName] = useState("");
  const [description, setDescription] = useState("");
  const create = useAction();
  const join = useAction();
  const data = list.data;
  return (
    <section>
      <h1>Communities</h1>
      <div class="columns">
        <div>
          <h2>All communities</h2>
          {list.state === "loading" && !data && <Loading what="communities" />}
          <ErrorBox error={list.error} retry={list.reload} />
          <ErrorBox error={join.error} />
          {data && data.communities.length === 0 && <Empty>No community yet: create the first one.</Empty>}
          {data && data.communities.length > 0 && (
            <ul class="cards" aria-label="Communities">
              {data.communities.map((c) => {
                const role = data.roles.get(c.id);
                return (
                  <li key={c.id} class="card">
                    <h3>
                      <Link href={`/communities/${c.id}`}>{c.name}</Link>
                    </h3>
                    {c.description && <p>{c.description}</p>}
                    <p class="muted">{role ? `You are ${role === MemberRole.OWNER ? "the" : "a"} ${roleName[role]}` : "You are not a member"}</p>
                    {!role && (
                      <button type="button" disabled={join.busy} onClick={() => join.act(async () => { await users.joinCommunity({ communityId: c.id }); list.reload(); })}>
                        Join {c.name}
                      </button>
                    )}
                  </li>
                );
              })}
            </ul>
          )}
        </div>
        <form
          class="panel"
          aria-labelledby="create-community"
          onSubmit={async (e) => {
            e.preventDefault();
            let id = "";
            if (await create.act(async () => { id = (await users.createCommunity({ name, description })).id; })) {
              setName("");
              setDescription("");
              await loadCommunities().catch(() => undefined);
              navigate(`/communities/${id}`);
            }
          }}
        >
          <h2 id="create-community">Create a community</h2>
          <Field label="Name" name="name" value={name} error={create.error} onInput={(e) => setName(e.currentTarget.value)} />
          <Field label="Description" name="description" value={description} error={create.error} onInput={(e) => setDescription(e.currentTarget.value)} />
          <ErrorBox error={create.error} />
          <button type="submit" disabled={create.busy}>
            Create community
          </button>
        </form>
      </div>
    </section>
  );
}

export function CommunityPage(props: { id: string }) {
  const me = useStore(session)?.userId ?? "";
  const community = useLoad(
    () => users.getCommunity({ communityId: props.id }),
    [props.id],
    protoCache(`community:${props.id}`, CommunitySchema),
  );
  const members = useLoad(
    () => users.listMembers({ communityId: props.id, pageSize: 500 }),
    [props.id],
    protoCache(`community:${props.id}:members`, ListMembersResponseSchema),
  );
  const action = useAction();
  const myRole = members.data?.members.find((m) => m.userId === me)?.role;
  const manage = myRole === MemberRole.OWNER || myRole === MemberRole.MODERATOR;
  const after = async () => {
    members.reload();
    await loadCommunities().catch(() => undefined);
  };
  useStore(mine);
  return (
    <section>
      {community.state === "loading" && !community.data && <Loading what="the community" />}
      <ErrorBox error={community.error} retry={community.reload} />
      {community.data && (
        <>
          <h1>{community.data.name}</h1>
          {community.data.description && <p>{community.data.description}</p>}
          <p class="muted">
            Created {community.data.createdAt ? formatDate(timestampDate(community.data.createdAt).getTime()) : ""}
          </p>
          <div class="actions">
            {myRole === undefined && members.state === "ready" && (
              <button type="button" disabled={action.busy} onClick={() => action.act(async () => { await users.joinCommunity({ communityId: props.id }); await after(); })}>
                Join
              </button>
            )}
            {myRole !== undefined && (
              <>
                <Link class="button" href={`/meetings/new?community=${props.id}`}>
                  Propose a meeting
                </Link>
                {myRole !== MemberRole.OWNER && (
                  <button type="button" class="secondary" disabled={action.busy} onClick={() => action.act(async () => { await users.leaveCommunity({ communityId: props.id }); await after(); })}>
                    Leave
                  </button>
                )}
              </>
            )}
          </div>
          <ErrorBox error={action.error} />
        </>
      )}
      <h2>Members</h2>
      {members.state === "loading" && !members.data && <Loading what="members" />}
      <ErrorBox error={members.error} retry={members.reload} />
      {members.data && members.data.members.length === 0 && <Empty>No members.</Empty>}
      {members.data && members.data.members.length > 0 && (
        <table>
          <thead>
            <tr>
              <th scope="col">Member</th>
              <th scope="col">Role</th>
              <th scope="col">Joined</th>
              {manage && <th scope="col">Manage</th>}
            </tr>
          </thead>
          <tbody>
            {members.data.members.map((m) => (
              <tr key={m.userId}>
                <td>
                  <UserName id={m.userId} />
                  {m.userId === me && " (you)"}
                </td>
                <td>{roleName[m.role]}</td>
                <td>{m.joinedAt ? formatDate(timestampDate(m.joinedAt).getTime()) : ""}</td>
                {manage && (
                  <td>
                    {m.role !== MemberRole.OWNER && m.userId !== me && (
                      <>
                        <button type="button" class="small secondary" disabled={action.busy} onClick={() => action.act(async () => {
                          await users.setMemberRole({ communityId: props.id, userId: m.userId, role: m.role === MemberRole.MODERATOR ? MemberRole.MEMBER : MemberRole.MODERATOR });
                          members.reload();
                        })}>
                          {m.role === MemberRole.MODERATOR ? "Make member" : "Make moderator"}
                        </button>{" "}
                        <button type="button" class="small danger" disabled={action.busy} onClick={() => action.act(async () => { await users.removeMember({ communityId: props.id, userId: m.userId }); members.reload(); })}>
                          Remove
                        </button>
                      </>
                    )}
                  </td>
                )}
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}
