'use strict';

// Async runs on runner threads: context.run, script.run, cordon.applyAsync;
// their serialisation with sync calls, host callbacks carried to the host
// thread, cpuTimeout, times, and disposal under every interleaving.
const assert = require('node:assert/strict');
const path = require('node:path');
const { isMainThread } = require('node:worker_threads');
const cordon = require('..');
const { sleep, runNode, rejection, terminateSpinning } = require('./support/util');

const ROOT = JSON.stringify(path.join(__dirname, '..'));
// Under AddressSanitizer everything is several times slower; the loops
// stay at the counts the issue asks for.
const DISPOSE_LOOPS = 200;

// Busy-wait on the calling thread (host CPU), `ms` long.
function spinHost(ms) {
  const end = performance.now() + ms;
  while (performance.now() < end);
}

describe('async runs', () => {
  let iso;
  beforeEach(() => {
    iso = new cordon.Isolate();
  });
  afterEach(() => {
    iso.dispose();
  });

  it('should resolve with the completion value, objects and functions included', async () => {
    const ctx = iso.createContext({ x: 2 });
    assert.equal(await ctx.run('x + 1'), 3);
    assert.deepEqual(await ctx.run('({ a: [1, "b"], n: null })'), { a: [1, 'b'], n: null });
    const fn = await ctx.run('(a) => a * x');
    assert.equal(fn(21), 42);
    assert.equal(await cordon.applyAsync(fn, null, [5]), 10);
  });

  it('should keep the host event loop turning while the sandbox spins', async function () {
    this.timeout(20000);
    const ctx = iso.createContext();
    let ticks = 0;
    const timer = setInterval(() => { ticks++; }, 10);
    try {
      const r = await ctx.run('const t0 = Date.now(); while (Date.now() - t0 < 300); "done"', { timeout: 1000 });
      assert.equal(r, 'done');
    } finally {
      clearInterval(timer);
    }
    assert.ok(ticks >= 15, `the interval fired only ${ticks} times`);
  });

  it('should stop a run at its timeout and leave the context usable', async () => {
    const ctx = iso.createContext();
    await ctx.run('globalThis.kept = 7');
    const error = await rejection(ctx.run('for (;;) {}', { timeout: 50 }));
    assert.ok(error instanceof cordon.TimeoutError);
    assert.equal(error.code, 'ERR_SCRIPT_EXECUTION_TIMEOUT');
    assert.equal(error.clock, 'wall');
    assert.equal(await ctx.run('kept + 1'), 8);
    assert.equal(ctx.evaluate('kept * 2'), 14);
  });

  it('should cover the microtasks a run queued with its timeout', async () => {
    const ctx = iso.createContext();
    const error = await rejection(ctx.run('Promise.resolve().then(function f() { return Promise.resolve().then(f); }); 1',
      { timeout: 100 }));
    assert.equal(error.code, 'ERR_SCRIPT_EXECUTION_TIMEOUT');
    assert.equal(await ctx.run('"after"'), 'after');
  });

  it('should reject like the sandbox threw, and reject bad arguments with coded errors', async () => {
    const ctx = iso.createContext();
    const thrown = await rejection(ctx.run('throw new RangeError("nope")', { filename: 'bad.js' }));
    assert.equal(thrown.name, 'RangeError');
    assert.equal(thrown.message, 'nope');
    assert.match(thrown.stack, /bad\.js:1/);
    assert.equal((await rejection(ctx.run(42))).code, 'ERR_INVALID_ARG_TYPE');
    assert.equal((await rejection(ctx.run('1', { timeout: -1 }))).code, 'ERR_INVALID_ARG_VALUE');
    assert.equal((await rejection(ctx.run('1', { cpuTimeout: 'x' }))).code, 'ERR_INVALID_ARG_TYPE');
    const script = iso.compileScript('1');
    assert.equal((await rejection(script.run({}))).code, 'ERR_INVALID_ARG_TYPE');
    assert.equal((await rejection(cordon.applyAsync(() => 1))).code, 'ERR_INVALID_ARG_TYPE');
    assert.equal((await rejection(cordon.applyAsync(await ctx.run('() => 1'), null, 'x'))).code, 'ERR_INVALID_ARG_TYPE');
  });

  it('should run a Script in several contexts and call compiled functions', async () => {
    const a = iso.createContext({ v: 'a' });
    const b = iso.createContext({ v: 'b' });
    const script = iso.compileScript('v + v');
    assert.deepEqual(await Promise.all([script.run(a), script.run(b), script.run(a)]), ['aa', 'bb', 'aa']);
    const add = cordon.compileFunction('return this.k + x + y', ['x', 'y'], { parsingContext: a });
    assert.equal(await cordon.applyAsync(add, { k: 1 }, [2, 3]), 6);
    const error = await rejection(cordon.applyAsync(cordon.compileFunction('for (;;) {}', [], { parsingContext: a }),
      null, [], { timeout: 30 }));
    assert.equal(error.code, 'ERR_SCRIPT_EXECUTION_TIMEOUT');
    const other = iso.compileScript('1');
    const foreign = new cordon.Isolate();
    try {
      assert.equal((await rejection(other.run(foreign.createContext()))).code, 'ERR_INVALID_ARG_VALUE');
    } finally {
      foreign.dispose();
    }
  });

  it('should run jobs of one isolate in order, never at once', async () => {
    const ctx = iso.createContext();
    await ctx.run('globalThis.log = []');
    const runs = [];
    for (let i = 0; i < 50; i++) runs.push(ctx.run(`log.push(${i}); log.length`));
    assert.deepEqual(await Promise.all(runs), Array.from({ length: 50 }, (_, i) => i + 1));
    assert.deepEqual(await ctx.run('log'), Array.from({ length: 50 }, (_, i) => i));
  });

  it('should serialise a sync call behind the async run that holds the isolate', async () => {
    let started;
    const ctx = iso.createContext({ started: () => started() });
    const holding = new Promise((resolve) => { started = resolve; });
    await ctx.run('globalThis.phase = 0');
    const running = ctx.run('phase = 1; started(); const t0 = Date.now(); while (Date.now() - t0 < 150); phase = 2; "async"');
    await holding; // the runner holds the isolate, and goes on into the loop
    // Waits for the async run to let go: it never sees phase 1.
    assert.equal(ctx.evaluate('phase'), 2);
    assert.equal(await running, 'async');
  });

  it('should run two isolates in parallel, each correctly', async function () {
    this.timeout(30000);
    const other = new cordon.Isolate();
    try {
      const code = '(() => { let s = 0; for (let i = 0; i < 2e7; i++) s = (s + i) % 1000003; return s; })()';
      const expected = iso.createContext().evaluate(code);
      const [a, b] = await Promise.all([iso.createContext().run(code), other.createContext().run(code)]);
      assert.equal(a, expected);
      assert.equal(b, expected);
    } finally {
      other.dispose();
    }
  });

  describe('host callbacks', () => {
    it('should run on the host thread, with host state, and carry results and errors', async () => {
      const seen = [];
      const ctx = iso.createContext({
        where: () => isMainThread,
        push: (v) => { seen.push(v); return { stored: seen.length }; },
        fail: () => { throw Object.assign(new TypeError('host says no'), { code: 'E_HOST' }); },
      });
      assert.equal(await ctx.run('where()'), true);
      assert.deepEqual(await ctx.run('push("a"); push([1, 2])'), { stored: 2 });
      assert.deepEqual(seen, ['a', [1, 2]]);
      assert.deepEqual(await ctx.run('try { fail() } catch (e) { [e.name, e.message, e.code] }'),
        ['TypeError', 'host says no', 'E_HOST']);
    });

    it('should take promises both ways', async () => {
      const ctx = iso.createContext({
        later: (v) => new Promise((resolve) => setTimeout(() => resolve(v * 2), 20)),
        give: (p) => p.then((v) => v + 1),
      });
      assert.equal(await ctx.run('(async () => (await later(4)) + 1)()'), 9);
      assert.equal(await ctx.run('give(Promise.resolve(10))'), 11);
    });

    it('should settle host promises behind a busy isolate without blocking the host loop', async function () {
      this.timeout(20000);
      const ctx = iso.createContext({ later: () => new Promise((resolve) => setTimeout(() => resolve(41), 20)) });
      const { result } = await ctx.run('({ result: (async () => (await later()) + 1)() })');
      let ticks = 0;
      const timer = setInterval(() => { ticks++; }, 10);
      try {
        // Holds the isolate while later() settles: the settlement queues.
        const spin = ctx.run('const t0 = Date.now(); while (Date.now() - t0 < 300); "spun"', { timeout: 2000 });
        assert.equal(await result, 42);
        assert.equal(await spin, 'spun');
      } finally {
        clearInterval(timer);
      }
      assert.ok(ticks >= 15, `the interval fired only ${ticks} times`);
    });

    it('should refuse a sync call into the isolate of the run that waits for it', async () => {
      const box = {};
      const ctx = iso.createContext({
        reenter: () => {
          try {
            box.ctx.evaluate('1');
            return 'no error';
          } catch (error) {
            return error.code;
          }
        },
        other: () => box.other.evaluate('"other isolate"'),
      });
      box.ctx = ctx;
      const second = new cordon.Isolate();
      try {
        box.other = second.createContext();
        assert.equal(await ctx.run('reenter()'), 'ERR_ISOLATE_BUSY');
        // Another isolate, and this one asynchronously, are fine.
        assert.equal(await ctx.run('other()'), 'other isolate');
        box.ctx.evaluate('globalThis.v = 5');
        const nested = iso.createContext({ later: () => box.ctx.run('v * 3') });
        assert.equal(await nested.run('(async () => await later())()'), 15);
      } finally {
        second.dispose();
      }
    });

    it('should answer the callbacks of a run while a sync call waits for the isolate', async () => {
      let started;
      const holding = new Promise((resolve) => { started = resolve; });
      const ctx = iso.createContext({ started: () => started(), hostValue: () => 40 });
      const running = ctx.run('started(); const t0 = Date.now(); while (Date.now() - t0 < 50); hostValue() + 2');
      await holding; // the runner holds the isolate
      // The host thread blocks here; the run's hostValue() is answered by it.
      assert.equal(ctx.evaluate('"sync"'), 'sync');
      assert.equal(await running, 42);
    });

    it('should serve dynamic import() of an async run', async () => {
      const ctx = iso.createContext({}, {
        importModuleDynamically: (specifier) => `export default ${JSON.stringify(specifier)} + "!";`,
      });
      assert.equal(await ctx.run('import("mod").then((m) => m.default)'), 'mod!');
    });
  });

  describe('cpuTimeout', () => {
    it('should stop sandbox CPU use, sync and async, as a TimeoutError of the CPU clock', async () => {
      const ctx = iso.createContext();
      const error = await rejection(ctx.run('for (;;) {}', { cpuTimeout: 50 }));
      assert.ok(error instanceof cordon.TimeoutError);
      assert.equal(error.code, 'ERR_SCRIPT_EXECUTION_TIMEOUT');
      assert.equal(error.clock, 'cpu');
      assert.match(error.message, /50ms of CPU time/);
      assert.throws(() => cordon.runInContext('for (;;) {}', ctx, { cpuTimeout: 50 }),
        (e) => e.code === 'ERR_SCRIPT_EXECUTION_TIMEOUT' && e.clock === 'cpu');
      const spin = cordon.compileFunction('for (;;) {}', [], { parsingContext: ctx, cpuTimeout: 30 });
      assert.throws(() => spin(), (e) => e.clock === 'cpu');
      assert.equal(ctx.evaluate('"usable"'), 'usable');
    });

    it('should not count time spent in host callbacks', async function () {
      this.timeout(20000);
      const ctx = iso.createContext({ slowHost: () => { spinHost(250); return 1; } });
      // 250 ms of host work against a 100 ms CPU bound: not the sandbox's.
      assert.equal(await ctx.run('slowHost() + slowHost()', { cpuTimeout: 100 }), 2);
      assert.equal(cordon.runInContext('slowHost()', ctx, { cpuTimeout: 100 }), 1);
      // The wall-clock timeout still counts it.
      const error = await rejection(ctx.run('slowHost(); for (;;) {}', { timeout: 150 }));
      assert.equal(error.clock, 'wall');
    });
  });

  it('should report time spent running in wallTime and cpuTime', async function () {
    this.timeout(20000);
    const ctx = iso.createContext({ wait: () => { spinHost(200); } });
    const w0 = iso.wallTime;
    const c0 = iso.cpuTime;
    assert.equal(typeof w0, 'bigint');
    await ctx.run('const t0 = Date.now(); while (Date.now() - t0 < 100);');
    const w1 = iso.wallTime;
    const c1 = iso.cpuTime;
    assert.ok(w1 - w0 >= 95_000_000n, `wall ${w1 - w0}`); // (Date.now() steps in ms)
    // Counted from the runner's CPU clock: some, and never more than wall.
    assert.ok(c1 - c0 > 0n && c1 - c0 <= w1 - w0, `cpu ${c1 - c0} of wall ${w1 - w0}`);
    await ctx.run('wait()');
    const w2 = iso.wallTime;
    const c2 = iso.cpuTime;
    assert.ok(w2 - w1 >= 200_000_000n, `wall ${w2 - w1}`);
    // The host's 200 ms are wall time of the run, not CPU time of the sandbox.
    assert.ok(c2 - c1 < (w2 - w1) / 2n, `cpu ${c2 - c1} of wall ${w2 - w1}`);
  });

  it('should report unhandled rejections of async runs', async () => {
    const ctx = iso.createContext();
    const reported = new Promise((resolve) => iso.once('unhandledRejection', (reason, context) => resolve([reason, context])));
    assert.equal(await ctx.run('Promise.reject(new Error("nobody")); 1'), 1);
    const [reason, context] = await reported;
    assert.equal(reason.message, 'nobody');
    assert.equal(context, ctx);
  });

  it('should stop an async run at the memory limit and stay usable', async function () {
    this.timeout(60000);
    const small = new cordon.Isolate({ memoryLimitMB: 64 });
    try {
      const ctx = small.createContext();
      // What the runs allocate is garbage once they stop (function scope):
      // the isolate is back under its limit and stays open.
      const heap = await rejection(ctx.run('(() => { const a = []; for (;;) a.push(new Array(1e5).fill(1)) })()',
        { timeout: 20000 }));
      assert.equal(heap.code, 'ERR_MEMORY_LIMIT');
      assert.equal(heap.isolateDisposed, false);
      const buffers = await rejection(ctx.run('(() => { const b = []; for (;;) b.push(new ArrayBuffer(1 << 26)) })()',
        { timeout: 20000 }));
      assert.equal(buffers.code, 'ERR_MEMORY_LIMIT');
      assert.equal(await ctx.run('"alive"'), 'alive');
    } finally {
      small.dispose();
    }
  });

  it('should free the records of many async runs in both heaps', async function () {
    this.timeout(60000);
    const ctx = iso.createContext({ cb: (x) => x });
    const before = cordon.liveRecords();
    for (let i = 0; i < 500; i++) await ctx.run(`cb(${i}); () => ${i}`);
    global.gc();
    await sleep(10);
    global.gc();
    await sleep(10);
    iso.gc();
    const after = cordon.liveRecords();
    assert.ok(after.functions - before.functions < 50, `host functions ${before.functions} -> ${after.functions}`);
    const stats = iso.getHeapStatistics();
    assert.ok(stats.functions < 50, `engine functions ${stats.functions}`);
  });
});

describe('disposal under async runs', function () {
  this.timeout(180000);

  it(`should reject a spinning run with ERR_ISOLATE_DISPOSED (x${DISPOSE_LOOPS})`, async () => {
    for (let i = 0; i < DISPOSE_LOOPS; i++) {
      const iso = new cordon.Isolate();
      const run = iso.createContext().run('for (;;) {}');
      await sleep(i % 3); // before the runner took it, while it starts, while it spins
      iso.dispose();
      const error = await rejection(run);
      assert.equal(error.code, 'ERR_ISOLATE_DISPOSED', `iteration ${i}: ${error.stack}`);
      assert.equal(iso.isDisposed, true);
    }
  });

  it(`should reject queued runs that never started (x${DISPOSE_LOOPS})`, async () => {
    for (let i = 0; i < DISPOSE_LOOPS; i++) {
      const iso = new cordon.Isolate();
      const ctx = iso.createContext();
      const script = iso.compileScript('2'); // (a sync call would wait behind the loop)
      const runs = [ctx.run('for (;;) {}'), ctx.run('1'), script.run(ctx)];
      if (i % 2) await sleep(1);
      iso.dispose();
      for (const r of await Promise.allSettled(runs)) {
        assert.equal(r.status, 'rejected');
        assert.equal(r.reason.code, 'ERR_ISOLATE_DISPOSED');
      }
      assert.equal((await rejection(ctx.run('1'))).code, 'ERR_ISOLATE_DISPOSED');
    }
  });

  it(`should dispose from a host callback of the async run (x${DISPOSE_LOOPS})`, async () => {
    for (let i = 0; i < DISPOSE_LOOPS; i++) {
      const iso = new cordon.Isolate();
      const ctx = iso.createContext({ stop: () => { iso.dispose(); return 'stopped'; } });
      const error = await rejection(ctx.run('stop(); for (;;) {}'));
      assert.equal(error.code, 'ERR_ISOLATE_DISPOSED', `iteration ${i}`);
      assert.equal(iso.isDisposed, true);
    }
  });

  it(`should dispose while an import() of an async run is pending (x${DISPOSE_LOOPS})`, async () => {
    for (let i = 0; i < DISPOSE_LOOPS; i++) {
      const iso = new cordon.Isolate();
      let loaded;
      const requested = new Promise((resolve) => { loaded = resolve; });
      const ctx = iso.createContext({}, {
        importModuleDynamically: () => new Promise((resolve) => {
          loaded();
          setTimeout(() => resolve('export default 1'), i % 2);
        }),
      });
      // The sandbox's import() promise, as a host promise.
      const { pending } = await ctx.run('({ pending: import("m") })');
      await requested;
      iso.dispose();
      assert.equal((await rejection(pending)).code, 'ERR_ISOLATE_DISPOSED', `iteration ${i}`);
    }
  });

  it(`should dispose while a context is disposed and runs are starting (x${DISPOSE_LOOPS})`, async () => {
    for (let i = 0; i < DISPOSE_LOOPS; i++) {
      const iso = new cordon.Isolate();
      const ctx = iso.createContext();
      const runs = [];
      for (let k = 0; k < 4; k++) runs.push(ctx.run(`${k}`));
      ctx.dispose(); // queued jobs find it gone when they start
      runs.push(iso.createContext().run('for (;;) {}'));
      const settled = Promise.allSettled(runs); // (handled from the start)
      await sleep(i % 2);
      iso.dispose();
      const results = await settled;
      for (const r of results) {
        if (r.status === 'fulfilled') continue; // a run that finished before the dispose
        assert.equal(r.reason.code, 'ERR_ISOLATE_DISPOSED', r.reason.stack);
      }
      assert.equal(results[4].status, 'rejected');
    }
  });

  it('should let a worker.terminate() end a worker with an infinite async run (x50), RSS flat', async function () {
    this.timeout(300000);
    const { Worker } = require('node:worker_threads');
    const code = `
      const { parentPort } = require('node:worker_threads');
      const cordon = require(${ROOT});
      const iso = new cordon.Isolate();
      const ctx = iso.createContext({ ready: () => parentPort.postMessage('spinning') });
      ctx.run('ready(); for (;;) {}');`;
    const once = async () => {
      assert.deepEqual(await terminateSpinning(new Worker(code, { eval: true })), []);
    };
    for (let i = 0; i < 10; i++) await once(); // warm up allocator pools
    global.gc();
    const before = process.memoryUsage().rss;
    for (let i = 0; i < 50; i++) await once();
    global.gc();
    const growth = (process.memoryUsage().rss - before) / (1 << 20);
    assert.ok(growth < 100, `RSS grew ${growth.toFixed(1)} MB over 50 workers`);
    assert.equal(await cordon.createContext().run('6 * 7'), 42);
  });

  it('should exit the process cleanly with async runs in flight', async function () {
    this.timeout(60000);
    const cases = {
      'process.exit()': `ctx.run('for (;;) {}'); iso2.createContext().run('for (;;) {}');
        setTimeout(() => process.exit(3), 50);`,
      'process.exit() from a callback': `
        const c = iso.createContext({ bye: () => process.exit(3) });
        c.run('bye(); for (;;) {}'); iso2.createContext().run('for (;;) {}');`,
      'an uncaught exception': `ctx.run('for (;;) {}');
        setTimeout(() => { throw Object.assign(new Error('boom'), { exitCode: 3 }); }, 50);`,
    };
    for (const [name, body] of Object.entries(cases)) {
      const r = await runNode(['-e', `
        const cordon = require(${ROOT});
        const iso = new cordon.Isolate();
        const iso2 = new cordon.Isolate();
        const ctx = iso.createContext();
        ${body}`]);
      assert.equal(r.signal, null, `${name}: ${r.stderr}`);
      if (name === 'an uncaught exception') {
        assert.equal(r.code, 1, `${name}: ${r.stderr}`);
        assert.match(r.stderr, /boom/);
      } else {
        assert.equal(r.code, 3, `${name}: ${r.stderr}`);
      }
    }
    // Natural exit: the pending run keeps the loop alive until it settles.
    const r = await runNode(['-e', `
      const cordon = require(${ROOT});
      cordon.createContext().run('const t0 = Date.now(); while (Date.now() - t0 < 100); 5')
        .then((v) => console.log('result', v));`]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.trim(), 'result 5');
  });
});
