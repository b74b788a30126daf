import { useEffect, useState } from "preact/hooks";
import { timestampDate, timestampFromDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { events, session } from "../api";
import { BadRequestSchema } from "../gen/google/rpc/error_details_pb";
import { loadCommunities, mine } from "../data";
import { protoCache } from "../cache";
import {
  EventFilter,
  EventSchema,
  EventStatus,
  ListEventsResponseSchema,
  ListParticipantsResponseSchema,
  type Event,
} from "../gen/munity/events/v1/events_pb";
import { follow, onTopic } from "../live";
import { Link, navigate } from "../router";
import { useStore } from "../store";
import { Empty, ErrorBox, Field, Loading, OtherViolations, UserName, formatDate, useAction, useLoad } from "../ui";

const date = (t?: Timestamp) => (t ? formatDate(timestampDate(t).getTime()) : "");

function when(e: Event): string {
  if (e.status === EventStatus.SCHEDULED && e.chosenOptionId !== undefined) {
    return date(e.options.find((o) => o.id === e.chosenOptionId)?.start);
  }
  const first = e.options[0];
  return first ? `${e.options.length} proposed time${e.options.length > 1 ? "s" : ""}, from ${date(first.start)}` : "";
}

const statusName: Record<number, string> = {
  [EventStatus.VOTING]: "Voting",
  [EventStatus.SCHEDULED]: "Scheduled",
  [EventStatus.CANCELLED]: "Cancelled",
};

export function Meetings() {
  const list = useLoad(
    () => events.listEvents({ filter: EventFilter.UPCOMING, pageSize: 50 }),
    [],
    protoCache("meetings:upcoming", ListEventsResponseSchema),
  );
  // New, changed and closed meetings of the user's communities arrive on
  // their `community:` topics (followed by the app shell).
  useEffect(
    () =>
      onTopic("*", (item) => {
        if (item === "resync" || item.topic.startsWith("community:") || item.kind === "EventCreated") list.reload();
      }),
    [list.reload],
  );
  const data = list.data;
  return (
    <section>
      <div class="heading">
        <h1>Upcoming meetings</h1>
        <Link class="button" href="/meetings/new">
          Propose a meeting
        </Link>
      </div>
      {list.state === "loading" && !data && <Loading what="meetings" />}
      <ErrorBox error={list.error} retry={list.reload} />
      {data && data.events.length === 0 && <Empty>No upcoming meeting. Propose one in a community you are in.</Empty>}
      {data && data.events.length > 0 && (
        <ul class="cards" aria-label="Upcoming meetings">
          {data.events.map((e) => (
            <li key={e.id} class="card">
              <h2>
                <Link href={`/meetings/${e.id}`}>{e.title}</Link>
              </h2>
              <p>{when(e)}</p>
              <p class="muted">
                {statusName[e.status]} · {e.participantCount}
                {e.capacity ? ` of ${e.capacity}` : ""} going{e.location ? ` · ${e.location}` : ""}
              </p>
            </li>
          ))}
        </ul>
      )}
    </section>
  );
}

/** `YYYY-MM-DDTHH:MM` in local time, for datetime-local inputs. */
function local(d: Date): string {
  const pad = (n: number) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

function hoursFromNow(hours: number): string {
  const d = new Date(Date.now() + hours * 3_600_000);
  d.setMinutes(0, 0, 0);
  return local(d);
}

export function NewMeeting() {
  const communities = useStore(mine);
  useEffect(() => {
    if (!communities) void loadCommunities().catch(() => undefined);
  }, [communities]);
  const preset = new URLSearchParams(location.search).get("community") ?? "";
  const [community, setCommunity] = useState(preset);
  const [title, setTitle] = useState("");
  const [location_, setLocation] = useState("");
  const [description, setDescription] = useState("");
  const [options, setOptions] = useState([
    { start: hoursFromNow(48), end: hoursFromNow(49) },
    { start: hoursFromNow(72), end: hoursFromNow(73) },
  ]);
  const [deadline, setDeadline] = useState(hoursFromNow(24));
  const [capacity, setCapacity] = useState("0");
  const create = useAction();
  const memberOf = communities?.communities.filter((c) => communities.roles.has(c.id)) ?? [];
  useEffect(() => {
    if (!community && memberOf.length > 0) setCommunity(memberOf[0].id);
  }, [memberOf.length]);
  const shown = ["title", "description", "location", "community_id", "voting_deadline", "capacity"];
  return (
    <section class="narrow">
      <h1>Propose a meeting</h1>
      <form
        noValidate
        onSubmit={async (e) => {
          e.preventDefault();
          let id = "";
          const ok = await create.act(async () => {
            const created = await events.createEvent({
              title,
              description,
              location: location_,
              communityId: community,
              options: options.map((o) => ({ start: timestampFromDate(new Date(o.start)), end: timestampFromDate(new Date(o.end)) })),
              votingDeadline: timestampFromDate(new Date(deadline)),
              capacity: Number(capacity) || 0,
            });
            id = created.id;
          });
          if (ok) navigate(`/meetings/${id}`);
        }}
      >
        <div class="field">
          <label for="field-community_id">Community</label>
          <select id="field-community_id" name="community_id" value={community} onChange={(e) => setCommunity(e.currentTarget.value)}>
            <option value="">Everyone (no community)</option>
            {memberOf.map((c) => (
              <option key={c.id} value={c.id}>
                {c.name}
              </option>
            ))}
          </select>
          {create.error?.fields["community_id"] && <small class="field-error">{create.error.fields["community_id"]}</small>}
        </div>
        <Field label="Title" name="title" value={title} error={create.error} onInput={(e) => setTitle(e.currentTarget.value)} />
        <Field label="Location" name="location" value={location_} error={create.error} onInput={(e) => setLocation(e.currentTarget.value)} />
        <Field label="Description" name="description" value={description} error={create.error} onInput={(e) => setDescription(e.currentTarget.value)} />
        <fieldset>
          <legend>Proposed times</legend>
          {options.map((o, i) => (
            <div class="option-row" key={i}>
              <Field label={`Option ${i + 1} starts`} name={`options[${i}].start`} type="datetime-local" value={o.start} error={create.error}
                onInput={(e) => setOptions(options.map((x, j) => (j === i ? { ...x, start: e.currentTarget.value } : x)))} />
              <Field label={`Option ${i + 1} ends`} name={`options[${i}].end`} type="datetime-local" value={o.end} error={create.error}
                onInput={(e) => setOptions(options.map((x, j) => (j === i ? { ...x, end: e.currentTarget.value } : x)))} />
              {options.length > 1 && (
                <button type="button" class="small secondary" aria-label={`Remove option ${i + 1}`} onClick={() => setOptions(options.filter((_, j) => j !== i))}>
                  Remove
                </button>
              )}
            </div>
          ))}
          {options.length < 10 && (
            <button type="button" class="secondary" onClick={() => setOptions([...options, { start: hoursFromNow(96 + 24 * options.length), end: hoursFromNow(97 + 24 * options.length) }])}>
              Add a time
            </button>
          )}
        </fieldset>
        <Field label="Voting closes" name="voting_deadline" type="datetime-local" value={deadline} error={create.error} onInput={(e) => setDeadline(e.currentTarget.value)} />
        <Field label="Capacity" name="capacity" type="number" min="0" hint="0: no limit" value={capacity} error={create.error} onInput={(e) => setCapacity(e.currentTarget.value)} />
        <OtherViolations error={create.error} shown={[...shown, ...options.flatMap((_, i) => [`options[${i}].start`, `options[${i}].end`])]} />
        <ErrorBox error={create.error} />
        <button type="submit" disabled={create.busy}>
          Propose meeting
        </button>
      </form>
    </section>
  );
}

/** The owner changes a meeting's title, description, location or capacity
 * (`UpdateEvent`: only the fields changed are sent). */
export function EditMeeting(props: { id: string }) {
  const me = useStore(session)?.userId ?? "";
  const event = useLoad(() => events.getEvent({ eventId: props.id }), [props.id], protoCache(`meeting:${props.id}`, EventSchema));
  const e = event.data;
  const [form, setForm] = useState<{ title: string; description: string; location: string; capacity: string } | null>(null);
  useEffect(() => {
    if (e && !form) setForm({ title: e.title, description: e.description, location: e.location, capacity: String(e.capacity) });
  }, [e]);
  const save = useAction();
  const set = (field: "title" | "description" | "location" | "capacity") => (ev: { currentTarget: HTMLInputElement }) =>
    form && setForm({ ...form, [field]: ev.currentTarget.value });
  return (
    <section class="narrow">
      <h1>Edit meeting</h1>
      {event.state === "loading" && !e && <Loading what="the meeting" />}
      <ErrorBox error={event.error} retry={event.reload} />
      {e && e.ownerId !== me && <p class="empty">Only the person who proposed this meeting can change it.</p>}
      {e && form && e.ownerId === me && (
        <form
          noValidate
          onSubmit={async (ev) => {
            ev.preventDefault();
            const capacity = form.capacity.trim() === "" ? 0 : Number(form.capacity);
            const ok = await save.act(async () => {
              // A capacity no uint32 can carry is refused here, by field, as the server refuses the rest.
              if (!Number.isInteger(capacity) || capacity < 0 || capacity > 0xffffffff) {
                throw new ConnectError("capacity: a whole number, 0 or more", Code.InvalidArgument, undefined, [
                  { desc: BadRequestSchema, value: { fieldViolations: [{ field: "capacity", description: "must be a whole number, 0 (no limit) or more" }] } },
                ]);
              }
              await events.updateEvent({
                eventId: e.id,
                title: form.title !== e.title ? form.title : undefined,
                description: form.description !== e.description ? form.description : undefined,
                location: form.location !== e.location ? form.location : undefined,
                capacity: capacity !== e.capacity ? capacity : undefined,
              });
            });
            if (ok) navigate(`/meetings/${e.id}`);
          }}
        >
          <Field label="Title" name="title" value={form.title} error={save.error} onInput={set("title")} />
          <Field label="Location" name="location" value={form.location} error={save.error} onInput={set("location")} />
          <Field label="Description" name="description" value={form.description} error={save.error} onInput={set("description")} />
          <Field label="Capacity" name="capacity" type="number" min="0" hint="0: no limit; not below the people already going" value={form.capacity}
            error={save.error} onInput={set("capacity")} />
          <OtherViolations error={save.error} shown={["title", "description", "location", "capacity"]} />
          <ErrorBox error={save.error} />
          <div class="actions">
            <button type="submit" disabled={save.busy}>
              Save changes
            </button>
            <Link class="button secondary" href={`/meetings/${e.id}`}>
              Back to the meeting
            </Link>
          </div>
        </form>
      )}
    </section>
  );
}

export function MeetingPage(props: { id: string }) {
  const me = useStore(session)?.userId ?? "";
  const event = useLoad(() => events.getEvent({ eventId: props.id }), [props.id], protoCache(`meeting:${props.id}`, EventSchema));
  const participants = useLoad(
    () => events.listParticipants({ eventId: props.id, pageSize: 500 }),
    [props.id],
    protoCache(`meeting:${props.id}:participants`, ListParticipantsResponseSchema),
  );
  const action = useAction();
  useEffect(() => follow(`event:${props.id}`), [props.id]);
  useEffect(
    () =>
      onTopic(`event:${props.id}`, () => {
        event.reload();
        participants.reload();
      }),
    [props.id, event.reload, participants.reload],
  );
  const e = event.data;
  const going = participants.data?.participants.some((p) => p.userId === me) ?? false;
  const isOwner = e?.ownerId === me;
  const change = (call: () => Promise<unknown>) =>
    action.act(async () => {
      await call();
      event.reload();
      participants.reload();
    });
  const chosen = e?.options.find((o) => o.id === e.chosenOptionId);
  const [confirmCancel, setConfirmCancel] = useState(false);
  const open = e !== undefined && e.status !== EventStatus.CANCELLED;
  return (
    <section>
      {event.state === "loading" && !e && <Loading what="the meeting" />}
      <ErrorBox error={event.error} retry={event.reload} />
      {e && (
        <>
          <h1>{e.title}</h1>
          <p class="muted">
            <span class={`badge status-${statusName[e.status]?.toLowerCase()}`}>{statusName[e.status]}</span> Proposed by <UserName id={e.ownerId} />
            {e.location ? ` · ${e.location}` : ""}
          </p>
          {e.description && <p>{e.description}</p>}
          {e.status === EventStatus.CANCELLED && (
            <p class="notice" role="status">
              This meeting was cancelled.
            </p>
          )}
          {chosen && (
            <p class="chosen" role="status">
              Happens <strong data-testid="chosen-time">{date(chosen.start)}</strong> – {date(chosen.end)}
            </p>
          )}
          <h2>Proposed times</h2>
          {e.status === EventStatus.VOTING && <p class="muted">Voting closes {date(e.votingDeadline)}.</p>}
          <ul class="options" aria-label="Proposed times">
            {e.options.map((o) => {
              const mine = e.myVotes.includes(o.id);
              return (
                <li key={o.id} class={o.id === e.chosenOptionId ? "option chosen-option" : "option"}>
                  <span>
                    {date(o.start)} – {date(o.end)}
                  </span>
                  <span class="votes" aria-live="polite" data-testid={`votes-${o.id}`}>
                    {o.votes} vote{o.votes === 1 ? "" : "s"}
                  </span>
                  {e.status === EventStatus.VOTING && (
                    <button type="button" class={mine ? "small" : "small secondary"} aria-pressed={mine} disabled={action.busy}
                      onClick={() => change(() => (mine ? events.unvote : events.vote)({ eventId: e.id, optionId: o.id }))}>
                      {mine ? `Unvote option ${o.id + 1}` : `Vote for option ${o.id + 1}`}
                    </button>
                  )}
                </li>
              );
            })}
          </ul>
          <div class="actions">
            {isOwner && open && (
              <Link class="button secondary" href={`/meetings/${e.id}/edit`}>
                Edit meeting
              </Link>
            )}
            {isOwner && e.status === EventStatus.VOTING && (
              <button type="button" disabled={action.busy} onClick={() => change(() => events.closeVoting({ eventId: e.id }))}>
                Close voting
              </button>
            )}
            {e.status !== EventStatus.CANCELLED && !going && (
              <button type="button" disabled={action.busy} onClick={() => change(() => events.join({ eventId: e.id }))}>
                Join meeting
              </button>
            )}
            {going && (
              <button type="button" class="secondary" disabled={action.busy} onClick={() => change(() => events.leave({ eventId: e.id }))}>
                Leave meeting
              </button>
            )}
            {isOwner && open && !confirmCancel && (
              <button type="button" class="secondary" disabled={action.busy} onClick={() => setConfirmCancel(true)}>
                Cancel meeting
              </button>
            )}
          </div>
          {isOwner && open && confirmCancel && (
            <div class="notice" role="group" aria-label="Cancel this meeting">
              <p>Cancel “{e.title}” for everyone? This cannot be undone.</p>
              <div class="actions">
                <button type="button" class="danger" disabled={action.busy}
                  onClick={async () => {
                    if (await change(() => events.cancelEvent({ eventId: e.id }))) setConfirmCancel(false);
                  }}>
                  Yes, cancel the meeting
                </button>
                <button type="button" class="secondary" disabled={action.busy} onClick={() => setConfirmCancel(false)}>
                  Keep it
                </button>
              </div>
            </div>
          )}
          <ErrorBox error={action.error} />
          <h2>
            Participants{" "}
            <span class="muted" data-testid="capacity">
              {e.participantCount}
              {e.capacity ? ` of ${e.capacity}` : ""} going
            </span>
          </h2>
          <ErrorBox error={participants.error} retry={participants.reload} />
          {participants.data && participants.data.participants.length === 0 && <Empty>Nobody has joined yet.</Empty>}
          {participants.data && participants.data.participants.length > 0 && (
            <ul aria-label="Participants">
              {participants.data.participants.map((p) => (
                <li key={p.userId}>
                  <UserName id={p.userId} />
                  {p.userId === me && " (you)"}
                </li>
              ))}
            </ul>
          )}
        </>
      )}
    </section>
  );
}
