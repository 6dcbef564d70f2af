'use strict';
'require ui';
'require uci';
'require dom';
'require baseclass';
'require rpc';

/*
 * MOCK of LuCI's form.js with LuCI's save semantics, which the app depends on:
 *  - a widget shows the configured value, else `default`;
 *  - on save each option is validated (an invalid one rejects the save with
 *    'Option "<title>" contains an invalid input value. Expecting: ...', shown in a modal);
 *  - an empty value is removed when `rmempty` (default true) or `optional`, else rejected;
 *  - a value is written only when it differs from the configured one;
 *  - a Flag equal to its default is removed when rmempty/optional (so `enabled` needs
 *    rmempty=false to stay in the file).
 * GridSection edits `editable` options in the table and adds rows through a modal, as LuCI;
 * tabs follow Map.tabbed. Option dependencies (depends()) are not implemented: the app uses none.
 */

function isEqual(x, y) {
	if (typeof y == 'object' && y instanceof RegExp)
		return (x == null) ? false : y.test(x);
	if (x != null && y != null && typeof x != typeof y)
		return false;
	if ((x == null && y != null) || (x != null && y == null))
		return false;
	if (Array.isArray(x)) {
		if (x.length != y.length)
			return false;
		for (let i = 0; i < x.length; i++)
			if (!isEqual(x[i], y[i]))
				return false;
	}
	else if (typeof x == 'object' && x != null) {
		for (const k in x)
			if (!isEqual(x[k], y[k]))
				return false;
		for (const k in y)
			if (!(k in x))
				return false;
	}
	else if (x != y) {
		return false;
	}
	return true;
}

const callSessionAccess = rpc.declare({
	object: 'session',
	method: 'access',
	params: [ 'scope', 'object', 'function' ],
	expect: { 'access': false }
});

const CBIAbstractElement = baseclass.extend({
	__name__: 'CBI.AbstractElement',

	__init__: function(title, description) {
		this.title = title || '';
		this.description = description || '';
		this.children = [];
	},

	append: function(obj) {
		this.children.push(obj);
	},

	parse: function() {
		return Promise.all(this.children.map(function(c) { return c.parse(); }));
	},

	render: function() {
		L.error('InternalError', 'Not implemented');
	},

	loadChildren: function() {
		const args = arguments;
		return Promise.all(this.children.map(function(c) { return c.load.apply(c, args); }));
	},

	renderChildren: function(tab_name) {
		const args = Array.prototype.slice.call(arguments, 1);
		const tasks = [];
		let index = 0;
		this.children.forEach(function(c) {
			if (tab_name === null || c.tab === tab_name)
				tasks.push(c.render.apply(c, [ index++ ].concat(args)));
		});
		return Promise.all(tasks);
	},

	stripTags: function(s) {
		if (typeof s == 'string' && !/[<>]/.test(s))
			return s;
		const x = E('div', {}, s);
		return x.textContent || x.innerText || '';
	},

	titleFn: function(attr) {
		let s = null;
		if (typeof this[attr] == 'function')
			s = this[attr].apply(this, Array.prototype.slice.call(arguments, 1));
		else if (this[attr] != null)
			s = this[attr];
		return s != null ? this.stripTags(String(s)).trim() : null;
	}
});

const CBIMap = CBIAbstractElement.extend({
	__name__: 'CBI.Map',

	__init__: function(config, title, description) {
		this.super('__init__', [ title, description ]);
		this.config = config;
		this.parsechain = [ config ];
		this.data = uci;
	},

	findElements: function() {
		if (this.root == null)
			L.error('InternalError', 'Form is not rendered yet');
		let q = null;
		if (arguments.length == 1)
			q = arguments[0];
		else if (arguments.length == 2)
			q = '[%s="%s"]'.format(arguments[0], arguments[1]);
		return this.root.querySelectorAll(q);
	},

	findElement: function() {
		const res = this.findElements.apply(this, arguments);
		return res.length ? res[0] : null;
	},

	section: function(cbiClass) {
		if (!CBIAbstractSection.isSubclass(cbiClass))
			L.error('TypeError', 'Class must be a descendent of CBIAbstractSection');
		const obj = cbiClass.instantiate([ this ].concat(Array.prototype.slice.call(arguments, 1)));
		this.append(obj);
		return obj;
	},

	/* As LuCI's: a map the session may not write (session access uci <config> write) is read-only. */
	load: function() {
		const doCheckACL = (this.readonly == null);
		return Promise.all([
			doCheckACL ? callSessionAccess('uci', this.config, 'write') : true,
			this.data.load(this.parsechain || [ this.config ])
		]).then(L.bind(function(res) {
			if (res[0] === false)
				this.readonly = true;
			return this.loadChildren();
		}, this));
	},

	/* Validation normally runs on keyup/blur; run it for every widget once more before saving. */
	checkAll: function() {
		if (!this.root)
			return;
		this.root.querySelectorAll('[id^="cbid."]').forEach(function(n) {
			const w = dom.findClassInstance(n);
			if (w && w.node === n && typeof w.triggerValidation == 'function')
				w.triggerValidation();
		});
	},

	parse: function() {
		this.checkAll();
		return Promise.all(this.children.map(function(c) { return c.parse(); }));
	},

	save: function(cb, silent) {
		return this.parse()
			.then(cb)
			.then(this.data.save.bind(this.data))
			.then(this.load.bind(this))
			.catch(function(e) {
				if (!silent) {
					ui.showModal(_('Save error'), [
						E('p', {}, [ _('An error occurred while saving the form:') ]),
						E('p', {}, [ E('em', { 'style': 'white-space:pre-wrap', 'class': 'save-error' }, [ e.message ]) ]),
						E('div', { 'class': 'right' }, [
							E('button', { 'class': 'cbi-button', 'click': ui.hideModal }, [ _('Dismiss') ])
						])
					]);
				}
				return Promise.reject(e);
			}).then(this.renderContents.bind(this));
	},

	reset: function() {
		return this.renderContents();
	},

	render: function() {
		return this.load().then(this.renderContents.bind(this));
	},

	renderContents: function() {
		const mapEl = this.root || (this.root = E('div', {
			'id': 'cbi-%s'.format(this.config),
			'class': 'cbi-map'
		}));
		dom.bindClassInstance(mapEl, this);

		return this.renderChildren(null).then(L.bind(function(nodes) {
			const active = mapEl.querySelector('[data-active-tab]');
			const prevTab = active ? active.getAttribute('data-active-tab') : null;
			dom.content(mapEl, null);
			if (this.title)
				mapEl.appendChild(E('h2', { 'name': 'content' }, [ this.title ]));
			if (this.description)
				mapEl.appendChild(E('div', { 'class': 'cbi-map-descr' }, [ this.description ]));
			if (this.tabbed) {
				const group = E('div', { 'class': 'cbi-map-tabbed', 'data-active-tab': prevTab }, nodes);
				mapEl.appendChild(group);
				ui.tabs.initTabGroup(group.childNodes);
			}
			else {
				dom.append(mapEl, nodes);
			}
			return mapEl;
		}, this));
	}
});

const CBIAbstractSection = CBIAbstractElement.extend({
	__name__: 'CBI.AbstractSection',

	__init__: function(map, sectionType) {
		this.super('__init__', Array.prototype.slice.call(arguments, 2));
		this.sectiontype = sectionType;
		this.map = map;
		this.config = map.config;
		this.optional = true;
		this.addremove = false;
		this.dynamic = false;
	},

	cfgsections: function() {
		L.error('InternalError', 'Not implemented');
	},

	filter: function() {
		return true;
	},

	load: function() {
		const tasks = [];
		this.cfgsections().forEach(L.bind(function(sid) {
			this.children.forEach(function(c) {
				tasks.push(Promise.resolve(c.load(sid)).then(c.cfgvalue.bind(c, sid)));
			});
		}, this));
		return Promise.all(tasks);
	},

	parse: function() {
		const tasks = [];
		this.cfgsections().forEach(L.bind(function(sid) {
			this.children.forEach(function(c) { tasks.push(c.parse(sid)); });
		}, this));
		return Promise.all(tasks);
	},

	tab: function(name, title, description) {
		this.tabs = this.tabs || {};
		this.tab_names = this.tab_names || [];
		this.tab_names.push(name);
		this.tabs[name] = { name: name, title: title, description: description, children: [] };
	},

	option: function(cbiClass) {
		if (!CBIAbstractValue.isSubclass(cbiClass))
			L.error('TypeError', 'Class must be a descendant of CBIAbstractValue');
		const obj = cbiClass.instantiate([ this.map, this ].concat(Array.prototype.slice.call(arguments, 1)));
		this.append(obj);
		return obj;
	},

	taboption: function(tabName) {
		const o = this.option.apply(this, Array.prototype.slice.call(arguments, 1));
		o.tab = tabName;
		return o;
	},

	children_by_name: function(name) {
		for (const c of this.children)
			if (c.option == name)
				return c;
		return null;
	},

	formvalue: function(section_id, option) {
		const o = this.children_by_name(option);
		return o ? o.formvalue(section_id) : null;
	},

	cfgvalue: function(section_id, option) {
		const o = this.children_by_name(option);
		return o ? o.cfgvalue(section_id) : null;
	},

	getOption: function(option) {
		return this.children_by_name(option);
	},

	getUIElement: function(section_id, option) {
		const o = this.children_by_name(option);
		return o ? o.getUIElement(section_id) : null;
	},

	renderUCISection: function(section_id) {
		return this.renderChildren(null, section_id, false).then(function(nodes) {
			return E('div', {}, nodes);
		});
	}
});

const CBINamedSection = CBIAbstractSection.extend({
	__name__: 'CBI.NamedSection',

	__init__: function(map, section_id) {
		this.super('__init__', [ map ].concat(Array.prototype.slice.call(arguments, 2)));
		this.section = section_id;
	},

	cfgsections: function() {
		return [ this.section ];
	},

	render: function() {
		const data = this.map.data.get(this.uciconfig || this.map.config, this.section);
		return this.renderUCISection(this.section).then(L.bind(function(node) {
			const sectionEl = E('div', {
				'id': data ? 'cbi-%s-%s'.format(this.map.config, this.section) : null,
				'class': 'cbi-section',
				'data-tab': this.map.tabbed ? this.section : null,
				'data-tab-title': this.map.tabbed ? (this.title || this.section) : null
			});
			if (this.title)
				sectionEl.appendChild(E('h3', {}, [ this.title ]));
			if (this.description)
				sectionEl.appendChild(E('div', { 'class': 'cbi-section-descr' }, [ this.description ]));
			if (data) {
				node.className = 'cbi-section-node';
				node.setAttribute('id', 'cbi-%s-%s'.format(this.map.config, this.section));
				node.setAttribute('data-section-id', this.section);
				sectionEl.appendChild(node);
			}
			else {
				sectionEl.appendChild(E('em', {}, [ _('This section contains no values yet') ]));
			}
			dom.bindClassInstance(sectionEl, this);
			return sectionEl;
		}, this));
	}
});

const CBITypedSection = CBIAbstractSection.extend({
	__name__: 'CBI.TypedSection',

	cfgsections: function() {
		return this.map.data.sections(this.uciconfig || this.map.config, this.sectiontype)
			.map(function(s) { return s['.name']; })
			.filter(L.bind(this.filter, this));
	},

	handleAdd: function(ev, name) {
		this.map.data.add(this.uciconfig || this.map.config, this.sectiontype, name);
		return this.map.save(null, true);
	},

	handleRemove: function(section_id) {
		this.map.data.remove(this.uciconfig || this.map.config, section_id);
		return this.map.save(null, true);
	},

	renderSectionAdd: function(extra_class) {
		if (!this.addremove)
			return E([]);
		const createEl = E('div', { 'class': 'cbi-section-create' + (extra_class ? ' ' + extra_class : '') });
		const title = this.titleFn('addbtntitle') || _('Add');
		createEl.appendChild(E('button', {
			'class': 'cbi-button cbi-button-add',
			'title': title,
			'click': ui.createHandlerFn(this, 'handleAdd')
		}, [ title ]));
		return createEl;
	},

	render: function() {
		const sids = this.cfgsections();
		return Promise.all(sids.map(L.bind(this.renderUCISection, this))).then(L.bind(function(nodes) {
			return this.renderContents(sids, nodes);
		}, this));
	},

	renderContents: function(sids, nodes) {
		const sectionEl = E('div', {
			'id': 'cbi-%s-%s'.format(this.map.config, this.sectiontype),
			'class': 'cbi-section',
			'data-tab': this.map.tabbed ? this.sectiontype : null,
			'data-tab-title': this.map.tabbed ? (this.title || this.sectiontype) : null
		});
		if (this.title)
			sectionEl.appendChild(E('h3', {}, [ this.title ]));
		if (this.description)
			sectionEl.appendChild(E('div', { 'class': 'cbi-section-descr' }, [ this.description ]));
		nodes.forEach(L.bind(function(node, i) {
			node.className = 'cbi-section-node';
			node.setAttribute('data-section-id', sids[i]);
			sectionEl.appendChild(node);
		}, this));
		if (!nodes.length)
			sectionEl.appendChild(E('em', {}, [ _('This section contains no values yet') ]));
		sectionEl.appendChild(this.renderSectionAdd());
		dom.bindClassInstance(sectionEl, this);
		return sectionEl;
	}
});

const CBITableSection = CBITypedSection.extend({
	__name__: 'CBI.TableSection',

	renderUCISection: function(section_id) {
		return this.renderChildren(null, section_id, true);
	},

	renderContents: function(sids, nodes) {
		const sectionEl = E('div', {
			'id': 'cbi-%s-%s'.format(this.map.config, this.sectiontype),
			'class': 'cbi-section cbi-tblsection',
			'data-tab': this.map.tabbed ? this.sectiontype : null,
			'data-tab-title': this.map.tabbed ? (this.title || this.sectiontype) : null
		});
		const table = E('table', { 'class': 'table cbi-section-table' });

		if (this.title)
			sectionEl.appendChild(E('h3', {}, [ this.title ]));
		if (this.description)
			sectionEl.appendChild(E('div', { 'class': 'cbi-section-descr' }, [ this.description ]));

		table.appendChild(E('tr', { 'class': 'tr cbi-section-table-titles' },
			this.children.map(function(o) {
				return E('th', { 'class': 'th cbi-section-table-cell', 'data-widget': o.__name__ }, [ o.titleFn('title') || o.option ]);
			}).concat(this.addremove ? [ E('th', { 'class': 'th cbi-section-table-cell cbi-section-actions' }) ] : [])));

		nodes.forEach(L.bind(function(cells, i) {
			const sid = sids[i];
			const row = E('tr', {
				'class': 'tr cbi-section-table-row',
				'id': 'cbi-%s-%s'.format(this.map.config, sid),
				'data-sid': sid,
				'data-section-id': sid
			}, cells);
			if (this.addremove)
				row.appendChild(E('td', { 'class': 'td cbi-section-table-cell nowrap cbi-section-actions' }, [
					E('button', {
						'class': 'cbi-button cbi-button-remove',
						'title': _('Delete'),
						'click': ui.createHandlerFn(this, 'handleRemove', sid)
					}, [ _('Delete') ])
				]));
			table.appendChild(row);
		}, this));

		if (!nodes.length)
			table.appendChild(E('tr', { 'class': 'tr cbi-section-table-row placeholder' }, [
				E('td', { 'class': 'td', 'colspan': this.children.length + 1 }, [ E('em', {}, [ _('This section contains no values yet') ]) ])
			]));

		sectionEl.appendChild(table);
		sectionEl.appendChild(this.renderSectionAdd('cbi-tblsection-create'));
		dom.bindClassInstance(sectionEl, this);
		return sectionEl;
	},

	handleRemove: function(section_id) {
		this.map.data.remove(this.uciconfig || this.map.config, section_id);
		return this.map.save(null, true);
	}
});

/*
 * As LuCI's GridSection: options marked `editable` are edited in the table; Add opens a modal
 * with every option for the new section, whose Save stores it and whose Dismiss drops it.
 */
const CBIGridSection = CBITableSection.extend({
	__name__: 'CBI.GridSection',

	handleAdd: function(ev, name) {
		const section_id = this.map.data.add(this.uciconfig || this.map.config, this.sectiontype, name);
		this.addedSection = section_id;
		return this.renderMoreOptionsModal(section_id);
	},

	cloneOptions: function(dest) {
		this.children.forEach(function(o1) {
			const o2 = dest.option(o1.constructor, o1.option, o1.title, o1.description);
			for (const k in o1) {
				if (!Object.prototype.hasOwnProperty.call(o1, k))
					continue;
				if ([ 'map', 'section', 'option', 'title', 'description', 'data' ].indexOf(k) >= 0)
					continue;
				o2[k] = o1[k];
			}
		});
	},

	renderMoreOptionsModal: function(section_id) {
		const m = new CBIMap(this.uciconfig || this.map.config, null, null);
		const s = m.section(CBINamedSection, section_id, this.sectiontype);
		m.parent = this.map;
		this.cloneOptions(s);
		const title = (this.map.title ? this.map.title + ' » ' : '') + (this.titleFn('modaltitle', section_id) || this.title || _('Edit'));
		return m.render().then(L.bind(function(nodes) {
			ui.showModal(title, [
				nodes,
				E('div', { 'class': 'right button-row' }, [
					E('button', { 'class': 'btn cbi-button', 'click': ui.createHandlerFn(this, 'handleModalCancel', m) }, [ _('Dismiss') ]), ' ',
					E('button', { 'class': 'btn cbi-button cbi-button-positive important', 'click': ui.createHandlerFn(this, 'handleModalSave', m) }, [ _('Save') ])
				])
			]);
		}, this));
	},

	handleModalCancel: function() {
		if (this.addedSection != null) {
			this.map.data.remove(this.uciconfig || this.map.config, this.addedSection);
			this.addedSection = null;
		}
		ui.hideModal();
		return Promise.resolve();
	},

	handleModalSave: function(modalMap) {
		return modalMap.save(null, true)
			.then(L.bind(this.map.load, this.map))
			.then(L.bind(this.map.reset, this.map))
			.then(L.bind(function() { this.addedSection = null; }, this))
			.then(ui.hideModal)
			.catch(function() {});
	}
});

const CBIAbstractValue = CBIAbstractElement.extend({
	__name__: 'CBI.AbstractValue',

	__init__: function(map, section, option) {
		this.super('__init__', Array.prototype.slice.call(arguments, 3));
		this.section = section;
		this.option = option;
		this.map = map;
		this.config = map.config;
		this.deps = [];
		this.rmempty = true;
		this.default = null;
		this.optional = false;
		this.retain = false;
	},

	depends: function() {
		L.error('InternalError', 'depends() is not implemented by the test runtime');
	},

	cbid: function(section_id) {
		return 'cbid.%s.%s.%s'.format(this.uciconfig || this.section.uciconfig || this.map.config, section_id, this.option);
	},

	load: function(section_id) {
		return this.map.data.get(this.uciconfig || this.section.uciconfig || this.map.config,
			this.ucisection || section_id, this.ucioption || this.option);
	},

	cfgvalue: function(section_id, set_value) {
		if (arguments.length == 2) {
			this.data = this.data || {};
			this.data[section_id] = set_value;
		}
		return this.data ? this.data[section_id] : undefined;
	},

	getUIElement: function(section_id) {
		const node = this.map.findElement('id', this.cbid(section_id));
		return node ? dom.findClassInstance(node) : null;
	},

	formvalue: function(section_id) {
		const elem = this.getUIElement(section_id);
		return elem ? elem.getValue() : null;
	},

	textvalue: function(section_id) {
		let cval = this.cfgvalue(section_id);
		if (cval == null)
			cval = this.default;
		return Array.isArray(cval) ? cval.join(' ') : (cval != null ? String(cval) : '');
	},

	validate: function() {
		return true;
	},

	isValid: function(section_id) {
		const elem = this.getUIElement(section_id);
		return elem ? elem.isValid() : true;
	},

	getValidationError: function(section_id) {
		const elem = this.getUIElement(section_id);
		return elem ? elem.getValidationError() : '';
	},

	/* As in LuCI: an option counts only where its field is rendered (and not hidden). */
	isActive: function(section_id) {
		const field = this.map.findElement('data-field', this.cbid(section_id));
		return (field != null && !field.classList.contains('hidden'));
	},

	render: function(option_index, section_id, in_table) {
		const cfgvalue = this.cfgvalue(section_id);
		return Promise.resolve(this.renderWidget(section_id, option_index, cfgvalue)).then(L.bind(function(widget) {
			if (in_table)
				return E('td', {
					'class': 'td cbi-value-field',
					'data-title': this.stripTags(this.title).trim(),
					'data-name': this.option,
					'data-field': this.cbid(section_id),
					'data-widget': this.__name__
				}, [ widget ]);

			const field = E('div', { 'class': 'cbi-value-field' }, [ widget ]);
			if (this.description)
				field.appendChild(E('div', { 'class': 'cbi-value-description' }, [ this.description ]));
			return E('div', {
				'class': 'cbi-value' + (this.last_child ? ' cbi-value-last' : ''),
				'id': 'cbi-%s-%s-%s'.format(this.config, section_id, this.option),
				'data-index': option_index,
				'data-field': this.cbid(section_id),
				'data-name': this.option,
				'data-widget': this.__name__
			}, [
				this.title ? E('label', { 'class': 'cbi-value-title', 'for': 'widget.' + this.cbid(section_id) }, [ this.titleFn('title', section_id) ]) : '',
				field
			]);
		}, this));
	},

	parse: function(section_id) {
		const active = this.isActive(section_id);

		if (active && !this.isValid(section_id)) {
			const title = this.stripTags(this.title).trim();
			return Promise.reject(new TypeError(
				_('Option "%s" contains an invalid input value.').format(title || this.option) + ' ' + this.getValidationError(section_id)));
		}

		if (active) {
			const cval = this.cfgvalue(section_id);
			const fval = this.formvalue(section_id);

			if (fval == null || fval == '') {
				if (this.rmempty || this.optional)
					return Promise.resolve(this.remove(section_id));
				const title = this.stripTags(this.title).trim();
				return Promise.reject(new TypeError(_('Option "%s" must not be empty.').format(title || this.option)));
			}
			else if (this.forcewrite || !isEqual(cval, fval)) {
				return Promise.resolve(this.write(section_id, fval));
			}
		}
		else if (!this.retain) {
			return Promise.resolve(this.remove(section_id));
		}
		return Promise.resolve();
	},

	write: function(section_id, formvalue) {
		return this.map.data.set(this.uciconfig || this.section.uciconfig || this.map.config,
			this.ucisection || section_id, this.ucioption || this.option, formvalue);
	},

	remove: function(section_id) {
		return this.map.data.unset(this.uciconfig || this.section.uciconfig || this.map.config,
			this.ucisection || section_id, this.ucioption || this.option);
	}
});

const CBIValue = CBIAbstractValue.extend({
	__name__: 'CBI.Value',

	value: function(key, val) {
		this.keylist = this.keylist || [];
		this.keylist.push(String(key));
		this.vallist = this.vallist || [];
		this.vallist.push(val != null ? val : key);
	},

	choices: function() {
		if (!this.keylist)
			return null;
		const c = {};
		this.keylist.forEach(L.bind(function(k, i) { c[k] = this.vallist[i]; }, this));
		return c;
	},

	renderWidget: function(section_id, option_index, cfgvalue) {
		const widget = new ui.Textfield((cfgvalue != null) ? cfgvalue : this.default, {
			id: this.cbid(section_id),
			optional: this.optional || this.rmempty,
			datatype: this.datatype,
			validate: L.bind(this.validate, this, section_id),
			placeholder: this.placeholder,
			password: this.password,
			readonly: this.readonly,
			disabled: this.readonly != null ? this.readonly : this.map.readonly
		});
		return widget.render();
	}
});

const CBIDynamicList = CBIValue.extend({
	__name__: 'CBI.DynamicList',

	renderWidget: function(section_id, option_index, cfgvalue) {
		const value = (cfgvalue != null) ? cfgvalue : this.default;
		const widget = new ui.DynamicList(L.toArray(value), this.choices(), {
			id: this.cbid(section_id),
			sort: this.keylist,
			optional: this.optional || this.rmempty,
			datatype: this.datatype,
			placeholder: this.placeholder,
			validate: L.bind(this.validate, this, section_id),
			disabled: this.readonly != null ? this.readonly : this.map.readonly
		});
		return widget.render();
	},

	textvalue: function(section_id) {
		const v = this.cfgvalue(section_id);
		return L.toArray(v != null ? v : this.default).join(', ');
	}
});

const CBIListValue = CBIValue.extend({
	__name__: 'CBI.ListValue',

	__init__: function() {
		this.super('__init__', Array.prototype.slice.call(arguments));
		this.widget = 'select';
		this.deplist = [];
	},

	renderWidget: function(section_id, option_index, cfgvalue) {
		const widget = new ui.Select((cfgvalue != null) ? cfgvalue : this.default, this.choices(), {
			id: this.cbid(section_id),
			sort: this.keylist,
			optional: this.optional,
			placeholder: this.placeholder,
			validate: L.bind(this.validate, this, section_id),
			disabled: this.readonly != null ? this.readonly : this.map.readonly
		});
		return widget.render();
	},

	textvalue: function(section_id) {
		let cval = this.cfgvalue(section_id);
		if (cval == null)
			cval = this.default;
		const c = this.choices() || {};
		return c[cval] != null ? String(c[cval]) : (cval != null ? String(cval) : '');
	}
});

const CBIFlag = CBIValue.extend({
	__name__: 'CBI.Flag',

	__init__: function() {
		this.super('__init__', Array.prototype.slice.call(arguments));
		this.enabled = '1';
		this.disabled = '0';
		this.default = this.disabled;
	},

	renderWidget: function(section_id, option_index, cfgvalue) {
		const widget = new ui.Checkbox((cfgvalue != null) ? cfgvalue : this.default, {
			id: this.cbid(section_id),
			value_enabled: this.enabled,
			value_disabled: this.disabled,
			validate: L.bind(this.validate, this, section_id),
			disabled: this.readonly != null ? this.readonly : this.map.readonly
		});
		return widget.render();
	},

	formvalue: function(section_id) {
		const elem = this.getUIElement(section_id);
		return (elem && elem.isChecked()) ? this.enabled : this.disabled;
	},

	textvalue: function(section_id) {
		let cval = this.cfgvalue(section_id);
		if (cval == null)
			cval = this.default;
		return (cval == this.enabled) ? _('Yes') : _('No');
	},

	parse: function(section_id) {
		if (this.isActive(section_id)) {
			const fval = this.formvalue(section_id);
			if (!this.isValid(section_id)) {
				const title = this.stripTags(this.title).trim();
				return Promise.reject(new TypeError(
					_('Option "%s" contains an invalid input value.').format(title || this.option) + ' ' + this.getValidationError(section_id)));
			}
			if (fval == this.default && (this.optional || this.rmempty))
				return Promise.resolve(this.remove(section_id));
			return Promise.resolve(this.write(section_id, fval));
		}
		else if (!this.retain) {
			return Promise.resolve(this.remove(section_id));
		}
		return Promise.resolve();
	}
});

const CBIDummyValue = CBIValue.extend({
	__name__: 'CBI.DummyValue',

	renderWidget: function(section_id, option_index, cfgvalue) {
		const value = (cfgvalue != null) ? cfgvalue : this.default;
		const node = E('div', { 'id': this.cbid(section_id) }, [ this.rawhtml ? '' : String(value != null ? value : '') ]);
		if (this.rawhtml)
			node.innerHTML = value;
		return node;
	},

	remove: function() {},
	write: function() {}
});

return baseclass.extend({
	Map: CBIMap,
	AbstractSection: CBIAbstractSection,
	NamedSection: CBINamedSection,
	TypedSection: CBITypedSection,
	TableSection: CBITableSection,
	GridSection: CBIGridSection,
	AbstractValue: CBIAbstractValue,
	Value: CBIValue,
	DynamicList: CBIDynamicList,
	ListValue: CBIListValue,
	Flag: CBIFlag,
	DummyValue: CBIDummyValue
});
