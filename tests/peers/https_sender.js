// Plain Node https.request sender, as in the hyco-https samples: POST BODY_SIZE bytes to PATH.
'use strict';
const https = require('hyco-https');  // Node core https plus the token helpers
const crypto = require('crypto');
const { tokenSource, log } = require('./common');

const base = new URL(process.env.RELAY_BASE.replace(/^ws/, 'http'));
const path = process.env.HTTP_PATH || `/${process.env.ENTITY}`;
const token = tokenSource(https.createRelayToken, `${base.origin}/${process.env.ENTITY}`)();
const body = crypto.randomBytes(parseInt(process.env.BODY_SIZE || '5', 10));
const req = https.request({
  hostname: base.hostname, port: base.port, path, method: 'POST',
  headers: { ServiceBusAuthorization: token, 'X-Custom': 'Hello', 'Content-Type': 'application/octet-stream' },
}, (res) => {
  const chunks = [];
  res.on('data', (c) => chunks.push(c));
  res.on('end', () => {
    const data = Buffer.concat(chunks);
    log({
      status: res.statusCode, reason: res.statusMessage, via: res.headers['via'] || null,
      length: data.length, body: data.length < 4096 ? data.toString() : null,
      sent_sha256: crypto.createHash('sha256').update(body).digest('hex'),
    });
  });
});
req.on('error', (e) => { log({ error: String(e && e.message || e) }); process.exit(1); });
req.end(body);
