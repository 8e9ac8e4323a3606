'use strict';

// Cancellation: `signal` on every async API, and context.dispose() ending
// that context's work while the isolate's other contexts go on. Times are
// relative to the bound a run would otherwise have.
const assert = require('node:assert/strict');
const cordon = require('..');
const { rejection } = require('./support/util');

const LONG = 5000; // the run's own timeout: an abort must come long before
const SOON = 100;
const quick = (ms) => assert.ok(ms < LONG / 5, `${ms} ms after the abort`);

async function abortedAfter(ms, start) {
  const ac = new AbortController();
  const promise = start(ac.signal);
  setTimeout(() => ac.abort(new Error('enough')), ms);
  const t0 = performance.now();
  const error = await rejection(promise);
  return { error, ms: performance.now() - t0 - ms };
}

describe('cancellation', () => {
  let iso;
  let ctx;
  let other;
  beforeEach(() => {
    iso = new cordon.Isolate();
    ctx = iso.createContext();
    other = iso.createContext();
  });
  afterEach(() => iso.dispose());

  it('should stop a running context.run at abort() and keep the context usable', async () => {
    const { error, ms } = await abortedAfter(SOON, (signal) => ctx.run('for (;;) {}', { timeout: LONG, signal }));
    assert.ok(error instanceof cordon.AbortError);
    assert.equal(error.name, 'AbortError');
    assert.equal(error.code, 'ABORT_ERR');
    assert.equal(error.cause.message, 'enough');
    quick(ms);
    assert.equal(await ctx.run('1 + 1'), 2);
    assert.equal(ctx.evaluate('2 + 2'), 4);
  });

  it('should stop script.run, applyAsync and a pending promise result', async () => {
    const script = new cordon.Script('for (;;) {}', { isolate: iso });
    let r = await abortedAfter(SOON, (signal) => script.run(ctx, { timeout: LONG, signal }));
    assert.equal(r.error.code, 'ABORT_ERR');
    quick(r.ms);
    const f = cordon.compileFunction('for (;;) {}', [], { parsingContext: ctx });
    r = await abortedAfter(SOON, (signal) => cordon.applyAsync(f, undefined, [], { timeout: LONG, signal }));
    assert.equal(r.error.code, 'ABORT_ERR');
    quick(r.ms);
    r = await abortedAfter(SOON, (signal) => ctx.run('new Promise(() => {})', { signal }));
    assert.equal(r.error.code, 'ABORT_ERR');
    quick(r.ms);
    assert.equal(await ctx.run('"alive"'), 'alive');
  });

  it('should take a queued run off its queue, so it never runs', async () => {
    const first = ctx.run('const t = Date.now(); while (Date.now() - t < 200) {} 1');
    const ac = new AbortController();
    const second = ctx.run('globalThis.ran = true', { signal: ac.signal });
    const rejected = rejection(second);
    ac.abort();
    assert.equal((await rejected).code, 'ABORT_ERR');
    assert.equal(await first, 1);
    assert.equal(await ctx.run('typeof globalThis.ran'), 'undefined');
  });

  it('should reject at once for a signal already aborted, on every API', async () => {
    const signal = AbortSignal.abort();
    const f = cordon.compileFunction('return 1', [], { parsingContext: ctx });
    for (const p of [ctx.run('1', { signal }), new cordon.Script('1', { isolate: iso }).run(ctx, { signal }),
      cordon.applyAsync(f, undefined, [], { signal }), new cordon.Module('export default 1', { context: ctx }).evaluate({ signal })]) {
      assert.equal((await rejection(p)).code, 'ABORT_ERR');
    }
    assert.throws(() => cordon.runInContext('1', ctx, { signal }), { code: 'ABORT_ERR' });
    assert.throws(() => cordon.apply(f, undefined, [], { signal }), { code: 'ABORT_ERR' });
    assert.throws(() => cordon.runInNewContext('1', {}, { signal }), { code: 'ABORT_ERR' });
  });

  it('should stop resuming an aborted run on host promises', async () => {
    let calls = 0;
    const c = iso.createContext({ fetch: async () => { calls++; return 1; } });
    const { error } = await abortedAfter(SOON, (signal) => c.run('(async () => { for (;;) await fetch() })()', { signal }));
    assert.equal(error.code, 'ABORT_ERR');
    const seen = calls;
    await new Promise((resolve) => setTimeout(resolve, SOON));
    assert.ok(calls <= seen + 1, `${calls - seen} host calls after the abort`);
  });

  it('should refuse a signal that is not an AbortSignal', async () => {
    await assert.rejects(ctx.run('1', { signal: {} }), { code: 'ERR_INVALID_ARG_TYPE' });
    assert.throws(() => cordon.runInContext('1', ctx, { signal: 1 }), { code: 'ERR_INVALID_ARG_TYPE' });
  });

  it("should stop and reject a disposed context's running and queued runs, and leave its neighbours running", async () => {
    const running = rejection(ctx.run('for (;;) {}', { timeout: LONG }));
    const queued = rejection(ctx.run('globalThis.ran = 1'));
    const t0 = performance.now();
    setTimeout(() => ctx.dispose(), SOON);
    assert.equal((await running).code, 'ERR_ISOLATE_DISPOSED');
    assert.equal((await queued).code, 'ERR_ISOLATE_DISPOSED');
    quick(performance.now() - t0 - SOON);
    assert.equal(await other.run('40 + 2'), 42);
    assert.equal(other.evaluate('"fine"'), 'fine');
  });
});
