'use strict';
'require rpc';
'require baseclass';

/*
 * MOCK of LuCI's fs.js: only `read` and `exec`, through ubus `file read` / `file exec`, failing
 * with the same error names LuCI uses (NotFoundError, PermissionError, ...). `exec` resolves to
 * { code, stdout, stderr } as LuCI's does.
 */

const errorNames = [ null, 'InvalidCommandError', 'InvalidArgumentError', 'MethodNotFoundError',
	'NotFoundError', 'NoDataError', 'PermissionError', 'TimeoutError', 'UnsupportedError' ];

const callFileRead = rpc.declare({ object: 'file', method: 'read', params: [ 'path' ] });
const callFileExec = rpc.declare({ object: 'file', method: 'exec', params: [ 'command', 'params', 'env' ] });

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

	exec: function(command, params, environ) {
		return callFileExec(command, Array.isArray(params) ? params : null,
			(environ != null && typeof environ == 'object') ? environ : null).then(function(rc) {
			if (typeof rc == 'number' && rc != 0)
				handleReply(rc);
			return rc;
		});
	},

	trimmed: function(path) {
		return L.resolveDefault(this.read(path), '').then(function(s) { return s.trim(); });
	}
});
