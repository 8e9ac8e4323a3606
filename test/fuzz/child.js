'use strict';

// One round of the fuzzer (see run.js): a random sequence of API calls over
// two isolates, from a seed, in this thread or a worker. Prints one JSON
// line { ops, unexpected, live } on stdout unless the round's ending is an
// exit or a terminated worker.
//
//   node test/fuzz/child.js <seed> <ops> <where: main|worker> <end: clean|exit|terminate>
const { Worker, isMainThread, parentPort, workerData } = require('node:worker_threads');
const path = require('node:path');

// cordon's documented codes; sandbox code below throws E_SANDBOX.
const DOCUMENTED = new Set([
  'ERR_SCRIPT_EXECUTION_TIMEOUT', 'ERR_MEMORY_LIMIT', 'ERR_ISOLATE_DISPOSED', 'ERR_CANNOT_CLONE',
  'ERR_REENTRANCY_LIMIT', 'ERR_VM_DYNAMIC_IMPORT_CALLBACK_MISSING', 'ERR_INVALID_ARG_TYPE',
  'ERR_INVALID_ARG_VALUE', 'ERR_OUT_OF_RANGE', 'ERR_ISOLATE_BUSY', 'ERR_CORDON_SHUTDOWN', 'E_SANDBOX',
  'ERR_VM_MODULE_DIFFERENT_CONTEXT', 'ERR_VM_INVALID_IMPORT_RESULT', 'ERR_CORDON_UNSAFE_HOST_FLAGS',
]);
const LIB = path.join(__dirname, '..', '..', 'lib');

// xorshift32: the same seed gives the same round.
function prng(seed) {
  let x = (seed >>> 0) || 0x9e3779b9;
  const next = () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x / 0x100000000;
  };
  return {
    int: (n) => Math.floor(next() * n),
    pick: (list) => list[Math.floor(next() * list.length)],
    chance: (p) => next() < p,
  };
}

// Sandbox code: plain values, throws of every kind, promises, host calls,
// import(), loops the bounds must end, allocations the limit must end.
const SNIPPETS = [
  '1 + 1', '"s".repeat(100)', '({ a: [1, { b: 2n }], d: new Date(0), m: new Map([[1, 2]]) })',
  '[function f(x) { return x * 2 }, { g: () => 3 }]', 'new Uint8Array([1, 2, 3])',
  'throw new Error("plain")', 'throw Object.assign(new TypeError("coded"), { code: "E_SANDBOX", n: 1 })',
  'throw { f() {} }', 'throw function named() {}', 'throw Symbol("s")', 'throw Promise.resolve(1)',
  'throw new Proxy({}, {})', 'throw 42', 'throw { get x() { throw 1 } }',
  'Promise.resolve(5)', 'Promise.reject(new Error("rejected"))', 'new Promise(() => {})',
  'new Promise((r) => setTimeout ? r(1) : r(2))', '(async () => { await null; return 7 })()',
  'typeof host === "function" ? host(1, { a: [2] }) : 0', 'typeof host === "function" ? host(Promise.reject(new Error("to host"))) : 0',
  'typeof slow === "function" ? slow() : 0', 'typeof dispose === "function" ? dispose() : 0',
  'typeof exitNow === "function" ? 0 : 0', 'import("m").then((m) => m.default)', 'import("missing").catch((e) => String(e))',
  'for (;;) {}', 'let i = 0; while (true) i++', 'for (;;) { try { host(0) } catch {} }',
  'const a = []; for (;;) a.push(new Array(1e4).fill(1))', 'new ArrayBuffer(1 << 30)', 'new SharedArrayBuffer(8)',
  'new Proxy({}, { ownKeys() { throw new Error("trap") } })', '({ get boom() { throw new RangeError("getter") } })',
  'Object.defineProperty(Array.prototype, 0, { set(v) { globalThis.leak = v }, configurable: true }); [() => 1]',
  '({ then(r) { r(1) } })', 'globalThis.keep = () => import("m"); 1', 'typeof keep === "function" ? keep() : 0',
  '[', 'export default 1', 'new Error("e", { cause: new Error("c") })',
];

const HOSTILE = [
  1, 'str', null, undefined, { a: 1 }, [1, [2]], () => 1, Promise.resolve(3), Promise.reject(new Error('host rej')),
  new Proxy({}, { get() { throw new Error('host trap'); } }), { get x() { throw new Error('host getter'); } },
  Symbol('host'), new SharedArrayBuffer(4), Object.create(null), 10n,
];
HOSTILE[8].catch(() => {});

async function round(seed, ops) {
  const cordon = require('../..');
  const rnd = prng(seed);
  const base = cordon.liveRecords();
  const unexpected = [];
  const isolates = [];
  const contexts = [];
  const functions = [];
  const scripts = [];
  const pending = [];
  const caches = [];

  const check = (error, op) => {
    if (error === null || typeof error !== 'object') return; // a thrown value
    const { code, stack } = error;
    if (typeof code === 'string' && code.startsWith('ERR_') && !DOCUMENTED.has(code)) {
      unexpected.push(`${op}: undocumented ${code}: ${error.message}`);
    } else if (code === undefined && typeof stack === 'string' && stack.includes(LIB) && !(error instanceof SyntaxError)) {
      // Uncoded, and thrown by cordon's own code rather than the sandbox's.
      unexpected.push(`${op}: uncoded host error: ${stack.split('\n').slice(0, 3).join(' | ')}`);
    }
  };
  const guard = (op, fn) => {
    try {
      const r = fn();
      if (r && typeof r.then === 'function') {
        pending.push(Promise.resolve(r).then(() => {}, (e) => check(e, op)));
        return undefined; // settles in the background; the round goes on
      }
      return r;
    } catch (error) {
      check(error, op);
      return undefined;
    }
  };
  const code = () => rnd.pick(SNIPPETS);
  const bounds = () => (rnd.chance(0.8) ? { timeout: 20 + rnd.int(60) } : { timeout: 200, cpuTimeout: 10 + rnd.int(30) });
  const someContext = () => (contexts.length > 0 ? rnd.pick(contexts) : null);
  const importer = (specifier) => (specifier === 'missing' ? Promise.reject(new Error('no such module'))
    : { source: `export default ${JSON.stringify(specifier)}`, filename: `${specifier}.mjs` });

  const actions = [
    () => { if (isolates.length < 2) isolates.push(new cordon.Isolate({ memoryLimitMB: rnd.pick([16, 32, 64]) })); },
    () => {
      const iso = isolates.length > 0 && rnd.chance(0.7) ? rnd.pick(isolates) : cordon.defaultIsolate;
      let ctx = null;
      ctx = guard('createContext', () => iso.createContext({
        host: (...args) => args.length,
        slow: () => new Promise((r) => setTimeout(() => r(1), rnd.int(5))),
        dispose: () => (rnd.chance(0.5) ? ctx?.dispose() : iso.dispose()),
        value: rnd.pick(HOSTILE.filter((v) => typeof v !== 'symbol' && !(v instanceof SharedArrayBuffer))),
      }, { importModuleDynamically: importer }));
      if (ctx) contexts.push(ctx);
    },
    () => { const ctx = someContext(); if (ctx) guard('runInContext', () => cordon.runInContext(code(), ctx, bounds())); },
    () => { const ctx = someContext(); if (ctx) guard('run', () => ctx.run(code(), bounds())); },
    () => {
      const ctx = someContext();
      if (!ctx) return;
      const fn = guard('compileFunction', () => cordon.compileFunction(code(), ['a', 'b'], {
        parsingContext: ctx, importModuleDynamically: importer, timeout: 50,
      }));
      if (fn) functions.push(fn);
    },
    () => { if (functions.length) { const fn = rnd.pick(functions); guard('call', () => fn(rnd.pick(HOSTILE), rnd.pick(HOSTILE))); } },
    () => { if (functions.length) { const fn = rnd.pick(functions); guard('applyAsync', () => cordon.applyAsync(fn, rnd.pick(HOSTILE), [rnd.pick(HOSTILE)], bounds())); } },
    () => {
      const iso = isolates.length > 0 ? rnd.pick(isolates) : cordon.defaultIsolate;
      const s = guard('Script', () => new cordon.Script(code(), { isolate: iso, importModuleDynamically: importer, produceCachedData: rnd.chance(0.3) }));
      if (s) {
        scripts.push(s);
        const c = guard('createCachedData', () => s.createCachedData());
        if (c) caches.push([c, s]);
      }
    },
    () => {
      if (!caches.length) return;
      const [cache] = rnd.pick(caches);
      const bad = Buffer.from(cache);
      if (bad.length > 0 && rnd.chance(0.7)) bad[rnd.int(bad.length)] ^= 1 + rnd.int(255);
      guard('Script(cachedData)', () => new cordon.Script(code(), { cachedData: bad }));
    },
    () => {
      const ctx = someContext();
      if (ctx && scripts.length) { const s = rnd.pick(scripts); guard('script.run', () => (rnd.chance(0.5) ? s.runInContext(ctx, bounds()) : s.run(ctx, bounds()))); }
    },
    () => {
      const ctx = someContext();
      if (!ctx) return;
      const m = guard('Module', () => new cordon.Module(rnd.chance(0.5) ? 'import "m"; export default await import("m")' : code(),
        { context: ctx, importModuleDynamically: importer }));
      if (m) guard('evaluate', () => m.evaluate(bounds()));
    },
    () => { const ctx = someContext(); if (ctx) guard('context.dispose', () => ctx.dispose()); },
    () => { if (isolates.length && rnd.chance(0.5)) guard('isolate.dispose', () => rnd.pick(isolates).dispose()); },
    () => guard('runInNewContext', () => cordon.runInNewContext(code(), { host: () => 1 }, bounds())),
    () => guard('bad arguments', () => cordon.runInContext(rnd.pick(HOSTILE), rnd.pick(HOSTILE), rnd.pick(HOSTILE))),
    () => guard('bad arguments', () => cordon.compileFunction('', rnd.pick(HOSTILE), rnd.pick(HOSTILE))),
    () => new Promise((resolve) => setImmediate(resolve)),
    () => new Promise((resolve) => setTimeout(resolve, rnd.int(10))),
  ];

  let done = 0;
  const trace = process.env.FUZZ_TRACE === '1';
  for (; done < ops; done++) {
    const index = rnd.int(actions.length);
    if (trace) process.stderr.write(`op ${done}: ${index} ${cordon.liveRecords().isolates}\n`);
    const result = actions[index]();
    if (result && typeof result.then === 'function') await result;
  }
  // Let everything started settle, bounded by the runs' own deadlines.
  await Promise.race([Promise.all(pending), new Promise((resolve) => setTimeout(resolve, 5000))]);
  for (const ctx of contexts) ctx.dispose();
  for (const iso of isolates) iso.dispose();
  functions.length = scripts.length = caches.length = contexts.length = isolates.length = 0;
  return { ops: done, unexpected, base };
}

// Records back to where they started, once the round's frame is gone (a
// suspended async function can keep a last value alive in its registers).
async function settle(result) {
  const cordon = require('../..');
  const { base, ...summary } = await result;
  for (let i = 0; i < Number(process.env.FUZZ_GC_ROUNDS || 6); i++) {
    if (global.gc) global.gc();
    cordon.defaultIsolate.gc();
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  const live = cordon.liveRecords();
  // The default isolate stays; the rest goes back to where it started.
  for (const key of ['isolates', 'contexts', 'scripts', 'callbacks', 'functions']) {
    const allowed = key === 'isolates' ? 1 : 0;
    if (live[key] - base[key] > allowed) summary.unexpected.push(`live ${key}: ${base[key]} -> ${live[key]}`);
  }
  return { ...summary, live };
}

if (isMainThread) {
  const [seed, ops, where, end] = process.argv.slice(2);
  const n = Number(ops);
  if (where === 'worker') {
    const worker = new Worker(__filename, { workerData: { seed: Number(seed), ops: n, end } });
    worker.on('message', (summary) => console.log(JSON.stringify(summary)));
    worker.on('error', (error) => { console.log(JSON.stringify({ ops: 0, unexpected: [`worker error: ${error.stack}`] })); });
    if (end === 'terminate') setTimeout(() => worker.terminate(), 50 + (Number(seed) % 400));
  } else {
    if (end === 'exit') setTimeout(() => process.exit(7), 50 + (Number(seed) % 400));
    settle(round(Number(seed), n)).then((summary) => console.log(JSON.stringify(summary)));
  }
} else {
  const { seed, ops, end } = workerData;
  if (end === 'exit') setTimeout(() => process.exit(7), 50 + (seed % 400));
  settle(round(seed, ops)).then((summary) => parentPort.postMessage(summary));
}
