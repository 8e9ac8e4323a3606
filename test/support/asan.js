'use strict';

// Runs the Mocha suite against the AddressSanitizer build (see asan-env.js).
const { spawnSync } = require('node:child_process');
const path = require('node:path');
const { asanEnv } = require('./asan-env');

const mocha = path.join(__dirname, '..', '..', 'node_modules', 'mocha', 'bin', 'mocha.js');
const result = spawnSync(process.execPath, [mocha, ...process.argv.slice(2)], { stdio: 'inherit', env: asanEnv() });
process.exit(result.status ?? 1);
