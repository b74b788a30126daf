// Text-mode gRPC-web by hand, to see the wire: node's own HTTP clients
// (fetch for HTTP/1.1, node:http2 for h2c) send base64 bodies built here and
// read the response stream incrementally, decoding base64 one 4-character
// group at a time (the gateway encodes each chunk with its own padding) and
// parsing gRPC-web frames, the trailer frame (flag 0x80) included.
//
//   node raw-text.mjs --base-url http://127.0.0.1:PORT --http 1.1|2 \
//     --descriptors users.fds --descriptors health.fds

import http2 from "node:http2";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { check, equal, loadRegistry, message, parseArgs, run, within } from "./lib.mjs";

const args = parseArgs();
const registry = loadRegistry(args.descriptors);
const base = args["base-url"];
const httpVersion = args.http;
const name = `raw grpc-web-text (HTTP/${httpVersion})`;

/** One request; returns status, headers (lower-case names) and the body chunks. */
async function post(path, headers, body) {
  const abort = new AbortController();
  if (httpVersion === "1.1") {
    const response = await fetch(base + path, {
      method: "POST",
      headers,
      body,
      signal: abort.signal,
    });
    return {
      status: response.status,
      headers: Object.fromEntries(response.headers),
      chunks: response.body[Symbol.asyncIterator](),
      abort: () => abort.abort(),
    };
  }
  const session = http2.connect(base);
  session.on("error", () => {});
  const stream = session.request({ ":method": "POST", ":path": path, ...headers });
  stream.end(body);
  const responseHeaders = await new Promise((resolve, reject) => {
    stream.once("response", resolve);
    stream.once("error", reject);
  });
  return {
    status: responseHeaders[":status"],
    headers: responseHeaders,
    chunks: stream[Symbol.asyncIterator](),
    abort: () => {
      stream.close(http2.constants.NGHTTP2_CANCEL);
      session.close();
    },
  };
}

/** A length-prefixed gRPC frame. */
function frame(flags, payload) {
  const out = new Uint8Array(5 + payload.length);
  out[0] = flags;
  new DataView(out.buffer).setUint32(1, payload.length);
  out.set(payload, 5);
  return out;
}

/**
 * Reads a grpc-web-text response body: yields {flags, payload} frames as
 * soon as their bytes have arrived.
 */
async function* frames(chunks) {
  let text = "";
  let bytes = new Uint8Array(0);
  for await (const chunk of chunks) {
    text += typeof chunk === "string" ? chunk : Buffer.from(chunk).toString("latin1");
    const complete = text.length - (text.length % 4);
    const decoded = [];
    for (let i = 0; i < complete; i += 4) {
      decoded.push(Buffer.from(text.slice(i, i + 4), "base64"));
    }
    text = text.slice(complete);
    bytes = Buffer.concat([bytes, ...decoded]);
    while (bytes.length >= 5) {
      const length = new DataView(bytes.buffer, bytes.byteOffset).getUint32(1);
      if (bytes.length < 5 + length) break;
      yield { flags: bytes[0], payload: bytes.subarray(5, 5 + length) };
      bytes = bytes.subarray(5 + length);
    }
  }
  equal(text, "", "no base64 left over at the end");
  equal(bytes.length, 0, "no partial frame at the end");
}

function trailers(payload) {
  const lines = Buffer.from(payload).toString("latin1").split("\r\n");
  equal(lines.pop(), "", "trailer block ends with CRLF");
  return Object.fromEntries(
    lines.map((line) => {
      const colon = line.indexOf(":");
      check(colon > 0, `trailer line ${line}`);
      return [line.slice(0, colon), line.slice(colon + 1).trim()];
    }),
  );
}

const textHeaders = {
  "content-type": "application/grpc-web-text",
  accept: "application/grpc-web-text",
  "x-grpc-web": "1",
};

run(name, async () => {
  check(httpVersion === "1.1" || httpVersion === "2", "--http is 1.1 or 2");

  // Unary GetJwks. The request is sent as two separately padded base64
  // segments (frame header, then message), as streaming clients may do.
  const jwksRequest = message(registry, "munity.users.v1.GetJwksRequest");
  const jwksResponse = message(registry, "munity.users.v1.GetJwksResponse");
  const payload = toBinary(jwksRequest, create(jwksRequest, {}));
  const header = frame(0, payload).subarray(0, 5);
  const body =
    Buffer.from(header).toString("base64") + Buffer.from(payload).toString("base64");
  const unary = await within(
    10_000,
    "GetJwks",
    post("/munity.users.v1.Users/GetJwks", textHeaders, body),
  );
  equal(unary.status, 200, "GetJwks HTTP status");
  equal(unary.headers["content-type"], "application/grpc-web-text+proto", "content-type");
  const received = [];
  for await (const f of frames(unary.chunks)) received.push(f);
  equal(
    received.map((f) => f.flags),
    [0, 0x80],
    "one data frame, then the trailer frame",
  );
  const jwks = JSON.parse(fromBinary(jwksResponse, received[0].payload).jwksJson);
  check(Array.isArray(jwks.keys) && jwks.keys.length > 0, "JWKS has keys");
  equal(jwks.keys[0].kty, "OKP", "Ed25519 key");
  const unaryTrailers = trailers(received[1].payload);
  equal(unaryTrailers["grpc-status"], "0", "grpc-status trailer");

  // A service error comes back as a status too: text mode, bad Register.
  const registerRequest = message(registry, "munity.users.v1.RegisterRequest");
  const bad = toBinary(
    registerRequest,
    create(registerRequest, { email: "nope", password: "short", displayName: "x" }),
  );
  const invalid = await within(
    10_000,
    "Register",
    post(
      "/munity.users.v1.Users/Register",
      textHeaders,
      Buffer.from(frame(0, bad)).toString("base64"),
    ),
  );
  equal(invalid.status, 200, "Register HTTP status");
  let status = invalid.headers;
  const invalidFrames = [];
  for await (const f of frames(invalid.chunks)) invalidFrames.push(f);
  if (status["grpc-status"] === undefined) {
    // Not trailers-only: the status is in the trailer frame.
    equal(invalidFrames.map((f) => f.flags), [0x80], "only a trailer frame");
    status = trailers(invalidFrames[0].payload);
  } else {
    equal(invalidFrames.length, 0, "trailers-only response has no body");
  }
  equal(status["grpc-status"], "3", "INVALID_ARGUMENT");
  check(
    decodeURIComponent(status["grpc-message"]).startsWith("invalid request:"),
    `grpc-message ${status["grpc-message"]}`,
  );
  check(status["grpc-status-details-bin"], "grpc-status-details-bin present");

  // Server streaming: Health/Watch stays open; its first message must arrive
  // on its own (not held back until the stream ends).
  const checkRequest = message(registry, "grpc.health.v1.HealthCheckRequest");
  const checkResponse = message(registry, "grpc.health.v1.HealthCheckResponse");
  const watchBody = toBinary(
    checkRequest,
    create(checkRequest, { service: "munity.users.v1.Users" }),
  );
  const watch = await within(
    10_000,
    "Watch response headers",
    post(
      "/grpc.health.v1.Health/Watch",
      textHeaders,
      Buffer.from(frame(0, watchBody)).toString("base64"),
    ),
  );
  equal(watch.status, 200, "Watch HTTP status");
  equal(watch.headers["content-type"], "application/grpc-web-text+proto", "content-type");
  const watchFrames = frames(watch.chunks);
  const first = await within(10_000, "first Watch frame", watchFrames.next());
  check(!first.done, "Watch sent a frame");
  equal(first.value.flags, 0, "first frame is data");
  equal(fromBinary(checkResponse, first.value.payload).status, 1, "Watch status SERVING");
  watch.abort();

  // An origin that is not allowed is refused before any upstream is called.
  const evil = await within(
    10_000,
    "evil origin",
    post(
      "/munity.users.v1.Users/GetJwks",
      { ...textHeaders, origin: "http://evil.example" },
      body,
    ),
  );
  equal(evil.status, 200, "refusal HTTP status");
  equal(evil.headers["grpc-status"], "7", "PERMISSION_DENIED");
  equal(evil.headers["access-control-allow-origin"], undefined, "no CORS grant");
});
