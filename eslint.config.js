'use strict';

const js = require('@eslint/js');
const globals = require('globals');

module.exports = [
  { ignores: ['build/**', 'build-asan/**', 'bench/node_modules/**', 'node_modules/**'] },
  js.configs.recommended,
  {
    files: ['**/*.js', 'bin/cordon'],
    languageOptions: {
      ecmaVersion: 2023,
      sourceType: 'commonjs',
      globals: { ...globals.node },
    },
    rules: {
      'no-unused-vars': ['error', { argsIgnorePattern: '^_' }],
      'prefer-const': 'error',
      'no-var': 'error',
      eqeqeq: ['error', 'always'],
      strict: ['error', 'global'],
      indent: ['error', 2, { SwitchCase: 1 }],
    },
  },
  {
    files: ['test/**/*.js'],
    languageOptions: { globals: { ...globals.mocha } },
  },
];
