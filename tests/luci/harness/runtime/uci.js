'use strict';
'require rpc';
'require baseclass';

/*
 * MOCK of LuCI's uci.js: a local copy of each loaded package plus pending creates, changes and
 * deletes, sent to rpcd's `uci` object on save() (add, set, delete — LuCI's order) and made
 * permanent by apply() (`uci apply` with rollback, then `uci confirm`).
 */

const callLoad = rpc.declare({ object: 'uci', method: 'get', params: [ 'config' ], expect: { values: {} } });
const callAdd = rpc.declare({ object: 'uci', method: 'add', params: [ 'config', 'type', 'name', 'values' ], expect: { section: '' } });
const callSet = rpc.declare({ object: 'uci', method: 'set', params: [ 'config', 'section', 'values' ] });
const callDelete = rpc.declare({ object: 'uci', method: 'delete', params: [ 'config', 'section', 'options' ] });
const callApply = rpc.declare({ object: 'uci', method: 'apply', params: [ 'timeout', 'rollback' ] });
const callConfirm = rpc.declare({ object: 'uci', method: 'confirm' });
const callChanges = rpc.declare({ object: 'uci', method: 'changes', expect: { changes: {} } });

let newIndex = 0;

function isEmptyObj(o) {
	return o == null || Object.keys(o).length == 0;
}

return baseclass.extend({
	__name__: 'LuCI.uci',

	__init__: function() {
		this.state = { values: {}, creates: {}, changes: {}, deletes: {} };
		this.loaded = {};
	},

	createSID: function(conf) {
		return 'new' + (0x100000 + (newIndex++)).toString(16).slice(-6);
	},

	load: function(packages) {
		const self = this, tasks = [], pkgs = [];
		L.toArray(packages).forEach(function(p) {
			if (!self.loaded[p]) {
				pkgs.push(p);
				self.loaded[p] = callLoad(p).then(function(values) {
					self.state.values[p] = values || {};
				});
			}
			tasks.push(self.loaded[p]);
		});
		return Promise.all(tasks).then(function() { return pkgs; });
	},

	unload: function(packages) {
		const self = this;
		L.toArray(packages).forEach(function(p) {
			delete self.state.values[p];
			delete self.state.creates[p];
			delete self.state.changes[p];
			delete self.state.deletes[p];
			delete self.loaded[p];
		});
	},

	add: function(conf, type, name) {
		const c = this.state.creates;
		const sid = name || this.createSID(conf);
		c[conf] = c[conf] || {};
		c[conf][sid] = { '.type': type, '.name': sid, '.create': name, '.anonymous': !name, '.index': 1000 + newIndex };
		return sid;
	},

	remove: function(conf, sid) {
		const n = this.state.creates, d = this.state.deletes, c = this.state.changes;
		if (n[conf] && n[conf][sid]) {
			delete n[conf][sid];
		}
		else if (this.state.values[conf] && this.state.values[conf][sid]) {
			d[conf] = d[conf] || {};
			d[conf][sid] = true;
		}
		if (c[conf])
			delete c[conf][sid];
	},

	sections: function(conf, type, cb) {
		const v = this.state.values[conf] || {}, n = this.state.creates[conf] || {}, d = this.state.deletes[conf] || {};
		const list = [];
		for (const s in v)
			if (d[s] !== true && (type == null || v[s]['.type'] == type))
				list.push(Object.assign({}, v[s], (this.state.changes[conf] || {})[s] || {}));
		for (const s in n)
			if (type == null || n[s]['.type'] == type)
				list.push(n[s]);
		list.sort(function(a, b) { return a['.index'] - b['.index']; });
		if (typeof cb == 'function')
			list.forEach(function(s) { cb.call(this, s, s['.name']); }, this);
		return list;
	},

	get: function(conf, sid, opt) {
		const v = this.state.values, n = this.state.creates, c = this.state.changes, d = this.state.deletes;
		if (sid == null)
			return null;
		if (n[conf] && n[conf][sid]) {
			if (opt == null)
				return n[conf][sid];
			return n[conf][sid][opt];
		}
		if (!v[conf] || !v[conf][sid] || (d[conf] && d[conf][sid] === true))
			return null;
		if (opt == null) {
			const s = Object.assign({}, v[conf][sid], (c[conf] || {})[sid] || {});
			for (const o in ((d[conf] || {})[sid] || {}))
				delete s[o];
			return s;
		}
		if (d[conf] && d[conf][sid] && d[conf][sid][opt] === true)
			return null;
		if (c[conf] && c[conf][sid] && c[conf][sid][opt] !== undefined)
			return c[conf][sid][opt];
		return v[conf][sid][opt];
	},

	set: function(conf, sid, opt, val) {
		const v = this.state.values, n = this.state.creates, c = this.state.changes, d = this.state.deletes;
		if (sid == null || opt == null || opt.charAt(0) == '.')
			return;
		if (n[conf] && n[conf][sid]) {
			if (val != null)
				n[conf][sid][opt] = val;
			else
				delete n[conf][sid][opt];
			return;
		}
		if (!v[conf] || !v[conf][sid])
			return;
		if (val != null && val !== '') {
			if (d[conf] && d[conf][sid] && d[conf][sid] !== true) {
				delete d[conf][sid][opt];
				if (isEmptyObj(d[conf][sid]))
					delete d[conf][sid];
			}
			c[conf] = c[conf] || {};
			c[conf][sid] = c[conf][sid] || {};
			c[conf][sid][opt] = val;
		}
		else {
			if (c[conf] && c[conf][sid]) {
				delete c[conf][sid][opt];
				if (isEmptyObj(c[conf][sid]))
					delete c[conf][sid];
			}
			if (v[conf][sid][opt] !== undefined) {
				d[conf] = d[conf] || {};
				d[conf][sid] = d[conf][sid] || {};
				if (d[conf][sid] !== true)
					d[conf][sid][opt] = true;
			}
		}
	},

	unset: function(conf, sid, opt) {
		return this.set(conf, sid, opt, null);
	},

	get_first: function(conf, type, opt) {
		const s = this.sections(conf, type)[0];
		return s ? this.get(conf, s['.name'], opt) : null;
	},

	save: function() {
		const self = this, pkgs = {}, tasks = [], created = [];
		const n = this.state.creates, c = this.state.changes, d = this.state.deletes;

		for (const conf in n) {
			for (const sid in n[conf]) {
				const values = {};
				for (const k in n[conf][sid])
					if (k.charAt(0) != '.')
						values[k] = n[conf][sid][k];
				created.push(n[conf][sid]);
				tasks.push(callAdd(conf, n[conf][sid]['.type'], n[conf][sid]['.create'] || undefined, values));
			}
			pkgs[conf] = true;
		}
		for (const conf in c) {
			for (const sid in c[conf])
				tasks.push(callSet(conf, sid, c[conf][sid]));
			pkgs[conf] = true;
		}
		for (const conf in d) {
			for (const sid in d[conf])
				tasks.push(callDelete(conf, sid, d[conf][sid] === true ? undefined : Object.keys(d[conf][sid])));
			pkgs[conf] = true;
		}

		return Promise.all(tasks).then(function(rvs) {
			rvs.forEach(function(rv) {
				if (typeof rv == 'number' && rv != 0)
					L.raise('RPCError', 'uci change failed with code %d', rv);
			});
			const names = Object.keys(pkgs);
			self.unload(names);
			return self.load(names);
		});
	},

	/* As LuCI: resolves once the commit is accepted; the confirm follows a second later. */
	apply: function(timeout) {
		return callApply(timeout || 10, true).then(function(rv) {
			if (rv != 0)
				return Promise.reject(rv);
			window.setTimeout(function() { callConfirm(); }, 1000);
		});
	},

	changes: function() {
		return callChanges();
	}
});
