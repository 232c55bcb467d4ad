// hyco-ws listener that echoes every message (text stays text, binary stays binary).
'use strict';
const WS = require('hyco-ws');
const { tokenSource, log } = require('./common');

const uri = `${process.env.RELAY_BASE}/$hc/${process.env.ENTITY}?sb-hc-action=listen`;
const server = WS.createRelayedServer({ server: uri, token: tokenSource(WS.createRelayToken, uri) }, (ws) => {
  ws.on('message', (data, flags) => ws.send(data, { binary: !!(flags && flags.binary) }));
  ws.on('error', (e) => log({ event: 'socket-error', message: String(e) }));
});
server.on('listening', () => log({ event: 'listening' }));
server.on('error', (e) => log({ event: 'error', message: String(e && e.message || e) }));
// Stop on SIGTERM or when the test closes our stdin (so no peer outlives a crashed test run).
const stop = () => { try { server.close(); } catch (e) { /* already closed */ } process.exit(0); };
process.on('SIGTERM', stop);
process.stdin.on('end', stop);
process.stdin.resume();
