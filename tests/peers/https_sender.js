// Plain Node https.request sender, as in the hyco-https samples (no Relay client library).
//   METHOD (POST), HTTP_PATH (/ENTITY), BODY_SIZE (5) random bytes, CHUNKED=1 (no Content-Length,
//   body written in three chunks), COUNT (1) requests fired concurrently, each on its own socket.
// COUNT=1 prints one summary; COUNT>1 prints {count, ok, statuses, errors} where ok counts 200
// answers whose listener-side sha256 matches the body sent.
'use strict';
const https = require('hyco-https');  // Node core https plus the token helpers
const crypto = require('crypto');
const { tokenSource, log } = require('./common');

const base = new URL(process.env.RELAY_BASE.replace(/^ws/, 'http'));
const path = process.env.HTTP_PATH || `/${process.env.ENTITY}`;
const method = process.env.METHOD || 'POST';
const chunked = process.env.CHUNKED === '1';
const count = parseInt(process.env.COUNT || '1', 10);
const size = parseInt(process.env.BODY_SIZE || '5', 10);
const token = tokenSource(https.createRelayToken, `${base.origin}/${process.env.ENTITY}`)();
const agent = new https.Agent({ keepAlive: false, maxSockets: Infinity });

function one() {
  return new Promise((resolve) => {
    const body = crypto.randomBytes(size);
    const headers = { ServiceBusAuthorization: token, 'X-Custom': 'Hello', 'Content-Type': 'application/octet-stream' };
    const req = https.request({ hostname: base.hostname, port: base.port, path, method, headers, agent }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        const data = Buffer.concat(chunks);
        const sent = crypto.createHash('sha256').update(body).digest('hex');
        let echoed = null;
        try { echoed = JSON.parse(data.toString()).sha256; } catch (e) { /* not JSON */ }
        resolve({
          status: res.statusCode, reason: res.statusMessage, via: res.headers['via'] || null,
          listener: res.headers['x-listener'] || null, length: data.length,
          body: data.length < 4096 ? data.toString() : null, sent_sha256: sent, match: echoed === sent,
        });
      });
    });
    req.on('error', (e) => resolve({ error: String(e && e.message || e) }));
    if (method === 'GET' || method === 'HEAD' || size === 0 && !chunked) {
      req.end();
    } else if (chunked) {
      const third = Math.ceil(body.length / 3);
      req.write(body.subarray(0, third));
      setTimeout(() => { req.write(body.subarray(third, 2 * third)); req.end(body.subarray(2 * third)); }, 20);
    } else {
      req.setHeader('Content-Length', body.length);
      req.end(body);
    }
  });
}

(async () => {
  if (count === 1) {
    const result = await one();
    log(result);
    process.exit(result.error ? 1 : 0);
  }
  const results = await Promise.all(Array.from({ length: count }, one));
  const statuses = {};
  const errors = [];
  let ok = 0;
  for (const r of results) {
    if (r.error) { errors.push(r.error); continue; }
    statuses[r.status] = (statuses[r.status] || 0) + 1;
    if (r.status === 200 && r.match) ok += 1;
  }
  log({ count, ok, statuses, errors: errors.slice(0, 5) });
  process.exit(0);
})();
