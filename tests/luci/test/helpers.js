'use strict';
/*
 * Shared test support: starts the mock LuCI server (see harness/server.js: a mock, because
 * rpcd/ubus cannot run here) and Debian's Chromium through playwright-core, with a fresh profile
 * per browser. Browser downloads are never attempted.
 */
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { chromium } = require('playwright-core');
const { startServer } = require('../harness/server');

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const SHOTS = path.resolve(__dirname, '..', '..', '..', 'target', 'luci-screenshots');
const TIMEOUT = 15000;

async function setup(opts) {
	const server = await startServer(opts);
	const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'jd-luci-'));
	let context;
	try {
		context = await chromium.launchPersistentContext(profile, {
			executablePath: CHROMIUM,
			headless: true,
			args: [ '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
				'--disable-background-networking', '--disable-component-update', '--disable-sync' ],
			viewport: { width: 1200, height: 900 },
			timeout: TIMEOUT
		});
	}
	catch (e) {
		await server.close();
		fs.rmSync(profile, { recursive: true, force: true });
		throw new Error(`cannot start ${CHROMIUM} (install Debian's chromium: tests/deps.sh): ${e.message}`);
	}
	context.setDefaultTimeout(TIMEOUT);
	const page = context.pages()[0] || await context.newPage();
	const problems = [];
	page.on('pageerror', (e) => problems.push('pageerror: ' + e.message));
	page.on('console', (m) => { if (m.type() == 'error') problems.push('console: ' + m.text()); });

	return {
		server, page, problems,
		async open(sub, query) {
			await page.goto(`${server.url}/cgi-bin/luci/admin/services/jellydemon${sub ? '/' + sub : ''}${query || ''}`);
			await page.waitForFunction(() => window.__LUCI_VIEW_RENDERED__ || window.__LUCI_BOOT_ERROR__ ||
				document.getElementById('view-error'));
			const err = await page.evaluate(() => window.__LUCI_BOOT_ERROR__ ||
				(document.getElementById('view-error') || {}).textContent);
			if (err) throw new Error('view failed: ' + err);
		},
		async shot(name, fullPage) {
			fs.mkdirSync(SHOTS, { recursive: true });
			const file = path.join(SHOTS, name + '.png');
			await page.screenshot({ path: file, fullPage: fullPage !== false });
			return file;
		},
		async close() {
			await context.close().catch(() => {});
			await server.close();
			fs.rmSync(profile, { recursive: true, force: true });
		}
	};
}

/* Upper bound for one top-level test, browser start included. */
const TEST_TIMEOUT = 180000;

module.exports = { setup, SHOTS, TEST_TIMEOUT };
