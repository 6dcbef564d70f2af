'use strict';
/*
 * The settings page in a real browser (Debian's Chromium) against a MOCK of LuCI's runtime and
 * of rpcd (harness/): real LuCI needs rpcd/ubus on a router and cannot run here. The mock
 * follows LuCI's documented form semantics (defaults, rmempty, datatype messages).
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const { setup, TEST_TIMEOUT } = require('./helpers');
const { CONFIG, CONFIG_SPLIT, SECRETS, SECRET_VALUES, SHIPPED, SHIPPED_SECRETS, STATUS_PATH, status } = require('./fixtures');

const DEFAULT_INTERNAL = [ 'lan' ];

/* Every option of docs/design.md section 4, as the form must show it for the fixture config. */
const EXPECTED = {
	'main.enabled': '1',
	'main.interval': '5',
	'main.dry_run': '0',
	'main.log_level': 'info',
	'main.state_dir': '/etc/jellydemon',
	'main.run_dir': '/var/run/jellydemon',
	'jellyfin.url': 'http://192.168.1.2:8096',
	/* write-only: never shown, not even the copy an older version left in the readable file */
	'jellyfin.api_key': '',
	'jellyfin.server_ip': '',
	'jellyfin.server_ip6': '',
	'jellyfin.port': [ '8096' ],
	'jellyfin.timeout': '5',
	'jellyfin.manage_limits': '1',
	'jellyfin.restart_playback': '1',
	'jellyfin.restart_min_interval': '600',
	'jellyfin.notify_viewer': '1',
	'network.wan_interface': 'wan',
	'network.wan_device': '',
	'network.lan_interface': 'lan',
	'network.lan_device': '',
	'network.internal': DEFAULT_INTERNAL,
	'bandwidth.upload_mbps': '40',
	'bandwidth.reserve_mbps': '2',
	'bandwidth.target_pct': '90',
	'bandwidth.algorithm': 'equal',
	'bandwidth.min_stream_mbps': '1',
	'bandwidth.max_stream_mbps': '20',
	'USER.name': 'alice',
	'USER.priority': '2',
	'USER.min_mbps': '',
	'USER.max_mbps': '',
	'USER.exempt': '0',
	'shaping.enabled': '1',
	'shaping.burst_pct': '115',
	'wol.enabled': '0',
	'wol.mac': '',
	'wol.password': '',
	'wol.interface': 'br-lan',
	'wol.broadcast': '',
	'wol.on_connect': '1',
	'wol.on_session': '1',
	'wol.cooldown': '60',
	'wol.idle_minutes': '0',
	'wol.idle_command': '',
	'publish.prometheus_file': '',
	'publish.webhook_url': ''
};

/* Reads every rendered option straight from the DOM: checkbox, select, list or text input. */
function readForm(page) {
	return page.evaluate(() => {
		const out = {};
		document.querySelectorAll('#cbi-jellydemon [data-field]').forEach((f) => {
			const key = f.getAttribute('data-field').replace(/^cbid\.jellydemon\./, '');
			const dl = f.querySelector('.cbi-dynlist');
			const cb = f.querySelector('input[type=checkbox]');
			const sel = f.querySelector('select');
			const inp = f.querySelector('input[type=text],input[type=password]');
			if (dl)
				out[key] = Array.from(dl.querySelectorAll('.item input[type=hidden]')).map((i) => i.value);
			else if (cb)
				out[key] = cb.checked ? '1' : '0';
			else if (sel)
				out[key] = sel.value;
			else if (inp)
				out[key] = { value: inp.value, type: inp.type };
		});
		return out;
	});
}

function field(page, key) {
	return page.locator(`[id="widget.cbid.jellydemon.${key}"]`);
}

async function tab(page, name) {
	await page.locator(`ul.cbi-tabmenu li[data-tab="${name}"] a`).click();
	await page.locator(`.cbi-map-tabbed > [data-tab="${name}"]`).waitFor({ state: 'visible' });
}

async function saveExpectingError(t, expected, shot) {
	const before = t.server.state.calls.filter((c) => c.object == 'uci' && c.method != 'get').length;
	await t.page.locator('.cbi-page-actions .cbi-button-save').click();
	const msg = t.page.locator('#modal_overlay .save-error');
	await msg.waitFor({ state: 'visible' });
	assert.equal(await msg.textContent(), expected);
	const after = t.server.state.calls.filter((c) => c.object == 'uci' && c.method != 'get').length;
	assert.equal(after, before, 'an invalid form must not send any change');
	assert.deepEqual(t.server.state.uci.jellydemon.changes, []);
	if (shot)
		await t.shot(shot, false);
	await t.page.locator('#modal_overlay .cbi-button').click();
}

test('settings page', { timeout: TEST_TIMEOUT }, async (s) => {
	const t = await setup({ config: CONFIG });
	s.after(() => t.close());
	const userSid = t.server.state.uci.jellydemon.committed.find((x) => x.type == 'user').name;

	await s.test('renders every option with its default', async () => {
		await t.open('config');
		const form = await readForm(t.page);
		const expected = {};
		for (const [k, v] of Object.entries(EXPECTED))
			expected[k.replace('USER', userSid)] = v;

		assert.deepEqual(Object.keys(form).sort(), Object.keys(expected).sort(), 'rendered options');
		for (const [k, v] of Object.entries(expected)) {
			const got = form[k];
			assert.deepEqual(typeof got == 'object' && !Array.isArray(got) ? got.value : got, v, k);
		}
		assert.equal(form['jellyfin.api_key'].type, 'password', 'the API key is a password field');
		assert.ok(!(await t.page.content()).includes('secret-key-0123'), 'the key is nowhere in the page');
		assert.equal(await t.page.locator('ul.cbi-tabmenu li').count(), 8, 'one tab per section');
		assert.deepEqual(t.problems, []);
		await t.shot('settings');
	});

	await s.test('an invalid MAC address shows the datatype message and blocks saving', async () => {
		await tab(t.page, 'wol');
		const mac = field(t.page, 'wol.mac');
		await mac.fill('01:00:5e:00:00:zz');
		await mac.press('Tab');
		assert.equal(await mac.getAttribute('data-tooltip'), 'Expecting: valid MAC address');
		assert.match(await mac.getAttribute('class'), /cbi-input-invalid/);
		await saveExpectingError(t, 'Option "Server MAC address" contains an invalid input value. Expecting: valid MAC address', 'settings-invalid');

		/* A multicast address is no wake target either. */
		await mac.fill('01:00:5e:00:00:01');
		await mac.press('Tab');
		assert.equal(await mac.getAttribute('data-tooltip'), 'Expecting: valid MAC address');
		await mac.fill('');
		await mac.press('Tab');
		assert.equal(await mac.getAttribute('data-tooltip'), null);
	});

	await s.test('an invalid CIDR shows the datatype message and blocks saving', async () => {
		await tab(t.page, 'network');
		const add = field(t.page, 'network.internal');
		const msg = 'Expecting: One of the following: \n - valid IPv4 or IPv6 CIDR\n - valid IP address\n - valid UCI identifier';
		for (const bad of [ '10.0.0.300', '300.1.2.0/24', '10.0.0.0/33', 'fd00::/129', '10.0.0.0/255.0.0.0', 'lan-1' ]) {
			await add.fill(bad);
			await add.press('Tab');
			assert.equal(await add.getAttribute('data-tooltip'), msg, bad);
		}
		await saveExpectingError(t, 'Option "Local networks" contains an invalid input value. ' + msg);
		for (const good of [ '100.64.0.0/10', '2001:db8::/32', '192.168.7.7', 'guest' ]) {
			await add.fill(good);
			await add.press('Tab');
			assert.equal(await add.getAttribute('data-tooltip'), null, good);
		}
		await add.fill('');
		await add.press('Tab');
	});

	await s.test('URLs, ranges and cross-checks match the daemon', async () => {
		await tab(t.page, 'jellyfin');
		const url = field(t.page, 'jellyfin.url');
		const urlMsg = 'Expecting: an http:// URL such as http://192.168.1.2:8096';
		for (const bad of [ 'ftp://jf.example.org', 'jellyfin:8096', 'http://host:99999', 'http://a b', 'http://me@host', 'http://host/?x=1' ]) {
			await url.fill(bad);
			await url.press('Tab');
			assert.equal(await url.getAttribute('data-tooltip'), urlMsg, bad);
		}
		await saveExpectingError(t, 'Option "Server URL" contains an invalid input value. ' + urlMsg);
		/* The daemon's rule (config.rs JELLYFIN_HTTPS_HINT): https refused with the same hint. */
		const httpsMsg = 'https is not supported for Jellyfin, jellydemon has no TLS: use the server\'s LAN http:// address, e.g. http://192.168.1.2:8096; Jellyfin serves http on port 8096 also when https is enabled';
		await url.fill('https://jf.example.org/jellyfin');
		await url.press('Tab');
		assert.equal(await url.getAttribute('data-tooltip'), httpsMsg);
		for (const good of [ 'http://jf.example.org/jellyfin', 'http://[fd00::2]:8096' ]) {
			await url.fill(good);
			await url.press('Tab');
			assert.equal(await url.getAttribute('data-tooltip'), null, good);
		}
		await url.fill('http://192.168.1.2:8096');
		await url.press('Tab');

		const cases = [
			[ 'jellyfin', 'jellyfin.timeout', '61', 'Expecting: value between 1 and 60' ],
			[ 'jellyfin', 'jellyfin.timeout', '0', 'Expecting: value between 1 and 60' ],
			[ 'jellyfin', 'jellyfin.port', '65536', 'Expecting: value between 1 and 65535' ],
			[ 'general', 'main.interval', '301', 'Expecting: value between 1 and 300' ],
			[ 'general', 'main.interval', '2.5', 'Expecting: positive integer value' ],
			[ 'bandwidth', 'bandwidth.target_pct', '101', 'Expecting: value between 1 and 100' ],
			[ 'bandwidth', 'bandwidth.reserve_mbps', '-1', 'Expecting: positive decimal value' ],
			[ 'shaping', 'shaping.burst_pct', '99', 'Expecting: value between 100 and 1000' ],
			[ 'network', 'network.lan_device', 'br lan', 'Expecting: valid network device name between 1 and 15 characters not containing ":", "/", "%" or spaces' ],
			[ 'wol', 'wol.broadcast', '192.168.1.0/24', 'Expecting: valid IPv4 address' ],
			[ 'wol', 'wol.mac', '00:00:00:00:00:00', 'Expecting: valid MAC address' ],
			[ 'wol', 'wol.cooldown', '86401', 'Expecting: value between 0 and 86400' ],
			[ 'bandwidth', 'bandwidth.upload_mbps', '0', 'Expecting: a number above 0' ],
			[ 'bandwidth', 'bandwidth.min_stream_mbps', '25', 'Expecting: a value not above the maximum per stream' ],
			[ 'bandwidth', 'bandwidth.max_stream_mbps', '10001', 'Expecting: value smaller or equal to 10000' ],
			[ 'jellyfin', 'jellyfin.api_key', 'two words', 'Expecting: printable characters without spaces' ],
			[ 'user', `${userSid}.priority`, '0', 'Expecting: a number above 0' ],
			[ 'publish', 'publish.webhook_url', 'ftp://ntfy.sh/x', 'Expecting: an http:// or https:// URL such as https://ntfy.sh/mytopic' ]
		];
		const tabOf = { general: 'main' };
		/* Webhooks may be https (posted by the router's TLS client), with a query. */
		await tab(t.page, 'publish');
		const hook = field(t.page, 'publish.webhook_url');
		await hook.fill('https://discord.com/api/webhooks/1/token?wait=true');
		await hook.press('Tab');
		assert.equal(await hook.getAttribute('data-tooltip'), null);
		await hook.fill('');
		await hook.press('Tab');
		await tab(t.page, 'wol');
		await t.page.locator('[id="widget.cbid.jellydemon.wol.enabled"]').check();
		await saveExpectingError(t, 'Option "Server MAC address" contains an invalid input value. Expecting: the server\'s MAC address (needed to wake it)');
		await t.page.locator('[id="widget.cbid.jellydemon.wol.enabled"]').uncheck();
		for (const [tb, key, bad, msg] of cases) {
			await tab(t.page, tabOf[tb] || tb);
			const f = field(t.page, key);
			const old = await f.inputValue();
			await f.fill(bad);
			await f.press('Tab');
			assert.equal(await f.getAttribute('data-tooltip'), msg, `${key}=${bad}`);
			await f.fill(old);
			await f.press('Tab');
			assert.equal(await f.getAttribute('data-tooltip'), null, `${key} back to ${old}`);
		}
		assert.deepEqual(t.server.state.uci.jellydemon.changes, []);
	});

	await s.test('saving writes the changes and omits values equal to the defaults', async () => {
		/* A new viewer first: Add opens a dialog with every column for the new section. */
		await tab(t.page, 'user');
		const modal = t.page.locator('#modal_overlay .modal');
		const rows = t.page.locator('#cbi-jellydemon-user tr[data-sid]');
		const pkg = t.server.state.uci.jellydemon;

		/* Dismissed: nothing is added. */
		await t.page.locator('#cbi-jellydemon-user .cbi-button-add').click();
		await modal.waitFor({ state: 'visible' });
		await modal.locator('.cbi-button', { hasText: 'Dismiss' }).click();
		await modal.waitFor({ state: 'hidden' });
		assert.equal(await rows.count(), 1);

		await t.page.locator('#cbi-jellydemon-user .cbi-button-add').click();
		await modal.waitFor({ state: 'visible' });
		assert.equal(await modal.locator('h4').textContent(), 'JellyDemon » Viewers');
		const name = modal.locator('input[id$=".name"]');
		assert.equal(await modal.locator('input[id$=".priority"]').inputValue(), '1');
		assert.equal(await modal.locator('input[id$=".exempt"]').isChecked(), false);

		/* Saving is refused (silently, as in LuCI) for an empty or already listed name. */
		await modal.locator('.cbi-button-positive').click();
		assert.equal(await name.getAttribute('data-tooltip'), 'Expecting: non-empty value');
		await name.fill('ALICE');
		await name.press('Tab');
		assert.equal(await name.getAttribute('data-tooltip'), 'Expecting: a user name not listed twice');
		await modal.locator('.cbi-button-positive').click();
		assert.ok(await modal.isVisible());
		assert.deepEqual(pkg.changes, []);

		await name.fill('carol');
		await modal.locator('input[id$=".exempt"]').check();
		await t.shot('settings-add-viewer', false);
		await modal.locator('.cbi-button-positive').click();
		await modal.waitFor({ state: 'hidden' });
		await rows.nth(1).waitFor();
		const newSid = await rows.nth(1).getAttribute('data-sid');
		/* Only the new section; priority 1 is the default and is not written. */
		assert.deepEqual(pkg.changes.filter((c) => c[1] == newSid),
			[ [ 'add', newSid, 'user' ], [ 'set', newSid, 'name', 'carol' ], [ 'set', newSid, 'exempt', '1' ] ]);
		assert.equal(await field(t.page, `${newSid}.name`).inputValue(), 'carol');

		/* In the table too, a name may not be listed twice. */
		await field(t.page, `${newSid}.name`).fill('Alice');
		await saveExpectingErrorLoose(t, 'Option "Jellyfin user" contains an invalid input value. Expecting: a user name not listed twice');
		await field(t.page, `${newSid}.name`).fill('carol');
		await field(t.page, `${userSid}.priority`).fill('1');
		await t.shot('settings-viewers');

		await tab(t.page, 'main');
		await field(t.page, 'main.interval').fill('10');
		await field(t.page, 'main.log_level').selectOption('debug');
		await field(t.page, 'main.state_dir').fill('/etc/jellydemon');

		await tab(t.page, 'jellyfin');
		await t.page.locator('[id="widget.cbid.jellydemon.jellyfin.manage_limits"]').uncheck();
		await field(t.page, 'jellyfin.api_key').fill('new-key-4567');
		await field(t.page, 'jellyfin.timeout').fill('5');

		await tab(t.page, 'network');
		await field(t.page, 'network.internal').fill('100.64.0.0/10');
		await field(t.page, 'network.internal').press('Enter');

		await tab(t.page, 'bandwidth');
		await field(t.page, 'bandwidth.upload_mbps').fill('');
		await field(t.page, 'bandwidth.reserve_mbps').fill('2.0');

		await tab(t.page, 'wol');
		await t.page.locator('[id="widget.cbid.jellydemon.wol.enabled"]').check();
		await field(t.page, 'wol.mac').fill('AA:BB:CC:DD:EE:0F');
		await field(t.page, 'wol.mac').press('Tab');

		await t.page.locator('.cbi-page-actions .cbi-button-apply').click();
		await t.page.locator('.alert-message', { hasText: 'Configuration changes applied.' }).waitFor();
		assert.equal(t.server.state.applied, 1);

		assert.deepEqual(t.server.state.uci.jellydemon.show(), [
			'jellydemon.main=jellydemon',
			"jellydemon.main.enabled='1'",
			"jellydemon.main.interval='10'",
			"jellydemon.main.log_level='debug'",
			'jellydemon.jellyfin=jellyfin',
			"jellydemon.jellyfin.url='http://192.168.1.2:8096'",
			"jellydemon.jellyfin.manage_limits='0'",
			'jellydemon.network=network',
			"jellydemon.network.internal='lan' '100.64.0.0/10'",
			'jellydemon.bandwidth=bandwidth',
			'jellydemon.@user[0]=user',
			"jellydemon.@user[0].name='alice'",
			'jellydemon.shaping=shaping',
			'jellydemon.wol=wol',
			"jellydemon.wol.enabled='1'",
			"jellydemon.wol.mac='AA:BB:CC:DD:EE:0F'",
			'jellydemon.publish=publish',
			'jellydemon.@user[1]=user',
			"jellydemon.@user[1].name='carol'",
			"jellydemon.@user[1].exempt='1'"
		]);

		/* The new key went to the secrets file, and the readable copy is gone. */
		assert.deepEqual(t.server.state.uci.jellydemon_secrets.show(), [
			'jellydemon_secrets.jellyfin=jellyfin',
			"jellydemon_secrets.jellyfin.api_key='new-key-4567'",
			'jellydemon_secrets.wol=wol',
			'jellydemon_secrets.publish=publish'
		]);
		assert.ok(!(await t.page.content()).includes('new-key-4567'), 'not shown after saving either');

		/* Options left at their defaults were never sent at all. */
		const sent = t.server.state.calls.filter((c) => c.object == 'uci' && c.method == 'set')
			.flatMap((c) => Object.keys(c.args.values || {}).map((k) => `${c.args.section}.${k}`));
		for (const k of [ 'main.state_dir', 'main.dry_run', 'jellyfin.timeout', 'jellyfin.port', 'bandwidth.reserve_mbps',
			'bandwidth.algorithm', 'shaping.enabled', 'wol.on_connect', 'wol.interface' ])
			assert.ok(!sent.includes(k), `${k} must not be written`);
		assert.deepEqual(t.problems, []);
	});

	await s.test('disabling keeps enabled=0 in the file (rmempty=false)', async () => {
		await tab(t.page, 'main');
		await t.page.locator('[id="widget.cbid.jellydemon.main.enabled"]').uncheck();
		await t.page.locator('.cbi-page-actions .cbi-button-apply').click();
		await t.page.waitForFunction(() => document.querySelectorAll('.alert-message.info').length >= 2);
		assert.ok(t.server.state.uci.jellydemon.show().includes("jellydemon.main.enabled='0'"));
		await t.page.locator('[id="widget.cbid.jellydemon.main.enabled"]').check();
		await t.page.locator('.cbi-page-actions .cbi-button-apply').click();
		await t.page.waitForFunction(() => document.querySelectorAll('.alert-message.info').length >= 3);
		assert.ok(t.server.state.uci.jellydemon.show().includes("jellydemon.main.enabled='1'"));
	});

	await s.test('removing a viewer deletes its section', async () => {
		await tab(t.page, 'user');
		const sid = t.server.state.uci.jellydemon.committed.filter((x) => x.type == 'user')[1].name;
		await t.page.locator(`#cbi-jellydemon-user tr[data-sid="${sid}"] .cbi-button-remove`).click();
		await t.page.locator(`#cbi-jellydemon-user tr[data-sid="${sid}"]`).waitFor({ state: 'detached' });
		/* LuCI re-sends every Flag that differs from its default on each save (a no-op here). */
		const pkg = t.server.state.uci.jellydemon;
		const noop = (c) => c[0] == 'set' && pkg.committed.find((x) => x.name == c[1]).opts[c[2]] === c[3];
		assert.deepEqual(pkg.changes.filter((c) => !noop(c)), [ [ 'remove', sid ] ]);
	});
});

/* Like saveExpectingError, for a form that already holds staged (unapplied) changes. */
async function saveExpectingErrorLoose(t, expected) {
	const staged = t.server.state.uci.jellydemon.changes.length;
	await t.page.locator('.cbi-page-actions .cbi-button-save').click();
	const msg = t.page.locator('#modal_overlay .save-error');
	await msg.waitFor({ state: 'visible' });
	assert.equal(await msg.textContent(), expected);
	assert.equal(t.server.state.uci.jellydemon.changes.length, staged);
	await t.page.locator('#modal_overlay .cbi-button').click();
}

test('settings page on the file as installed', { timeout: TEST_TIMEOUT }, async (s) => {
	const t = await setup({ config: SHIPPED, secrets: SHIPPED_SECRETS });
	s.after(() => t.close());

	await s.test('saving it untouched changes nothing at all', async () => {
		await t.open('config');
		await t.page.locator('.cbi-page-actions .cbi-button-save').click();
		await t.page.waitForFunction(() => window.__LUCI_VIEW_RENDERED__);
		assert.deepEqual(t.server.state.uci.jellydemon.changes, [], 'no pending change');
		assert.deepEqual(t.server.state.uci.jellydemon_secrets.changes, []);
	});

	await s.test('a one-field change is a one-line `uci changes`', async () => {
		await tab(t.page, 'main');
		await field(t.page, 'main.interval').fill('10');
		await t.page.locator('.cbi-page-actions .cbi-button-save').click();
		await t.page.waitForFunction(() => window.__LUCI_VIEW_RENDERED__);
		/* what LuCI's "Unsaved changes" counts: rpcd's `uci changes` for this session */
		const res = await fetch(t.server.url + '/ubus/', {
			method: 'POST',
			headers: { 'Content-Type': 'application/json' },
			body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'call', params: [ 'sid', 'uci', 'changes', {} ] })
		}).then((r) => r.json());
		assert.deepEqual(res.result, [ 0, { changes: { jellydemon: [ [ 'set', 'main', 'interval', '10' ] ] } } ]);

		await t.page.locator('.cbi-page-actions .cbi-button-apply').click();
		await t.page.locator('.alert-message', { hasText: 'Configuration changes applied.' }).waitFor();
		const shipped = new (require('../harness/ucistate').UciPackage)('jellydemon', SHIPPED).show();
		const after = t.server.state.uci.jellydemon.show();
		assert.deepEqual(after.filter((l) => !shipped.includes(l)), [ "jellydemon.main.interval='10'" ]);
		assert.deepEqual(shipped.filter((l) => !after.includes(l)), []);
		assert.deepEqual(t.problems, []);
	});
});

test('roles: a login that may only read', { timeout: TEST_TIMEOUT }, async (s) => {
	const now = Math.floor(Date.now() / 1000);
	const t = await setup({
		config: CONFIG_SPLIT, secrets: SECRETS,
		files: { [STATUS_PATH]: JSON.stringify(status(now)) },
		role: { read: [ 'luci-app-jellydemon' ], write: [] }
	});
	s.after(() => t.close());

	await s.test('sees the status and the settings, read-only, and no secret', async () => {
		await t.open('status');
		await t.page.locator('[data-card=service]').waitFor();
		assert.equal(await t.page.locator('#jd-start').count(), 0);
		const statusHtml = await t.page.content();

		await t.open('config');
		const form = await readForm(t.page);
		assert.equal(form['main.enabled'], '1');
		assert.equal(form['bandwidth.upload_mbps'].value, '40');
		for (const k of [ 'jellyfin.api_key', 'wol.password', 'publish.webhook_url' ])
			assert.equal(form[k].value, '', k);
		assert.equal(await field(t.page, 'main.interval').isDisabled(), true, 'fields are read-only');
		for (const b of [ 'apply', 'save', 'reset' ])
			assert.equal(await t.page.locator(`.cbi-page-actions .cbi-button-${b}`).isDisabled(), true, b);
		await t.shot('settings-read-only');

		const html = statusHtml + await t.page.content();
		for (const v of SECRET_VALUES)
			assert.ok(!html.includes(v), `${v} shown`);
		/* and rpcd would not have given them out: every read of the secrets file was refused */
		for (const c of t.server.state.calls.filter((c) => c.args && c.args.config == 'jellydemon_secrets'))
			assert.notEqual(c.method, 'get', 'the views never ask for the secrets');
		assert.deepEqual(t.problems, []);
	});

	await s.test('rpcd refuses it the secrets, every change and the service', async () => {
		const call = (object, method, args) => fetch(t.server.url + '/ubus/', {
			method: 'POST',
			headers: { 'Content-Type': 'application/json' },
			body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'call', params: [ 'sid', object, method, args ] })
		}).then((r) => r.json()).then((m) => m.error ? m.error.message : m.result);
		assert.deepEqual(await call('uci', 'get', { config: 'jellydemon_secrets' }), [ 6 ]);
		assert.equal((await call('uci', 'get', { config: 'jellydemon' }))[0], 0);
		assert.equal(await call('uci', 'set', { config: 'jellydemon', section: 'main', values: { interval: '9' } }), 'Access denied');
		assert.deepEqual(await call('file', 'exec', { command: '/etc/init.d/jellydemon', params: [ 'start' ] }), 'Access denied');
		assert.deepEqual(t.server.state.rcCalls, []);
	});
});

test('roles: the full role saves settings and secrets without reading the secrets', { timeout: TEST_TIMEOUT }, async (s) => {
	const t = await setup({ config: CONFIG_SPLIT, secrets: SECRETS });
	s.after(() => t.close());

	await s.test('an empty secret field keeps the stored secret; a typed one replaces it', async () => {
		await t.open('config');
		const form = await readForm(t.page);
		for (const k of [ 'jellyfin.api_key', 'wol.password', 'publish.webhook_url' ])
			assert.equal(form[k].value, '', k);
		for (const v of SECRET_VALUES)
			assert.ok(!(await t.page.content()).includes(v), `${v} shown`);

		await tab(t.page, 'bandwidth');
		await field(t.page, 'bandwidth.upload_mbps').fill('50');
		await tab(t.page, 'publish');
		await field(t.page, 'publish.webhook_url').fill('https://example.org/hooks/new-token');
		await t.page.locator('.cbi-page-actions .cbi-button-apply').click();
		await t.page.locator('.alert-message', { hasText: 'Configuration changes applied.' }).waitFor();

		assert.ok(t.server.state.uci.jellydemon.show().includes("jellydemon.bandwidth.upload_mbps='50'"));
		assert.deepEqual(t.server.state.uci.jellydemon_secrets.show(), [
			'jellydemon_secrets.jellyfin=jellyfin',
			"jellydemon_secrets.jellyfin.api_key='secret-key-0123'",
			'jellydemon_secrets.wol=wol',
			"jellydemon_secrets.wol.password='01:02:03:04:05:06'",
			'jellydemon_secrets.publish=publish',
			"jellydemon_secrets.publish.webhook_url='https://example.org/hooks/new-token'"
		]);
		/* written, never read */
		const secretCalls = t.server.state.calls.filter((c) => c.args && c.args.config == 'jellydemon_secrets');
		assert.deepEqual(secretCalls.map((c) => c.method), [ 'set' ]);
		assert.deepEqual(t.problems, []);
	});

	await s.test('the hooks directory, .prom files and clean paths, as the daemon checks them', async () => {
		const cases = [
			[ 'wol', 'wol.idle_command', 'ssh nas poweroff', 'Expecting: a program in /etc/jellydemon/hooks/ and its arguments' ],
			[ 'wol', 'wol.idle_command', '/etc/jellydemon/hooks/../../../bin/sh -c x', 'Expecting: a program in /etc/jellydemon/hooks/ and its arguments' ],
			[ 'publish', 'publish.prometheus_file', '/etc/shadow', 'Expecting: an absolute file path ending in .prom' ],
			[ 'main', 'main.state_dir', '/etc/jellydemon/hooks', 'Expecting: an absolute path without "." or ".." parts, outside /etc/jellydemon/hooks/' ],
			[ 'main', 'main.run_dir', '/var/../etc', 'Expecting: an absolute path without "." or ".." parts, outside /etc/jellydemon/hooks/' ]
		];
		for (const [tb, key, bad, msg] of cases) {
			await tab(t.page, tb);
			const f = field(t.page, key);
			await f.fill(bad);
			await f.press('Tab');
			assert.equal(await f.getAttribute('data-tooltip'), msg, `${key}=${bad}`);
			await f.fill('');
			await f.press('Tab');
		}
		await tab(t.page, 'wol');
		const f = field(t.page, 'wol.idle_command');
		await f.fill("/etc/jellydemon/hooks/poweroff-nas 'now please'");
		await f.press('Tab');
		assert.equal(await f.getAttribute('data-tooltip'), null);
		await f.fill('');
		await f.press('Tab');
	});
});
