import { useEffect, useState } from "preact/hooks";
import { timestampDate, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { callError, warehouse, type CallError } from "../api";
import { BucketWidth, Order, type Record as WarehouseRecord } from "../gen/munity/warehouse/v1/warehouse_pb";
import { Empty, ErrorBox, Loading, formatDate, useLoad } from "../ui";

const KNOWN = ["domain.events", "domain.users"];
const MINUTE = 60_000;

function summary(r: WarehouseRecord): string {
  const type = r.attributes["type"];
  if (type) return type.split(".").pop() ?? type;
  if (r.payload.case === "value") return JSON.stringify(r.payload.value).slice(0, 80);
  return r.contentType || "";
}

/** Records per minute over the last hour (Warehouse/Aggregate). */
function PerMinute(props: { source: string }) {
  const buckets = useLoad(async () => {
    const to = new Date();
    const from = new Date(to.getTime() - 60 * MINUTE);
    const response = await warehouse.aggregate({
      source: props.source,
      from: timestampFromDate(from),
      to: timestampFromDate(to),
      bucket: BucketWidth.MINUTE,
    });
    const counts = new Map(response.buckets.map((b) => [b.start ? timestampDate(b.start).getTime() : 0, Number(b.count)]));
    const first = Math.floor(from.getTime() / MINUTE) * MINUTE;
    return Array.from({ length: 61 }, (_, i) => counts.get(first + i * MINUTE) ?? 0);
  }, [props.source]);
  const values = buckets.data ?? [];
  const max = Math.max(1, ...values);
  const total = values.reduce((a, b) => a + b, 0);
  return (
    <figure class="chart">
      <figcaption>
        Records per minute, last hour <span class="muted">({total} in all)</span>{" "}
        <button type="button" class="link" onClick={buckets.reload}>
          Refresh
        </button>
      </figcaption>
      <ErrorBox error={buckets.error} />
      <svg viewBox="0 0 610 120" role="img" aria-label={`Records of ${props.source} per minute over the last hour: ${total} in all, at most ${max} in one minute`}>
        {values.map((v, i) => (
          <rect key={i} x={i * 10} y={100 - (v / max) * 100} width={8} height={(v / max) * 100} class="bar">
            <title>{v}</title>
          </rect>
        ))}
        <line x1={0} y1={100} x2={610} y2={100} class="axis" />
        <text x={0} y={118} class="tick wide">-60 min</text>
        <text x={580} y={118} class="tick wide">now</text>
      </svg>
    </figure>
  );
}

/** The newest records (Query), then each new one as it is stored (Tail). */
function LiveTail(props: { source: string }) {
  const [rows, setRows] = useState<WarehouseRecord[] | null>(null);
  const [error, setError] = useState<CallError | null>(null);
  const [state, setState] = useState("connecting");
  useEffect(() => {
    const abort = new AbortController();
    setRows(null);
    setError(null);
    (async () => {
      let backoff = 1_000;
      try {
        const now = new Date();
        const recent = await warehouse.query({
          source: props.source,
          from: timestampFromDate(new Date(now.getTime() - 24 * 60 * MINUTE)),
          to: timestampFromDate(new Date(now.getTime() + MINUTE)),
          order: Order.DESCENDING,
          pageSize: 20,
        }, { signal: abort.signal });
        setRows(recent.records);
      } catch (e) {
        if (abort.signal.aborted) return;
        setError(callError(e));
        setRows([]);
      }
      let after = "";
      while (!abort.signal.aborted) {
        try {
          setState("live");
          for await (const m of warehouse.tail({ source: props.source, after }, { signal: abort.signal })) {
            if (m.kind.case === "record" && m.kind.value.record) {
              const record = m.kind.value.record;
              after = m.kind.value.cursor;
              setRows((r) => [record, ...(r ?? []).filter((x) => x.id !== record.id)].slice(0, 50));
            }
            backoff = 1_000;
          }
        } catch (e) {
          if (abort.signal.aborted) return;
          const failure = callError(e);
          if (failure.code !== "Unavailable") setError(failure);
        }
        setState("reconnecting");
        await new Promise((resolve) => setTimeout(resolve, backoff));
        backoff = Math.min(backoff * 2, 15_000);
      }
    })();
    return () => abort.abort();
  }, [props.source]);
  return (
    <>
      <h2>
        Live tail <span class="muted">({state})</span>
      </h2>
      <ErrorBox error={error} />
      {rows === null && <Loading what="records" />}
      {rows && rows.length === 0 && <Empty>No record in the last day: new ones appear here as they are stored.</Empty>}
      {rows && rows.length > 0 && (
        <table aria-label={`Records of ${props.source}, newest first`}>
          <thead>
            <tr>
              <th scope="col">Time</th>
              <th scope="col">What</th>
              <th scope="col">Attributes</th>
            </tr>
          </thead>
          <tbody>
            {rows.map((r) => (
              <tr key={r.id} data-testid="record">
                <td>{r.time ? formatDate(timestampDate(r.time).getTime()) : ""}</td>
                <td>{summary(r)}</td>
                <td class="muted">
                  {Object.entries(r.attributes)
                    .filter(([k]) => k !== "type")
                    .sort(([a], [b]) => a.localeCompare(b))
                    .map(([k, v]) => `${k}=${v}`)
                    .join(" ")}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </>
  );
}

export function Warehouse() {
  const [source, setSource] = useState(KNOWN[0]);
  const [draft, setDraft] = useState(KNOWN[0]);
  return (
    <section>
      <h1>Warehouse</h1>
      <form
        class="inline-form"
        onSubmit={(e) => {
          e.preventDefault();
          setSource(draft.trim());
        }}
      >
        <label for="source">Source</label>
        <input id="source" list="sources" value={draft} onInput={(e) => setDraft(e.currentTarget.value)} />
        <datalist id="sources">
          {KNOWN.map((s) => (
            <option key={s} value={s} />
          ))}
        </datalist>
        <button type="submit">Show</button>
      </form>
      {source && (
        <>
          <PerMinute source={source} />
          <LiveTail source={source} />
        </>
      )}
    </section>
  );
}
