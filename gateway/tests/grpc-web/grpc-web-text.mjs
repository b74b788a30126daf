// Text-mode gRPC-web (application/grpc-web-text) through the official
// `grpc-web` client runtime, which does its own base64 and frame decoding.
// It is written for browsers (XMLHttpRequest), so node gets the `xhr2`
// XMLHttpRequest, made to stream as browsers do; messages are
// (de)serialized with @bufbuild/protobuf from the server's descriptor sets.
//
//   node grpc-web-text.mjs --base-url http://127.0.0.1:PORT \
//     --descriptors users.fds --descriptors health.fds --email someone@example.com

import XMLHttpRequest from "xhr2";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { check, equal, loadRegistry, message, parseArgs, run, within } from "./lib.mjs";

/**
 * xhr2 fills `responseText` only when the response ends. Browsers (and the
 * XHR spec) update it and fire `readystatechange` for every chunk received
 * while LOADING, which is how grpc-web reads a server stream; this does the
 * same, against xhr2 0.2.1's internals.
 */
class StreamingXMLHttpRequest extends XMLHttpRequest {
  _onHttpResponseData(response, data) {
    if (this._response !== response) return;
    this._responseParts.push(data);
    this._loadedBytes += data.length;
    this.responseText = Buffer.concat(this._responseParts).toString("latin1");
    this._setReadyState(XMLHttpRequest.LOADING);
    this._dispatchProgress("progress");
  }
}
globalThis.XMLHttpRequest = StreamingXMLHttpRequest;
const grpcWeb = await import("grpc-web");
const { GrpcWebClientBase, MethodDescriptor, MethodType, StatusCode } = grpcWeb.default ?? grpcWeb;

const args = parseArgs();
const registry = loadRegistry(args.descriptors);
const base = args["base-url"];

function method(path, type, input, output) {
  const requestSchema = message(registry, input);
  const responseSchema = message(registry, output);
  return new MethodDescriptor(
    path,
    type,
    Object,
    Object,
    (request) => toBinary(requestSchema, create(requestSchema, request)),
    (bytes) => fromBinary(responseSchema, bytes),
  );
}

const register = method(
  "/munity.users.v1.Users/Register",
  MethodType.UNARY,
  "munity.users.v1.RegisterRequest",
  "munity.users.v1.AuthResponse",
);
const getMe = method(
  "/munity.users.v1.Users/GetMe",
  MethodType.UNARY,
  "munity.users.v1.GetMeRequest",
  "munity.users.v1.User",
);
const watch = method(
  "/grpc.health.v1.Health/Watch",
  MethodType.SERVER_STREAMING,
  "grpc.health.v1.HealthCheckRequest",
  "grpc.health.v1.HealthCheckResponse",
);

async function expectError(code, call) {
  try {
    await call();
  } catch (error) {
    equal(error.code, code, `code of ${error.message}`);
    return error;
  }
  throw new Error(`expected status ${code}, the call succeeded`);
}

run("grpc-web text", async () => {
  const client = new GrpcWebClientBase({ format: "text" });
  const unary = (descriptor, request, metadata = {}) =>
    within(
      10_000,
      descriptor.getName(),
      client.unaryCall(base + descriptor.getName(), request, metadata, descriptor),
    );

  const session = await unary(register, {
    email: args.email,
    password: "correct horse",
    displayName: "Text Client",
  });
  equal(session.user.email, args.email, "Register's user");
  const me = await unary(getMe, {}, { authorization: `Bearer ${session.accessToken}` });
  equal(me.email, args.email, "GetMe email");
  equal(me.displayName, "Text Client", "GetMe display name");

  await expectError(StatusCode.UNAUTHENTICATED, () => unary(getMe, {}));
  const invalid = await expectError(StatusCode.INVALID_ARGUMENT, () =>
    unary(register, { email: "nope", password: "short", displayName: "x" }),
  );
  check(
    invalid.message.startsWith("invalid request:") && invalid.message.includes("email"),
    `InvalidArgument message: ${invalid.message}`,
  );

  // Server streaming: the first message, then cancel.
  const stream = client.serverStreaming(
    base + watch.getName(),
    { service: "munity.users.v1.Users" },
    {},
    watch,
  );
  const first = await within(
    10_000,
    "first Health/Watch message",
    new Promise((resolve, reject) => {
      stream.on("data", resolve);
      stream.on("error", reject);
      stream.on("end", () => reject(new Error("Watch ended without a message")));
    }),
  );
  equal(first.status, 1, "Watch status SERVING");
  stream.cancel();
});
