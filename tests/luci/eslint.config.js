'use strict';
/* Lints the app's views as LuCI loads them (script bodies with LuCI's globals) and the harness. */
const js = require('@eslint/js');

const browser = {
	window: 'readonly', document: 'readonly', console: 'readonly', fetch: 'readonly',
	setTimeout: 'readonly', clearTimeout: 'readonly', setInterval: 'readonly', clearInterval: 'readonly',
	CustomEvent: 'readonly', Blob: 'readonly', Promise: 'readonly', URL: 'readonly'
};

/* What LuCI provides to every view: the runtime object and its global helpers. */
const luci = { L: 'readonly', E: 'readonly', _: 'readonly', N_: 'readonly' };

/* 'require x' directives become these function parameters when LuCI compiles a module. */
const required = {
	view: 'readonly', form: 'readonly', uci: 'readonly', fs: 'readonly', rpc: 'readonly', ui: 'readonly',
	dom: 'readonly', poll: 'readonly', baseclass: 'readonly', validation: 'readonly'
};

const rules = {
	'no-unused-vars': [ 'error', { args: 'none', caughtErrors: 'none' } ],
	'no-var': 'error',
	'prefer-const': 'error',
	'eqeqeq': 'off',
	'no-implicit-globals': 'error'
};

module.exports = [
	{
		files: [ 'luci-app-jellydemon/htdocs/**/*.js', 'tests/luci/harness/runtime/*.js' ],
		languageOptions: {
			ecmaVersion: 2020,
			sourceType: 'script',
			parserOptions: { ecmaFeatures: { globalReturn: true } },
			globals: Object.assign({}, browser, luci, required)
		},
		rules: Object.assign({}, js.configs.recommended.rules, rules)
	},
	{
		files: [ 'tests/luci/harness/*.js', 'tests/luci/test/*.js', 'tests/luci/eslint.config.js' ],
		languageOptions: {
			ecmaVersion: 2022,
			sourceType: 'commonjs',
			globals: { require: 'readonly', module: 'writable', process: 'readonly', __dirname: 'readonly',
				console: 'readonly', Buffer: 'readonly', URL: 'readonly', setTimeout: 'readonly',
				clearTimeout: 'readonly', document: 'readonly', window: 'readonly', fetch: 'readonly' }
		},
		rules: Object.assign({}, js.configs.recommended.rules, rules)
	}
];
