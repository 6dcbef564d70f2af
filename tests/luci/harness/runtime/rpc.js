'use strict';
'require baseclass';

/*
 * MOCK of LuCI's rpc.js: ubus calls as JSON-RPC 2.0 over HTTP POST to L.env.ubuspath, with the
 * reply handling views rely on (status code instead of data when ubus fails, `expect` defaults,
 * `filter`, `reject`). rpcd cannot run here; the test server answers instead.
 */

let rpcRequestID = 1;

const statusText = {
	0: 'Command OK', 1: 'Invalid command', 2: 'Invalid argument', 3: 'Method not found',
	4: 'Resource not found', 5: 'No data received', 6: 'Permission denied', 7: 'Request timeout',
	8: 'Not supported', 9: 'Unspecified error', 10: 'Connection lost'
};

return baseclass.extend({
	__name__: 'LuCI.rpc',

	call: function(req) {
		return fetch(L.env.ubuspath, {
			method: 'POST',
			headers: { 'Content-Type': 'application/json' },
			body: JSON.stringify(req)
		}).then(function(res) {
			if (!res.ok)
				L.raise('RPCError', 'RPC call failed with HTTP error %d: %s', res.status, res.statusText);
			return res.json();
		});
	},

	declare: function(options) {
		const self = this;
		return function() {
			const params = {};
			const args = Array.prototype.slice.call(arguments);
			(options.params || []).forEach(function(p, i) {
				if (args[i] !== undefined)
					params[p] = args[i];
			});
			const req = {
				jsonrpc: '2.0',
				id: rpcRequestID++,
				method: 'call',
				params: [ L.env.sessionid, options.object, options.method, params ]
			};
			return self.call(req).then(function(msg) {
				let ret;
				if (msg.error)
					L.raise('RPCError', 'RPC call to %s/%s failed with error %d: %s',
						options.object, options.method, msg.error.code, msg.error.message);
				const status = Array.isArray(msg.result) ? msg.result[0] : 9;
				if (status != 0) {
					if (options.reject)
						L.raise('RPCError', 'RPC call to %s/%s failed with ubus code %d: %s',
							options.object, options.method, status, statusText[status] || 'Unknown');
					ret = status;
				}
				else {
					ret = msg.result.length > 1 ? msg.result[1] : msg.result[0];
					if (options.expect) {
						const key = Object.keys(options.expect)[0];
						const dflt = options.expect[key];
						if (key !== '')
							ret = (ret != null && typeof ret == 'object') ? ret[key] : undefined;
						if (ret == null || (dflt != null && (Array.isArray(dflt) != Array.isArray(ret) || typeof dflt != typeof ret)))
							ret = dflt;
					}
				}
				if (typeof options.filter == 'function')
					ret = options.filter(ret, params);
				return ret;
			});
		};
	},

	getStatusText: function(code) {
		return statusText[code] || 'Unknown error';
	}
});
