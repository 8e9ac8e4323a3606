'use strict';

const assert = require('node:assert/strict');
const cordon = require('..');

const typeError = { name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE' };
const rangeError = { name: 'RangeError', code: 'ERR_INVALID_ARG_VALUE' };
const disposed = { code: 'ERR_ISOLATE_DISPOSED' };

describe('bad arguments', () => {
  const ctx = cordon.createContext();

  it('should throw if code is not a string', () => {
    for (const code of [undefined, null, 1, {}, ['1'], () => 1, Symbol('s'), new String('1')]) {
      assert.throws(() => cordon.runInContext(code, ctx), typeError);
      assert.throws(() => cordon.runInNewContext(code, {}), typeError);
      assert.throws(() => new cordon.Script(code), typeError);
    }
  });

  it('should throw if the context is not a cordon context', () => {
    for (const c of [undefined, null, {}, 1, require('node:vm').createContext({})]) {
      assert.throws(() => cordon.runInContext('1', c), typeError);
    }
  });

  it('should throw if contextObject is not an object', () => {
    for (const o of [null, 1, 'x', true]) {
      assert.throws(() => cordon.createContext(o), typeError);
    }
  });

  it('should throw RangeError for negative, fractional, NaN, infinite or huge timeouts', () => {
    for (const timeout of [-1, 0, 1.5, NaN, Infinity, -Infinity, 2 ** 32, 1e300]) {
      assert.throws(() => cordon.runInContext('1', ctx, { timeout }), rangeError, String(timeout));
    }
    for (const timeout of ['10', null, {}, 10n]) {
      assert.throws(() => cordon.runInContext('1', ctx, { timeout }), typeError, String(timeout));
    }
  });

  it('should validate filename, lineOffset and columnOffset', () => {
    assert.throws(() => cordon.runInContext('1', ctx, { filename: 1 }), typeError);
    assert.throws(() => cordon.runInContext('1', ctx, { lineOffset: '1' }), typeError);
    assert.throws(() => cordon.runInContext('1', ctx, { columnOffset: 2 ** 40 }), rangeError);
    assert.throws(() => cordon.runInContext('1', ctx, 5), typeError);
  });

  it('should turn a hostile options getter into a coded error', () => {
    const options = { get timeout() { throw new Error('gotcha'); } };
    assert.throws(() => cordon.runInContext('1', ctx, options), rangeError);
    const proxy = new Proxy({}, { get() { throw new Error('trap'); } });
    assert.throws(() => cordon.runInContext('1', ctx, proxy), rangeError);
    assert.throws(() => cordon.createContext(new Proxy({}, { ownKeys() { throw new Error('trap'); } })), rangeError);
  });

  it('should validate Isolate options', () => {
    assert.throws(() => new cordon.Isolate(1), typeError);
    assert.throws(() => new cordon.Isolate({ memoryLimitMB: '64' }), typeError);
    for (const memoryLimitMB of [0, -1, 1, 7, 1.5, NaN, 2 ** 40]) {
      assert.throws(() => new cordon.Isolate({ memoryLimitMB }), rangeError);
    }
    assert.throws(() => cordon.createContext({}, { isolate: {} }), typeError);
  });

  it('should not let anyone construct a Context directly', () => {
    const Context = Object.getPrototypeOf(cordon.createContext()).constructor;
    assert.throws(() => new Context(), { name: 'TypeError', code: 'ERR_ILLEGAL_CONSTRUCTOR' });
  });

  it('should refuse a context of another isolate', () => {
    const iso = new cordon.Isolate();
    try {
      const script = new cordon.Script('1');
      assert.throws(() => script.runInContext(iso.createContext()), rangeError);
    } finally {
      iso.dispose();
    }
  });

  it('should throw ERR_ISOLATE_DISPOSED for a disposed context or isolate', () => {
    const iso = new cordon.Isolate();
    const c = iso.createContext();
    const script = new cordon.Script('1', { isolate: iso });
    const own = iso.createContext();
    own.dispose();
    own.dispose(); // idempotent
    assert.throws(() => cordon.runInContext('1', own), disposed);
    assert.equal(own.isDisposed, true);
    assert.equal(c.evaluate('1'), 1);
    iso.dispose();
    iso.dispose(); // idempotent
    assert.equal(iso.isDisposed, true);
    assert.equal(c.isDisposed, true);
    assert.throws(() => cordon.runInContext('1', c), disposed);
    assert.throws(() => script.runInContext(c), disposed);
    assert.throws(() => iso.createContext(), disposed);
    assert.throws(() => new cordon.Script('1', { isolate: iso }), disposed);
    assert.throws(() => iso.getHeapStatistics(), disposed);
    assert.throws(() => iso.gc(), disposed);
    // The process is healthy and other isolates work.
    assert.equal(cordon.runInContext('40 + 2', ctx), 42);
  });

  it('should throw ERR_ISOLATE_DISPOSED when a host callback disposes its isolate mid-run', () => {
    const iso = new cordon.Isolate();
    const c = iso.createContext({ kill: () => iso.dispose() });
    assert.throws(() => c.evaluate('kill(); for(;;){}'), disposed);
    assert.equal(iso.isDisposed, true);
    assert.throws(() => c.evaluate('1'), disposed);
  });
});
