'use strict';

// Loads the native addon: a build from source (build/Release) if there is
// one, else the prebuilt binary for this Node's ABI (prebuilds/, in
// prebuildify's layout), as node-gyp-build picks them. CORDON_ASAN=1
// selects the AddressSanitizer build made by `npm run build:asan` (node
// must then run with libasan preloaded). The addon itself refuses a binary
// built for another Node line (ERR_CORDON_WRONG_NODE).
const path = require('node:path');

const root = path.join(__dirname, '..');

function locate() {
  if (process.env.CORDON_ASAN === '1') return path.join(root, 'build-asan', 'cordon.node');
  try {
    return require('node-gyp-build').path(root);
  } catch (cause) {
    const err = new Error(`cordon has no binary for Node ${process.version} (ABI ${process.versions.modules}, ` +
      `${process.platform}-${process.arch}): reinstall with a C++ toolchain, or run \`npm rebuild cordon --build-from-source\``,
    { cause });
    err.code = 'ERR_CORDON_NO_BINARY';
    throw err;
  }
}

const native = require(locate());

// A failed native call does not throw: V8 predicts any exception thrown
// from a Node-API callback as uncaught (nodejs/node#28409), and under
// --abort-on-uncaught-exception aborts the process although the caller
// catches it. The call returns PENDING instead and leaves its error for
// takePending(); these wrappers throw it from JavaScript, where V8 sees the
// caller's try/catch.
const PENDING = Object.freeze({ __proto__: null });

function failed() {
  throw native.takePending();
}

const binding = { PENDING, failed };
for (const name of Object.getOwnPropertyNames(native)) {
  const fn = native[name];
  if (typeof fn !== 'function' || name === 'call' || name === 'takePending') {
    binding[name] = fn; // `call` is the hot path: callTarget checks itself
    continue;
  }
  binding[name] = {
    [name](...args) {
      const result = Reflect.apply(fn, undefined, args);
      return result === PENDING ? failed() : result;
    },
  }[name];
}

module.exports = binding;
