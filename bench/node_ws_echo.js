// Worker: hyco-ws listener echoes; hyco-ws sender (relayedConnect) does sequential round trips.
// Usage: node bench/node_ws_echo.js WSS_BASE ENTITY KEY_NAME KEY SECONDS SIZE   (NODE_EXTRA_CA_CERTS set by the runner)
const WS = require('hyco-ws');
const [base, entity, keyName, key, seconds, size] = process.argv.slice(2);
const listenUri = `${base}/$hc/${entity}?sb-hc-action=listen`;
const sendUri = `${base}/$hc/${entity}?sb-hc-action=connect`;
const token = (uri) => WS.createRelayToken(uri, keyName, key);
const payload = Buffer.alloc(Number(size), 120);

function pct(sorted, q) { return sorted[Math.min(sorted.length - 1, Math.max(0, Math.round(q * (sorted.length - 1))))]; }

const server = WS.createRelayedServer({ server: listenUri, token: () => token(listenUri) }, (ws) => {
  ws.on('message', (m, flags) => ws.send(m, { binary: !!(flags && flags.binary) }));
  ws.on('error', () => {});
});
server.on('error', () => {});
server.on('listening', () => {
  const sock = WS.relayedConnect(sendUri, token(sendUri), () => {
    let warm = 200, lat = [], start, cpu0, last, deadline;
    const send = () => { last = process.hrtime.bigint(); sock.send(payload, { binary: true }); };
    sock.on('message', (m) => {
      if (m.length !== payload.length) { console.error('bad echo length'); process.exit(2); }
      const now = process.hrtime.bigint();
      if (warm > 0) { warm--; if (warm === 0) { console.log(JSON.stringify({ mark: 'start' })); start = now; cpu0 = process.cpuUsage(); deadline = start + BigInt(Math.round(Number(seconds) * 1e9)); } return send(); }
      lat.push(Number(now - last) / 1e9);
      if (now < deadline) return send();
      const cpu = process.cpuUsage(cpu0), elapsed = Number(now - start) / 1e9;
      console.log(JSON.stringify({ mark: 'stop' }));
      lat.sort((a, b) => a - b);
      const count = lat.length, cpuS = (cpu.user + cpu.system) / 1e6;
      console.log(JSON.stringify({ count, seconds: +elapsed.toFixed(3), per_second: +(count / elapsed).toFixed(1),
        p50_ms: +(pct(lat, 0.5) * 1000).toFixed(3), p99_ms: +(pct(lat, 0.99) * 1000).toFixed(3),
        cpu_us_per_message: +(cpuS / count * 1e6).toFixed(1), client: 'node hyco-ws' }));
      sock.close(); server.close(); setTimeout(() => process.exit(0), 100);
    });
    send();
  });
  sock.on('error', (e) => { console.error('sender error', e.message); process.exit(1); });
});
