// hyco-ws sender: relayedConnect, send a text and a 70,000-byte binary message, check the echoes.
'use strict';
const WS = require('hyco-ws');
const crypto = require('crypto');
const { tokenSource, log } = require('./common');

const uri = `${process.env.RELAY_BASE}/$hc/${process.env.ENTITY}?sb-hc-action=connect`;
const token = tokenSource(WS.createRelayToken, uri)();
const binary = crypto.randomBytes(70000);
const got = [];
const client = WS.relayedConnect(uri, token, (ws) => {
  ws.send('hello from node');
  ws.send(binary, { binary: true });
});
client.on('message', (data, flags) => {
  got.push({ binary: !!(flags && flags.binary), data });
  if (got.length === 2) {
    const ok = got[0].data === 'hello from node' && !got[0].binary &&
      got[1].binary && Buffer.compare(Buffer.from(got[1].data), binary) === 0;
    log({ event: 'done', ok });
    client.close(1000, 'bye');
  }
});
client.on('close', () => process.exit(0));
client.on('error', (e) => { log({ event: 'error', message: String(e && e.message || e) }); process.exit(1); });
setTimeout(() => { log({ event: 'timeout' }); process.exit(2); }, 15000);
