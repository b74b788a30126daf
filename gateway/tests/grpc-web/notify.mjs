// notify-svc's server stream over binary gRPC-web, through the gateway of
// `munity dev`, with @connectrpc/connect-node's gRPC-web transport
// (HTTP/1.1: what a browser's fetch uses): sign up, propose a meeting,
// follow it, vote, and see the vote arrive; then resume after the last
// offset and get exactly the vote cast while away.
//
//   node notify.mjs --base-url http://127.0.0.1:PORT --descriptors munity.fds \
//     --email someone@example.com

import { createClient } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-node";
import { check, equal, loadRegistry, parseArgs, run, service, within } from "./lib.mjs";

const args = parseArgs();

/**
 * The next notification of `stream` other than the meeting's creation
 * (which may arrive after the subscription: it is published a moment after
 * CreateEvent answers); heartbeats and the first message skipped.
 */
async function nextNotification(iterator) {
  for (;;) {
    const { value, done } = await iterator.next();
    check(!done, "the stream goes on");
    if (value.message.case !== "notification") continue;
    if (value.message.value.kind === "munity.events.v1.EventCreated") continue;
    return value.message.value;
  }
}

run("notify over grpc-web", async () => {
  const registry = loadRegistry(args.descriptors);
  const transport = createGrpcWebTransport({ baseUrl: args["base-url"], httpVersion: "1.1" });
  const users = createClient(service(registry, "munity.users.v1.Users"), transport);
  const events = createClient(service(registry, "munity.events.v1.Events"), transport);
  const notify = createClient(service(registry, "munity.notify.v1.Notify"), transport);

  const session = await users.register({
    email: args.email,
    password: "correct horse",
    displayName: "Web Subscriber",
  });
  const auth = { headers: { authorization: `Bearer ${session.accessToken}` } };
  const hours = (h) => ({ seconds: BigInt(Math.floor(Date.now() / 1000) + h * 3600), nanos: 0 });
  const event = await events.createEvent(
    {
      title: "Web meeting",
      options: [1, 2].map((h) => ({ start: hours(10 * h), end: hours(10 * h + 1) })),
      votingDeadline: hours(5),
    },
    auth,
  );
  const topic = `event:${event.id}`;

  const abort = new AbortController();
  const stream = notify.subscribe({ topics: [topic] }, { ...auth, signal: abort.signal });
  const iterator = stream[Symbol.asyncIterator]();
  const first = await within(10_000, "subscribed", iterator.next());
  equal(first.value.message.case, "subscribed", "the first message");
  await events.vote({ eventId: event.id, optionId: 1 }, auth);
  const vote = await within(10_000, "the vote", nextNotification(iterator));
  equal(vote.topic, topic, "topic");
  equal(vote.kind, "munity.events.v1.VoteCast", "kind");
  check(vote.payload.typeUrl.endsWith("munity.events.v1.VoteCast"), "an Any payload");
  abort.abort();

  // Away for one vote; resumed after the last offset seen.
  await events.vote({ eventId: event.id, optionId: 0 }, auth);
  const again = notify.subscribe(
    { resume: [{ topic, epoch: vote.epoch, offset: vote.offset }] },
    auth,
  )[Symbol.asyncIterator]();
  const missed = await within(10_000, "the missed vote", nextNotification(again));
  check(missed.offset === vote.offset + 1n, `the next offset (${missed.offset} after ${vote.offset})`);
  equal(missed.kind, "munity.events.v1.VoteCast", "the missed vote");
});
