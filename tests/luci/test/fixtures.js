'use strict';
const fs = require('node:fs');
const path = require('node:path');
/* Test data: a freshly installed /etc/config/jellydemon and a status.json as the daemon writes it. */

const STATUS_PATH = '/var/run/jellydemon/status.json';

/*
 * Only what an install ships plus the settings a user must give; everything else absent. The
 * API key is in the main file, where versions before the secrets file kept it.
 */
const CONFIG = `
config jellydemon 'main'
	option enabled '1'

config jellyfin 'jellyfin'
	option url 'http://192.168.1.2:8096'
	option api_key 'secret-key-0123'

config network 'network'

config bandwidth 'bandwidth'
	option upload_mbps '40'

config user
	option name 'alice'
	option priority '2'

config shaping 'shaping'

config wol 'wol'

config publish 'publish'
`;

/* The files as the package installs them (net/jellydemon/files/). */
const FILES = path.join(__dirname, '..', '..', '..', 'net', 'jellydemon', 'files');
const SHIPPED = fs.readFileSync(path.join(FILES, 'jellydemon.config'), 'utf8');
const SHIPPED_SECRETS = fs.readFileSync(path.join(FILES, 'jellydemon_secrets.config'), 'utf8');

/* A configuration made the current way: settings here, the secrets in their own file. */
const CONFIG_SPLIT = CONFIG.replace("\toption api_key 'secret-key-0123'\n", '');
const SECRETS = `
config jellyfin 'jellyfin'
	option api_key 'secret-key-0123'

config wol 'wol'
	option password '01:02:03:04:05:06'

config publish 'publish'
	option webhook_url 'https://discord.com/api/webhooks/42/hook-token-789'
`;
const SECRET_VALUES = [ 'secret-key-0123', '01:02:03:04:05:06', 'hook-token-789' ];

function status(now, over) {
	const st = {
		version: 1,
		updated: now,
		interval: 5,
		dry_run: false,
		managing: true,
		managing_reason: null,
		jellyfin: { reachable: true, server_version: '10.11.0', error: null },
		wan: { device: 'eth0', capacity_bps: 40000000, tx_bps: 23500000, jellyfin_bps: 17200000, other_bps: 6300000 },
		budget_bps: 28000000,
		streams: [
			{
				session_id: 'a1', user: 'bob', client: 'Jellyfin Android TV', device: 'Living room TV',
				remote_ip: '203.0.113.45', external: true, play_method: 'Transcode',
				title: 'Big Buck Bunny <b>4K</b>', paused: false, source_bps: 18000000,
				limit_bps: 12000000, shaped_bps: 12000000,
				measured_bps: { '1m': 11800000, '5m': 10450000, '10m': 9870000 }, restarts: 1
			},
			{
				session_id: 'b2', user: 'alice', client: 'Jellyfin Web', device: 'Firefox',
				remote_ip: '192.168.1.50', external: false, play_method: 'DirectPlay',
				title: 'Sintel', paused: true, source_bps: 5400000,
				limit_bps: 0, shaped_bps: 0,
				measured_bps: { '1m': 5300000, '5m': 5200000, '10m': 5100000 }, restarts: 0
			}
		],
		wol: { enabled: true, last_wake: now - 600, last_reason: 'connect', wakes: 3, server_awake: true },
		shaping: { enabled: true, active: true, error: null },
		errors: [ 'SQM is not configured: the upload capacity comes from upload_mbps.' ]
	};
	return Object.assign(st, over || {});
}

module.exports = { STATUS_PATH, CONFIG, CONFIG_SPLIT, SECRETS, SECRET_VALUES, SHIPPED, SHIPPED_SECRETS, status };
