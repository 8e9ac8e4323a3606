'use strict';

// Loads the native addon. CORDON_ASAN=1 selects the AddressSanitizer build
// made by `npm run build:asan` (node must then run with libasan preloaded).
const path = require('node:path');

const root = path.join(__dirname, '..');
const file = process.env.CORDON_ASAN === '1'
  ? path.join(root, 'build-asan', 'cordon.node')
  : path.join(root, 'build', 'Release', 'cordon.node');

module.exports = require(file);
