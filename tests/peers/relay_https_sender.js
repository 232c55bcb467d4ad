// Plain Node https sender (what the hyco-https samples do): POSTs RELAY_BODY_SIZE bytes to
// https://127.0.0.1:PORT/ENTITY/node/path?x=1 with a ServiceBusAuthorization SAS token and prints
// one JSON line {status, via, length, sha, body (first 200 chars)}.
// Env: RELAY_HOST, RELAY_PORT, RELAY_ENTITY, RELAY_KEY_NAME, RELAY_KEY, RELAY_BODY_SIZE.
const https = require('hyco-https');
const crypto = require('crypto');
const host = process.env.RELAY_HOST, port = parseInt(process.env.RELAY_PORT, 10), entity = process.env.RELAY_ENTITY;
const size = parseInt(process.env.RELAY_BODY_SIZE || '11', 10);
const token = https.createRelayToken(https.createRelayHttpsUri(`${host}:${port}`, entity), process.env.RELAY_KEY_NAME, process.env.RELAY_KEY);
const body = Buffer.alloc(size);
for (let i = 0; i < size; i++) body[i] = i % 251;
const req = https.request({
  hostname: host, port, path: `/${entity}/node/path?x=1`, method: 'POST',
  headers: { ServiceBusAuthorization: token, 'X-Custom': 'from-node', 'Content-Length': size },
}, (res) => {
  const chunks = [];
  res.on('data', (c) => chunks.push(c));
  res.on('end', () => {
    const data = Buffer.concat(chunks);
    console.log(JSON.stringify({
      status: res.statusCode, via: res.headers['via'] || null, length: data.length,
      sha: crypto.createHash('sha256').update(data).digest('hex'),
      sentSha: crypto.createHash('sha256').update(body).digest('hex'),
      body: data.slice(0, 200).toString('utf8'),
    }));
  });
});
req.on('error', (e) => { console.log(JSON.stringify({ error: e.message })); process.exit(1); });
req.end(body);
