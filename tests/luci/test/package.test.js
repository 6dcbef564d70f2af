'use strict';
/*
 * The package's static parts: the ACL grants exactly what the views need, the menu entries point
 * at views that exist, the feed Makefile is a luci.mk package. The ubus checks go through the
 * MOCK rpcd (harness/server.js; rpcd cannot run here), the same one the browser tests use, so a
 * grant missing from acl.d would also fail those.
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { startServer, readJsonDir, ACL_DIR, MENU_DIR, APP } = require('../harness/server');

test('acl.d: read = settings + status file; write = settings, secrets (write-only), two init actions', () => {
	assert.deepEqual(readJsonDir(ACL_DIR), {
		'luci-app-jellydemon': {
			description: 'Grant access to jellydemon status and configuration',
			read: {
				file: { '/var/run/jellydemon/status.json': [ 'read' ] },
				ubus: { file: [ 'read' ] },
				uci: [ 'jellydemon' ]
			},
			write: {
				file: {
					'/etc/init.d/jellydemon enable': [ 'exec' ],
					'/etc/init.d/jellydemon start': [ 'exec' ]
				},
				ubus: { file: [ 'exec' ] },
				uci: [ 'jellydemon', 'jellydemon_secrets' ]
			}
		}
	});
});

test('menu.d: Services > JellyDemon with Status and Settings views', () => {
	const menu = readJsonDir(MENU_DIR);
	assert.deepEqual(Object.keys(menu).sort(), [
		'admin/services/jellydemon', 'admin/services/jellydemon/config', 'admin/services/jellydemon/status' ]);
	const root = menu['admin/services/jellydemon'];
	assert.deepEqual(root.action, { type: 'alias', path: 'admin/services/jellydemon/status' });
	assert.deepEqual(root.depends, { acl: [ 'luci-app-jellydemon' ], uci: { jellydemon: true } });
	for (const child of [ 'status', 'config' ]) {
		const node = menu['admin/services/jellydemon/' + child];
		assert.equal(node.action.type, 'view');
		const file = path.join(APP, 'htdocs', 'luci-static', 'resources', 'view', node.action.path + '.js');
		assert.ok(fs.existsSync(file), file);
	}
});

test('the luci feed Makefile: luci.mk by relative path, depending on jellydemon', () => {
	const mk = fs.readFileSync(path.join(APP, 'Makefile'), 'utf8');
	assert.match(mk, /^LUCI_TITLE:=.+/m);
	assert.match(mk, /^LUCI_DEPENDS:=.*\+luci-base.*\+jellydemon\b/m);
	assert.match(mk, /^LUCI_PKGARCH:=all$/m);
	assert.match(mk, /^include \.\.\/\.\.\/luci\.mk$/m);
	assert.match(mk, /# call BuildPackage - OpenWrt buildroot signature/);
});

/* The luci feed's CI and translators work from po/templates/<name>.pot; it must list every string. */
test('po/templates/jellydemon.pot is current (tests/luci/i18n-scan.sh)', (t) => {
	const { spawnSync } = require('node:child_process');
	if (spawnSync('xgettext', [ '--version' ]).error)
		return t.skip('xgettext missing (apt-get install gettext)');
	const scan = spawnSync(path.join(__dirname, '..', 'i18n-scan.sh'), [ '--stdout' ], { encoding: 'utf8' });
	assert.equal(scan.status, 0, scan.stderr);
	const pot = fs.readFileSync(path.join(APP, 'po', 'templates', 'jellydemon.pot'), 'utf8');
	assert.equal(pot, scan.stdout, 'run tests/luci/i18n-scan.sh');
	for (const id of [ 'JellyDemon', 'Settings', 'API key', 'Grant access to jellydemon status and configuration' ])
		assert.ok(pot.includes(`msgid "${id}"`), id);
});

test('the mock rpcd enforces the ACL like rpcd', async (s) => {
	const srv = await startServer({ config: "config jellydemon 'main'\n", files: { '/etc/shadow': 'x', '/var/run/jellydemon/status.json': '{}' } });
	s.after(() => srv.close());
	let id = 1;
	const call = async (object, method, args) => {
		const res = await fetch(srv.url + '/ubus/', {
			method: 'POST',
			headers: { 'Content-Type': 'application/json' },
			body: JSON.stringify({ jsonrpc: '2.0', id: id++, method: 'call', params: [ 'sid', object, method, args ] })
		});
		const msg = await res.json();
		return msg.error ? msg.error.message : msg.result;
	};

	assert.deepEqual(await call('file', 'read', { path: '/var/run/jellydemon/status.json' }), [ 0, { data: '{}' } ]);
	assert.deepEqual(await call('file', 'read', { path: '/etc/shadow' }), [ 6 ], 'other files are denied');
	assert.deepEqual(await call('file', 'read', { path: '/var/run/jellydemon/other' }), [ 6 ]);
	assert.equal(await call('file', 'write', { path: '/tmp/x', data: 'x' }), 'Access denied');
	assert.deepEqual(await call('file', 'exec', { command: '/bin/sh' }), [ 6 ]);
	assert.deepEqual(await call('file', 'exec', { command: '/etc/init.d/jellydemon', params: [ 'start' ] }), [ 0, { code: 0, stdout: '', stderr: '' } ]);
	assert.equal((await call('file', 'exec', { command: '/etc/init.d/jellydemon', params: [ 'enable' ] }))[0], 0);
	for (const params of [ [ 'stop' ], [ 'disable' ], [ 'start', 'x' ], [], null ])
		assert.deepEqual(await call('file', 'exec', { command: '/etc/init.d/jellydemon', params }), [ 6 ], JSON.stringify(params));
	assert.deepEqual(await call('file', 'exec', { command: '/etc/init.d/dropbear', params: [ 'stop' ] }), [ 6 ]);
	assert.equal(await call('rc', 'list', {}), 'Access denied');
	assert.equal(await call('rc', 'init', { name: 'dropbear', action: 'stop' }), 'Access denied', 'no rc init');
	assert.deepEqual(await call('uci', 'get', { config: 'jellydemon_secrets' }), [ 6 ], 'secrets are write-only');
	assert.deepEqual(await call('uci', 'set', { config: 'jellydemon_secrets', section: 'jellyfin', values: { api_key: 'k' } }), [ 0 ]);
	assert.deepEqual(await call('session', 'access', { scope: 'uci', object: 'jellydemon_secrets', function: 'read' }), [ 0, { access: false } ]);
	assert.deepEqual(await call('session', 'access', { scope: 'uci', object: 'jellydemon', function: 'write' }), [ 0, { access: true } ]);
	assert.deepEqual(await call('uci', 'get', { config: 'network' }), [ 6 ], 'no other config');
	assert.deepEqual(await call('uci', 'set', { config: 'network', section: 'lan', values: { proto: 'dhcp' } }), [ 6 ]);
	assert.equal((await call('uci', 'get', { config: 'jellydemon' }))[0], 0);
	assert.equal(await call('luci-rpc', 'getNetworkDevices', {}), 'Access denied');
});
