'use strict';

const assert = require('node:assert/strict');
const cordon = require('..');

// Bad input from either side gets a coded error: never a crash, a hang or a
// lost result.
describe('hostile input', () => {
  it('should carry lone surrogates and NUL characters through code, results and filenames', () => {
    const ctx = cordon.createContext();
    assert.equal(cordon.runInContext('"a\\uD800b\\u0000c"', ctx), 'a\uD800b\u0000c');
    assert.equal(cordon.runInContext('"\uDC00".length', ctx, { filename: 'x\uD800\u0000.js' }), 1);
    // Error messages cross as UTF-8: a lone surrogate arrives replaced.
    assert.throws(() => cordon.runInContext('throw new Error("a\\uD800")', ctx, 'f\uD800.js'),
      (e) => /^a\uFFFD+$/.test(e.message));
  });

  it('should refuse proxies and throwing getters on the host side with coded errors', () => {
    const ctx = cordon.createContext();
    const f = cordon.runInContext('(x) => typeof x', ctx);
    const hostile = { get boom() { throw new Error('getter'); }, fn() {} };
    assert.throws(() => f(hostile), { code: 'ERR_CANNOT_CLONE' });
    // A host proxy is read through its traps, like any object.
    assert.equal(f(new Proxy({}, {})), 'object');
    assert.throws(() => cordon.createContext(new Proxy({ a: 1 }, { getOwnPropertyDescriptor() { throw new Error('trap'); } })),
      { code: 'ERR_INVALID_ARG_VALUE' });
  });

  it('should turn hostile values from the sandbox into coded errors', () => {
    const ctx = cordon.createContext();
    assert.throws(() => cordon.runInContext('new Proxy({}, { ownKeys() { throw 1 } })', ctx), { code: 'ERR_CANNOT_CLONE' });
    // A getter that throws while the result is copied: its exception is the
    // outcome, with and without functions in the value.
    assert.throws(() => cordon.runInContext('({ get x() { throw new RangeError("from a getter") } })', ctx),
      (e) => e instanceof RangeError && e.message === 'from a getter');
    assert.throws(() => cordon.runInContext('({ f() {}, get x() { throw new EvalError("again") } })', ctx),
      (e) => e instanceof EvalError && e.message === 'again');
  });

  it('should refuse a value nested too deeply rather than overflow a stack', () => {
    const ctx = cordon.createContext();
    assert.throws(() => cordon.runInContext('let o = { f() {} }; for (let i = 0; i < 10000; i++) o = { o }; o', ctx),
      (e) => e instanceof RangeError || e.code === 'ERR_CANNOT_CLONE');
    assert.equal(cordon.runInContext('"still fine"', ctx), 'still fine');
  });

  it('should keep working when sandbox code replaces builtins the engine uses', async () => {
    const ctx = cordon.createContext({ cb: (x) => x * 2 }, {
      importModuleDynamically: () => 'export default "ok"',
    });
    cordon.runInContext(`
      Object.defineProperty(Object.prototype, 'then', { get() { throw new Error('then!') } });
      Array.prototype.push = () => { throw new Error('push!') };
      WeakMap.prototype.get = () => { throw new Error('get!') };
      WeakMap.prototype.set = () => { throw new Error('set!') };
      Promise.prototype.then = function () { throw new Error('then!') };
      globalThis.Error = function () { return 'fake' };
      globalThis.TypeError = function () { return 'fake' };`, ctx);
    assert.equal(cordon.runInContext('cb(21)', ctx), 42);
    assert.deepEqual(cordon.runInContext('[1, [2]]', ctx), [1, [2]]);
    assert.throws(() => cordon.runInContext('null.x', ctx), TypeError);
  });

  it('should survive a host callback that disposes the context it runs in', () => {
    const ctx = cordon.createContext({ drop: () => ctx.dispose() });
    assert.equal(cordon.runInContext('drop(); 1 + 1', ctx), 2);
    assert.throws(() => cordon.runInContext('1', ctx), { code: 'ERR_ISOLATE_DISPOSED' });
  });
});
