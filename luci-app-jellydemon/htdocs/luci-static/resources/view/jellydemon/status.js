'use strict';
'require view';
'require dom';
'require poll';
'require fs';
'require rpc';
'require uci';
'require ui';

/*
 * Live status of jellydemon, read from the status file the daemon replaces every tick
 * (DESIGN.md section 6). Nothing here talks to the daemon directly: if the file is missing or
 * stops changing, the daemon is not running.
 */

const DEFAULT_RUN_DIR = '/var/run/jellydemon';
const HISTORY = 60;
const SVGNS = 'http://www.w3.org/2000/svg';

/* The ACL grants exactly these actions of this script (file exec), not rc init of every service. */
const INIT = '/etc/init.d/jellydemon';

function initAction(action) {
	return fs.exec(INIT, [ action ]).then(function(res) {
		if (res && res.code)
			throw new Error(_('%s %s exited with code %d').format(INIT, action, res.code));
	});
}

/* Whether this login may change the service (the ACL's write part), as LuCI forms ask. */
const callSessionAccess = rpc.declare({
	object: 'session',
	method: 'access',
	params: [ 'scope', 'object', 'function' ],
	expect: { 'access': false }
});

const SERIES = [
	{ key: 'capacity', label: _('Capacity'), color: '#6b7280', dash: '6 4', fill: false },
	{ key: 'budget', label: _('Budget for viewers'), color: '#d97706', dash: '3 3', fill: false },
	{ key: 'tx', label: _('Upload used'), color: '#2563eb', dash: null, fill: true },
	{ key: 'jellyfin', label: _('Jellyfin'), color: '#7c3aed', dash: null, fill: true },
	{ key: 'other', label: _('Other traffic'), color: '#059669', dash: null, fill: false }
];

const CSS = [
	'.jd-grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(200px,1fr));gap:.75em;margin:.5em 0 1em}',
	'.jd-card{border:1px solid rgba(128,128,128,.3);border-radius:6px;padding:.6em .8em;min-width:0}',
	'.jd-card .jd-k{font-size:85%;opacity:.75;text-transform:uppercase;letter-spacing:.04em}',
	'.jd-card .jd-v{font-size:130%;font-weight:600;margin:.15em 0;overflow-wrap:anywhere}',
	'.jd-card .jd-s{font-size:90%;opacity:.85;overflow-wrap:anywhere}',
	'.jd-ok{color:#059669}.jd-bad{color:#dc2626}.jd-warn{color:#d97706}',
	'.jd-badge{display:inline-block;border-radius:3px;padding:0 .45em;font-size:85%;font-weight:600;color:#fff;white-space:nowrap}',
	'.jd-ext{background:#7c3aed}.jd-loc{background:#6b7280}.jd-paused{background:#d97706}',
	'.jd-chart{width:100%;height:auto;display:block}',
	'.jd-legend{display:flex;flex-wrap:wrap;gap:.4em 1.2em;margin:.4em 0 0;font-size:90%}',
	'.jd-legend i{display:inline-block;width:1.6em;height:.5em;margin-right:.4em;vertical-align:middle;border-radius:2px}',
	'.jd-num{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}',
	'.jd-title{max-width:22em;overflow-wrap:anywhere}',
	'.jd-stopped{display:flex;flex-wrap:wrap;align-items:center;gap:.8em}',
	'.jd-stopped p{margin:0;flex:1 1 20em}'
].join('\n');

function S(tag, attrs, children) {
	const el = document.createElementNS(SVGNS, tag);
	for (const k in attrs)
		if (attrs[k] != null)
			el.setAttribute(k, attrs[k]);
	(children || []).forEach(function(c) {
		el.appendChild(typeof c == 'string' ? document.createTextNode(c) : c);
	});
	return el;
}

function num(v) {
	return (typeof v == 'number' && isFinite(v)) ? v : null;
}

/* Mbit/s with two decimals, or a dash for a figure the daemon does not know. */
function mbps(bps) {
	const v = num(bps);
	return v == null ? '–' : '%.2f'.format(v / 1e6);
}

function mbpsUnit(bps) {
	const v = num(bps);
	return v == null ? '–' : _('%.2f Mbit/s').format(v / 1e6);
}

function ago(seconds) {
	seconds = Math.max(0, Math.round(seconds));
	if (seconds < 90)
		return _('%d s ago').format(seconds);
	if (seconds < 5400)
		return _('%d min ago').format(Math.round(seconds / 60));
	if (seconds < 172800)
		return _('%d h ago').format(Math.round(seconds / 3600));
	return _('%d days ago').format(Math.round(seconds / 86400));
}

function shortTime(ts, now) {
	const d = new Date(ts * 1000);
	if (Math.abs(now - ts) < 86400 && d.getDate() == new Date(now * 1000).getDate())
		return d.toLocaleTimeString();
	return d.toLocaleDateString() + ' ' + d.toLocaleTimeString();
}

function wakeReason(r) {
	switch (r) {
	case 'session': return _('a stream was playing');
	case 'connect': return _('someone connected to Jellyfin');
	case 'manual': return _('sent by hand (jellydemon wake)');
	default: return r ? String(r) : _('unknown reason');
	}
}

/*
 * Whether the daemon is alive. The browser's clock may differ from the router's, so once the
 * page has seen `updated` change it trusts only its own observation of how long the value has
 * stood still; before that it compares with its clock.
 */
function isStale(st, seen, now) {
	const limit = 3 * Math.max(1, num(st.interval) || 5);
	const still = now - seen.since;
	if (seen.changed)
		return still > limit;
	return (now - (num(st.updated) || 0) > limit) || still > limit;
}

function niceStep(max) {
	const raw = max / 5, mag = Math.pow(10, Math.floor(Math.log10(raw)));
	const n = raw / mag;
	return (n <= 1 ? 1 : n <= 2 ? 2 : n <= 2.5 ? 2.5 : n <= 5 ? 5 : 10) * mag;
}

function renderChart(history) {
	const W = 760, H = 210, L0 = 40, R0 = 10, T0 = 10, B0 = 24;
	const pw = W - L0 - R0, ph = H - T0 - B0;
	let max = 1;

	history.forEach(function(p) {
		SERIES.forEach(function(s) {
			if (p[s.key] != null && p[s.key] > max)
				max = p[s.key];
		});
	});

	const step = niceStep(max * 1.1);
	const top = Math.max(step, Math.ceil(max * 1.1 / step) * step);
	const x = function(i) { return L0 + pw * (HISTORY - history.length + i) / (HISTORY - 1); };
	const y = function(v) { return T0 + ph - ph * v / top; };
	const nodes = [];

	for (let v = 0; v <= top + 1e-9; v += step) {
		nodes.push(S('line', { x1: L0, x2: W - R0, y1: y(v), y2: y(v), stroke: 'currentColor', 'stroke-opacity': v ? 0.12 : 0.35 }));
		nodes.push(S('text', { x: L0 - 6, y: y(v) + 4, 'text-anchor': 'end', 'font-size': 11, fill: 'currentColor', 'fill-opacity': 0.7 },
			[ (top >= 10 ? '%d' : '%.1f').format(v) ]));
	}

	nodes.push(S('text', { x: L0, y: H - 6, 'font-size': 11, fill: 'currentColor', 'fill-opacity': 0.7 },
		[ _('last %d samples').format(HISTORY) ]));
	nodes.push(S('text', { x: W - R0, y: H - 6, 'text-anchor': 'end', 'font-size': 11, fill: 'currentColor', 'fill-opacity': 0.7 }, [ _('now') ]));

	SERIES.forEach(function(s) {
		const pts = [];
		history.forEach(function(p, i) {
			if (p[s.key] != null)
				pts.push([ x(i), y(p[s.key]) ]);
		});
		if (!pts.length)
			return;
		if (pts.length == 1)
			pts.unshift([ pts[0][0] - 2, pts[0][1] ]);
		const line = pts.map(function(p) { return p[0].toFixed(1) + ',' + p[1].toFixed(1); }).join(' ');
		if (s.fill)
			nodes.push(S('polygon', {
				points: '%s,%s %s %s,%s'.format(pts[0][0].toFixed(1), y(0), line, pts[pts.length - 1][0].toFixed(1), y(0)),
				fill: s.color, 'fill-opacity': 0.12, stroke: 'none'
			}));
		nodes.push(S('polyline', {
			'class': 'jd-series-' + s.key, points: line, fill: 'none', stroke: s.color,
			'stroke-width': s.dash ? 1.5 : 2, 'stroke-dasharray': s.dash, 'stroke-linejoin': 'round'
		}));
	});

	return S('svg', { 'class': 'jd-chart', viewBox: '0 0 %d %d'.format(W, H), role: 'img',
		'aria-label': _('Upload over the last %d samples').format(history.length) }, nodes);
}

function renderLegend(last) {
	return E('div', { 'class': 'jd-legend' }, SERIES.map(function(s) {
		const style = s.dash
			? 'background:repeating-linear-gradient(90deg,%s 0 6px,transparent 6px 9px)'.format(s.color)
			: 'background:%s'.format(s.color);
		return E('span', { 'data-series': s.key }, [
			E('i', { 'style': style }), s.label + ': ',
			E('strong', {}, [ last ? mbpsUnit(last[s.key]) : '–' ])
		]);
	}));
}

function card(key, value, sub, cls) {
	return E('div', { 'class': 'jd-card', 'data-card': key }, [
		E('div', { 'class': 'jd-k' }, [ cardTitle(key) ]),
		E('div', { 'class': 'jd-v ' + (cls || '') }, [ value ]),
		E('div', { 'class': 'jd-s' }, [ sub || '' ])
	]);
}

function cardTitle(key) {
	switch (key) {
	case 'service': return _('Service');
	case 'jellyfin': return _('Jellyfin');
	case 'wan': return _('Uplink');
	case 'shaping': return _('Router shaping');
	case 'wake': return _('Last wake');
	default: return key;
	}
}

function renderCards(st, now) {
	const jf = st.jellyfin || {}, wan = st.wan || {}, wol = st.wol || {}, sh = st.shaping || {};
	const cards = [];

	cards.push(card('service', st.dry_run ? _('Dry run') : _('Running'),
		_('updated %s, every %d s').format(ago(now - (num(st.updated) || 0)), num(st.interval) || 0),
		st.dry_run ? 'jd-warn' : 'jd-ok'));

	const asleep = wol.server_state === 'asleep' || wol.server_state === 'waking';
	if (jf.reachable)
		cards.push(card('jellyfin', _('Reachable'),
			jf.server_version ? _('version %s').format(jf.server_version) : _('version unknown'), 'jd-ok'));
	else if (asleep)
		/* Sleeping is the server's normal state, not a fault: limits are kept meanwhile. */
		cards.push(card('jellyfin', _('Server asleep'), _('limits kept until it answers'), 'jd-warn'));
	else
		cards.push(card('jellyfin', _('Unreachable'), jf.error || _('no answer'), 'jd-bad'));

	cards.push(card('wan', wan.capacity_bps != null ? mbpsUnit(wan.capacity_bps) : _('Capacity unknown'),
		wan.device ? _('device %s, budget %s').format(wan.device, mbpsUnit(st.budget_bps))
			: _('no WAN device found'),
		wan.capacity_bps != null ? '' : 'jd-bad'));

	/* Flow offloading takes established connections past the LAN ingress hook: the classes
	 * exist but see almost nothing. */
	const offload = (st.network || {}).flow_offloading;
	if (st.shaping != null && sh.enabled && (offload == 'software' || offload == 'hardware'))
		cards.push(card('shaping', _('Bypassed'),
			(offload == 'hardware' ? _('hardware flow offloading is on') : _('software flow offloading is on')) +
			': ' + _('established connections skip the router\'s per-viewer classes; Jellyfin limits still apply. Turn it off under Network > Firewall > Routing/NAT Offloading.'),
			'jd-bad'));
	else if (st.shaping != null)
		cards.push(card('shaping', !sh.enabled ? _('Off') : sh.active ? _('Active') : _('Not working'),
			sh.error || (sh.enabled ? _('one class per remote viewer') : _('Jellyfin limits only')),
			!sh.enabled ? '' : sh.active ? 'jd-ok' : 'jd-bad'));

	if (!wol.enabled)
		cards.push(card('wake', _('Off'), _('Wake-on-LAN is disabled')));
	else if (wol.server_state === 'asleep')
		cards.push(card('wake', _('Asleep'), num(wol.asleep_since) != null
			? _('since %s, not woken yet').format(shortTime(wol.asleep_since, now))
			: _('not woken yet'), 'jd-warn'));
	else if (wol.server_state === 'waking' && num(wol.last_wake) != null)
		cards.push(card('wake', _('Waking'), _('asleep – woken at %s (%s)').format(
			shortTime(wol.last_wake, now), wakeReason(wol.last_reason)), 'jd-warn'));
	else if (wol.server_state === 'booting')
		cards.push(card('wake', _('Waking'), _('the host answers, Jellyfin not yet'), 'jd-warn'));
	else if (num(wol.last_wake) == null)
		cards.push(card('wake', _('Never'), _('no packet sent since start')));
	else
		cards.push(card('wake', shortTime(wol.last_wake, now),
			'%s – %s%s%s'.format(ago(now - wol.last_wake), wakeReason(wol.last_reason),
				wol.server_awake === true ? ', ' + _('server awake') :
				wol.server_awake === false ? ', ' + _('server asleep') : '',
				num(wol.awake_after_s) != null && wol.server_awake === true
					? ' ' + _('(awake after %d s)').format(Math.round(wol.awake_after_s)) : '')));

	return E('div', { 'class': 'jd-grid' }, cards);
}

function renderStreams(streams) {
	const head = E('tr', { 'class': 'tr table-titles' }, [
		_('User'), _('Client'), _('Remote address'), _('Where'), _('Play method'), _('Title'),
		_('Limit'), _('1 min'), _('5 min'), _('10 min'), _('Restarts')
	].map(function(t, i) {
		return E('th', { 'class': 'th' + (i >= 6 ? ' jd-num' : '') }, [ t ]);
	}));

	const rows = streams.map(function(st) {
		const m = st.measured_bps || {};
		const limit = num(st.limit_bps) ? mbpsUnit(st.limit_bps) : _('none');
		return E('tr', { 'class': 'tr', 'data-session': String(st.session_id || '') }, [
			E('td', { 'class': 'td', 'data-col': 'user' }, [ String(st.user || '') ]),
			E('td', { 'class': 'td', 'data-col': 'client' }, [
				String(st.client || ''), st.device ? E('br') : '', st.device ? E('small', {}, [ String(st.device) ]) : ''
			]),
			E('td', { 'class': 'td', 'data-col': 'ip' }, [ String(st.remote_ip || '') ]),
			E('td', { 'class': 'td', 'data-col': 'where' }, [
				st.external ? E('span', { 'class': 'jd-badge jd-ext' }, [ _('external') ])
					: E('span', { 'class': 'jd-badge jd-loc' }, [ _('local') ])
			]),
			E('td', { 'class': 'td', 'data-col': 'method' }, [ String(st.play_method || '') ]),
			E('td', { 'class': 'td jd-title', 'data-col': 'title' }, [
				String(st.title || ''),
				st.paused ? ' ' : '', st.paused ? E('span', { 'class': 'jd-badge jd-paused' }, [ _('paused') ]) : ''
			]),
			E('td', { 'class': 'td jd-num', 'data-col': 'limit',
				'title': num(st.shaped_bps) ? _('router class rate %s').format(mbpsUnit(st.shaped_bps)) : null }, [ limit ]),
			E('td', { 'class': 'td jd-num', 'data-col': 'm1' }, [ mbps(m['1m']) ]),
			E('td', { 'class': 'td jd-num', 'data-col': 'm5' }, [ mbps(m['5m']) ]),
			E('td', { 'class': 'td jd-num', 'data-col': 'm10' }, [ mbps(m['10m']) ]),
			E('td', { 'class': 'td jd-num', 'data-col': 'restarts' }, [ String(num(st.restarts) || 0) ])
		]);
	});

	if (!rows.length)
		rows.push(E('tr', { 'class': 'tr placeholder' }, [
			E('td', { 'class': 'td', 'colspan': 11 }, [ E('em', {}, [ _('Nobody is watching right now.') ]) ])
		]));

	return E('table', { 'class': 'table', 'id': 'jd-streams' }, [ head ].concat(rows));
}

return view.extend({
	runDir: DEFAULT_RUN_DIR,
	history: null,
	seen: null,
	lastStatus: null,

	statusPath: function() {
		return this.runDir.replace(/\/+$/, '') + '/status.json';
	},

	readStatus: function() {
		return fs.read(this.statusPath()).then(function(text) {
			try {
				const st = JSON.parse(text);
				if (st == null || typeof st != 'object' || Array.isArray(st))
					return { error: 'garbled' };
				return { status: st };
			}
			catch (e) {
				return { error: 'garbled' };
			}
		}, function(err) {
			const name = err ? err.name : '';
			return { error: name == 'PermissionError' ? 'denied' : name == 'UnsupportedError' ? 'toolarge' : 'missing' };
		});
	},

	load: function() {
		return Promise.all([
			uci.load('jellydemon').catch(function() {}),
			callSessionAccess('uci', 'jellydemon', 'write')
		]).then(L.bind(function(res) {
			this.mayControl = res[1] === true;
			this.runDir = uci.get('jellydemon', 'main', 'run_dir') || DEFAULT_RUN_DIR;
			return this.readStatus();
		}, this));
	},

	enabledInConfig: function() {
		return uci.get('jellydemon', 'main', 'enabled') == '1';
	},

	/* Records one sample per daemon tick (not per page poll) and tracks how fresh the file is. */
	observe: function(res, now) {
		const st = res.status;
		if (!st)
			return;
		if (!this.seen || this.seen.updated !== st.updated) {
			this.seen = { updated: st.updated, since: now, changed: this.seen != null };
			const wan = st.wan || {};
			this.history.push({
				capacity: num(wan.capacity_bps) != null ? wan.capacity_bps / 1e6 : null,
				budget: num(st.budget_bps) != null ? st.budget_bps / 1e6 : null,
				tx: num(wan.tx_bps) != null ? wan.tx_bps / 1e6 : null,
				jellyfin: num(wan.jellyfin_bps) != null ? wan.jellyfin_bps / 1e6 : null,
				other: num(wan.other_bps) != null ? wan.other_bps / 1e6 : null,
				raw: { capacity: wan.capacity_bps, budget: st.budget_bps, tx: wan.tx_bps,
					jellyfin: wan.jellyfin_bps, other: wan.other_bps }
			});
			while (this.history.length > HISTORY)
				this.history.shift();
		}
	},

	handleStart: function(enable) {
		const steps = [];
		if (enable) {
			uci.set('jellydemon', 'main', 'enabled', '1');
			steps.push(function() { return uci.save(); });
			steps.push(function() { return uci.apply(10); });
			steps.push(function() { return initAction('enable'); });
		}
		steps.push(function() { return initAction('start'); });

		return steps.reduce(function(p, step) {
			return p.then(function(rv) {
				if (typeof rv == 'number' && rv != 0)
					throw new Error(_('the router answered with code %d').format(rv));
				return step();
			});
		}, Promise.resolve()).then(L.bind(function(rv) {
			if (typeof rv == 'number' && rv != 0)
				throw new Error(_('the router answered with code %d').format(rv));
			ui.addNotification(null, E('p', {}, [ _('jellydemon was asked to start. The page follows as soon as it reports.') ]), 'info');
			this.seen = null;
			return this.refresh();
		}, this)).catch(function(e) {
			ui.addNotification(null, E('p', {}, [ _('Could not start jellydemon: %s').format(e.message || e) ]), 'danger');
		});
	},

	renderStopped: function(res) {
		const disabled = !this.enabledInConfig();
		let msg;

		if (res.error == 'denied')
			msg = _('This page may read the status only from %s, but the runtime directory is set to %s. Restore the default runtime directory in the settings.')
				.format(DEFAULT_RUN_DIR, this.runDir);
		else if (disabled)
			msg = _('jellydemon is disabled, so it is not sharing your upload. Check the settings, then enable and start it.');
		else if (res.error == 'toolarge')
			msg = _('The status file is too large for this page to read (rpcd reads at most 256 KiB). Fewer streams or a newer jellydemon should fix it.');
		else if (res.error == 'garbled')
			msg = _('The status file cannot be read (it is not valid JSON). jellydemon may be crashing; see the system log.');
		else if (res.status)
			msg = _('jellydemon is not running: its status stopped changing %s. Start it again, or see the system log (logread -e jellydemon).')
				.format(ago(Date.now() / 1000 - (num(res.status.updated) || 0)));
		else
			msg = _('jellydemon is not running. Start it, or see the system log (logread -e jellydemon) if it stops again.');

		/* A login that may only look at the service gets no button it could not use. */
		const btn = (res.error == 'denied' || res.error == 'toolarge' || !this.mayControl) ? '' : E('button', {
			'class': 'btn cbi-button cbi-button-apply',
			'id': 'jd-start',
			'click': ui.createHandlerFn(this, 'handleStart', disabled)
		}, [ disabled ? _('Enable and start') : _('Start') ]);

		return E('div', { 'class': 'alert-message warning jd-stopped', 'id': 'jd-stopped' }, [
			E('p', {}, [ msg ]), btn
		]);
	},

	renderBody: function(res) {
		const now = Date.now() / 1000;
		const st = res.status;
		const stopped = !st || isStale(st, this.seen, now);
		const nodes = [];

		if (stopped)
			nodes.push(this.renderStopped(res));

		if (st && st.dry_run)
			nodes.push(E('div', { 'class': 'alert-message notice', 'id': 'jd-dryrun' }, [
				_('Dry run: jellydemon decides and logs, but changes nothing in Jellyfin or on the router.')
			]));

		// Older daemons have no `managing` field: say nothing rather than guess.
		if (st && st.managing === false)
			nodes.push(E('div', { 'class': 'alert-message warning', 'id': 'jd-unmanaged' }, [
				E('strong', {}, [ _('Not managing the uplink') ]), ' ',
				st.managing_reason || _('remote streams pass unlimited')
			]));

		const errors = (st && Array.isArray(st.errors)) ? st.errors : [];
		if (errors.length)
			nodes.push(E('div', { 'class': 'alert-message warning', 'id': 'jd-errors' }, [
				E('strong', {}, [ _('Needs attention') ]),
				E('ul', {}, errors.map(function(e) { return E('li', {}, [ String(e) ]); }))
			]));

		if (!st)
			return nodes;

		nodes.push(E('div', { 'class': 'cbi-section', 'id': 'jd-overview' }, [ renderCards(st, now) ]));

		const last = this.history.length ? this.history[this.history.length - 1].raw : null;
		nodes.push(E('div', { 'class': 'cbi-section', 'id': 'jd-upload' }, [
			E('h3', {}, [ _('Upload (Mbit/s)') ]),
			renderChart(this.history),
			renderLegend(last)
		]));

		const streams = Array.isArray(st.streams) ? st.streams : [];
		const external = streams.filter(function(s) { return s && s.external; }).length;
		nodes.push(E('div', { 'class': 'cbi-section' }, [
			E('h3', {}, [ _('Streams') ]),
			E('div', { 'class': 'cbi-section-descr' }, [
				_('%d playing, %d from outside. Limit is the viewer\'s current Jellyfin limit; 1/5/10 min are measured averages in Mbit/s.')
					.format(streams.length, external)
			]),
			renderStreams(streams.filter(function(s) { return s && typeof s == 'object'; }))
		]));

		return nodes;
	},

	refresh: function() {
		return this.readStatus().then(L.bind(function(res) {
			this.observe(res, Date.now() / 1000);
			this.lastStatus = res;
			dom.content(this.body, this.renderBody(res));
		}, this));
	},

	render: function(res) {
		this.history = [];
		this.seen = null;
		this.observe(res, Date.now() / 1000);
		this.lastStatus = res;
		this.body = E('div', { 'id': 'jd-body' }, this.renderBody(res));

		poll.add(L.bind(this.refresh, this));

		return E([], [
			E('style', {}, [ CSS ]),
			E('h2', {}, [ _('JellyDemon') ]),
			E('div', { 'class': 'cbi-map-descr' }, [
				_('How your upload is shared between remote Jellyfin viewers and the household, live.')
			]),
			this.body
		]);
	},

	handleSave: null,
	handleSaveApply: null,
	handleReset: null
});
