// Runs inside headless Chromium (served by browser.mjs): Connect's
// gRPC-web transport for browsers (@connectrpc/connect-web, fetch and
// streamed response bodies) calls the gateway from the page's origin. The
// results go back to browser.mjs, which makes the assertions.

import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { createFileRegistry, fromBinary } from "@bufbuild/protobuf";
import { FileDescriptorSetSchema } from "@bufbuild/protobuf/wkt";

async function loadRegistry(count) {
  const sets = [];
  for (let i = 0; i < count; i++) {
    const response = await fetch(`/descriptors/${i}.bin`);
    const bytes = new Uint8Array(await response.arrayBuffer());
    sets.push(createFileRegistry(fromBinary(FileDescriptorSetSchema, bytes)));
  }
  return createFileRegistry(...sets);
}

function failure(error) {
  const e = ConnectError.from(error);
  return {
    code: Code[e.code],
    message: e.rawMessage,
    detailTypes: e.details.map((d) => d.type),
  };
}

async function expectFailure(call) {
  try {
    await call();
  } catch (error) {
    return failure(error);
  }
  return { code: "OK" };
}

async function clients(gateway, descriptorCount) {
  const registry = await loadRegistry(descriptorCount);
  const transport = createGrpcWebTransport({ baseUrl: gateway });
  return {
    users: createClient(registry.getService("munity.users.v1.Users"), transport),
    health: createClient(registry.getService("grpc.health.v1.Health"), transport),
  };
}

/** From an allowed origin: unary calls, errors, a server stream. */
async function allowedOrigin({ gateway, email, descriptorCount }) {
  const { users, health } = await clients(gateway, descriptorCount);
  const result = { origin: location.origin };

  const session = await users.register({
    email,
    password: "correct horse",
    displayName: "Browser",
  });
  result.registeredEmail = session.user.email;
  const me = await users.getMe({}, { headers: { authorization: `Bearer ${session.accessToken}` } });
  result.me = { email: me.email, displayName: me.displayName, sameId: me.id === session.user.id };

  result.unauthenticated = await expectFailure(() => users.getMe({}));
  result.invalid = await expectFailure(() =>
    users.register({ email: "nope", password: "short", displayName: "x" }),
  );

  // Server streaming over fetch: the first message arrives while the
  // response is still open; then the page cancels it.
  const abort = new AbortController();
  const iterator = health
    .watch({ service: "munity.users.v1.Users" }, { signal: abort.signal })
    [Symbol.asyncIterator]();
  const first = await iterator.next();
  result.watchFirst = first.done ? null : first.value.status;
  abort.abort();
  result.afterCancel = await expectFailure(() => iterator.next());
  return result;
}

/** From an origin the gateway does not allow: the browser must block it. */
async function refusedOrigin({ gateway, descriptorCount }) {
  const { users } = await clients(gateway, descriptorCount);
  return { origin: location.origin, call: await expectFailure(() => users.getJwks({})) };
}

window.munity = { allowedOrigin, refusedOrigin };
