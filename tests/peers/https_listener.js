// hyco-https listener: answers every request with a JSON summary; paths ending in /big get
// 200 KB (which makes hyco-https stream the response), /nocontent gets 204. HEAD gets the
// summary's headers (the body is dropped on the way to the sender).
'use strict';
const https = require('hyco-https');
const crypto = require('crypto');
const { tokenSource, log } = require('./common');

const uri = `${process.env.RELAY_BASE}/$hc/${process.env.ENTITY}?sb-hc-action=listen`;
const big = Buffer.alloc(200 * 1024, 'b');
const server = https.createRelayedServer({ server: uri, token: tokenSource(https.createRelayToken, uri) }, (req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    const body = Buffer.concat(chunks);
    if (req.url.split('?')[0].endsWith('/nocontent')) {
      res.statusCode = 204;
      res.setHeader('X-Listener', 'hyco-https');
      res.end();
      return;
    }
    if (req.url.split('?')[0].endsWith('/big')) {
      res.setHeader('Content-Type', 'application/octet-stream');
      res.end(big);
      return;
    }
    res.setHeader('Content-Type', 'application/json');
    res.setHeader('X-Listener', 'hyco-https');
    res.end(JSON.stringify({
      method: req.method, url: req.url, length: body.length,
      sha256: crypto.createHash('sha256').update(body).digest('hex'), custom: req.headers['x-custom'] || null,
    }));
  });
});
server.on('listening', () => log({ event: 'listening' }));
server.on('error', (e) => log({ event: 'error', message: String(e && e.message || e) }));
server.listen();
// Stop on SIGTERM or when the test closes our stdin (so no peer outlives a crashed test run).
const stop = () => { try { server.close(); } catch (e) { /* already closed */ } process.exit(0); };
process.on('SIGTERM', stop);
process.stdin.on('end', stop);
process.stdin.resume();
