'use strict';

const assert = require('node:assert/strict');
const cordon = require('..');

describe('isolation', () => {
  const ctx = cordon.createContext({ data: { a: 1 }, list: [1], fn: () => 1 });

  it('should have no process, require, module or host globals', () => {
    for (const name of ['process', 'require', 'module', 'exports', 'Buffer', 'global',
      'setTimeout', 'setImmediate', '__filename', 'queueMicrotask']) {
      assert.equal(cordon.runInContext(`typeof ${name}`, ctx), 'undefined', name);
    }
    // V8's own console exists, and reaches nothing: no inspector is attached.
    assert.equal(cordon.runInContext('console.log("x"); typeof console.log', ctx), 'function');
    globalThis.cordonHostMarker = 1;
    try {
      assert.equal(cordon.runInContext('typeof cordonHostMarker', ctx), 'undefined');
    } finally {
      delete globalThis.cordonHostMarker;
    }
  });

  it('should give the sandbox its own Function through constructors of values handed in', () => {
    assert.equal(cordon.runInContext('({}).constructor.constructor("return typeof process")()', ctx), 'undefined');
    assert.equal(cordon.runInContext('data.constructor.constructor("return typeof require")()', ctx), 'undefined');
    assert.equal(cordon.runInContext('list.constructor.constructor === Function', ctx), true);
    assert.equal(cordon.runInContext('fn.constructor === Function && fn.constructor("return this")() === globalThis', ctx), true);
    assert.equal(cordon.runInContext('Object.getPrototypeOf(data) === Object.prototype', ctx), true);
  });

  it('should not reach the host through a host callback', () => {
    // A host function is a sandbox function that calls out: its constructor,
    // prototype chain and properties are the sandbox's own.
    assert.equal(cordon.runInContext('fn.constructor.constructor("return typeof process")()', ctx), 'undefined');
    assert.equal(cordon.runInContext('Object.getOwnPropertyNames(fn).sort().join()', ctx), 'length,name');
    assert.equal(cordon.runInContext('try { fn.caller } catch (e) { e.name }', ctx), 'TypeError');
  });

  it('should not let sandbox changes to builtins leak into the host or other contexts', () => {
    const c = cordon.createContext();
    cordon.runInContext('Array.prototype.push = () => "hijacked"; Object.prototype.polluted = true', c);
    assert.equal([].push(1), 1);
    assert.equal({}.polluted, undefined);
    assert.equal(cordon.runInContext('({}).polluted', cordon.createContext()), undefined);
  });

  it('should keep objects handed out as copies with host prototypes', () => {
    const out = cordon.runInContext('({ a: [1] })', ctx);
    assert.equal(Object.getPrototypeOf(out), Object.prototype);
    assert.equal(Object.getPrototypeOf(out.a), Array.prototype);
  });
});
