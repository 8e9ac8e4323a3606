'use strict';

// Runs the Mocha suite against the AddressSanitizer build (npm run
// build:asan): node with libasan preloaded, leak detection off (V8 and Node
// keep process-lifetime allocations), and the ASAN addon selected.
const { execFileSync, spawnSync } = require('node:child_process');
const path = require('node:path');

const libasan = execFileSync('gcc', ['-print-file-name=libasan.so'], { encoding: 'utf8' }).trim();
const mocha = path.join(__dirname, '..', '..', 'node_modules', 'mocha', 'bin', 'mocha.js');
const result = spawnSync(process.execPath, [mocha, ...process.argv.slice(2)], {
  stdio: 'inherit',
  env: {
    ...process.env,
    CORDON_ASAN: '1',
    LD_PRELOAD: libasan,
    // A small quarantine keeps RSS meaningful for the memory tests.
    ASAN_OPTIONS: 'detect_leaks=0:abort_on_error=1:quarantine_size_mb=16',
  },
});
process.exit(result.status ?? 1);
