// hyco-ws sender (relayedConnect): sends a text message and a binary message of RELAY_BINARY_SIZE
// bytes, expects both echoed back, prints one JSON line with what came back, then closes.
// Env: RELAY_SEND_URI (wss://127.0.0.1:PORT/$hc/ENTITY?sb-hc-action=connect), RELAY_KEY_NAME, RELAY_KEY.
const WS = require('hyco-ws');
const uri = process.env.RELAY_SEND_URI;
const size = parseInt(process.env.RELAY_BINARY_SIZE || '1048576', 10);
const token = WS.createRelayToken(uri, process.env.RELAY_KEY_NAME, process.env.RELAY_KEY);
const result = { text: null, binaryLength: null, binaryOk: false };
const payload = Buffer.alloc(size);
for (let i = 0; i < size; i++) payload[i] = i % 251;
const ws = WS.relayedConnect(uri, token, () => {
  ws.send('hello from node');
});
ws.on('message', (m, flags) => {
  if (flags && flags.binary) {
    result.binaryLength = m.length;
    result.binaryOk = Buffer.compare(m, payload) === 0;
    ws.close();
  } else {
    result.text = m.toString();
    ws.send(payload, { binary: true });
  }
});
ws.on('close', (code) => { result.closeCode = code; console.log(JSON.stringify(result)); process.exit(0); });
ws.on('error', (e) => { console.log(JSON.stringify({ error: e.message })); process.exit(1); });
setTimeout(() => { console.log(JSON.stringify({ error: 'timeout', partial: result })); process.exit(2); }, 20000);
