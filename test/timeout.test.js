'use strict';

const assert = require('node:assert/strict');
const cordon = require('..');

const isTimeout = (e) => e instanceof cordon.TimeoutError &&
  e instanceof Error &&
  e.code === 'ERR_SCRIPT_EXECUTION_TIMEOUT';

describe('timeouts', () => {
  it('should stop an infinite loop with a TimeoutError', () => {
    const ctx = cordon.createContext();
    assert.throws(() => cordon.runInContext('while(true){}', ctx, { timeout: 50 }), (e) => {
      assert.ok(isTimeout(e));
      assert.equal(e.message, 'Script execution timed out after 50ms');
      return true;
    });
  });

  it('should not let sandbox code catch the termination', () => {
    const ctx = cordon.createContext();
    assert.throws(() => cordon.runInContext('for(;;){ try { while(1){} } catch (e) {} }', ctx, { timeout: 50 }), isTimeout);
    assert.throws(() => cordon.runInContext(
      'for(;;){ try { while(1){} } finally { for(;;){} } }', ctx, { timeout: 50 }), isTimeout);
  });

  it('should leave the context usable, with the globals it set before', () => {
    const ctx = cordon.createContext({ seed: 3 });
    cordon.runInContext('globalThis.kept = seed * 2; var alsoKept = "yes"', ctx);
    assert.throws(() => cordon.runInContext('globalThis.partial = 1; while(true){}', ctx, { timeout: 30 }), isTimeout);
    assert.equal(cordon.runInContext('kept + 1', ctx), 7);
    assert.equal(cordon.runInContext('alsoKept', ctx), 'yes');
    assert.equal(cordon.runInContext('partial', ctx), 1);
    assert.equal(cordon.runInContext('[1, 2, 3].map((x) => x * seed).join()', ctx, { timeout: 1000 }), '3,6,9');
  });

  it('should alternate 1000 timed-out and normal runs with no stale termination', function () {
    this.timeout(120000);
    const ctx = cordon.createContext();
    let timeouts = 0;
    let normal = 0;
    for (let i = 0; i < 1000; i++) {
      if (i % 2 === 0) {
        assert.throws(() => cordon.runInContext('for(;;){}', ctx, { timeout: 1 }), isTimeout);
        timeouts++;
      } else {
        // A run without a deadline would hang forever on a leaked
        // termination's opposite, and throw on a leaked termination.
        assert.equal(cordon.runInContext(`${i} + 1`, ctx), i + 1);
        assert.equal(cordon.runInContext(`let s${i} = 0; for (let j = 0; j < 1000; j++) s${i} += j; s${i}`, ctx, { timeout: 5000 }), 499500);
        normal++;
      }
    }
    assert.equal(timeouts, 500);
    assert.equal(normal, 500);
  });

  it('should cover the microtasks a run queued', () => {
    const ctx = cordon.createContext();
    assert.throws(() => cordon.runInContext(
      'const spin = () => Promise.resolve().then(spin); spin(); "returned"', ctx, { timeout: 50 }), isTimeout);
    assert.equal(cordon.runInContext('"after"', ctx, { timeout: 1000 }), 'after');
  });

  it('should cover reading the properties of a thrown error', () => {
    const ctx = cordon.createContext();
    assert.throws(() => cordon.runInContext(
      'const e = new Error("x"); Object.defineProperty(e, "message", { get() { for(;;){} } }); throw e', ctx, { timeout: 50 }),
    isTimeout);
    assert.equal(cordon.runInContext('1', ctx), 1);
  });

  it('should not fire after its run has finished', async () => {
    const ctx = cordon.createContext();
    // 50 ms: on a loaded machine even `1` can take 5 (seen in CI).
    assert.equal(cordon.runInContext('1', ctx, { timeout: 50 }), 1);
    await new Promise((resolve) => setTimeout(resolve, 100));
    // Without a deadline: a late termination would surface here.
    assert.equal(cordon.runInContext('let q = 0; for (let i = 0; i < 1e6; i++) q += i; q', ctx), 499999500000);
  });

  it('should bound a host callback that re-enters the sandbox, inner and outer', () => {
    const iso = new cordon.Isolate();
    try {
      const hostCalls = [];
      const ctx = iso.createContext({
        reenter(code, timeout) {
          try {
            return cordon.runInContext(code, ctx, timeout ? { timeout } : undefined);
          } catch (e) {
            hostCalls.push(e.code);
            throw e;
          }
        },
      });
      // The inner run times out; the outer catches it and finishes.
      assert.equal(cordon.runInContext(
        'try { reenter("for(;;){}", 20) } catch (e) { "inner " + e.name }', ctx, { timeout: 2000 }), 'inner TimeoutError');
      assert.deepEqual(hostCalls, ['ERR_SCRIPT_EXECUTION_TIMEOUT']);
      // The outer deadline passes while the inner run (no deadline) spins.
      assert.throws(() => cordon.runInContext('reenter("for(;;){}")', ctx, { timeout: 30 }), isTimeout);
      assert.equal(cordon.runInContext('2 + 2', ctx), 4);
    } finally {
      iso.dispose();
    }
  });

  it('should stop a slow host callback only once it returns to the sandbox', () => {
    const ctx = cordon.createContext({
      slow() {
        const end = Date.now() + 60;
        while (Date.now() < end) { /* the host is busy */ }
        return 'done';
      },
    });
    assert.throws(() => cordon.runInContext('slow(); for(;;){}', ctx, { timeout: 20 }), isTimeout);
    assert.equal(cordon.runInContext('slow()', ctx), 'done');
  });

  it('should give each isolate its own deadlines', () => {
    const a = new cordon.Isolate();
    const b = new cordon.Isolate();
    try {
      const ca = a.createContext();
      const cb = b.createContext();
      assert.throws(() => ca.evaluate('for(;;){}', { timeout: 20 }), isTimeout);
      assert.equal(cb.evaluate('"b ok"', { timeout: 20 }), 'b ok');
      assert.equal(ca.evaluate('"a ok"'), 'a ok');
    } finally {
      a.dispose();
      b.dispose();
    }
  });
});
