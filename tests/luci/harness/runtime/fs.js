'use strict';
'require rpc';
'require baseclass';

/*
 * MOCK of LuCI's fs.js: only `read`, through ubus `file read`, failing with the same error
 * names LuCI uses (NotFoundError, PermissionError, ...).
 */

const errorNames = [ null, 'InvalidCommandError', 'InvalidArgumentError', 'MethodNotFoundError',
	'NotFoundError', 'NoDataError', 'PermissionError', 'TimeoutError', 'UnsupportedError' ];

const callFileRead = rpc.declare({ object: 'file', method: 'read', params: [ 'path' ] });

function handleReply(rc) {
	if (typeof rc == 'number' && rc != 0) {
		const e = new Error(rpc.getStatusText(rc));
		e.name = errorNames[rc] || 'Error';
		throw e;
	}
	return (rc && typeof rc.data == 'string') ? rc.data : '';
}

return baseclass.extend({
	__name__: 'LuCI.fs',

	read: function(path) {
		return callFileRead(path).then(handleReply);
	},

	trimmed: function(path) {
		return L.resolveDefault(this.read(path), '').then(function(s) { return s.trim(); });
	}
});
