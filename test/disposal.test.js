'use strict';

// Disposal between any two steps of a job, and host flags. Each race loops
// 200 times (the suite also runs under AddressSanitizer, which turns a use
// of a freed record into a report).
const assert = require('node:assert/strict');
const path = require('node:path');
const cordon = require('..');
const { runNode } = require('./support/util');

const root = path.join(__dirname, '..');
const busyWait = (ms) => {
  const t = Date.now();
  while (Date.now() - t < ms) { /* the host loop cannot deliver meanwhile */ }
};

describe('disposal races', function () {
  this.timeout(120000);

  it('should reject an async run that finished before the host took its result, 200 times', async () => {
    for (let i = 0; i < 200; i++) {
      const iso = new cordon.Isolate();
      const ctx = iso.createContext();
      const p = ctx.run('({ f() { return 1 }, g: [() => 2] })');
      // A runner finishes the job while the host thread is busy.
      busyWait(i % 10 === 0 ? 20 : 2);
      iso.dispose();
      const outcome = await p.then(() => 'resolved', (e) => e.code);
      assert.ok(outcome === 'ERR_ISOLATE_DISPOSED' || (outcome === 'resolved' && i % 10 !== 0),
        `round ${i}: ${outcome}`);
    }
  });

  it('should reject a settled promise whose value holds functions when disposed before delivery, 200 times', async () => {
    for (let i = 0; i < 200; i++) {
      const iso = new cordon.Isolate();
      const p = iso.createContext().evaluate('Promise.resolve({ f() {}, g: () => 1, h: [function () {}] })');
      iso.dispose();
      assert.equal(await p.then(() => 'resolved', (e) => e.code), 'ERR_ISOLATE_DISPOSED');
    }
  });

  for (const kind of ['runInContext', 'compileFunction', 'Module']) {
    it(`should fail a ${kind} that waited for an async run whose callback disposed its context, 200 times`, async () => {
      for (let i = 0; i < 200; i++) {
        const iso = new cordon.Isolate();
        let ctx = null;
        ctx = iso.createContext({ cb: () => ctx.dispose() });
        const p = ctx.run('const t = Date.now(); while (Date.now() - t < 2) {} cb(); 1');
        let code = null;
        try {
          if (kind === 'runInContext') cordon.runInContext('1', ctx);
          else if (kind === 'compileFunction') cordon.compileFunction('return 1', [], { parsingContext: ctx });
          else new cordon.Module('export default 1', { context: ctx });
        } catch (e) {
          code = e.code;
        }
        // Disposing a context stops and rejects its runs, this one too.
        assert.equal(await p.then(() => 'resolved', (e) => e.code), 'ERR_ISOLATE_DISPOSED');
        // The sync call ran before the dispose or failed cleanly after it.
        assert.ok(code === null || code === 'ERR_ISOLATE_DISPOSED', `round ${i}: ${code}`);
        iso.dispose();
      }
    });
  }

  it('should reject evaluating a module whose context was disposed', async () => {
    for (let i = 0; i < 200; i++) {
      const ctx = cordon.createContext();
      const m = new cordon.Module('import x from "y"; export default x',
        { context: ctx, importModuleDynamically: () => 'export default 1' });
      ctx.dispose();
      await assert.rejects(m.evaluate(), { code: 'ERR_ISOLATE_DISPOSED' });
    }
  });

  it('should exit when process.exit() is called from a host callback while another runner waits for the host', async () => {
    const code = `
      const cordon = require(${JSON.stringify(root)});
      const a = new cordon.Isolate(); const b = new cordon.Isolate();
      const spin = 'const t = Date.now(); while (Date.now() - t < 50) {} cb(); for (;;) cb();';
      a.createContext({ cb: () => process.exit(7) }).run(spin);
      b.createContext({ cb: () => 1 }).run(spin);
      // Keep the host busy so that both requests wait in one batch.
      const t = Date.now(); while (Date.now() - t < 200) {}`;
    for (let i = 0; i < 5; i++) {
      const r = await runNode(['-e', code], { timeout: 20000 });
      assert.equal(r.signal, null, r.stderr);
      assert.equal(r.code, 7, r.stderr);
    }
  });
});

describe('host flags', function () {
  this.timeout(60000);

  it('should not abort under --abort-on-uncaught-exception for errors the host catches', async () => {
    const code = `
      const cordon = require(${JSON.stringify(root)});
      const out = [];
      const grab = (f) => { try { f(); out.push('none'); } catch (e) { out.push(e?.code ?? e?.name ?? String(e)); } };
      grab(() => new cordon.Script('['));
      grab(() => cordon.runInContext('throw new TypeError("x")', cordon.createContext()));
      grab(() => cordon.runInContext('throw 1', cordon.createContext()));
      grab(() => cordon.runInContext('for (;;) {}', cordon.createContext(), { timeout: 20 }));
      grab(() => cordon.compileFunction('throw new RangeError("r")')());
      const iso = new cordon.Isolate(); const c = iso.createContext(); iso.dispose();
      grab(() => c.evaluate('1'));
      cordon.createContext().run('throw new Error("async")').catch((e) => {
        out.push(e.message);
        console.log(out.join(','));
      });`;
    const r = await runNode(['--abort-on-uncaught-exception', '-e', code]);
    assert.equal(r.signal, null, r.stderr);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.trim(),
      'SyntaxError,TypeError,1,ERR_SCRIPT_EXECUTION_TIMEOUT,RangeError,ERR_ISOLATE_DISPOSED,async');
  });
});
