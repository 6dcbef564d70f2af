'use strict';
/*
 * The status page in Debian's Chromium against a MOCK of LuCI's runtime and of rpcd (harness/):
 * rpcd/ubus cannot run here. The page reads status.json through ubus `file read` and polls it;
 * the test changes the file in the mock's memory and waits for the page to follow.
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const { setup, TEST_TIMEOUT } = require('./helpers');
const { CONFIG, STATUS_PATH, status } = require('./fixtures');

const now = () => Math.floor(Date.now() / 1000);

function rowText(page, sid) {
	return page.evaluate((sid) => {
		const row = document.querySelector(`#jd-streams tr[data-session="${sid}"]`);
		if (!row) return null;
		const out = {};
		row.querySelectorAll('td[data-col]').forEach((td) => { out[td.getAttribute('data-col')] = td.textContent.trim(); });
		out.boldTags = row.querySelectorAll('b').length;
		return out;
	}, sid);
}

function pointsOf(page, key) {
	return page.evaluate((key) => {
		const pl = document.querySelector(`#jd-upload polyline.jd-series-${key}`);
		return pl ? pl.getAttribute('points').trim().split(/\s+/).length : 0;
	}, key);
}

test('status page with a running daemon', { timeout: TEST_TIMEOUT }, async (s) => {
	const t0 = now();
	const t = await setup({ config: CONFIG, files: { [STATUS_PATH]: JSON.stringify(status(t0)) } });
	s.after(() => t.close());

	await s.test('renders status.json: health, uplink, streams, wake, errors', async () => {
		await t.open('status', '?poll=1');
		const page = t.page;

		assert.equal(await page.locator('#jd-stopped').count(), 0, 'no stopped banner');
		assert.equal(await page.locator('#jd-unmanaged').count(), 0, 'managing: no banner');
		assert.match(await page.locator('[data-card=service]').textContent(), /Running.*every 5 s/);
		assert.match(await page.locator('[data-card=jellyfin]').textContent(), /Reachable.*version 10\.11\.0/);
		assert.match(await page.locator('[data-card=wan]').textContent(), /40\.00 Mbit\/s.*device eth0, budget 28\.00 Mbit\/s/);
		assert.match(await page.locator('[data-card=shaping]').textContent(), /Active/);
		assert.match(await page.locator('[data-card=wake]').textContent(), /10 min ago – someone connected to Jellyfin, server awake/);
		assert.deepEqual(await page.locator('#jd-errors li').allTextContents(),
			[ 'SQM is not configured: the upload capacity comes from upload_mbps.' ]);

		assert.equal(await page.locator('#jd-streams tr[data-session]').count(), 2);
		assert.deepEqual(await rowText(page, 'a1'), {
			user: 'bob', client: 'Jellyfin Android TVLiving room TV', ip: '203.0.113.45', where: 'external',
			method: 'Transcode', title: 'Big Buck Bunny <b>4K</b>', limit: '12.00 Mbit/s',
			m1: '11.80', m5: '10.45', m10: '9.87', restarts: '1', boldTags: 0
		});
		assert.deepEqual(await rowText(page, 'b2'), {
			user: 'alice', client: 'Jellyfin WebFirefox', ip: '192.168.1.50', where: 'local',
			method: 'DirectPlay', title: 'Sintel paused', limit: 'none',
			m1: '5.30', m5: '5.20', m10: '5.10', restarts: '0', boldTags: 0
		});
		assert.match(await page.locator('#jd-body .cbi-section-descr').textContent(), /2 playing, 1 from outside/);

		for (const key of [ 'capacity', 'budget', 'tx', 'jellyfin', 'other' ])
			assert.equal(await pointsOf(page, key), 2, `one sample drawn for ${key}`);
		assert.match(await page.locator('.jd-legend [data-series=tx]').textContent(), /Upload used: 23\.50 Mbit\/s/);

		/* The page reads nothing but the status file and the config (and asks whether it may
		 * offer Start: session access). */
		const used = new Set(t.server.state.calls.map((c) => `${c.object}.${c.method}`));
		assert.deepEqual([ ...used ].sort(), [ 'file.read', 'session.access', 'uci.get' ]);
		assert.deepEqual(t.problems, []);
	});

	await s.test('follows the file as the daemon rewrites it (poll)', async () => {
		const page = t.page;
		const ticks = 12;
		for (let i = 1; i <= ticks; i++) {
			const st = status(t0 + 5 * i);
			const wave = Math.sin(i / 2);
			st.wan.jellyfin_bps = Math.round(17200000 + 3000000 * wave);
			st.wan.other_bps = Math.round(6300000 - 2500000 * wave + (i % 3) * 400000);
			st.wan.tx_bps = st.wan.jellyfin_bps + st.wan.other_bps;
			st.budget_bps = Math.round(36000000 - 2000000 - Math.max(st.wan.other_bps, 2000000));
			st.streams[0].measured_bps['1m'] = 11000000 + i * 100000;
			st.streams[0].restarts = 1 + i;
			if (i == ticks) {
				st.dry_run = true;
				st.wan.capacity_bps = null;
				st.managing = false;
				st.managing_reason = 'uplink capacity unknown: remote streams pass unlimited';
				st.shaping = { enabled: true, active: false, error: 'the kernel has no ifb module' };
				st.streams.pop();
				st.errors = [];
				st.jellyfin = { reachable: false, server_version: null, error: 'connection refused' };
			}
			t.server.state.files.set(STATUS_PATH, JSON.stringify(st));
			await page.waitForFunction((n) => {
				const el = document.querySelector('#jd-streams tr[data-session="a1"] td[data-col=restarts]');
				return el && el.textContent == String(n);
			}, 1 + i);
			if (i == ticks - 1)
				await t.shot('status');
		}
		assert.equal(await page.locator('#jd-streams tr[data-session]').count(), 1, 'the ended stream is gone');
		assert.equal((await rowText(page, 'a1')).m1, '12.20');
		assert.match(await page.locator('[data-card=jellyfin]').textContent(), /Unreachable.*connection refused/);
		assert.equal(await page.locator('#jd-errors').count(), 0);
		assert.equal(await pointsOf(page, 'tx'), ticks + 1, 'one chart sample per daemon tick');
		assert.equal(await pointsOf(page, 'capacity'), ticks, 'an unknown capacity is not drawn');
		assert.match(await page.locator('[data-card=wan]').textContent(), /Capacity unknown/);
		assert.match(await page.locator('[data-card=shaping]').textContent(), /Not working.*the kernel has no ifb module/);
		assert.match(await page.locator('[data-card=service]').textContent(), /Dry run/);
		assert.match(await page.locator('#jd-dryrun').textContent(), /changes nothing/);
		assert.match(await page.locator('#jd-unmanaged').textContent(),
			/Not managing the uplink.*capacity unknown: remote streams pass unlimited/);
		const last = status(0);
		last.wan.jellyfin_bps = Math.round(17200000 + 3000000 * Math.sin(ticks / 2));
		last.wan.other_bps = Math.round(6300000 - 2500000 * Math.sin(ticks / 2));
		assert.match(await page.locator('.jd-legend [data-series=tx]').textContent(),
			new RegExp('Upload used: ' + ((last.wan.jellyfin_bps + last.wan.other_bps) / 1e6).toFixed(2) + ' Mbit/s'));
		assert.deepEqual(t.problems, []);
	});

	await s.test('a status file that stops changing means the daemon stopped', async () => {
		/* One last tick with a 1 s interval, then silence: after 3 s the page must say so. */
		t.server.state.files.set(STATUS_PATH, JSON.stringify(status(t0 + 100, { interval: 1 })));
		await t.page.waitForFunction(() => /every 1 s/.test(document.querySelector('[data-card=service]').textContent));
		assert.equal(await t.page.locator('#jd-stopped').count(), 0);
		await t.page.locator('#jd-stopped').waitFor({ timeout: 10000 });
		assert.match(await t.page.locator('#jd-stopped').textContent(), /jellydemon is not running: its status stopped changing/);
		assert.equal(await t.page.locator('#jd-start').textContent(), 'Start');
	});
});

test('status page with the daemon stopped', { timeout: TEST_TIMEOUT }, async (s) => {
	const t = await setup({ config: CONFIG });
	s.after(() => t.close());

	await s.test('no status file: the message and a Start button that runs the init script', async () => {
		await t.open('status', '?poll=1');
		const banner = t.page.locator('#jd-stopped');
		assert.match(await banner.textContent(), /jellydemon is not running\. Start it/);
		assert.equal(await t.page.locator('#jd-overview').count(), 0);
		await t.shot('status-stopped');

		/* Starting makes the (mock) daemon write its status file, as the real one would. */
		t.server.state.onRcInit = (name, action) => {
			if (action == 'start')
				t.server.state.files.set(STATUS_PATH, JSON.stringify(status(now())));
		};
		await t.page.locator('#jd-start').click();
		await t.page.locator('#jd-overview').waitFor();
		assert.deepEqual(t.server.state.rcCalls, [ { name: 'jellydemon', action: 'start' } ]);
		assert.deepEqual(t.server.state.execCalls, [ [ '/etc/init.d/jellydemon', 'start' ] ]);
		assert.ok(!t.server.state.calls.some((c) => c.object == 'rc'), 'no rc init');
		assert.equal(await banner.count(), 0);
		assert.deepEqual(t.problems, []);
	});

	await s.test('an old status file counts as stopped', async () => {
		t.server.state.files.set(STATUS_PATH, JSON.stringify(status(now() - 3600)));
		await t.open('status', '?poll=1');
		assert.match(await t.page.locator('#jd-stopped').textContent(), /stopped changing 60 min ago/);
		assert.equal(await t.page.locator('#jd-overview').count(), 1, 'the last known figures stay visible');
	});

	await s.test('a garbled status file is reported, not thrown', async () => {
		t.server.state.files.set(STATUS_PATH, '{"version": 1, "updated": ');
		await t.open('status', '?poll=1');
		assert.match(await t.page.locator('#jd-stopped').textContent(), /not valid JSON/);
		t.server.state.files.set(STATUS_PATH, JSON.stringify(status(now(), { errors: [ 'x'.repeat(300 * 1024) ] })));
		await t.page.locator('#jd-stopped', { hasText: 'too large' }).waitFor();
		assert.deepEqual(t.problems, []);
	});
});

test('status page with the daemon disabled', { timeout: TEST_TIMEOUT }, async (s) => {
	const t = await setup({ config: CONFIG.replace("option enabled '1'", "option enabled '0'") });
	s.after(() => t.close());

	await s.test('offers to enable and start, then does both', async () => {
		await t.open('status', '?poll=1');
		assert.match(await t.page.locator('#jd-stopped').textContent(), /jellydemon is disabled/);
		const btn = t.page.locator('#jd-start');
		assert.equal(await btn.textContent(), 'Enable and start');
		await btn.click();
		await t.page.locator('.alert-message', { hasText: 'jellydemon was asked to start' }).waitFor();
		assert.deepEqual(t.server.state.rcCalls, [
			{ name: 'jellydemon', action: 'enable' },
			{ name: 'jellydemon', action: 'start' }
		]);
		assert.deepEqual(t.server.state.execCalls, [ [ '/etc/init.d/jellydemon', 'enable' ], [ '/etc/init.d/jellydemon', 'start' ] ]);
		assert.ok(t.server.state.uci.jellydemon.show().includes("jellydemon.main.enabled='1'"), 'enabled is committed');
		assert.deepEqual(t.server.state.uci.jellydemon.changes, [], 'nothing left unapplied');
		assert.deepEqual(t.problems, []);
	});
});

test('status page with a moved runtime directory', { timeout: TEST_TIMEOUT }, async (s) => {
	const t = await setup({ config: CONFIG.replace("option enabled '1'", "option enabled '1'\n\toption run_dir '/tmp/jd'"),
		files: { '/tmp/jd/status.json': JSON.stringify(status(now())) } });
	s.after(() => t.close());

	await s.test('explains that the ACL covers only the default directory', async () => {
		await t.open('status', '?poll=1');
		assert.match(await t.page.locator('#jd-stopped').textContent(),
			/may read the status only from \/var\/run\/jellydemon, but the runtime directory is set to \/tmp\/jd/);
		assert.equal(await t.page.locator('#jd-start').count(), 0, 'starting would not help');
		assert.deepEqual([ ...new Set(t.server.state.calls.filter((c) => c.object == 'file').map((c) => c.args.path)) ], [ '/tmp/jd/status.json' ]);
	});
});

test('status page says when flow offloading bypasses shaping', { timeout: TEST_TIMEOUT }, async (s) => {
	const st = status(now(), {
		network: { lan_device: 'br-lan', internal: [ '192.168.1.0/24', '2001:db8:2::/56' ],
			internal_fallback: false, server_ip6: '2001:db8:2::2', flow_offloading: 'hardware' }
	});
	const t = await setup({ config: CONFIG, files: { [STATUS_PATH]: JSON.stringify(st) } });
	s.after(() => t.close());

	await s.test('the shaping card warns and says what to do', async () => {
		await t.open('status', '?poll=1');
		const text = await t.page.locator('[data-card=shaping]').textContent();
		assert.match(text, /Bypassed.*hardware flow offloading is on/);
		assert.match(text, /Routing\/NAT Offloading/);
		assert.deepEqual(t.problems, []);
	});
});

test('status page while the media server sleeps and wakes', { timeout: TEST_TIMEOUT }, async (s) => {
	const t = await setup({ config: CONFIG, files: { [STATUS_PATH]: JSON.stringify(status(now())) } });
	s.after(() => t.close());

	await s.test('tells the wake story: asleep, woken at T (reason), awake after N s', async () => {
		await t.open('status', '?poll=1');
		const page = t.page;
		const t1 = now();
		const show = async (wol, jellyfin) => {
			const st = status(t1);
			st.updated = now();
			st.wol = Object.assign({ enabled: true, wakes: 1 }, wol);
			if (jellyfin)
				st.jellyfin = jellyfin;
			t.server.state.files.set(STATUS_PATH, JSON.stringify(st));
		};
		const down = { reachable: false, server_version: null, error: null };
		await show({ server_awake: false, server_state: 'asleep', asleep_since: t1 - 120, last_wake: null, wakes: 0 }, down);
		await page.waitForFunction(() => /Asleep/.test(document.querySelector('[data-card=wake]').textContent));
		assert.match(await page.locator('[data-card=wake]').textContent(), /not woken yet/);
		assert.match(await page.locator('[data-card=jellyfin]').textContent(), /Server asleep.*limits kept/);

		await show({ server_awake: false, server_state: 'waking', asleep_since: t1 - 120, last_wake: t1 - 3, last_reason: 'connect' }, down);
		await page.waitForFunction(() => /Waking/.test(document.querySelector('[data-card=wake]').textContent));
		assert.match(await page.locator('[data-card=wake]').textContent(), /asleep – woken at .* \(someone connected to Jellyfin\)/);

		await show({ server_awake: true, server_state: 'awake', last_wake: t1 - 12, last_reason: 'connect', awake_after_s: 8.4 });
		await page.waitForFunction(() => /awake after/.test(document.querySelector('[data-card=wake]').textContent));
		assert.match(await page.locator('[data-card=wake]').textContent(), /someone connected to Jellyfin, server awake \(awake after 8 s\)/);
		assert.match(await page.locator('[data-card=jellyfin]').textContent(), /Reachable/);
		assert.deepEqual(t.problems, []);
	});
});
