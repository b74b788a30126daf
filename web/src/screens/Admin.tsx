import { timestampDate, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { events } from "../api";
import { StatsWindow, type Stats } from "../gen/munity/events/v1/events_pb";
import { Link } from "../router";
import { Empty, ErrorBox, Loading, formatDate, useLoad } from "../ui";

interface Hour {
  start: Date;
  stats: Stats;
}

const HOUR = 3_600_000;

/** The last 24 hours, one GetStats call per hour (the counters are kept per
 * hour), and the day's totals with its most joined meetings. */
async function loadStats(): Promise<{ day: Stats; hours: Hour[] }> {
  const now = new Date();
  now.setMinutes(0, 0, 0);
  const starts = Array.from({ length: 24 }, (_, i) => new Date(now.getTime() - (23 - i) * HOUR));
  const [day, ...hours] = await Promise.all([
    events.getStats({ window: StatsWindow.LAST_DAY, top: 10 }),
    ...starts.map((start) =>
      events.getStats({ from: timestampFromDate(start), to: timestampFromDate(new Date(start.getTime() + HOUR - 1000)) }),
    ),
  ]);
  return { day, hours: hours.map((stats, i) => ({ start: starts[i], stats })) };
}

function Chart(props: { title: string; hours: Hour[]; value: (s: Stats) => number }) {
  const values = props.hours.map((h) => props.value(h.stats));
  const max = Math.max(1, ...values);
  const total = values.reduce((a, b) => a + b, 0);
  const width = 24 * 20;
  const height = 120;
  return (
    <figure class="chart">
      <figcaption>
        {props.title} <span class="muted">({total} in 24 h)</span>
      </figcaption>
      <svg viewBox={`0 0 ${width} ${height + 24}`} role="img" aria-label={`${props.title} per hour over the last 24 hours: ${total} in all, at most ${max} in one hour`}>
        {values.map((v, i) => {
          const h = (v / max) * height;
          return (
            <rect key={i} x={i * 20 + 3} y={height - h} width={14} height={Math.max(h, v > 0 ? 2 : 0)} class="bar">
              <title>
                {props.hours[i].start.getHours()}:00 – {v}
              </title>
            </rect>
          );
        })}
        <line x1={0} y1={height} x2={width} y2={height} class="axis" />
        {props.hours.map((h, i) =>
          i % 6 === 0 ? (
            <text key={i} x={i * 20 + 3} y={height + 20} class="tick">
              {h.start.getHours()}:00
            </text>
          ) : null,
        )}
      </svg>
    </figure>
  );
}

export function Admin() {
  const stats = useLoad(loadStats, []);
  const data = stats.data;
  return (
    <section>
      <div class="heading">
        <h1>Activity</h1>
        <button type="button" class="secondary" onClick={stats.reload}>
          Refresh
        </button>
      </div>
      {stats.state === "loading" && !data && <Loading what="statistics" />}
      <ErrorBox error={stats.error} retry={stats.reload} />
      {data && (
        <>
          <p class="muted">
            From {data.day.from ? formatDate(timestampDate(data.day.from).getTime()) : ""} to{" "}
            {data.day.to ? formatDate(timestampDate(data.day.to).getTime()) : ""}
          </p>
          <dl class="totals">
            <div><dt>Meetings proposed</dt><dd data-testid="events-created">{data.day.eventsCreated.toString()}</dd></div>
            <div><dt>Votes</dt><dd data-testid="votes-cast">{data.day.votesCast.toString()}</dd></div>
            <div><dt>Joins</dt><dd data-testid="joins">{data.day.joins.toString()}</dd></div>
            <div><dt>Active people</dt><dd data-testid="active-users">{data.day.activeUsers.toString()}</dd></div>
          </dl>
          <div class="charts">
            <Chart title="Votes" hours={data.hours} value={(s) => Number(s.votesCast)} />
            <Chart title="Joins" hours={data.hours} value={(s) => Number(s.joins)} />
            <Chart title="Active people" hours={data.hours} value={(s) => Number(s.activeUsers)} />
          </div>
          <h2>Most joined meetings</h2>
          {data.day.topEvents.length === 0 && <Empty>No meeting was joined in the last day.</Empty>}
          {data.day.topEvents.length > 0 && (
            <table>
              <thead>
                <tr>
                  <th scope="col">Meeting</th>
                  <th scope="col">Joins (less leaves)</th>
                  <th scope="col">Participants now</th>
                </tr>
              </thead>
              <tbody>
                {data.day.topEvents.map((e) => (
                  <tr key={e.eventId}>
                    <td>
                      <Link href={`/meetings/${e.eventId}`}>{e.title}</Link>
                    </td>
                    <td>{e.joins.toString()}</td>
                    <td>{e.participantCount}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          )}
        </>
      )}
    </section>
  );
}
