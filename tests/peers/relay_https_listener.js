// hyco-https listener. Answers every request with JSON {method, url, length, custom} plus, when the
// request has header "x-response-size: N", a body of N bytes (pattern i % 251) instead.
// Env: RELAY_LISTEN_URI, RELAY_KEY_NAME, RELAY_KEY. Prints "listening" once up.
const https = require('hyco-https');
const uri = process.env.RELAY_LISTEN_URI;
const token = () => https.createRelayToken(uri, process.env.RELAY_KEY_NAME, process.env.RELAY_KEY);
let announced = false;
const server = https.createRelayedServer({ server: uri, token }, (req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    const body = Buffer.concat(chunks);
    const want = parseInt(req.headers['x-response-size'] || '-1', 10);
    if (want >= 0) {
      const out = Buffer.alloc(want);
      for (let i = 0; i < want; i++) out[i] = i % 251;
      res.setHeader('content-type', 'application/octet-stream');
      res.setHeader('x-request-length', String(body.length));
      res.end(out);
      return;
    }
    res.setHeader('content-type', 'application/json');
    res.statusCode = parseInt(req.headers['x-status'] || '200', 10);
    res.end(JSON.stringify({ method: req.method, url: req.url, length: body.length, custom: req.headers['x-custom'] || null }));
  });
});
server.listen();
server.on('listening', () => { if (!announced) { announced = true; console.log('listening'); } });
server.on('error', (e) => { console.error('listener error: ' + (e && e.message)); });
const stop = () => { try { server.close(); } catch (e) {} process.exit(0); };
process.on('SIGTERM', stop);
process.stdin.on('end', stop);
process.stdin.resume();
