// hyco-ws sender: send a text and a 70,000-byte binary message, check the echoes.
// Without SUBPROTOCOLS it uses WS.relayedConnect (the documented sender API); with
// SUBPROTOCOLS=a,b it builds the same socket with `new WS(uri, protocols, {headers})`, since
// relayedConnect cannot offer subprotocols, and reports the one the listener chose.
'use strict';
const WS = require('hyco-ws');
const crypto = require('crypto');
const { tokenSource, log } = require('./common');

const uri = `${process.env.RELAY_BASE}/$hc/${process.env.ENTITY}?sb-hc-action=connect`;
const token = tokenSource(WS.createRelayToken, uri)();
const binary = crypto.randomBytes(70000);
const got = [];
const onOpen = (ws) => {
  ws.send('hello from node');
  ws.send(binary, { binary: true });
};
let client;
if (process.env.SUBPROTOCOLS) {
  client = new WS(uri, process.env.SUBPROTOCOLS.split(','), { headers: { ServiceBusAuthorization: token } });
  client.on('open', () => onOpen(client));
} else {
  client = WS.relayedConnect(uri, token, onOpen);
}
client.on('message', (data, flags) => {
  got.push({ binary: !!(flags && flags.binary), data });
  if (got.length === 2) {
    const ok = got[0].data === 'hello from node' && !got[0].binary &&
      got[1].binary && Buffer.compare(Buffer.from(got[1].data), binary) === 0;
    log({ event: 'done', ok, protocol: client.protocol || null });
    client.close(1000, 'bye');
  }
});
client.on('close', () => process.exit(0));
client.on('error', (e) => { log({ event: 'error', message: String(e && e.message || e) }); process.exit(1); });
setTimeout(() => { log({ event: 'timeout' }); process.exit(2); }, 15000);
