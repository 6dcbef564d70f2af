'use strict';
'require view';
'require form';
'require rpc';
'require uci';

/*
 * Settings for /etc/config/jellydemon. Every default and range here mirrors the daemon's own
 * validation (DESIGN.md section 4): LuCI removes an option that equals its default, so an absent
 * option must mean the same value to both sides.
 */

const NAMED_SECTIONS = [
	[ 'main', 'jellydemon' ],
	[ 'jellyfin', 'jellyfin' ],
	[ 'network', 'network' ],
	[ 'bandwidth', 'bandwidth' ],
	[ 'shaping', 'shaping' ],
	[ 'wol', 'wol' ],
	[ 'publish', 'publish' ]
];

/*
 * jellyfin.api_key, wol.password and publish.webhook_url live in their own file: rpcd grants
 * uci access per file, so a role that may read these settings must not read that one. This page
 * writes it and never reads it (the grant is write-only).
 */
const SECRETS = 'jellydemon_secrets';
/* Programs the idle command may run: root puts them there; this page cannot write files. */
const HOOKS_DIR = '/etc/jellydemon/hooks/';

const callUciSet = rpc.declare({
	object: 'uci',
	method: 'set',
	params: [ 'config', 'section', 'values' ],
	reject: true
});

const DEFAULT_INTERNAL = [ 'lan' ];

function sameValue(a, b) {
	if (Array.isArray(a) || Array.isArray(b)) {
		const x = L.toArray(a), y = L.toArray(b);
		return x.length == y.length && x.every(function(v, i) { return v === y[i]; });
	}
	if (a == null || b == null)
		return a == b;
	const na = Number(a), nb = Number(b);
	if (String(a).trim() !== '' && String(b).trim() !== '' && isFinite(na) && isFinite(nb))
		return na === nb;
	return String(a) === String(b);
}

/*
 * Writes nothing for a value equal to the default: the option is removed instead, so the file
 * stays short and a future change of a default reaches users who never touched the setting.
 */
function dropDefault(o) {
	o.write = function(section_id, value) {
		if (this.default != null && sameValue(value, this.default))
			return this.remove(section_id);
		return form.AbstractValue.prototype.write.call(this, section_id, value);
	};
	return o;
}

/* What the daemon accepts: http(s)://host[:port][/path]; no user part, no fragment. Jellyfin
 * itself only over http (the daemon has no TLS; the same hint as `jellydemon check`). */
function urlChecker(allowQuery, allowHttps) {
	return function(section_id, value) {
		if (value == null || value === '')
			return true;
		if (!allowHttps && /^https:\/\//i.test(String(value)))
			return _('https is not supported for Jellyfin, jellydemon has no TLS: use the server\'s LAN http:// address, e.g. http://192.168.1.2:8096; Jellyfin serves http on port 8096 also when https is enabled');
		const m = String(value).match(/^https?:\/\/(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9._-]+)(?::(\d{1,5}))?(\/[^\s?#]*)?(\?[^\s#]*)?$/);
		if (!m || (m[2] != null && (+m[2] < 1 || +m[2] > 65535)) || (m[4] != null && !allowQuery))
			return _('Expecting: %s').format(allowHttps
				? _('an http:// or https:// URL such as https://ntfy.sh/mytopic')
				: _('an http:// URL such as http://192.168.1.2:8096'));
		return true;
	};
}

/* What the daemon accepts: absolute, without '.', '..' or empty parts. */
function cleanAbsPath(value) {
	return /^\//.test(value) && value.length > 1 &&
		value.slice(1).replace(/\/+$/, '').split('/').every(function(c) { return c !== '' && c != '.' && c != '..'; });
}

function validateDir(section_id, value) {
	if (value == null || value === '')
		return true;
	if (!cleanAbsPath(value) || (value + '/').indexOf(HOOKS_DIR) == 0)
		return _('Expecting: %s').format(_('an absolute path without "." or ".." parts, outside %s').format(HOOKS_DIR));
	return true;
}

function validatePromFile(section_id, value) {
	if (value == null || value === '')
		return true;
	const name = String(value).slice(String(value).lastIndexOf('/') + 1);
	if (!cleanAbsPath(value) || name.length <= 5 || name.slice(-5) != '.prom')
		return _('Expecting: %s').format(_('an absolute file path ending in .prom'));
	return true;
}

/* The program is the first word (quotes group words, as the daemon splits them). */
function validateIdleCommand(section_id, value) {
	if (value == null || value === '')
		return true;
	const v = String(value).trim();
	const q = v.charAt(0);
	const prog = (q == '"' || q == '\'') ? v.slice(1, Math.max(v.indexOf(q, 1), 1)) : v.split(/\s+/)[0];
	if (prog.indexOf(HOOKS_DIR) != 0 || prog.length == HOOKS_DIR.length || !cleanAbsPath(prog) ||
		prog.charAt(prog.length - 1) == '/')
		return _('Expecting: %s').format(_('a program in %s and its arguments').format(HOOKS_DIR));
	return true;
}

/*
 * A write-only field for a secret: empty when shown, a value typed is written to the secrets
 * file (and a copy left in the readable file from older versions is removed); left empty, the
 * stored secret stays as it is.
 */
function addSecret(s, name, title, help) {
	const o = s.option(form.Value, name, title, help);
	o.password = true;
	o.placeholder = _('unchanged');
	o.load = function() { return null; };
	o.write = function(section_id, value) {
		const values = {};
		values[name] = value;
		return callUciSet(SECRETS, section_id, values).then(L.bind(function() {
			this.map.data.unset('jellydemon', section_id, name);
		}, this));
	};
	o.remove = function() {};
	return o;
}

/* The daemon wants decimals strictly above zero where LuCI's ufloat would allow 0. */
function validatePositive(section_id, value) {
	if (value == null || value === '' || +value > 0)
		return true;
	return _('Expecting: %s').format(_('a number above 0'));
}

function minNotAboveMax(maxOption, message) {
	return function(section_id, value) {
		const pos = validatePositive(section_id, value);
		if (pos !== true)
			return pos;
		const max = this.section.formvalue(section_id, maxOption);
		if (value !== '' && max != null && max !== '' && +value > +max)
			return _('Expecting: %s').format(message);
		return true;
	};
}

function addValue(s, cls, name, title, help, dflt, datatype) {
	const o = s.option(cls, name, title, help);
	if (dflt != null)
		o.default = dflt;
	if (datatype)
		o.datatype = datatype;
	return dropDefault(o);
}

return view.extend({
	load: function() {
		return uci.load('jellydemon').then(function() {
			/* A hand-edited file may lack a section; create it so its settings can be edited. */
			NAMED_SECTIONS.forEach(function(ns) {
				if (uci.get('jellydemon', ns[0]) == null)
					uci.add('jellydemon', ns[1], ns[0]);
			});
		});
	},

	render: function() {
		let s, o;

		const m = new form.Map('jellydemon', _('JellyDemon'),
			_('Shares your upload between remote Jellyfin viewers and the rest of the household: ' +
			  'it measures the uplink, gives each remote viewer a fair share, sets that share as the ' +
			  'viewer\'s Jellyfin limit and holds it on the router. Changes take effect on "Save & Apply".'));
		m.tabbed = true;

		/* ---- General ---- */
		s = m.section(form.NamedSection, 'main', 'jellydemon', _('General'));
		s.addremove = false;

		o = s.option(form.Flag, 'enabled', _('Enable'),
			_('Start jellydemon at boot and keep it running. While disabled the service refuses to start.'));
		o.default = '0';
		o.rmempty = false;

		addValue(s, form.Value, 'interval', _('Interval (s)'),
			_('How often jellydemon measures and re-divides the upload, in seconds (1-300). Shorter reacts faster to new viewers; longer uses less CPU.'),
			'5', 'and(uinteger,range(1,300))');

		addValue(s, form.Flag, 'dry_run', _('Dry run'),
			_('Measure and decide, log what would be done, but change nothing in Jellyfin or on the router (limits jellydemon had set before are put back). Useful to try settings safely.'),
			'0');

		o = addValue(s, form.ListValue, 'log_level', _('Log level'),
			_('How much jellydemon writes to the system log (see Status > System Log). Use "debug" only while investigating a problem.'),
			'info');
		o.value('error', _('Errors only'));
		o.value('warn', _('Warnings'));
		o.value('info', _('Information'));
		o.value('debug', _('Debug'));

		o = addValue(s, form.Value, 'state_dir', _('State directory'),
			_('Persistent place (on flash) where the users\' original Jellyfin limits are backed up so they can be restored. Written only when a backup changes.'),
			'/etc/jellydemon');
		o.validate = validateDir;

		o = addValue(s, form.Value, 'run_dir', _('Runtime directory'),
			_('Temporary place (RAM) for the live status file. Leave the default: this status page may read only /var/run/jellydemon.'),
			'/var/run/jellydemon');
		o.validate = validateDir;

		/* ---- Jellyfin ---- */
		s = m.section(form.NamedSection, 'jellyfin', 'jellyfin', _('Jellyfin'));
		s.addremove = false;

		o = addValue(s, form.Value, 'url', _('Server URL'),
			_('Address of your Jellyfin server as seen from the router, e.g. http://192.168.1.2:8096. Use the server\'s LAN address over http (https is not supported here): it is also where the media traffic is recognised.'));
		o.placeholder = 'http://192.168.1.2:8096';
		o.validate = urlChecker(false, false);

		o = addSecret(s, 'api_key', _('API key'),
			_('Create one in Jellyfin under Dashboard > API Keys. Stored apart from these settings and never shown again, not even here: leave the field empty to keep the stored key, type a new one to replace it.'));
		o.validate = function(section_id, value) {
			if (/^[\x21-\x7e]*$/.test(value))
				return true;
			return _('Expecting: %s').format(_('printable characters without spaces'));
		};

		o = addValue(s, form.Value, 'server_ip', _('Server LAN address'),
			_('The LAN address the media traffic comes from. Leave empty to use the host of the server URL; set it when the URL uses a host name.'),
			null, 'ipaddr("nomask")');
		o.placeholder = _('host of the server URL');

		o = addValue(s, form.Value, 'server_ip6', _('Server IPv6 address'),
			_('The server\'s global IPv6 address (its stable one, see "ip -6 addr show scope global" on the server). Remote viewers on IPv6 reach it directly, without port forwarding; their streams are shaped and counted on the router only when this is set. Leave empty to use the server LAN address when that is IPv6, or else the address the router sees the server use (when it has exactly one; with several, the status page asks you to set it). Other devices\' traffic on the same port is never touched.'),
			null, 'ip6addr("nomask")');
		o.placeholder = _('learned');

		addValue(s, form.DynamicList, 'port', _('Streaming ports'),
			_('TCP ports Jellyfin streams from: 8096 (http) and, if you use it, 8920 (https). Traffic from other ports is not counted as Jellyfin\'s.'),
			[ '8096' ], 'and(uinteger,range(1,65535))');

		addValue(s, form.Value, 'timeout', _('Request timeout (s)'),
			_('How long to wait for Jellyfin to answer one request, in seconds (1-60). Raise it for a slow or sleepy server.'),
			'5', 'and(uinteger,range(1,60))');

		addValue(s, form.Flag, 'manage_limits', _('Set viewers\' limits'),
			_('Set each remote viewer\'s "Internet streaming bitrate limit" in Jellyfin to their share, so Jellyfin transcodes to fit. The original limits are restored when jellydemon stops, or at once when this is turned off.'),
			'1');

		addValue(s, form.Flag, 'restart_playback', _('Restart playback for a new limit'),
			_('A Jellyfin limit applies only when a stream starts. Allow jellydemon to restart a stream at the same position when it must change quality. Paused streams are never restarted.'),
			'1');

		addValue(s, form.Value, 'restart_min_interval', _('Minimum time between restarts (s)'),
			_('A stream is restarted at most once in this many seconds (0-86400), so viewers are not interrupted often.'),
			'600', 'and(uinteger,range(0,86400))');

		addValue(s, form.Flag, 'notify_viewer', _('Tell the viewer'),
			_('Show a short message on the viewer\'s screen before their stream is restarted.'),
			'1');

		/* ---- Network ---- */
		s = m.section(form.NamedSection, 'network', 'network', _('Network'));
		s.addremove = false;

		addValue(s, form.Value, 'wan_interface', _('WAN interface'),
			_('The logical network interface of your internet connection (as in Network > Interfaces), usually "wan".'),
			'wan', 'uciname');

		o = addValue(s, form.Value, 'wan_device', _('WAN device'),
			_('Only if the interface cannot be resolved: the Linux device of the uplink, e.g. eth0 or pppoe-wan. When set it wins over the WAN interface.'),
			null, 'netdevname');
		o.placeholder = _('from the WAN interface');

		addValue(s, form.Value, 'lan_interface', _('LAN interface'),
			_('The logical network interface your Jellyfin server is on (as in Network > Interfaces), usually "lan". Its device (e.g. the bridge br-lan) is found automatically and followed when it changes; remote viewers\' streams are shaped there.'),
			'lan', 'uciname');

		o = addValue(s, form.Value, 'lan_device', _('LAN device'),
			_('Only if the interface cannot be resolved: the Linux device your Jellyfin server is connected to, e.g. br-lan. When set it wins over the LAN interface.'),
			null, 'netdevname');
		o.placeholder = _('from the LAN interface');

		addValue(s, form.DynamicList, 'internal', _('Local networks'),
			_('Viewers in these networks are local: they are never limited, restarted or shaped. An interface name (e.g. "lan", "guest") means all of its IPv4 subnets and IPv6 prefixes, including the prefix your provider delegates, followed as they change; you can also list networks (e.g. a VPN range 10.8.0.0/24) or single addresses. When the interfaces report nothing, the private ranges 192.168.0.0/16, 10.0.0.0/8, 172.16.0.0/12 and fc00::/7 are used.'),
			DEFAULT_INTERNAL.slice(), 'or(cidr,ipaddr("nomask"),uciname)');

		/* ---- Bandwidth ---- */
		s = m.section(form.NamedSection, 'bandwidth', 'bandwidth', _('Bandwidth'));
		s.addremove = false;

		o = addValue(s, form.Value, 'upload_mbps', _('Upload capacity (Mbit/s)'),
			_('Your real uplink speed in Mbit/s (decimals allowed). Leave empty to take the upload speed of SQM on the WAN device; with neither, jellydemon only watches and limits nothing.'),
			null, 'and(ufloat,max(100000))');
		o.placeholder = _('from SQM');
		o.validate = validatePositive;

		addValue(s, form.Value, 'reserve_mbps', _('Household reserve (Mbit/s)'),
			_('Upload always kept free for everything that is not Jellyfin, so video calls and games stay smooth while friends stream.'),
			'2', 'and(ufloat,max(100000))');

		addValue(s, form.Value, 'target_pct', _('Target use (%)'),
			_('Share of the capacity all traffic together may use (1-100). Staying a little below 100% keeps latency low.'),
			'90', 'range(1,100)');

		o = addValue(s, form.ListValue, 'algorithm', _('Sharing'),
			_('How the spare upload is divided among remote viewers.'),
			'equal');
		o.value('equal', _('Equal: the same share for everyone'));
		o.value('priority', _('Priority: weighted by each viewer\'s priority'));
		o.value('demand', _('Demand: nobody gets more than their video needs'));

		o = addValue(s, form.Value, 'min_stream_mbps', _('Minimum per stream (Mbit/s)'),
			_('No remote stream is limited below this, even on a busy uplink.'),
			'1', 'and(ufloat,max(10000))');
		o.validate = minNotAboveMax('max_stream_mbps', _('a value not above the maximum per stream'));

		o = addValue(s, form.Value, 'max_stream_mbps', _('Maximum per stream (Mbit/s)'),
			_('No remote stream gets more than this, even on an idle uplink.'),
			'20', 'and(ufloat,max(10000))');
		o.validate = validatePositive;

		/* ---- Viewers ---- */
		s = m.section(form.GridSection, 'user', _('Viewers'),
			_('Optional settings per Jellyfin user; users not listed here get the defaults. Priority is a weight used by the "Priority" sharing (2 gets twice the share of 1). Min and Max override the per-stream limits of the Bandwidth tab. "Never limit" leaves that user\'s streams alone.'));
		s.anonymous = true;
		s.addremove = true;
		s.nodescriptions = true;

		o = s.option(form.Value, 'name', _('Jellyfin user'),
			_('The user name as it appears in Jellyfin (case does not matter).'));
		o.rmempty = false;
		o.editable = true;
		/*
		 * The daemon refuses two sections for one user; Jellyfin names ignore case. The check
		 * goes through the table's option, so it also works in the "Add" dialog's copy.
		 */
		o.gridOption = o;
		o.validate = function(section_id, value) {
			const grid = this.gridOption;
			const name = String(value).toLowerCase();
			const clash = grid.section.cfgsections().some(function(sid) {
				if (sid == section_id)
					return false;
				const other = grid.getUIElement(sid) ? grid.formvalue(sid) : grid.cfgvalue(sid);
				return String(other != null ? other : '').toLowerCase() == name;
			});
			return clash ? _('Expecting: %s').format(_('a user name not listed twice')) : true;
		};

		o = addValue(s, form.Value, 'priority', _('Priority'),
			_('Weight with "Priority" sharing: 2 gets twice the share of 1.'), '1', 'and(ufloat,max(1000))');
		o.validate = validatePositive;
		o.editable = true;

		o = addValue(s, form.Value, 'min_mbps', _('Min Mbit/s'),
			_('This user\'s streams are never limited below this. Empty: the minimum per stream.'), null, 'and(ufloat,max(10000))');
		o.placeholder = _('default');
		o.validate = minNotAboveMax('max_mbps', _('a value not above the user\'s maximum'));
		o.editable = true;

		o = addValue(s, form.Value, 'max_mbps', _('Max Mbit/s'),
			_('This user\'s streams never get more than this. Empty: the maximum per stream.'), null, 'and(ufloat,max(10000))');
		o.placeholder = _('default');
		o.validate = validatePositive;
		o.editable = true;

		o = addValue(s, form.Flag, 'exempt', _('Never limit'),
			_('Leave this user\'s streams alone: no Jellyfin limit, no shaping.'), '0');
		o.editable = true;

		/* ---- Shaping ---- */
		s = m.section(form.NamedSection, 'shaping', 'shaping', _('Shaping'));
		s.addremove = false;

		addValue(s, form.Flag, 'enabled', _('Shape on the router'),
			_('Hold each remote viewer to their share on the router too (one traffic class per viewer), which smooths bursts and catches apps that ignore Jellyfin\'s limit. Also gives exact per-viewer figures.'),
			'1');

		addValue(s, form.Value, 'burst_pct', _('Burst allowance (%)'),
			_('How far above their share a viewer may burst while the uplink has room, in percent of the share (100-1000).'),
			'115', 'and(uinteger,range(100,1000))');

		/* ---- Wake-on-LAN ---- */
		s = m.section(form.NamedSection, 'wol', 'wol', _('Wake-on-LAN'));
		s.addremove = false;

		addValue(s, form.Flag, 'enabled', _('Wake the server'),
			_('Send a Wake-on-LAN packet to the media server when someone wants to watch, so it can sleep the rest of the time.'),
			'0');

		o = addValue(s, form.Value, 'mac', _('Server MAC address'),
			_('Hardware address of the media server\'s network card, e.g. 00:11:22:33:44:55 (see Status > Overview > DHCP leases).'),
			null, 'macaddr');
		o.validate = function(section_id, value) {
			if (/^(00:){5}00$/.test(value))
				return _('Expecting: %s').format(_('valid MAC address'));
			if (value === '' && this.section.formvalue(section_id, 'enabled') == '1')
				return _('Expecting: %s').format(_('the server\'s MAC address (needed to wake it)'));
			return true;
		};

		o = addSecret(s, 'password', _('SecureOn password'),
			_('Only for network cards that require one: 6 bytes written like a MAC address, or 4 bytes like an IPv4 address. Stored apart from these settings and never shown again: leave the field empty to keep what is stored.'));
		o.datatype = 'or(macaddr(0),macaddr(1),ip4addr("nomask"))';

		addValue(s, form.Value, 'interface', _('Send on device'),
			_('The device the server is reached through, usually br-lan.'),
			'br-lan', 'netdevname');

		o = addValue(s, form.Value, 'broadcast', _('Broadcast address'),
			_('Where the UDP wake packet goes. Leave empty for the broadcast address of the device above.'),
			null, 'ip4addr("nomask")');
		o.placeholder = _('automatic');

		addValue(s, form.Flag, 'on_connect', _('Wake on connection'),
			_('Wake as soon as someone outside connects to Jellyfin, before they press play: the packet leaves within a second of their first connection attempt, also while the server sleeps.'),
			'1');

		addValue(s, form.Flag, 'on_session', _('Wake while playing'),
			_('Keep sending wake packets while streams are playing.'),
			'1');

		addValue(s, form.Value, 'cooldown', _('Pause between packets (s)'),
			_('Send at most one wake packet in this many seconds (0-86400).'),
			'60', 'and(uinteger,range(0,86400))');

		addValue(s, form.Value, 'idle_minutes', _('Idle after (min)'),
			_('After this many minutes without streams or connections, run the idle command once. 0 never runs it.'),
			'0', 'and(uinteger,range(0,525600))');

		o = addValue(s, form.Value, 'idle_command', _('Idle command'),
			_('A program in /etc/jellydemon/hooks/ and its arguments, run when idle, e.g. /etc/jellydemon/hooks/poweroff-nas. Only root can put programs there (e.g. a script running ssh -i /etc/dropbear/id nas poweroff); this page can only choose one. Run directly, without a shell: quotes group words.'),
			null);
		o.placeholder = _('none');
		o.validate = validateIdleCommand;

		/* ---- Publishing ---- */
		s = m.section(form.NamedSection, 'publish', 'publish', _('Publishing'));
		s.addremove = false;

		o = addValue(s, form.Value, 'prometheus_file', _('Prometheus file'),
			_('Write live figures in Prometheus text format to this file each interval, for node-exporter\'s textfile collector, e.g. /var/prometheus/jellydemon.prom. Empty: off.'));
		o.placeholder = _('off');
		o.validate = validatePromFile;

		o = addSecret(s, 'webhook_url', _('Webhook URL'),
			_('POST a short JSON message (with a Discord-compatible "content" field) to this address on events such as a wake or a restart. https:// addresses are posted by the router\'s own TLS client: curl if installed (the address stays hidden), else uclient-fetch with a libustream TLS library and ca-bundle (the address shows in the process list while an event is posted). Its path usually holds a token, so it is stored apart from these settings and never shown again: leave the field empty to keep what is stored.'));
		o.validate = urlChecker(true, true);

		return m.render();
	}
});
