'use strict';

const assert = require('node:assert/strict');
const cordon = require('..');

describe('cordon.createContext()', () => {
  it('should copy data properties in as globals', () => {
    const ctx = cordon.createContext({ x: 1, s: 'str', o: { deep: [1, 2, { n: null }] }, d: new Date(0) });
    assert.equal(cordon.runInContext('x + 1', ctx), 2);
    assert.equal(cordon.runInContext('s.toUpperCase()', ctx), 'STR');
    assert.deepEqual(cordon.runInContext('o', ctx), { deep: [1, 2, { n: null }] });
    assert.equal(cordon.runInContext('d instanceof Date && d.getTime()', ctx), 0);
  });

  it('should copy, not share: changes inside do not reach the host object', () => {
    const obj = { list: [1] };
    const ctx = cordon.createContext(obj);
    cordon.runInContext('list.push(2); globalThis.added = true', ctx);
    assert.deepEqual(obj, { list: [1] });
    assert.deepEqual(cordon.runInContext('list', ctx), [1, 2]);
  });

  it('should skip accessors and non-enumerable properties', () => {
    let reads = 0;
    const obj = Object.defineProperties({}, {
      getter: { get() { reads++; return 1; }, enumerable: true },
      hidden: { value: 2, enumerable: false },
      shown: { value: 3, enumerable: true },
    });
    const ctx = cordon.createContext(obj);
    assert.equal(reads, 0);
    assert.equal(cordon.runInContext('typeof getter + typeof hidden + shown', ctx), 'undefinedundefined3');
  });

  it('should turn functions into host callbacks with copied arguments and results', () => {
    const seen = [];
    const ctx = cordon.createContext({
      add: (a, b) => a + b,
      record: (value) => { seen.push(value); return { ok: true, n: seen.length }; },
    });
    assert.equal(cordon.runInContext('add(2, 3)', ctx), 5);
    assert.deepEqual(cordon.runInContext('record({ a: [1, 2] })', ctx), { ok: true, n: 1 });
    assert.deepEqual(seen, [{ a: [1, 2] }]);
    assert.equal(cordon.runInContext('typeof add + ":" + add.name', ctx), 'function:add');
  });

  it('should rethrow a host exception inside the sandbox with the same name and message', () => {
    const ctx = cordon.createContext({
      fail: () => { throw new RangeError('too far'); },
      failCustom: () => { const e = new Error('custom'); e.name = 'MyError'; throw e; },
    });
    assert.equal(cordon.runInContext(
      'try { fail() } catch (e) { `${e instanceof RangeError}:${e.name}:${e.message}` }', ctx),
    'true:RangeError:too far');
    assert.equal(cordon.runInContext(
      'try { failCustom() } catch (e) { `${e instanceof Error}:${e.name}:${e.message}` }', ctx),
    'true:MyError:custom');
  });

  it('should let an uncaught host exception reach the host caller', () => {
    const ctx = cordon.createContext({ fail: () => { throw new TypeError('bad'); } });
    assert.throws(() => cordon.runInContext('fail()', ctx), (e) => e instanceof TypeError && e.message === 'bad');
  });

  it('should refuse values that cannot be copied in, with a coded error', () => {
    assert.throws(() => cordon.createContext({ s: Symbol('x') }),
      { name: 'TypeError', code: 'ERR_INVALID_ARG_VALUE' });
  });

  it('should report a host callback result that cannot be copied into the sandbox', () => {
    const ctx = cordon.createContext({ give: () => Symbol('x') });
    const r = cordon.runInContext('try { give(); "no" } catch (e) { e.name + ":" + /cannot be copied/.test(e.message) }', ctx);
    assert.equal(r, 'TypeError:true');
  });

  it('should make independent contexts', () => {
    const a = cordon.createContext();
    const b = cordon.createContext();
    cordon.runInContext('globalThis.v = "a"', a);
    assert.equal(cordon.runInContext('typeof v', b), 'undefined');
    assert.notEqual(a, b);
  });

  it('should create contexts in a given isolate', () => {
    const iso = new cordon.Isolate();
    try {
      const ctx = cordon.createContext({ n: 4 }, { isolate: iso });
      assert.equal(ctx.isolate, iso);
      assert.equal(iso.createContext({ n: 5 }).evaluate('n'), 5);
      assert.equal(cordon.runInContext('n * 2', ctx), 8);
    } finally {
      iso.dispose();
    }
  });
});

describe('cordon.isContext()', () => {
  it('should tell contexts from everything else', () => {
    assert.equal(cordon.isContext(cordon.createContext()), true);
    for (const v of [{}, null, undefined, 1, 'ctx', [], () => {}, Object.create(null)]) {
      assert.equal(cordon.isContext(v), false);
    }
  });

  it('should not be fooled by a proxy or a forged prototype', () => {
    const real = cordon.createContext();
    assert.equal(cordon.isContext(new Proxy(real, {})), false);
    assert.equal(cordon.isContext(Object.create(real)), false);
  });
});

describe('cordon.runInContext()', () => {
  const ctx = cordon.createContext({ x: 10 });

  it('should return primitives of every kind', () => {
    assert.equal(cordon.runInContext('undefined', ctx), undefined);
    assert.equal(cordon.runInContext('null', ctx), null);
    assert.equal(cordon.runInContext('true', ctx), true);
    assert.equal(cordon.runInContext('1.5', ctx), 1.5);
    assert.ok(Number.isNaN(cordon.runInContext('NaN', ctx)));
    assert.equal(cordon.runInContext('-0', ctx), -0);
    assert.equal(cordon.runInContext('"latin1 é"', ctx), 'latin1 é');
    assert.equal(cordon.runInContext('"utf16 ✓ 😀"', ctx), 'utf16 ✓ 😀');
    assert.equal(cordon.runInContext('2n ** 70n', ctx), 2n ** 70n);
    assert.equal(cordon.runInContext('""', ctx), '');
  });

  it('should return structured clones of objects', () => {
    assert.deepEqual(cordon.runInContext('({ a: [1, "b", { c: null }] })', ctx), { a: [1, 'b', { c: null }] });
    assert.deepEqual(cordon.runInContext('new Map([[1, 2]])', ctx), new Map([[1, 2]]));
    const re = cordon.runInContext('/ab+c/gi', ctx);
    assert.ok(re instanceof RegExp);
    assert.equal(re.source, 'ab+c');
    const cyc = cordon.runInContext('const c = { name: "c" }; c.self = c; c', ctx);
    assert.equal(cyc.self, cyc);
  });

  it('should return typed arrays', () => {
    const u8 = cordon.runInContext('new Uint8Array([1, 2, 3])', ctx);
    assert.ok(u8 instanceof Uint8Array);
    assert.deepEqual([...u8], [1, 2, 3]);
    const f64 = cordon.runInContext('new Float64Array([0.5, 2])', ctx);
    assert.ok(f64 instanceof Float64Array);
    assert.deepEqual([...f64], [0.5, 2]);
  });

  it('should copy typed arrays and Buffers in', () => {
    const c = cordon.createContext({ u: new Uint16Array([1, 65535]), b: Buffer.from('hi') });
    assert.equal(cordon.runInContext('u instanceof Uint16Array && u[1]', c), 65535);
    assert.equal(cordon.runInContext('b instanceof Uint8Array && String.fromCharCode(...b)', c), 'hi');
  });

  it('should refuse results that cannot be cloned, naming the type', () => {
    assert.throws(() => cordon.runInContext('Symbol("s")', ctx),
      (e) => e instanceof TypeError && e.code === 'ERR_CANNOT_CLONE' && /symbol/.test(e.message));
    assert.throws(() => cordon.runInContext('({ s: Symbol("s") })', ctx), { code: 'ERR_CANNOT_CLONE' });
    assert.throws(() => cordon.runInContext('new WeakMap()', ctx),
      (e) => e.code === 'ERR_CANNOT_CLONE' && /WeakMap/.test(e.message));
    assert.throws(() => cordon.runInContext('new Map([[1, () => 1]])', ctx), { code: 'ERR_CANNOT_CLONE' });
  });

  it('should keep state between runs in one context', () => {
    cordon.runInContext('var counter = 0', ctx);
    for (let i = 0; i < 5; i++) cordon.runInContext('counter++', ctx);
    assert.equal(cordon.runInContext('counter', ctx), 5);
  });

  it('should run the microtasks a run queued before it returns', () => {
    const c = cordon.createContext();
    assert.equal(cordon.runInContext('globalThis.r = 0; Promise.resolve().then(() => { r = 1 }); r', c), 0);
    assert.equal(cordon.runInContext('r', c), 1);
  });

  it('should handle large sources and results', () => {
    const big = 'x'.repeat(5e6);
    assert.equal(cordon.runInContext(`"${big}".length`, ctx), 5e6);
    assert.equal(cordon.runInContext('"ab".repeat(1e6)', ctx).length, 2e6);
  });

  it('should accept a filename string as options', () => {
    assert.throws(() => cordon.runInContext('throw new Error("x")', ctx, 'named.js'),
      (e) => /named\.js:1/.test(e.stack));
  });
});

describe('cordon.runInNewContext()', () => {
  it('should run in a fresh context built from the object', () => {
    assert.equal(cordon.runInNewContext('a * b', { a: 6, b: 7 }), 42);
    assert.equal(cordon.runInNewContext('typeof a', {}), 'undefined');
    assert.equal(cordon.runInNewContext('1 + 1'), 2);
  });

  it('should free the context afterwards', () => {
    const before = cordon.liveRecords().contexts;
    for (let i = 0; i < 20; i++) cordon.runInNewContext('1', { i });
    global.gc();
    return new Promise((resolve) => setImmediate(resolve)).then(() => {
      global.gc();
      return new Promise((resolve) => setImmediate(resolve));
    }).then(() => {
      assert.ok(cordon.liveRecords().contexts <= before + 1, JSON.stringify(cordon.liveRecords()));
    });
  });
});

describe('cordon.Script', () => {
  it('should compile once and run in many contexts of its isolate', () => {
    const script = new cordon.Script('globalThis.n = (globalThis.n || 0) + k; n');
    const a = cordon.createContext({ k: 1 });
    const b = cordon.createContext({ k: 100 });
    assert.equal(script.runInContext(a), 1);
    assert.equal(script.runInContext(a), 2);
    assert.equal(script.runInContext(b), 100);
    assert.equal(script.runInNewContext({ k: 7 }), 7);
  });

  it('should throw a SyntaxError with the filename at construction', () => {
    assert.throws(() => new cordon.Script('let let = 1', { filename: 'bad.js', lineOffset: 4 }),
      (e) => e instanceof SyntaxError && /bad\.js:5/.test(e.stack));
  });

  it('should refuse a context of another isolate', () => {
    const iso = new cordon.Isolate();
    try {
      const script = new cordon.Script('1', { isolate: iso });
      assert.throws(() => script.runInContext(cordon.createContext()),
        { name: 'RangeError', code: 'ERR_INVALID_ARG_VALUE' });
      assert.equal(script.runInContext(iso.createContext()), 1);
    } finally {
      iso.dispose();
    }
  });

  it('should produce and accept code caches, as node:vm does', () => {
    const source = 'globalThis.v = [1, 2, 3].map((x) => x * 2); v.length';
    const a = new cordon.Script(source, { produceCachedData: true });
    assert.equal(a.cachedDataProduced, true);
    assert.ok(a.cachedData.length > 0);
    const b = new cordon.Script(source, { cachedData: a.cachedData });
    assert.equal(b.cachedDataRejected, false);
    assert.equal(b.runInNewContext(), 3);
    const later = b.createCachedData();
    assert.ok(Buffer.isBuffer(later) && later.length > 0);
    assert.equal(new cordon.Script(source, { cachedData: later }).cachedDataRejected, false);
    const other = new cordon.Script(source.replace('* 2', '* 3'), { cachedData: a.cachedData });
    assert.equal(other.cachedDataRejected, true);
    assert.equal(other.runInNewContext({}), 3);
    assert.throws(() => new cordon.Script('1', { cachedData: 'x' }), { code: 'ERR_INVALID_ARG_TYPE' });
  });

  it('should bound every run by its timeout', () => {
    const script = new cordon.Script('for (;;) {}');
    const ctx = cordon.createContext();
    assert.throws(() => script.runInContext(ctx, { timeout: 20 }), { code: 'ERR_SCRIPT_EXECUTION_TIMEOUT' });
    assert.equal(cordon.runInContext('"still fine"', ctx), 'still fine');
  });
});
