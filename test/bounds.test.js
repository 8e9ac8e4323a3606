'use strict';

// One bound per unit of work, inherited by what it spawns: the promises a
// run hands out reject at its deadline, the host-promise settlements that
// would resume it after that are dropped, and the functions of its result
// (then, toString...) run under its bound. Times are asserted relative to
// the bound under test, never as absolute thresholds.
const assert = require('node:assert/strict');
const cordon = require('..');
const { runNode, sleep, rejection } = require('./support/util');

const BOUND = 100;
// How late a bound may fire on a loaded two-core machine: generous, and
// still far below "never" (the failures these tests guard against hang).
const within = (ms, bound = BOUND) => assert.ok(ms >= bound - 5 && ms < bound * 20, `${ms} ms for a ${bound} ms bound`);

async function timed(promise) {
  const t0 = performance.now();
  const error = await rejection(promise);
  return { error, ms: performance.now() - t0 };
}

describe('bounds inherited by what a run spawns', () => {
  let iso;
  let ctx;
  beforeEach(() => {
    iso = new cordon.Isolate();
    ctx = iso.createContext();
  });
  afterEach(() => iso.dispose());

  it("should reject an async run's never-settling promise result at its timeout", async () => {
    const { error, ms } = await timed(ctx.run('new Promise(() => {})', { timeout: BOUND }));
    assert.equal(error.code, 'ERR_SCRIPT_EXECUTION_TIMEOUT');
    within(ms);
    assert.equal(ctx.evaluate('1 + 1'), 2);
  });

  it("should reject a sync run's never-settling promise result at its timeout", async () => {
    const { error, ms } = await timed(cordon.runInContext('new Promise(() => {})', ctx, { timeout: BOUND }));
    assert.equal(error.code, 'ERR_SCRIPT_EXECUTION_TIMEOUT');
    within(ms);
  });

  it('should stop an async loop over host promises at the run bound, not resume it later', async () => {
    let calls = 0;
    const c = iso.createContext({ fetch: async () => { calls++; return 1; } });
    const { error, ms } = await timed(c.run('(async () => { for (;;) await fetch() })()', { timeout: BOUND }));
    assert.equal(error.code, 'ERR_SCRIPT_EXECUTION_TIMEOUT');
    within(ms);
    const seen = calls;
    await sleep(BOUND);
    assert.ok(calls <= seen + 1, `${calls - seen} host calls after the deadline`);
  });

  // Settlements run from the host's microtask queue: they must leave the
  // host loop its turns (timers fire, an abort can come).
  it('should let the host loop turn while an unbounded sandbox loop awaits host promises', async () => {
    let calls = 0;
    const c = iso.createContext({ fetch: async () => { calls++; return 1; } });
    let ticks = 0;
    const timer = setInterval(() => ticks++, 10);
    cordon.runInContext('(async () => { for (;;) await fetch() })(); 0', c);
    await sleep(5 * BOUND);
    clearInterval(timer);
    assert.ok(calls > 0);
    assert.ok(ticks >= 5, `${ticks} timer ticks in ${5 * BOUND} ms`);
  });

  it('should keep the old per-settlement bound with untilSettled: false', async () => {
    const p = ctx.run('new Promise((r) => { globalThis.r = r })', { timeout: BOUND, untilSettled: false });
    await sleep(BOUND * 2);
    ctx.evaluate('r(7)');
    assert.equal(await p, 7);
  });

  it("should run a result's then under the run's bound", async () => {
    const { error, ms } = await timed(cordon.runInContext('({ then() { for (;;) {} } })', ctx, { timeout: BOUND }));
    assert.equal(error.code, 'ERR_SCRIPT_EXECUTION_TIMEOUT');
    within(ms);
    const { error: e2 } = await timed(ctx.run('({ then() { for (;;) {} } })', { timeout: BOUND }));
    assert.equal(e2.code, 'ERR_SCRIPT_EXECUTION_TIMEOUT');
  });

  it("should run a result's toString, valueOf and toJSON under the run's bound", () => {
    for (const [code, use] of [
      ['({ toString() { for (;;) {} } })', (v) => String(v)],
      ['({ valueOf() { for (;;) {} } })', (v) => +v],
      ['({ toJSON() { for (;;) {} } })', (v) => JSON.stringify(v)],
    ]) {
      const value = cordon.runInContext(code, ctx, { timeout: BOUND });
      const t0 = performance.now();
      assert.throws(() => use(value), { code: 'ERR_SCRIPT_EXECUTION_TIMEOUT' });
      within(performance.now() - t0);
    }
    // A caller may give another bound.
    const value = cordon.runInContext('({ f() { for (;;) {} } })', ctx, { timeout: BOUND });
    assert.throws(() => cordon.apply(value.f, value, [], { timeout: 20 }), { code: 'ERR_SCRIPT_EXECUTION_TIMEOUT' });
  });

  // A then that resolves with another thenable: the host's promise
  // machinery would call thens without end, never letting its loop turn.
  it('should end a self-chaining thenable at the bound of the run that made it', async () => {
    const code = '({ then(r) { const t = { then(r2) { r2(t) } }; r(t) } })';
    const { error, ms } = await timed(Promise.resolve(cordon.runInContext(code, ctx, { timeout: BOUND })));
    assert.equal(error.code, 'ERR_SCRIPT_EXECUTION_TIMEOUT');
    within(ms);
    // Under a context's timeout, and with no bound at all (1 s a loop turn).
    const c = iso.createContext({}, { timeout: BOUND });
    assert.equal((await rejection(Promise.resolve(cordon.runInContext(code, c)))).code, 'ERR_SCRIPT_EXECUTION_TIMEOUT');
    const t0 = performance.now();
    assert.equal((await rejection(Promise.resolve(cordon.runInContext(code, ctx)))).code, 'ERR_SCRIPT_EXECUTION_TIMEOUT');
    within(performance.now() - t0, 1000);
    // An ordinary thenable still resolves.
    assert.equal(await cordon.runInContext('({ then(r) { r({ then(r2) { r2(7) } }) } })', ctx, { timeout: BOUND }), 7);
  });

  it('should refuse Atomics.wait, which cpuTimeout alone could never end', async () => {
    const code = 'Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0)';
    await assert.rejects(ctx.run(code, { cpuTimeout: BOUND }), { name: 'TypeError', message: /Atomics\.wait/ });
    assert.throws(() => cordon.runInContext(code, ctx, { cpuTimeout: BOUND }), { name: 'TypeError' });
    assert.equal(ctx.evaluate('typeof Atomics.waitAsync'), 'function');
  });
});

describe('runInNewContext results', () => {
  it('should keep the new context as long as its results use it', async () => {
    assert.equal(cordon.runInNewContext('() => 42')(), 42);
    const p = cordon.runInNewContext('Promise.resolve(5).then((x) => x * 2)');
    assert.equal(await p, 10);
    const o = cordon.runInNewContext('({ n: 1, inc() { return ++this.n } })');
    assert.equal(o.inc.call({ n: 1 }), 2);
  });

  it('should still dispose the new context at once when the result does not refer into it', () => {
    // (The sandbox's own count: disposed at once, whenever the host
    // collects the handles.)
    const live = () => cordon.defaultIsolate.getHeapStatistics().contexts;
    const script = new cordon.Script('[1, 2]');
    assert.deepEqual(script.runInNewContext(), [1, 2]);
    const base = live();
    // (At most: contexts earlier tests dropped may be collected meanwhile.)
    for (let i = 0; i < 200; i++) assert.equal(cordon.runInNewContext('1 + 1'), 2);
    assert.ok(live() <= base, `${live() - base} more live contexts`);
    assert.deepEqual(script.runInNewContext(), [1, 2]);
    assert.ok(live() <= base, `${live() - base} more live contexts`);
    assert.equal(new cordon.Script('() => 7').runInNewContext()(), 7);
  });

  // No forced GC: the contexts of dropped results are freed as the host's
  // collector finds them (each handle reports its sandbox memory), with
  // the loop turning now and then as a server's does.
  it('should free the contexts of a loop that drops its function results', async () => {
    const base = cordon.liveRecords().contexts;
    let peak = 0;
    for (let i = 0; i < 3000; i++) {
      assert.equal(cordon.runInNewContext('() => 1')(), 1);
      if (i % 100 === 0) {
        peak = Math.max(peak, cordon.liveRecords().contexts - base);
        await new Promise(setImmediate);
      }
    }
    assert.ok(peak < 1000, `${peak} of 3000 contexts live at once`);
  });
});

describe('liveness of a bounded promise result (bare script)', () => {
  it('should deliver the timeout to a script with nothing else keeping it alive (CJS and ESM)', async () => {
    const body = `const ctx = cordon.createContext();
      try { await cordon.runInContext('new Promise(() => {})', ctx, { timeout: ${BOUND} }); console.log('settled'); }
      catch (e) { console.log(e.code); }`;
    const cjs = await runNode(['-e', `const cordon = require(${JSON.stringify(require.resolve('..'))});
      (async () => { ${body} })();`]);
    assert.equal(cjs.stdout.trim(), 'ERR_SCRIPT_EXECUTION_TIMEOUT', cjs.stderr);
    const esm = await runNode(['--input-type=module', '-e',
      `import cordon from ${JSON.stringify(require.resolve('..'))}; ${body}`]);
    assert.equal(esm.stdout.trim(), 'ERR_SCRIPT_EXECUTION_TIMEOUT', esm.stderr);
    assert.equal(esm.code, 0);
  });
});

// In a fresh process (no runner thread started yet), as a new user meets
// them: an async run queued while the host holds the isolate to deliver
// its promises used to fail with ERR_CORDON_INTERNAL.
describe('async runs queued while the host delivers promises (fresh process)', () => {
  it('should run ctx.run from a reaction to a sandbox promise, and an import() of an evaluated Module', async () => {
    const r = await runNode(['-e', `const cordon = require(${JSON.stringify(require.resolve('..'))});
      (async () => {
        const ctx = cordon.createContext();
        console.log(await cordon.runInContext('Promise.resolve(1)', ctx).then(() => ctx.run('2')));
        const m = new cordon.Module('export default 5', { context: ctx });
        await m.evaluate();
        console.log(await ctx.run('import("x").then((n) => n.default)', { importModuleDynamically: () => m }));
      })().catch((e) => console.log(e.code, e.message));`]);
    assert.equal(r.stdout, '2\n5\n', r.stderr);
  });
});
