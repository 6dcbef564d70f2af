'use strict';
/* Test data: a freshly installed /etc/config/jellydemon and a status.json as the daemon writes it. */

const STATUS_PATH = '/var/run/jellydemon/status.json';

/* Only what an install ships plus the two settings a user must give; everything else absent. */
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

/* The file as the package installs it: every option written out at its default. */
const SHIPPED = `
config jellydemon 'main'
	option enabled '0'
	option interval '5'
	option dry_run '0'
	option log_level 'info'
	option state_dir '/etc/jellydemon'
	option run_dir '/var/run/jellydemon'

config jellyfin 'jellyfin'
	option url 'http://192.168.1.2:8096'
	option api_key ''
	option server_ip ''
	list port '8096'
	option timeout '5'
	option manage_limits '1'
	option restart_playback '1'
	option restart_min_interval '600'
	option notify_viewer '1'

config network 'network'
	option wan_interface 'wan'
	option wan_device ''
	option lan_device 'br-lan'
	list internal '192.168.0.0/16'
	list internal '10.0.0.0/8'
	list internal '172.16.0.0/12'
	list internal 'fc00::/7'

config bandwidth 'bandwidth'
	option upload_mbps ''
	option reserve_mbps '2'
	option target_pct '90'
	option algorithm 'equal'
	option min_stream_mbps '1'
	option max_stream_mbps '20'

config shaping 'shaping'
	option enabled '1'
	option burst_pct '115'

config wol 'wol'
	option enabled '0'
	option mac ''
	option password ''
	option interface 'br-lan'
	option broadcast ''
	option on_connect '1'
	option on_session '1'
	option cooldown '60'
	option idle_minutes '0'
	option idle_command ''

config publish 'publish'
	option prometheus_file ''
	option webhook_url ''
`;

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

module.exports = { STATUS_PATH, CONFIG, SHIPPED, status };
