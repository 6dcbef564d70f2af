'use strict';
'require baseclass';

/*
 * MOCK of LuCI's validation.js: the datatype expressions ("and(uinteger,range(1,300))",
 * 'ipaddr("nomask")', ...) with LuCI's semantics and LuCI's English messages ("Expecting: ...").
 * Written for the tests from LuCI's documented datatypes; only the types the app uses and their
 * building blocks are implemented. An unknown type is an error, as in LuCI.
 */

function parseInteger(x) {
	return /^-?\d+$/.test(x) ? +x : NaN;
}

function parseDecimal(x) {
	return /^-?\d+(?:\.\d+)?$/.test(x) ? +x : NaN;
}

function parseIPv4(x) {
	const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(x);
	if (!m)
		return null;
	const parts = m.slice(1).map(Number);
	return parts.every(function(p) { return p <= 255; }) ? parts : null;
}

function parseIPv6(x) {
	let s = x;
	const v4 = /^(.*:)(\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3})$/.exec(s);
	if (v4) {
		const p = parseIPv4(v4[2]);
		if (!p)
			return null;
		s = v4[1] + ((p[0] << 8) | p[1]).toString(16) + ':' + ((p[2] << 8) | p[3]).toString(16);
	}
	if (!/^[0-9a-fA-F:]+$/.test(s))
		return null;
	const halves = s.split('::');
	if (halves.length > 2)
		return null;
	const head = halves[0] ? halves[0].split(':') : [];
	const tail = halves.length == 2 && halves[1] ? halves[1].split(':') : [];
	const groups = head.concat(tail);
	if (groups.some(function(g) { return !/^[0-9a-fA-F]{1,4}$/.test(g); }))
		return null;
	if (halves.length == 2 ? groups.length > 7 : groups.length != 8)
		return null;
	const words = head.map(function(g) { return parseInt(g, 16); });
	for (let i = groups.length; i < 8; i++)
		words.push(0);
	return words.concat(tail.map(function(g) { return parseInt(g, 16); }));
}

/* Compiles "a(b,c(1,'x')),d" into [fn, args, fn, args, ...] like LuCI's validator stack. */
function compile(types, code) {
	const stack = [];
	let pos = 0, depth = 0, esc = false;
	code += ',';
	for (let i = 0; i < code.length; i++) {
		const ch = code.charAt(i);
		if (esc) {
			esc = false;
			continue;
		}
		if (ch == '\\') {
			esc = true;
		}
		else if (ch == '(' || ch == ',') {
			if (depth <= 0) {
				if (pos < i) {
					const label = code.substring(pos, i).replace(/\\(.)/g, '$1').trim();
					if (label !== '' && !isNaN(label))
						stack.push(parseFloat(label));
					else if (/^(['"]).*\1$/.test(label))
						stack.push(label.slice(1, -1));
					else if (typeof types[label] == 'function')
						stack.push(types[label], null);
					else
						L.raise('SyntaxError', 'Unhandled token "%s"', label);
				}
				pos = i + 1;
			}
			if (ch == '(')
				depth++;
		}
		else if (ch == ')') {
			if (--depth <= 0) {
				if (typeof stack[stack.length - 2] != 'function')
					L.raise('SyntaxError', 'Argument list follows non-function');
				stack[stack.length - 1] = compile(types, code.substring(pos, i));
				pos = i + 1;
			}
		}
	}
	return stack;
}

const Validator = baseclass.extend({
	__name__: 'Validation',

	__init__: function(field, type, optional, vfunc, factory) {
		this.field = field;
		this.optional = optional;
		this.vfunc = vfunc;
		this.factory = factory;
		this.vstack = compile(factory.types, type);
	},

	assert: function(condition, message) {
		if (!condition) {
			this.field.classList.add('cbi-input-invalid');
			this.error = message;
			return false;
		}
		this.field.classList.remove('cbi-input-invalid');
		this.error = null;
		return true;
	},

	apply: function(name, value, args) {
		const func = typeof name == 'function' ? name : this.factory.types[name];
		if (typeof func != 'function')
			return false;
		if (value != null)
			this.value = value;
		return func.apply(this, args || []);
	},

	fail: function(message) {
		this.field.classList.add('cbi-input-invalid');
		this.field.setAttribute('data-tooltip', message);
		this.field.setAttribute('data-tooltip-style', 'error');
		this.field.dispatchEvent(new CustomEvent('validation-failure', { bubbles: true, detail: { message: message } }));
		return false;
	},

	validate: function() {
		this.field.classList.remove('cbi-input-invalid');
		this.value = (this.field.value != null) ? String(this.field.value) : '';
		this.error = null;

		let valid;
		if (this.value.length === 0)
			valid = this.assert(this.optional, _('non-empty value'));
		else
			valid = this.vstack[0].apply(this, this.vstack[1] || []);

		if (valid !== true)
			return this.fail(_('Expecting: %s').format(this.error));

		if (typeof this.vfunc == 'function')
			valid = this.vfunc(this.value);

		if (valid !== true)
			return this.fail(typeof valid == 'string' ? valid : _('Invalid value'));

		this.field.removeAttribute('data-tooltip');
		this.field.removeAttribute('data-tooltip-style');
		this.field.dispatchEvent(new CustomEvent('validation-success', { bubbles: true }));
		return true;
	}
});

return baseclass.extend({
	__name__: 'ValidatorFactory',

	create: function(field, type, optional, vfunc) {
		return new Validator(field, type, optional, vfunc, this);
	},

	compile: function(code) {
		return compile(this.types, code);
	},

	parseIPv4: parseIPv4,
	parseIPv6: parseIPv6,

	types: {
		integer: function() {
			return this.assert(!isNaN(parseInteger(this.value)), _('valid integer value'));
		},
		uinteger: function() {
			return this.assert(parseInteger(this.value) >= 0, _('positive integer value'));
		},
		float: function() {
			return this.assert(!isNaN(parseDecimal(this.value)), _('valid decimal value'));
		},
		ufloat: function() {
			return this.assert(parseDecimal(this.value) >= 0, _('positive decimal value'));
		},
		string: function() {
			return true;
		},
		ipaddr: function(nomask) {
			return this.assert(this.apply('ip4addr', null, [ nomask ]) || this.apply('ip6addr', null, [ nomask ]),
				nomask ? _('valid IP address') : _('valid IP address or prefix'));
		},
		ip4addr: function(nomask) {
			const m = (nomask ? /^(\d+\.\d+\.\d+\.\d+)$/ : /^(\d+\.\d+\.\d+\.\d+)(?:\/(\d+\.\d+\.\d+\.\d+)|\/(\d{1,2}))?$/).exec(this.value);
			return this.assert(m != null && parseIPv4(m[1]) != null &&
				(m[2] ? parseIPv4(m[2]) != null : (m[3] ? +m[3] <= 32 : true)),
				nomask ? _('valid IPv4 address') : _('valid IPv4 address or network'));
		},
		ip6addr: function(nomask) {
			const m = (nomask ? /^([0-9a-fA-F:.]+)$/ : /^([0-9a-fA-F:.]+)(?:\/(\d{1,3}))?$/).exec(this.value);
			return this.assert(m != null && parseIPv6(m[1]) != null && (m[2] ? +m[2] <= 128 : true),
				nomask ? _('valid IPv6 address') : _('valid IPv6 address or prefix'));
		},
		cidr: function(negative) {
			return this.assert(this.apply('cidr4', null, [ negative ]) || this.apply('cidr6', null, [ negative ]),
				_('valid IPv4 or IPv6 CIDR'));
		},
		cidr4: function(negative) {
			const m = /^(\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3})\/(-)?(\d{1,2})$/.exec(this.value);
			return this.assert(m != null && parseIPv4(m[1]) != null && (negative || !m[2]) && +m[3] <= 32,
				_('valid IPv4 CIDR'));
		},
		cidr6: function(negative) {
			const m = /^([0-9a-fA-F:.]+)\/(-)?(\d{1,3})$/.exec(this.value);
			return this.assert(m != null && parseIPv6(m[1]) != null && (negative || !m[2]) && +m[3] <= 128,
				_('valid IPv6 CIDR'));
		},
		port: function() {
			const p = parseInteger(this.value);
			return this.assert(p >= 0 && p <= 65535, _('valid port value'));
		},
		macaddr: function(multicast) {
			const m = /^([a-fA-F0-9]{2}):([a-fA-F0-9]{2}:){4}[a-fA-F0-9]{2}$/.exec(this.value);
			const isMulticast = m != null && (parseInt(m[1], 16) & 1) == 1;
			return this.assert(m != null && isMulticast == !!multicast,
				multicast ? _('valid multicast MAC address') : _('valid MAC address'));
		},
		hostname: function() {
			const v = this.value;
			return this.assert(v.length <= 253 && (/^[a-zA-Z0-9_]+$/.test(v) ||
				(/^[a-zA-Z0-9_][a-zA-Z0-9_\-.]*[a-zA-Z0-9]\.?$/.test(v) && /[^0-9.]/.test(v))),
				_('valid hostname'));
		},
		host: function(ipv4only) {
			return this.assert(this.apply('hostname') || this.apply(ipv4only == 1 ? 'ip4addr' : 'ipaddr', null, [ 'nomask' ]),
				_('valid hostname or IP address'));
		},
		uciname: function() {
			return this.assert(/^[a-zA-Z0-9_]+$/.test(this.value), _('valid UCI identifier'));
		},
		netdevname: function() {
			const v = this.value;
			if (v == '.' || v == '..')
				return this.assert(false, _('valid network device name, not "." or ".."'));
			return this.assert(/^[^:/%\s]{1,15}$/.test(v),
				_('valid network device name between 1 and 15 characters not containing ":", "/", "%" or spaces'));
		},
		range: function(min, max) {
			const v = parseDecimal(this.value);
			return this.assert(v >= +min && v <= +max, _('value between %f and %f').format(min, max));
		},
		min: function(min) {
			return this.assert(parseDecimal(this.value) >= +min, _('value greater or equal to %f').format(min));
		},
		max: function(max) {
			return this.assert(parseDecimal(this.value) <= +max, _('value smaller or equal to %f').format(max));
		},
		maxlength: function(max) {
			return this.assert(new Blob([ this.value ]).size <= +max, _('value with at most %d characters').format(max));
		},
		minlength: function(min) {
			return this.assert(new Blob([ this.value ]).size >= +min, _('value with at least %d characters').format(min));
		},
		or: function() {
			const errors = [];
			for (let i = 0; i < arguments.length; i += 2) {
				if (typeof arguments[i] != 'function') {
					if (arguments[i] == this.value)
						return this.assert(true);
					errors.push('"%s"'.format(arguments[i]));
					i--;
				}
				else if (arguments[i].apply(this, arguments[i + 1] || [])) {
					return this.assert(true);
				}
				else {
					errors.push(this.error);
				}
			}
			return this.assert(false, _('One of the following: %s').format('\n - ' + errors.join('\n - ')));
		},
		and: function() {
			for (let i = 0; i < arguments.length; i += 2) {
				if (typeof arguments[i] != 'function') {
					if (arguments[i] != this.value)
						return this.assert(false, '"%s"'.format(arguments[i]));
					i--;
				}
				else if (!arguments[i].apply(this, arguments[i + 1] || [])) {
					return false;
				}
			}
			return this.assert(true);
		}
	}
});
