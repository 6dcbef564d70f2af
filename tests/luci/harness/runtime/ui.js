'use strict';
'require validation';
'require baseclass';
'require dom';
'require rpc';

/*
 * MOCK of LuCI's ui.js: the widgets form.js renders (Textfield, Checkbox, Select, DynamicList),
 * validators bound to keyup/blur, modal dialogs, notifications, tab groups, button handlers and
 * the "apply changes" step. Markup and class names follow LuCI's so the app's pages look and
 * behave as on a router. Validation messages float under the field while it is invalid (LuCI
 * shows the same text as a tooltip).
 */

const callApply = rpc.declare({ object: 'uci', method: 'apply', params: [ 'timeout', 'rollback' ] });
const callConfirm = rpc.declare({ object: 'uci', method: 'confirm' });

const UIElement = baseclass.extend({
	__name__: 'UIElement',

	getValue: function() {
		if (dom.matches(this.node, 'select') || dom.matches(this.node, 'input'))
			return this.node.value;
		return null;
	},

	setValue: function(value) {
		if (dom.matches(this.node, 'select') || dom.matches(this.node, 'input'))
			this.node.value = value;
	},

	isValid: function() {
		return (this.validState !== false);
	},

	getValidationError: function() {
		return this.validationError || '';
	},

	triggerValidation: function() {
		if (typeof this.validate != 'function')
			return false;
		const wasValid = this.isValid();
		this.validate();
		return (wasValid != this.isValid());
	},

	registerEvents: function(targetNode, synevent, events) {
		const dispatch = [];
		for (let i = 0; i < events.length; i++)
			targetNode.addEventListener(events[i], function(ev) {
				dispatch.forEach(function(n) {
					n.dispatchEvent(new CustomEvent(synevent, { bubbles: true }));
				});
			});
		dispatch.push(targetNode);
	},

	setUpdateEvents: function(targetNode) {
		const events = Array.prototype.slice.call(arguments, 1);
		const datatype = this.options.datatype;
		const optional = Object.prototype.hasOwnProperty.call(this.options, 'optional') ? this.options.optional : true;
		const validate = this.options.validate;
		const self = this;

		this.registerEvents(targetNode, 'widget-update', events);

		if (!datatype && !validate)
			return;

		this.validate = UI.prototype.addValidator.apply(UI.prototype,
			[ targetNode, datatype || 'string', optional, validate ].concat(events));

		this.node.addEventListener('validation-success', function() {
			self.validState = true;
			self.validationError = '';
			showFieldError(self.node, null);
		});
		this.node.addEventListener('validation-failure', function(ev) {
			self.validState = false;
			self.validationError = ev.detail.message;
			showFieldError(self.node, ev.detail.message);
		});
	},

	setChangeEvents: function(targetNode) {
		this.registerEvents(targetNode, 'widget-change', Array.prototype.slice.call(arguments, 1));
	}
});

function showFieldError(node, message) {
	let el = node.querySelector(':scope > .cbi-value-error');
	if (message == null) {
		if (el)
			el.remove();
		return;
	}
	if (!el)
		el = node.appendChild(E('div', { 'class': 'cbi-value-error' }));
	el.textContent = message;
}

const UITextfield = UIElement.extend({
	__name__: 'UITextfield',

	__init__: function(value, options) {
		this.value = value;
		this.options = Object.assign({ optional: true, password: false }, options);
	},

	render: function() {
		const frameEl = E('div', { 'id': this.options.id });
		const inputEl = E('input', {
			'id': this.options.id ? 'widget.' + this.options.id : null,
			'name': this.options.name,
			'type': this.options.password ? 'password' : 'text',
			'class': this.options.password ? 'cbi-input-password' : 'cbi-input-text',
			'readonly': this.options.readonly ? '' : null,
			'disabled': this.options.disabled ? '' : null,
			'maxlength': this.options.maxlength,
			'placeholder': this.options.placeholder,
			'autocomplete': this.options.password ? 'new-password' : null,
			'value': this.value
		});

		if (this.options.password) {
			frameEl.classList.add('control-group');
			frameEl.appendChild(inputEl);
			frameEl.appendChild(E('button', {
				'class': 'cbi-button cbi-button-neutral',
				'title': _('Reveal/hide password'),
				'aria-label': _('Reveal/hide password'),
				'type': 'button',
				'click': function(ev) {
					inputEl.type = (inputEl.type == 'password') ? 'text' : 'password';
					ev.preventDefault();
				}
			}, [ '∗' ]));
		}
		else {
			frameEl.appendChild(inputEl);
		}

		this.node = frameEl;
		this.setUpdateEvents(inputEl, 'keyup', 'blur');
		this.setChangeEvents(inputEl, 'change');
		dom.bindClassInstance(frameEl, this);
		return frameEl;
	},

	getValue: function() {
		return this.node.querySelector('input').value;
	},

	setValue: function(value) {
		this.node.querySelector('input').value = (value != null) ? value : '';
	}
});

const UICheckbox = UIElement.extend({
	__name__: 'UICheckbox',

	__init__: function(value, options) {
		this.value = value;
		this.options = Object.assign({ value_enabled: '1', value_disabled: '0' }, options);
	},

	render: function() {
		const id = 'cb%08x'.format(Math.floor(Math.random() * 0xffffffff));
		const frameEl = E('div', { 'id': this.options.id, 'class': 'cbi-checkbox' });
		frameEl.appendChild(E('input', {
			'id': this.options.id ? 'widget.' + this.options.id : id,
			'name': this.options.name,
			'type': 'checkbox',
			'value': this.options.value_enabled,
			'checked': (this.value == this.options.value_enabled) ? '' : null,
			'disabled': this.options.disabled ? '' : null
		}));
		frameEl.appendChild(E('label', { 'for': this.options.id ? 'widget.' + this.options.id : id }));
		this.node = frameEl;
		this.setUpdateEvents(frameEl.firstChild, 'click', 'blur');
		this.setChangeEvents(frameEl.firstChild, 'change');
		dom.bindClassInstance(frameEl, this);
		return frameEl;
	},

	isChecked: function() {
		return this.node.querySelector('input[type="checkbox"]').checked;
	},

	getValue: function() {
		return this.isChecked() ? this.options.value_enabled : this.options.value_disabled;
	},

	setValue: function(value) {
		this.node.querySelector('input[type="checkbox"]').checked = (value == this.options.value_enabled);
	}
});

const UISelect = UIElement.extend({
	__name__: 'UISelect',

	__init__: function(value, choices, options) {
		this.value = value;
		this.choices = choices || {};
		this.options = Object.assign({ optional: true, sort: false }, options);
	},

	render: function() {
		const frameEl = E('div', { 'id': this.options.id });
		const keys = Array.isArray(this.options.sort) ? this.options.sort : Object.keys(this.choices);
		const sel = E('select', {
			'id': this.options.id ? 'widget.' + this.options.id : null,
			'name': this.options.name,
			'class': 'cbi-input-select',
			'disabled': this.options.disabled ? '' : null
		});
		if (this.options.optional)
			sel.appendChild(E('option', { 'value': '' }, [ this.options.placeholder || _('-- Please choose --') ]));
		keys.forEach(L.bind(function(k) {
			sel.appendChild(E('option', {
				'value': k,
				'selected': (k == this.value) ? '' : null
			}, [ this.choices[k] || k ]));
		}, this));
		frameEl.appendChild(sel);
		this.node = frameEl;
		this.setUpdateEvents(sel, 'change', 'click', 'blur');
		this.setChangeEvents(sel, 'change');
		dom.bindClassInstance(frameEl, this);
		return frameEl;
	},

	getValue: function() {
		return this.node.querySelector('select').value;
	},

	setValue: function(value) {
		this.node.querySelector('select').value = value;
	}
});

const UIDynamicList = UIElement.extend({
	__name__: 'UIDynamicList',

	__init__: function(values, choices, options) {
		this.values = L.toArray(values).slice();
		this.choices = choices;
		this.options = Object.assign({}, options, { multiple: false, optional: true });
	},

	render: function() {
		const dl = E('div', { 'id': this.options.id, 'class': 'cbi-dynlist' });
		this.node = dl;
		this.values.forEach(L.bind(function(v) { this.addItem(dl, v); }, this));

		const input = E('input', {
			'id': this.options.id ? 'widget.' + this.options.id : null,
			'type': 'text',
			'class': 'cbi-input-text',
			'placeholder': this.options.placeholder || _('Add an entry'),
			'disabled': this.options.disabled ? '' : null
		});
		const addBtn = E('div', {
			'class': 'cbi-button cbi-button-add',
			'title': _('Add'),
			'role': 'button',
			'tabindex': 0
		}, [ '+' ]);
		dl.appendChild(E('div', { 'class': 'add-item control-group' }, [ input, addBtn ]));

		const self = this;
		const add = function() {
			const v = input.value.trim();
			if (v === '' || input.classList.contains('cbi-input-invalid'))
				return;
			if (self.getItems().indexOf(v) < 0)
				self.addItem(dl, v);
			input.value = '';
			dl.dispatchEvent(new CustomEvent('cbi-dynlist-change', { bubbles: true }));
		};
		input.addEventListener('keydown', function(ev) {
			if (ev.key == 'Enter') {
				ev.preventDefault();
				if (typeof self.validate == 'function')
					self.validate();
				add();
			}
		});
		addBtn.addEventListener('click', function() {
			if (typeof self.validate == 'function')
				self.validate();
			add();
		});

		this.setUpdateEvents(input, 'keyup', 'blur');
		this.setChangeEvents(dl, 'cbi-dynlist-change');
		dom.bindClassInstance(dl, this);
		return dl;
	},

	addItem: function(dl, value) {
		const item = E('div', { 'class': 'item', 'data-value': value }, [
			E('span', {}, [ value ]),
			E('input', { 'type': 'hidden', 'value': value }),
			E('span', { 'class': 'remove', 'title': _('Remove'), 'role': 'button' }, [ '×' ])
		]);
		item.querySelector('.remove').addEventListener('click', function() {
			item.remove();
			dl.dispatchEvent(new CustomEvent('cbi-dynlist-change', { bubbles: true }));
		});
		const ai = dl.querySelector('.add-item');
		dl.insertBefore(item, ai);
	},

	getItems: function() {
		return Array.prototype.map.call(this.node.querySelectorAll('.item > input[type="hidden"]'),
			function(i) { return i.value; });
	},

	/* Like LuCI: a valid entry still typed in the input counts as a list item on save. */
	getValue: function() {
		const v = this.getItems();
		const input = this.node.querySelector('.add-item > input[type="text"]');
		if (input && /\S/.test(input.value) && !input.classList.contains('cbi-input-invalid') &&
		    v.indexOf(input.value.trim()) < 0)
			v.push(input.value.trim());
		return v;
	},

	setValue: function(values) {
		this.node.querySelectorAll('.item').forEach(function(i) { i.remove(); });
		L.toArray(values).forEach(L.bind(function(v) { this.addItem(this.node, v); }, this));
	}
});

let modalDiv = null;

const UI = baseclass.extend({
	__name__: 'UI',

	Textfield: UITextfield,
	Checkbox: UICheckbox,
	Select: UISelect,
	DynamicList: UIDynamicList,
	AbstractElement: UIElement,

	addValidator: function(field, type, optional, vfunc) {
		if (type == null)
			return;
		const events = Array.prototype.slice.call(arguments, 4);
		if (events.length == 0)
			events.push('blur', 'keyup');
		const vldtr = validation.create(field, type, optional, vfunc);
		const validatorFn = L.bind(vldtr.validate, vldtr);
		events.forEach(function(e) { field.addEventListener(e, validatorFn); });
		return validatorFn;
	},

	createHandlerFn: function(ctx, fn) {
		const args = Array.prototype.slice.call(arguments, 2);
		if (typeof fn == 'string')
			fn = ctx[fn];
		if (typeof fn != 'function')
			return null;
		return function(ev) {
			const btn = ev.currentTarget;
			const rv = fn.apply(ctx, args.concat([ ev ]));
			if (rv && typeof rv.then == 'function' && btn && btn.classList) {
				btn.classList.add('spinning');
				btn.disabled = true;
				rv.catch(function() {}).then(function() {
					btn.classList.remove('spinning');
					btn.disabled = false;
				});
			}
			return rv;
		};
	},

	showModal: function(title, children) {
		if (!modalDiv) {
			modalDiv = document.body.appendChild(E('div', { 'id': 'modal_overlay' }, [
				E('div', { 'class': 'modal', 'role': 'dialog', 'aria-modal': 'true' })
			]));
		}
		const dlg = modalDiv.firstElementChild;
		dom.content(dlg, null);
		if (title)
			dlg.appendChild(E('h4', {}, [ title ]));
		dom.append(dlg, children);
		document.body.classList.add('modal-overlay-active');
		return dlg;
	},

	hideModal: function() {
		document.body.classList.remove('modal-overlay-active');
	},

	addNotification: function(title, children, classes) {
		const mc = document.getElementById('maincontent') || document.body;
		const msg = E('div', { 'class': 'alert-message fade-in' }, [
			E('div', { 'class': 'alert-content' }, [ title ? E('h4', {}, [ title ]) : '', children ]),
			E('button', { 'class': 'btn', 'click': function() { msg.remove(); } }, [ _('Dismiss') ])
		]);
		L.toArray(classes).forEach(function(c) { msg.classList.add(c); });
		mc.insertBefore(msg, mc.firstElementChild);
		return msg;
	},

	tabs: {
		/* One tab per pane carrying data-tab/data-tab-title, as LuCI's Map.tabbed renders. */
		initTabGroup: function(panes) {
			panes = Array.prototype.filter.call(panes, function(p) {
				return p.nodeType == 1 && p.getAttribute('data-tab');
			});
			if (!panes.length)
				return;
			const group = panes[0].parentNode;
			const menu = E('ul', { 'class': 'cbi-tabmenu' });
			const select = function(name) {
				panes.forEach(function(p) {
					const on = p.getAttribute('data-tab') == name;
					p.setAttribute('data-tab-active', on ? 'true' : 'false');
					p.style.display = on ? '' : 'none';
				});
				menu.querySelectorAll('li').forEach(function(li) {
					li.className = li.getAttribute('data-tab') == name ? 'cbi-tab' : 'cbi-tab-disabled';
				});
				group.setAttribute('data-active-tab', name);
			};
			panes.forEach(function(p) {
				const name = p.getAttribute('data-tab');
				menu.appendChild(E('li', { 'data-tab': name }, [
					E('a', { 'href': '#', 'click': function(ev) { ev.preventDefault(); select(name); } },
						[ p.getAttribute('data-tab-title') || name ])
				]));
			});
			group.parentNode.insertBefore(menu, group);
			const prev = group.getAttribute('data-active-tab');
			select(panes.some(function(p) { return p.getAttribute('data-tab') == prev; }) ? prev : panes[0].getAttribute('data-tab'));
		}
	},

	changes: {
		/* LuCI's apply: commit with rollback, then confirm from the browser. */
		apply: function(checked) {
			return callApply(10, !!checked).then(function(rv) {
				if (rv != 0)
					throw new Error(_('Apply request failed with status <code>%h</code>').format(rv));
				return callConfirm();
			}).then(function() {
				UI.prototype.addNotification(null, E('p', {}, [ _('Configuration changes applied.') ]), 'info');
			}).catch(function(e) {
				UI.prototype.addNotification(null, E('p', {}, [ String(e.message || e) ]), 'danger');
			});
		}
	}
});

return UI;
