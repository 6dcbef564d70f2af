'use strict';
/*
 * Test server for luci-app-jellydemon: serves the app's files and a MOCK LuCI runtime, and
 * answers ubus JSON-RPC calls the way rpcd would (uci, file read, rc init), from in-memory
 * state. It is a mock because rpcd and ubus cannot run on a test machine.
 *
 * The app's own menu.d and acl.d files are used: pages resolve through menu.d (with its
 * `depends`), and every ubus call is checked against the acl.d grants plus what luci-base grants
 * every logged-in user (the `uci` object's methods), so a missing grant fails here as it would
 * on a router.
 *
 * Roles, as rpcd builds a session's ACL (rpcd session.c; /etc/config/rpcd `login` sections): a
 * login lists the ACL groups whose `read` part it gets and those whose `write` part it gets.
 * `opts.role = { read: [groups], write: [groups] }`; by default every group, both parts (root).
 * rpcd's checks, read from openwrt/rpcd 4476687 uci.c and file.c:
 *  - uci get / changes(config) need read access to that config; set/add/delete/rename/order
 *    need write access only; `changes` without a config lists only readable configs;
 *  - uci apply needs write access to every config with pending changes, none to read;
 *  - file exec is allowed when the executable's path, or "path arg1 arg2 ...", matches an
 *    `exec` grant (rpc_file_exec_run);
 *  - session access answers whether the session holds (scope, object, function).
 *
 * Run standalone to look at the pages in a browser:  node harness/server.js [port]
 */

const http = require('node:http');
const fs = require('node:fs');
const path = require('node:path');
const { UciPackage } = require('./ucistate');

const REPO = path.resolve(__dirname, '..', '..', '..');
const APP = path.join(REPO, 'luci-app-jellydemon');
const HTDOCS = path.join(APP, 'htdocs');
const RUNTIME = path.join(__dirname, 'runtime');
const THEME = path.join(__dirname, 'theme');
const MENU_DIR = path.join(APP, 'root', 'usr', 'share', 'luci', 'menu.d');
const ACL_DIR = path.join(APP, 'root', 'usr', 'share', 'rpcd', 'acl.d');

/*
 * What luci-base's own ACL group gives a session (its read part: reading uci; its write part:
 * changing it); the app must grant everything else.
 */
const BASE_UBUS = {
	read: { uci: [ 'get', 'changes', 'state', 'configs' ], session: [ 'access' ] },
	write: { uci: [ 'set', 'add', 'delete', 'apply', 'confirm', 'revert', 'order', 'rename' ] }
};

const RC_ACTIONS = [ 'start', 'stop', 'restart', 'reload', 'enable', 'disable' ];
const FILE_MAX = 4096 * 64; /* rpcd refuses to read files this big */

function readJsonDir(dir) {
	const out = {};
	for (const f of fs.readdirSync(dir).filter((f) => f.endsWith('.json')).sort())
		Object.assign(out, JSON.parse(fs.readFileSync(path.join(dir, f), 'utf8')));
	return out;
}

/* fnmatch-like: '*' matches within a path component, as rpcd's ACL globs do. */
function globMatch(pattern, value) {
	const re = new RegExp('^' + pattern.split('*').map((p) => p.replace(/[.+?^${}()|[\]\\]/g, '\\$&')).join('[^/]*') + '$');
	return re.test(value);
}

class Acl {
	/* groups: the acl.d files; role: which groups' read and write parts the session holds */
	constructor(groups, role) {
		this.groups = groups;
		const names = Object.keys(groups);
		this.role = role || { read: names, write: names };
		this.ubus = {};
		this.files = [];
		this.uciRead = new Set();
		this.uciWrite = new Set();
		const add = (grant) => {
			for (const [obj, methods] of Object.entries(grant))
				this.ubus[obj] = (this.ubus[obj] || []).concat(methods);
		};
		add(BASE_UBUS.read);
		if (this.role.write.length) add(BASE_UBUS.write);
		for (const [name, g] of Object.entries(groups)) {
			for (const level of [ 'read', 'write' ]) {
				if (!this.role[level].includes(name)) continue;
				const grant = g[level] || {};
				for (const [obj, methods] of Object.entries(grant.ubus || {}))
					this.ubus[obj] = (this.ubus[obj] || []).concat(methods);
				for (const [p, perms] of Object.entries(grant.file || {}))
					this.files.push({ p, perms });
				for (const c of grant.uci || []) {
					if (level == 'read') this.uciRead.add(c);
					else this.uciWrite.add(c);
				}
			}
		}
	}

	ubusAllowed(object, method) {
		return (this.ubus[object] || []).some((m) => m == '*' || globMatch(m, method));
	}

	fileAllowed(p, perm) {
		return this.files.some((f) => globMatch(f.p, p) && f.perms.includes(perm));
	}

	/* rpc_file_exec_run: the executable alone, else the command line joined by spaces */
	execAllowed(command, params) {
		return this.fileAllowed(command, 'exec') ||
			(Array.isArray(params) && this.fileAllowed([ command ].concat(params).join(' '), 'exec'));
	}

	/* the ACL groups the menu's `depends.acl` asks for: any part of the group will do */
	hasGroup(name) {
		return this.role.read.includes(name) || this.role.write.includes(name);
	}

	/* session access (scope, object, function) */
	access(scope, object, fn) {
		if (scope == 'uci') return this.uciAllowed(object, fn);
		if (scope == 'file') return this.fileAllowed(object, fn);
		if (scope == 'ubus') return this.ubusAllowed(object, fn);
		return false;
	}

	uciAllowed(config, level) {
		return (level == 'read' ? this.uciRead : this.uciWrite).has(config) ||
			(level == 'read' ? this.uciRead : this.uciWrite).has('*');
	}
}

function createState(opts) {
	return {
		uci: {
			jellydemon: new UciPackage('jellydemon', (opts && opts.config) || ''),
			jellydemon_secrets: new UciPackage('jellydemon_secrets', (opts && opts.secrets) ||
				"config jellyfin 'jellyfin'\n\nconfig wol 'wol'\n\nconfig publish 'publish'\n")
		},
		files: new Map(Object.entries((opts && opts.files) || {})),
		initScripts: new Set([ 'jellydemon' ]),
		calls: [],
		rcCalls: [],
		execCalls: []
	};
}

function ubusCall(state, acl, object, method, args) {
	state.calls.push({ object, method, args });

	if (!acl.ubusAllowed(object, method))
		return { error: { code: -32002, message: 'Access denied' } };

	if (object == 'uci') {
		const pkg = state.uci[args.config];
		const write = [ 'set', 'add', 'delete', 'rename', 'order' ].includes(method);
		if ([ 'get', 'set', 'add', 'delete' ].includes(method)) {
			if (!args.config) return { result: [ 2 ] };
			if (!acl.uciAllowed(args.config, write ? 'write' : 'read')) return { result: [ 6 ] };
			if (!pkg) return { result: [ 4 ] };
		}
		switch (method) {
		case 'get':
			if (args.section) {
				const s = pkg.values()[args.section];
				if (!s) return { result: [ 4 ] };
				return { result: [ 0, args.option ? { value: s[args.option] } : { values: s } ] };
			}
			return { result: [ 0, { values: pkg.values() } ] };
		case 'set':
			return { result: [ pkg.set(args.section, args.values) ] };
		case 'add': {
			const [ rc, sid ] = pkg.add(args.type, args.name, args.values);
			return { result: rc ? [ rc ] : [ 0, { section: sid } ] };
		}
		case 'delete':
			return { result: [ pkg.delete(args.section, args.option != null ? [ args.option ] : args.options) ] };
		case 'changes': {
			const changes = {};
			for (const [name, p] of Object.entries(state.uci))
				if (p.changes.length && acl.uciAllowed(name, 'read')) changes[name] = p.changes.slice();
			return { result: [ 0, { changes } ] };
		}
		case 'apply':
			for (const [name, p] of Object.entries(state.uci))
				if (p.changes.length && !acl.uciAllowed(name, 'write')) return { result: [ 6 ] };
			for (const p of Object.values(state.uci)) p.commit();
			state.applied = (state.applied || 0) + 1;
			return { result: [ 0 ] };
		case 'confirm':
			return { result: [ 0 ] };
		default:
			return { result: [ 8 ] };
		}
	}

	if (object == 'file' && method == 'read') {
		if (typeof args.path != 'string') return { result: [ 2 ] };
		if (!acl.fileAllowed(args.path, 'read')) return { result: [ 6 ] };
		if (!state.files.has(args.path)) return { result: [ 4 ] };
		const data = state.files.get(args.path);
		if (Buffer.byteLength(data) >= FILE_MAX) return { result: [ 8 ] };
		return { result: [ 0, { data } ] };
	}

	if (object == 'rc' && method == 'init') {
		if (typeof args.name != 'string' || !RC_ACTIONS.includes(args.action)) return { result: [ 2 ] };
		if (!state.initScripts.has(args.name)) return { result: [ 4 ] };
		state.rcCalls.push({ name: args.name, action: args.action });
		if (typeof state.onRcInit == 'function') state.onRcInit(args.name, args.action);
		return { result: [ 0 ] };
	}

	/* rpcd runs the command; here an init script action is recorded like `rc init` */
	if (object == 'file' && method == 'exec') {
		if (typeof args.command != 'string') return { result: [ 2 ] };
		if (!acl.execAllowed(args.command, args.params)) return { result: [ 6 ] };
		state.execCalls.push([ args.command ].concat(args.params || []));
		const m = args.command.match(/^\/etc\/init\.d\/([a-z0-9_-]+)$/);
		const action = (args.params || [])[0];
		if (m && state.initScripts.has(m[1]) && RC_ACTIONS.includes(action)) {
			state.rcCalls.push({ name: m[1], action });
			if (typeof state.onRcInit == 'function') state.onRcInit(m[1], action);
		}
		return { result: [ 0, { code: 0, stdout: '', stderr: '' } ] };
	}

	if (object == 'session' && method == 'access')
		return { result: [ 0, { access: acl.access(args.scope, args.object, args.function) } ] };

	return { error: { code: -32000, message: 'Object not found' } };
}

function menuPage(menu, acl, state, urlPath, query) {
	const p = urlPath.replace(/^\/cgi-bin\/luci\//, '').replace(/\/+$/, '');
	let node = menu[p];
	if (!node) return null;

	/* Every ancestor's depends must hold, as LuCI's dispatcher checks them. */
	const parts = p.split('/');
	for (let i = 1; i <= parts.length; i++) {
		const dep = (menu[parts.slice(0, i).join('/')] || {}).depends || {};
		for (const a of dep.acl || [])
			if (!acl.groups[a] || !acl.hasGroup(a)) return { status: 403, body: `ACL group ${a} missing` };
		for (const c of Object.keys(dep.uci || {}))
			if (!state.uci[c]) return { status: 403, body: `uci package ${c} missing` };
	}

	let resolved = p;
	for (let hops = 0; node && node.action && node.action.type == 'alias' && hops < 5; hops++) {
		resolved = node.action.path;
		node = menu[resolved];
	}
	if (!node || !node.action || node.action.type != 'view')
		return { status: 404, body: 'no view' };

	const parent = resolved.split('/').slice(0, -1).join('/');
	const tabs = Object.entries(menu)
		.filter(([k]) => k.startsWith(parent + '/') && k.split('/').length == parent.split('/').length + 1)
		.sort((a, b) => (a[1].order || 0) - (b[1].order || 0))
		.map(([k, v]) => `<li class="${k == resolved ? 'active' : ''}"><a href="/cgi-bin/luci/${k}">${v.title}</a></li>`)
		.join('');

	const env = { pollinterval: Math.max(1, parseInt(query.get('poll') || '5', 10) || 5) };
	const title = (menu[parent] || {}).title || 'LuCI';
	return {
		status: 200,
		body: `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${title} - LuCI</title>
<link rel="stylesheet" href="/luci-static/bootstrap/cascade.css">
<script>window.__LUCI_ENV__ = ${JSON.stringify(env)};</script>
<script src="/luci-static/resources/luci.js"></script>
</head>
<body data-view="${node.action.path}">
<header><div class="fill"><div class="container">
<span class="brand">OpenWrt</span>
<ul class="nav"><li>Status</li><li>System</li><li class="active">Services</li><li>Network</li></ul>
<span class="mock-note">LuCI test runtime (mock)</span>
</div></div></header>
<div id="maincontent" class="container">
<ul class="tabs">${tabs}</ul>
<div id="view"></div>
</div>
<footer>Powered by LuCI (test mock) / jellydemon</footer>
</body></html>`
	};
}

const MIME = { '.js': 'application/javascript', '.css': 'text/css', '.json': 'application/json', '.svg': 'image/svg+xml' };

function serveFile(res, roots, rel) {
	const clean = path.posix.normalize('/' + rel).slice(1);
	if (clean.startsWith('..')) return false;
	for (const root of roots) {
		const f = path.join(root, clean);
		if (f.startsWith(root) && fs.existsSync(f) && fs.statSync(f).isFile()) {
			res.writeHead(200, { 'Content-Type': MIME[path.extname(f)] || 'application/octet-stream', 'Cache-Control': 'no-store' });
			res.end(fs.readFileSync(f));
			return true;
		}
	}
	return false;
}

function startServer(opts) {
	const state = createState(opts);
	const acl = new Acl(readJsonDir(ACL_DIR), opts && opts.role);
	const menu = readJsonDir(MENU_DIR);

	const server = http.createServer((req, res) => {
		const url = new URL(req.url, 'http://127.0.0.1');
		const fail = (code, msg) => { res.writeHead(code, { 'Content-Type': 'text/plain' }); res.end(msg); };

		if (req.method == 'POST' && url.pathname.replace(/\/+$/, '') == '/ubus') {
			let body = '';
			req.on('data', (c) => { body += c; if (body.length > 1e6) req.destroy(); });
			req.on('end', () => {
				let msg;
				try { msg = JSON.parse(body); } catch (e) { return fail(400, 'bad json'); }
				const one = (m) => {
					const reply = { jsonrpc: '2.0', id: m.id };
					if (m.method != 'call' || !Array.isArray(m.params) || m.params.length < 3) {
						reply.error = { code: -32600, message: 'Invalid request' };
						return reply;
					}
					const [ , object, method, args ] = m.params;
					return Object.assign(reply, ubusCall(state, acl, object, method, args || {}));
				};
				const out = Array.isArray(msg) ? msg.map(one) : one(msg);
				res.writeHead(200, { 'Content-Type': 'application/json' });
				res.end(JSON.stringify(out));
			});
			return;
		}

		if (req.method != 'GET') return fail(405, 'method not allowed');
		if (url.pathname == '/favicon.ico') { res.writeHead(204); return res.end(); }

		if (url.pathname.startsWith('/cgi-bin/luci/')) {
			const page = menuPage(menu, acl, state, url.pathname, url.searchParams);
			if (!page) return fail(404, 'not found');
			res.writeHead(page.status, { 'Content-Type': page.status == 200 ? 'text/html; charset=utf-8' : 'text/plain' });
			return res.end(page.body);
		}
		if (url.pathname.startsWith('/luci-static/resources/view/'))
			return serveFile(res, [ path.join(HTDOCS, 'luci-static', 'resources', 'view') ], url.pathname.slice('/luci-static/resources/view/'.length)) || fail(404, 'not found');
		if (url.pathname.startsWith('/luci-static/resources/'))
			return serveFile(res, [ RUNTIME ], url.pathname.slice('/luci-static/resources/'.length)) || fail(404, 'not found');
		if (url.pathname.startsWith('/luci-static/bootstrap/'))
			return serveFile(res, [ THEME ], url.pathname.slice('/luci-static/bootstrap/'.length)) || fail(404, 'not found');
		return fail(404, 'not found');
	});

	return new Promise((resolve, reject) => {
		server.on('error', reject);
		server.listen((opts && opts.port) || 0, '127.0.0.1', () => {
			const { port } = server.address();
			resolve({
				url: `http://127.0.0.1:${port}`,
				state,
				acl,
				close: () => new Promise((r) => { server.closeAllConnections && server.closeAllConnections(); server.close(() => r()); })
			});
		});
	});
}

module.exports = { startServer, Acl, readJsonDir, ACL_DIR, MENU_DIR, APP };

if (require.main === module) {
	const fixtures = require('../test/fixtures');
	const port = parseInt(process.argv[2] || '8080', 10);
	startServer({ port, config: fixtures.CONFIG, files: { [fixtures.STATUS_PATH]: JSON.stringify(fixtures.status(Math.floor(Date.now() / 1000))) } })
		.then((s) => console.log(`${s.url}/cgi-bin/luci/admin/services/jellydemon`));
}
