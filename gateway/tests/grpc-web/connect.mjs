// Binary gRPC-web through @connectrpc/connect-node's gRPC-web transport,
// with service descriptors built at run time from the server's descriptor
// sets (no code generation).
//
//   node connect.mjs --base-url http://127.0.0.1:PORT --http 1.1|2 \
//     --descriptors users.fds --descriptors health.fds --email someone@example.com

import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-node";
import {
  badRequestFields,
  check,
  equal,
  loadRegistry,
  parseArgs,
  run,
  service,
  within,
} from "./lib.mjs";

const args = parseArgs();
const httpVersion = args.http;
const name = `connect grpc-web (HTTP/${httpVersion})`;

async function expectError(code, call) {
  try {
    await call();
  } catch (error) {
    const e = ConnectError.from(error);
    equal(Code[e.code], Code[code], `code of ${e.message}`);
    return e;
  }
  throw new Error(`expected ${Code[code]}, the call succeeded`);
}

run(name, async () => {
  check(httpVersion === "1.1" || httpVersion === "2", "--http is 1.1 or 2");
  const registry = loadRegistry(args.descriptors);
  const transport = createGrpcWebTransport({
    baseUrl: args["base-url"],
    httpVersion,
  });
  const users = createClient(service(registry, "munity.users.v1.Users"), transport);
  const health = createClient(service(registry, "grpc.health.v1.Health"), transport);

  // Unary: Register, then GetMe with the access token.
  const session = await users.register({
    email: args.email,
    password: "correct horse",
    displayName: "Web Client",
  });
  check(session.accessToken.split(".").length === 3, "Register returns a JWT");
  equal(session.user.email, args.email, "Register's user");
  const me = await users.getMe({}, { headers: { authorization: `Bearer ${session.accessToken}` } });
  equal(me.email, args.email, "GetMe email");
  equal(me.displayName, "Web Client", "GetMe display name");
  equal(me.id, session.user.id, "GetMe id");

  // Errors: from the edge (no token) and from the service (bad input, with
  // google.rpc.BadRequest details carried in the trailers).
  const unauthenticated = await expectError(Code.Unauthenticated, () => users.getMe({}));
  check(unauthenticated.rawMessage.length > 0, "Unauthenticated has a message");
  // Refused at the edge too, while the client is still sending a large body:
  // the status must reach the client all the same.
  await expectError(Code.Unauthenticated, () =>
    users.updateProfile({ displayName: "x".repeat(64 * 1024) }),
  );
  const invalid = await expectError(Code.InvalidArgument, () =>
    users.register({ email: "nope", password: "short", displayName: "x" }),
  );
  check(
    invalid.rawMessage.startsWith("invalid request:") &&
      invalid.rawMessage.includes("email") &&
      invalid.rawMessage.includes("password"),
    `InvalidArgument message names the fields: ${invalid.rawMessage}`,
  );
  const details = invalid.details.filter((d) => d.type === "google.rpc.BadRequest");
  equal(details.length, 1, "one google.rpc.BadRequest detail");
  equal(badRequestFields(details[0].value), ["email", "password"], "BadRequest fields");

  // Server streaming: Watch sends the current status and stays open; read
  // the first message, then abort.
  const abort = new AbortController();
  const stream = health.watch({ service: "munity.users.v1.Users" }, { signal: abort.signal });
  const iterator = stream[Symbol.asyncIterator]();
  const first = await within(10_000, "first Health/Watch message", iterator.next());
  check(!first.done, "Watch sent a message");
  equal(first.value.status, 1, "Watch status SERVING");
  abort.abort();
  await expectError(Code.Canceled, () => iterator.next());

  // CORS on real calls: an allowed origin is echoed, another is refused.
  let allowOrigin;
  await users.getJwks(
    {},
    {
      headers: { origin: "http://localhost:3000" },
      onHeader: (headers) => (allowOrigin = headers.get("access-control-allow-origin")),
    },
  );
  equal(allowOrigin, "http://localhost:3000", "access-control-allow-origin");
  const refused = await expectError(Code.PermissionDenied, () =>
    users.getJwks({}, { headers: { origin: "http://evil.example" } }),
  );
  check(refused.rawMessage.includes("http://evil.example"), `refusal names the origin: ${refused.rawMessage}`);
});
