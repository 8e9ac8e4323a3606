'use strict';

// Loads the native addon. CORDON_ASAN=1 selects the AddressSanitizer build
// made by `npm run build:asan` (node must then run with libasan preloaded).
const path = require('node:path');

const root = path.join(__dirname, '..');
const file = process.env.CORDON_ASAN === '1'
  ? path.join(root, 'build-asan', 'cordon.node')
  : path.join(root, 'build', 'Release', 'cordon.node');

const native = require(file);

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
