'use strict';

// node bomb-child.js <limitMB> <sync|async> name... : runs each bomb of
// bombs.js in a new isolate and prints one JSON line per bomb: its outcome,
// the peak RSS above the RSS before it, and whether a new isolate works.
const fs = require('node:fs');
const cordon = require('../..');
const { bombs, host } = require('./bombs');

const [limit, mode, ...names] = process.argv.slice(2);
const rss = (field) => Number(new RegExp(`${field}:\\s+(\\d+)`).exec(fs.readFileSync('/proc/self/status', 'utf8'))[1]) * 1024;

(async () => {
  for (const name of names) {
    // Reset the peak (VmHWM) to the current RSS.
    fs.writeFileSync('/proc/self/clear_refs', '5');
    const before = rss('VmRSS');
    const iso = new cordon.Isolate({ memoryLimitMB: Number(limit) });
    let outcome;
    const start = Date.now();
    try {
      if (host[name]) host[name](cordon, iso);
      else if (mode === 'async') await iso.createContext().run(bombs[name], { timeout: 60000 });
      else {
        // A bomb that returns a promise (async WebAssembly) is awaited.
        const r = cordon.runInContext(bombs[name], iso.createContext(), { timeout: 60000 });
        if (r && typeof r.then === 'function') await r;
      }
      outcome = { ok: true };
    } catch (e) {
      outcome = { name: e.name, code: e.code, message: String(e.message).slice(0, 120), isolateDisposed: e.isolateDisposed };
    }
    const ms = Date.now() - start;
    const peak = rss('VmHWM') - before;
    let heapAfter = null;
    if (!iso.isDisposed) {
      heapAfter = iso.getHeapStatistics();
      try {
        outcome.after = cordon.runInContext('1 + 1', iso.createContext());
        // Stopped again at its limit, not at a raised one: the peak heap of
        // a second stop, that probe must end in ERR_MEMORY_LIMIT too.
        cordon.runInContext('(() => { const a = []; for (;;) a.push(new Array(1e4).fill(1.5)) })()',
          iso.createContext());
        outcome.again = 'not stopped';
      } catch (e) {
        outcome.again = outcome.again ?? e.code;
        if (outcome.after === undefined) outcome.after = e.code;
      }
    }
    iso.dispose();
    const fresh = new cordon.Isolate({ memoryLimitMB: Number(limit) });
    const works = cordon.runInContext('[1, 2, 3].map((x) => x * 2).join()', fresh.createContext());
    fresh.dispose();
    console.log(JSON.stringify({ bomb: name, ...outcome, ms, peak, works, heapAfter }));
  }
})();
