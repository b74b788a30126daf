// Shared by the client scripts: descriptors from the files the Rust test
// writes, assertions, and a watchdog so a hung call fails instead of hanging.

import { readFileSync } from "node:fs";
import { createFileRegistry, fromBinary } from "@bufbuild/protobuf";
import { FileDescriptorSetSchema } from "@bufbuild/protobuf/wkt";
import { BinaryReader } from "@bufbuild/protobuf/wire";

/** Parses `--name value` pairs into an object. */
export function parseArgs(argv = process.argv.slice(2)) {
  const args = {};
  for (let i = 0; i < argv.length; i += 2) {
    if (!argv[i].startsWith("--") || argv[i + 1] === undefined) {
      throw new Error(`bad arguments: ${argv.join(" ")}`);
    }
    const name = argv[i].slice(2);
    args[name] = args[name] === undefined ? argv[i + 1] : [args[name], argv[i + 1]].flat();
  }
  return args;
}

/**
 * One registry from encoded google.protobuf.FileDescriptorSet files (the
 * Rust test writes munity_proto's and tonic_health's).
 */
export function loadRegistry(paths) {
  const registries = [paths]
    .flat()
    .map((path) => createFileRegistry(fromBinary(FileDescriptorSetSchema, readFileSync(path))));
  return createFileRegistry(...registries);
}

export function service(registry, name) {
  const desc = registry.getService(name);
  if (!desc) throw new Error(`service ${name} not in the descriptor sets`);
  return desc;
}

export function message(registry, name) {
  const desc = registry.getMessage(name);
  if (!desc) throw new Error(`message ${name} not in the descriptor sets`);
  return desc;
}

export function check(condition, what) {
  if (!condition) throw new Error(`assertion failed: ${what}`);
}

export function equal(actual, expected, what) {
  const a = JSON.stringify(actual);
  const e = JSON.stringify(expected);
  if (a !== e) throw new Error(`assertion failed: ${what}: expected ${e}, got ${a}`);
}

/** Rejects when `promise` takes longer than `ms`. */
export function within(ms, what, promise) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Field names of a google.rpc.BadRequest (no descriptor needed). */
export function badRequestFields(bytes) {
  const fields = [];
  const reader = new BinaryReader(bytes);
  while (reader.pos < reader.len) {
    const [number, wireType] = reader.tag();
    if (number !== 1) {
      reader.skip(wireType);
      continue;
    }
    const violation = new BinaryReader(reader.bytes());
    while (violation.pos < violation.len) {
      const [n, w] = violation.tag();
      if (n === 1) fields.push(violation.string());
      else violation.skip(w);
    }
  }
  return fields;
}

/** Runs `main`, prints a failure with its stack, exits 0 or 1. */
export function run(name, main) {
  const watchdog = setTimeout(() => {
    console.error(`${name}: still running after 60 s`);
    process.exit(1);
  }, 60_000);
  main().then(
    () => {
      clearTimeout(watchdog);
      console.log(`${name}: ok`);
      // Pooled HTTP/2 sessions and keep-alive sockets would keep node alive.
      process.exit(0);
    },
    (error) => {
      console.error(`${name}: FAILED`);
      console.error(error);
      process.exit(1);
    },
  );
}
