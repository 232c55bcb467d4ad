// Worker: hyco-https listener echoing the request body. Same stdin protocol as bench/py_http_listener.py.
// Usage: node bench/node_http_listener.js WSS_BASE ENTITY KEY_NAME KEY
const https = require('hyco-https');
const readline = require('readline');
const [base, entity, keyName, key] = process.argv.slice(2);
const listenUri = `${base}/$hc/${entity}?sb-hc-action=listen`;
let served = 0, cpu0 = process.cpuUsage(), count0 = 0;
const server = https.createRelayedServer(
  { server: listenUri, token: () => https.createRelayToken(listenUri, keyName, key) },
  (req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => { served++; res.setHeader('Content-Type', 'application/octet-stream'); res.end(Buffer.concat(chunks)); });
  });
server.on('error', () => {});
server.on('listening', () => console.log(JSON.stringify({ ready: true })));
server.listen();
readline.createInterface({ input: process.stdin }).on('line', (line) => {
  line = line.trim();
  if (line === 'mark') { cpu0 = process.cpuUsage(); count0 = served; }
  if (line === 'report' || line === 'stop') {
    const cpu = process.cpuUsage(cpu0);
    console.log(JSON.stringify({ cpu_s: (cpu.user + cpu.system) / 1e6, requests: served - count0 }));
  }
  if (line === 'stop') { server.close(); setTimeout(() => process.exit(0), 100); }
});
