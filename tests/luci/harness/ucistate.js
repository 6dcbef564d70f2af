'use strict';
/*
 * In-memory UCI package for the mock rpcd: parses the subset of the /etc/config grammar the
 * fixtures use (config/option/list, quoted or bare values, comments), keeps committed and
 * staged (session) copies, and prints `uci show` lines for assertions.
 */

function tokenize(line) {
	const out = [];
	let i = 0;
	while (i < line.length) {
		const c = line[i];
		if (c == ' ' || c == '\t') { i++; continue; }
		if (c == '#') break;
		let tok = '';
		while (i < line.length && line[i] != ' ' && line[i] != '\t') {
			if (line[i] == "'") {
				const j = line.indexOf("'", i + 1);
				if (j < 0) throw new Error('unterminated quote: ' + line);
				tok += line.slice(i + 1, j);
				i = j + 1;
			}
			else if (line[i] == '"') {
				const j = line.indexOf('"', i + 1);
				if (j < 0) throw new Error('unterminated quote: ' + line);
				tok += line.slice(i + 1, j);
				i = j + 1;
			}
			else if (line[i] == '#') {
				i = line.length;
			}
			else {
				tok += line[i++];
			}
		}
		out.push(tok);
	}
	return out;
}

class UciPackage {
	constructor(name, text) {
		this.name = name;
		this.counter = 0;
		this.committed = this.parse(text || '');
		this.staged = null;
		this.changes = [];
	}

	parse(text) {
		const sections = [];
		let cur = null;
		text.split('\n').forEach((raw, n) => {
			const t = tokenize(raw);
			if (!t.length) return;
			switch (t[0]) {
			case 'config':
				cur = { type: t[1], name: t[2] || this.anonName(), anonymous: !t[2], opts: {} };
				sections.push(cur);
				break;
			case 'option':
				if (!cur) throw new Error(`line ${n + 1}: option before config`);
				if (t[2] != null && t[2] !== '') cur.opts[t[1]] = t[2];
				break;
			case 'list':
				if (!cur) throw new Error(`line ${n + 1}: list before config`);
				if (!Array.isArray(cur.opts[t[1]])) cur.opts[t[1]] = [];
				cur.opts[t[1]].push(t[2] != null ? t[2] : '');
				break;
			default:
				throw new Error(`line ${n + 1}: invalid command ${t[0]}`);
			}
		});
		return sections;
	}

	anonName() {
		return 'cfg' + (0x10 + this.counter++).toString(16).padStart(2, '0') + 'abcd';
	}

	get work() {
		if (!this.staged) this.staged = JSON.parse(JSON.stringify(this.committed));
		return this.staged;
	}

	view() {
		return this.staged || this.committed;
	}

	find(sid) {
		return this.view().find((s) => s.name == sid) || null;
	}

	values() {
		const out = {};
		this.view().forEach((s, i) => {
			out[s.name] = Object.assign({ '.anonymous': s.anonymous, '.type': s.type, '.name': s.name, '.index': i },
				JSON.parse(JSON.stringify(s.opts)));
		});
		return out;
	}

	set(sid, values) {
		const s = this.work.find((x) => x.name == sid);
		if (!s) return 4;
		for (const [k, v] of Object.entries(values || {})) {
			if (!/^[A-Za-z0-9_]+$/.test(k)) return 2;
			if (Array.isArray(v)) {
				s.opts[k] = v.map(String);
				this.changes.push([ 'set', sid, k, v.map(String) ]);
			}
			else if (v === '' || v == null) {
				if (k in s.opts) {
					delete s.opts[k];
					this.changes.push([ 'remove', sid, k ]);
				}
			}
			else if (s.opts[k] === String(v)) {
				/* libuci's uci_set (list.c) returns before recording a delta when an option
				 * is set to the string it already holds: no change for rpcd to list or apply */
			}
			else {
				s.opts[k] = String(v);
				this.changes.push([ 'set', sid, k, String(v) ]);
			}
		}
		return 0;
	}

	add(type, name, values) {
		if (name != null && !/^[A-Za-z0-9_]+$/.test(name)) return [ 2 ];
		if (name != null && this.work.some((x) => x.name == name)) return [ 2 ];
		const sid = name || this.anonName();
		this.work.push({ type, name: sid, anonymous: name == null, opts: {} });
		this.changes.push([ 'add', sid, type ]);
		const rc = this.set(sid, values);
		return [ rc, sid ];
	}

	delete(sid, options) {
		const w = this.work;
		const idx = w.findIndex((x) => x.name == sid);
		if (idx < 0) return 4;
		if (options == null) {
			w.splice(idx, 1);
			this.changes.push([ 'remove', sid ]);
			return 0;
		}
		for (const o of options) {
			if (o in w[idx].opts) {
				delete w[idx].opts[o];
				this.changes.push([ 'remove', sid, o ]);
			}
		}
		return 0;
	}

	commit() {
		if (this.staged) this.committed = this.staged;
		this.staged = null;
		const n = this.changes.length;
		this.changes = [];
		return n;
	}

	/* `uci show <pkg>` of the committed (or staged) state, with @type[n] for anonymous sections. */
	show(which) {
		const secs = which == 'staged' ? this.view() : this.committed;
		const counts = {};
		const q = (v) => "'" + String(v).replace(/'/g, "'\\''") + "'";
		const lines = [];
		secs.forEach((s) => {
			const idx = counts[s.type] = (counts[s.type] == null ? 0 : counts[s.type] + 1);
			const id = s.anonymous ? `@${s.type}[${idx}]` : s.name;
			lines.push(`${this.name}.${id}=${s.type}`);
			for (const [k, v] of Object.entries(s.opts))
				lines.push(`${this.name}.${id}.${k}=` + (Array.isArray(v) ? v.map(q).join(' ') : q(v)));
		});
		return lines;
	}
}

module.exports = { UciPackage, tokenize };
