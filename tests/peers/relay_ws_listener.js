// hyco-ws listener that echoes every message (text stays text, binary stays binary).
// Env: RELAY_LISTEN_URI (wss://127.0.0.1:PORT/$hc/ENTITY?sb-hc-action=listen), RELAY_KEY_NAME, RELAY_KEY.
// Prints "listening" once the control channel is up; stops on SIGTERM or stdin EOF.
const WS = require('hyco-ws');
const uri = process.env.RELAY_LISTEN_URI;
const token = () => WS.createRelayToken(uri, process.env.RELAY_KEY_NAME, process.env.RELAY_KEY);
let announced = false;
const server = WS.createRelayedServer({ server: uri, token }, (ws) => {
  ws.on('message', (m, flags) => {
    if (ws.readyState === 1) ws.send(m, { binary: !!(flags && flags.binary) });
  });
  ws.on('error', () => {});
});
server.on('listening', () => { if (!announced) { announced = true; console.log('listening'); } });
server.on('error', (e) => { console.error('listener error: ' + (e && e.message)); });
const stop = () => { try { server.close(); } catch (e) {} process.exit(0); };
process.on('SIGTERM', stop);
process.stdin.on('end', stop);
process.stdin.resume();
