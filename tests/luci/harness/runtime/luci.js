/*
 * MOCK of LuCI's client runtime (luci.js) for the browser tests of luci-app-jellydemon.
 *
 * Real LuCI cannot run here: it needs rpcd and ubus on a router. This file re-implements, from
 * LuCI's documented behaviour, only what the app's views use: the class system (baseclass),
 * `'require x [as y]'` module loading, `E()`, `_()`, String.prototype.format, `dom`, `poll`
 * and `view` (load -> render -> footer with Save/Save & Apply/Reset). It is test support, not
 * shipped, and contains no LuCI source.
 */
(function(window, document) {
	'use strict';

	/* ---- String.prototype.format: the subset of LuCI's specifiers the views use ---- */
	const htmlEsc = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&#34;', "'": '&#39;' };

	String.prototype.format = function() {
		const args = arguments;
		let idx = 0;
		return this.replace(/%(%|(-)?(0)?(\d+)?(?:\.(\d+))?([sdfxXhqc]))/g, function(m, all, left, zero, width, prec, conv) {
			if (all == '%')
				return '%';
			const v = args[idx++];
			let s;
			switch (conv) {
			case 's': s = (v == null) ? '' : String(v); break;
			case 'd': s = String(Math.trunc(Number(v)) || 0); break;
			case 'f': s = prec != null ? (Number(v) || 0).toFixed(+prec) : String(Number(v) || 0); break;
			case 'x': s = (Number(v) || 0).toString(16); break;
			case 'X': s = (Number(v) || 0).toString(16).toUpperCase(); break;
			case 'h': s = String(v == null ? '' : v).replace(/[&<>"']/g, function(c) { return htmlEsc[c]; }); break;
			case 'q': s = String(v == null ? '' : v).replace(/[\\"']/g, '\\$&'); break;
			case 'c': s = String.fromCharCode(Number(v) || 0); break;
			}
			if (width != null && s.length < +width) {
				const pad = (zero && !left ? '0' : ' ').repeat(+width - s.length);
				s = left ? s + pad : pad + s;
			}
			return s;
		});
	};

	/* ---- baseclass ---- */
	let classIndex = 0;
	const superStack = new WeakMap();

	function hasOwn(o, k) { return Object.prototype.hasOwnProperty.call(o, k); }

	const Class = function() {};
	Object.assign(Class, {
		extend: function(properties) {
			const props = {
				__id__: { value: classIndex },
				__base__: { value: this.prototype },
				__name__: { value: properties.__name__ || 'anonymous' + classIndex++ }
			};
			const ClassConstructor = function() {
				if (!(this instanceof ClassConstructor))
					throw new TypeError('Constructor must not be called without "new"');
				if (typeof this.__init__ == 'function')
					this.__init__.apply(this, arguments);
			};
			for (const key in properties)
				if (!props[key] && hasOwn(properties, key))
					props[key] = { value: properties[key], writable: true };
			ClassConstructor.prototype = Object.create(this.prototype, props);
			ClassConstructor.prototype.constructor = ClassConstructor;
			Object.assign(ClassConstructor, this);
			ClassConstructor.displayName = props.__name__.value + 'Class';
			return ClassConstructor;
		},
		singleton: function(properties) {
			return Class.instantiate.call(this.extend(properties), Array.prototype.slice.call(arguments, 1));
		},
		instantiate: function(args) {
			return new (Function.prototype.bind.apply(this, [ null ].concat(args)))();
		},
		isSubclass: function(classValue) {
			return (typeof classValue == 'function' && classValue.prototype instanceof this);
		},
		call: function(context, method) {
			return Class.prototype[method].apply(context, Array.prototype.slice.call(arguments, 2));
		}
	});
	Class.prototype = {
		varargs: function(args, offset) {
			return Array.prototype.slice.call(args, offset).concat(Array.prototype.slice.call(arguments, 2));
		},
		/* Calls the next implementation of `key` above the one currently running for `this`. */
		super: function(key, callArgs) {
			let stacks = superStack.get(this);
			if (!stacks)
				superStack.set(this, stacks = {});
			const stack = stacks[key] || (stacks[key] = []);
			let owner = stack.length ? stack[stack.length - 1] : Object.getPrototypeOf(this);
			while (owner && !hasOwn(owner, key))
				owner = Object.getPrototypeOf(owner);
			let parent = owner ? Object.getPrototypeOf(owner) : null;
			while (parent && !hasOwn(parent, key))
				parent = Object.getPrototypeOf(parent);
			if (arguments.length < 2)
				return parent ? parent[key] : undefined;
			if (!parent || typeof parent[key] != 'function')
				throw new ReferenceError(key + ' is not a function in the base class');
			stack.push(parent);
			try {
				return parent[key].apply(this, callArgs);
			}
			finally {
				stack.pop();
			}
		},
		toString: function() {
			return '[object ' + this.__name__ + ']';
		}
	};

	/* ---- dom ---- */
	const boundInstances = new WeakMap();

	const DOM = Class.singleton({
		__name__: 'LuCI.dom',
		elem: function(e) {
			return (e != null && typeof e == 'object' && 'nodeType' in e);
		},
		parse: function(s) {
			const t = document.createElement('template');
			t.innerHTML = s;
			return t.content.firstElementChild;
		},
		matches: function(node, selector) {
			return this.elem(node) && node.nodeType == 1 ? node.matches(selector) : false;
		},
		parent: function(node, selector) {
			return this.elem(node) && node.closest ? node.closest(selector) : null;
		},
		/* As in LuCI: a bare string becomes innerHTML, strings inside an array become text. */
		append: function(node, children) {
			if (!this.elem(node))
				return null;
			if (Array.isArray(children)) {
				for (let i = 0; i < children.length; i++) {
					if (this.elem(children[i]))
						node.appendChild(children[i]);
					else if (Array.isArray(children[i]))
						this.append(node, children[i]);
					else if (children[i] !== null && children[i] !== undefined)
						node.appendChild(document.createTextNode(String(children[i])));
				}
				return node.lastChild;
			}
			else if (typeof children == 'function') {
				return this.append(node, children(node));
			}
			else if (this.elem(children)) {
				return node.appendChild(children);
			}
			else if (children !== null && children !== undefined) {
				node.innerHTML = String(children);
				return node.lastChild;
			}
			return null;
		},
		content: function(node, children) {
			if (!this.elem(node))
				return null;
			while (node.firstChild)
				node.removeChild(node.firstChild);
			return this.append(node, children);
		},
		attr: function(node, key, val) {
			if (!this.elem(node))
				return;
			if (key != null && typeof key == 'object') {
				for (const k in key)
					this.attr(node, k, key[k]);
				return;
			}
			if (val === null || val === undefined)
				return;
			switch (typeof val) {
			case 'function':
				node.addEventListener(key, val);
				break;
			case 'object':
				node.setAttribute(key, JSON.stringify(val));
				break;
			default:
				node.setAttribute(key, val);
			}
		},
		create: function() {
			const html = arguments[0];
			let attr = arguments[1], data = arguments[2], elem;
			if (!(attr instanceof Object) || Array.isArray(attr) || this.elem(attr))
				data = attr, attr = null;
			if (Array.isArray(html)) {
				elem = document.createDocumentFragment();
				for (let i = 0; i < html.length; i++)
					elem.appendChild(this.create(html[i]));
			}
			else if (this.elem(html))
				elem = html;
			else if (html.charCodeAt(0) === 60)
				elem = this.parse(html);
			else
				elem = document.createElement(html);
			if (!elem)
				return null;
			this.attr(elem, attr);
			this.append(elem, data);
			return elem;
		},
		bindClassInstance: function(node, inst) {
			boundInstances.set(node, inst);
		},
		findClassInstance: function(node) {
			for (; node; node = node.parentNode)
				if (boundInstances.has(node))
					return boundInstances.get(node);
			return null;
		},
		callClassMethod: function(node, method) {
			const inst = this.findClassInstance(node);
			if (inst == null || typeof inst[method] != 'function')
				return null;
			return inst[method].apply(inst, Array.prototype.slice.call(arguments, 2));
		},
		isEmpty: function(node) {
			return !node || !node.firstElementChild;
		}
	});

	/* ---- poll: one timer ticking every second, each function at its own interval ---- */
	const Poll = Class.singleton({
		__name__: 'LuCI.poll',
		queue: [],
		tick: 0,
		timer: null,
		add: function(fn, interval) {
			if (interval == null || interval <= 0)
				interval = window.L.env.pollinterval || 5;
			if (typeof fn != 'function')
				throw new TypeError('Invalid argument to LuCI.poll.add()');
			for (const e of this.queue)
				if (e.fn === fn)
					return false;
			this.queue.push({ fn: fn, i: Math.max(1, Math.round(interval)), r: true });
			if (window.L.env.pollinterval !== 0)
				this.start();
			return true;
		},
		remove: function(fn) {
			const before = this.queue.length;
			this.queue = this.queue.filter(function(e) { return e.fn !== fn; });
			if (!this.queue.length)
				this.stop();
			return this.queue.length != before;
		},
		start: function() {
			if (this.timer)
				return false;
			this.tick = 0;
			this.timer = window.setInterval(this.step.bind(this), 1000);
			document.dispatchEvent(new CustomEvent('poll-start'));
			return true;
		},
		stop: function() {
			if (!this.timer)
				return false;
			window.clearInterval(this.timer);
			this.timer = null;
			document.dispatchEvent(new CustomEvent('poll-stop'));
			return true;
		},
		step: function() {
			this.tick++;
			for (const e of this.queue) {
				if ((this.tick % e.i) != 0 || !e.r)
					continue;
				e.r = false;
				Promise.resolve(e.fn()).catch(function(err) { console.error(err); })
					.finally(function() { e.r = true; });
			}
		},
		active: function() {
			return this.timer != null;
		}
	});

	/* ---- view ---- */
	const View = Class.extend({
		__name__: 'LuCI.view',
		__init__: function() {
			const vp = document.getElementById('view');
			DOM.content(vp, E('div', { 'class': 'spinning' }, [ _('Loading view…') ]));
			return Promise.resolve(this.load())
				.then(L.bind(this.render, this))
				.then(L.bind(function(nodes) {
					const vp = document.getElementById('view');
					DOM.content(vp, nodes);
					DOM.append(vp, this.addFooter());
					/* Test hook: lets the harness wait for an event instead of sleeping. */
					window.__LUCI_VIEW_RENDERED__ = true;
				}, this)).catch(L.error);
		},
		load: function() {},
		render: function() {},
		handleSave: function() {
			const tasks = [];
			document.getElementById('maincontent').querySelectorAll('.cbi-map').forEach(function(map) {
				tasks.push(DOM.callClassMethod(map, 'save'));
			});
			return Promise.all(tasks);
		},
		handleSaveApply: function(ev, mode) {
			return this.handleSave(ev).then(function() {
				return L.ui.changes.apply(mode == '0');
			});
		},
		handleReset: function() {
			const tasks = [];
			document.getElementById('maincontent').querySelectorAll('.cbi-map').forEach(function(map) {
				tasks.push(DOM.callClassMethod(map, 'reset'));
			});
			return Promise.all(tasks);
		},
		/* As LuCI's: the buttons are disabled when every form on the page is read-only. */
		addFooter: function() {
			const footer = E([]);
			let readonly = false;
			const maps = document.getElementById('view').querySelectorAll('.cbi-map');
			if (maps.length) {
				readonly = true;
				maps.forEach(function(m) {
					const map = DOM.findClassInstance(m);
					if (!map || !map.readonly)
						readonly = false;
				});
			}
			const saveApply = this.handleSaveApply ? L.ui.createHandlerFn(this, 'handleSaveApply', '1') : null;
			const save = this.handleSave ? L.ui.createHandlerFn(this, 'handleSave') : null;
			const reset = this.handleReset ? L.ui.createHandlerFn(this, 'handleReset') : null;
			if (saveApply || save || reset)
				footer.appendChild(E('div', { 'class': 'cbi-page-actions' }, [
					saveApply ? E('button', { 'class': 'cbi-button cbi-button-apply', 'click': saveApply, 'disabled': readonly || null }, [ _('Save & Apply') ]) : '', ' ',
					save ? E('button', { 'class': 'cbi-button cbi-button-save', 'click': save, 'disabled': readonly || null }, [ _('Save') ]) : '', ' ',
					reset ? E('button', { 'class': 'cbi-button cbi-button-reset', 'click': reset, 'disabled': readonly || null }, [ _('Reset') ]) : ''
				]));
			return footer;
		}
	});

	/* ---- module loader: 'require name [as alias]' directives, as LuCI parses them ---- */
	const builtins = { baseclass: Class, dom: DOM, poll: Poll, view: View };
	const loading = {};

	function compileModule(name, url, text) {
		const deps = [], args = [];
		const re = /^\s*(?:'([^']*)'|"([^"]*)")\s*;?/;
		let rest = text, m;
		while ((m = rest.match(re)) != null) {
			const directive = m[1] != null ? m[1] : m[2];
			rest = rest.substring(m[0].length);
			const req = directive.match(/^require[ \t]+(\S+)(?:[ \t]+as[ \t]+([a-zA-Z_]\S*))?$/);
			if (!req)
				continue;
			deps.push(req[1]);
			args.push(req[2] || req[1].replace(/[^a-zA-Z0-9_]/g, '_'));
		}
		return Promise.all(deps.map(function(d) { return L.require(d, name); })).then(function(instances) {
			let factory;
			try {
				factory = new Function([ 'window', 'document', 'L' ].concat(args).join(','),
					text + '\n//# sourceURL=' + url);
			}
			catch (e) {
				throw new SyntaxError('Cannot compile ' + url + ': ' + e.message);
			}
			const cls = factory.apply(factory, [ window, document, L ].concat(instances));
			if (typeof cls != 'function')
				throw new TypeError('Module ' + name + ' did not return a class');
			return new cls();
		});
	}

	function toArray(val) {
		if (val == null)
			return [];
		if (Array.isArray(val))
			return val;
		const s = String(val).trim();
		return s === '' ? [] : s.split(/\s+/);
	}

	const L = {
		env: Object.assign({
			resource: '/luci-static/resources',
			ubuspath: '/ubus/',
			sessionid: '00000000000000000000000000000000',
			pollinterval: 5
		}, window.__LUCI_ENV__ || {}),
		Class: Class,
		dom: DOM,
		Poll: Poll,
		view: View,
		require: function(name) {
			if (builtins[name])
				return Promise.resolve(builtins[name] === Class ? Class : builtins[name]);
			if (loading[name])
				return loading[name];
			const url = L.env.resource + '/' + name.replace(/\./g, '/') + '.js';
			loading[name] = fetch(url, { cache: 'no-store' }).then(function(res) {
				if (!res.ok)
					throw new Error('Cannot load ' + url + ': HTTP ' + res.status);
				return res.text();
			}).then(function(text) {
				return compileModule(name, url, text);
			});
			return loading[name];
		},
		bind: function(fn, self) {
			return Function.prototype.bind.apply(fn, Array.prototype.slice.call(arguments, 1));
		},
		toArray: toArray,
		isObject: function(v) {
			return (v != null && typeof v == 'object');
		},
		sortedKeys: function(obj) {
			return Object.keys(obj || {}).sort();
		},
		resolveDefault: function(value, defvalue) {
			return Promise.resolve(value).catch(function() { return defvalue; });
		},
		raise: function(type, fmt) {
			const msg = fmt ? String(fmt).format.apply(String(fmt), Array.prototype.slice.call(arguments, 2)) : '';
			const e = new Error(msg);
			e.name = type || 'Error';
			throw e;
		},
		error: function(type, fmt) {
			if (type instanceof Error) {
				console.error(type);
				const vp = document.getElementById('view');
				if (vp)
					DOM.content(vp, E('div', { 'class': 'alert-message error', 'id': 'view-error' }, [ String(type.message || type) ]));
				throw type;
			}
			L.raise.apply(L, arguments);
		},
		url: function() {
			return '/cgi-bin/luci/' + Array.prototype.slice.call(arguments).join('/');
		},
		resource: function() {
			return L.env.resource + '/' + Array.prototype.slice.call(arguments).join('/');
		},
		media: function() {
			return '/luci-static/bootstrap/' + Array.prototype.slice.call(arguments).join('/');
		}
	};

	window.L = L;
	window.E = function() { return DOM.create.apply(DOM, arguments); };
	/* No translations in the tests: _() returns the source string, as LuCI does for English. */
	window._ = function(s) { return s; };
	window.N_ = function(n, s, p, c) { return (c != null ? c : n) == 1 ? s : p; };

	/* Boot: the page names the view to instantiate, as LuCI's view template does. */
	window.addEventListener('DOMContentLoaded', function() {
		L.require('ui').then(function(ui) {
			L.ui = ui;
			const path = document.body.getAttribute('data-view');
			if (path)
				return L.require('view.' + path.replace(/\//g, '.'));
		}).catch(function(e) {
			window.__LUCI_BOOT_ERROR__ = String(e && e.stack || e);
			L.error(e instanceof Error ? e : new Error(String(e)));
		});
	});
})(window, document);
