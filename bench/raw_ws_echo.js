// Worker: raw loopback echo with Node `ws` (the version hyco-https uses), no relay in between.
// Usage: node bench/raw_ws_echo.js SECONDS SIZE
const WebSocket = require('ws');
const [seconds, size] = process.argv.slice(2);
const payload = Buffer.alloc(Number(size), 120);
function pct(s, q) { return s[Math.min(s.length - 1, Math.max(0, Math.round(q * (s.length - 1))))]; }
const wss = new WebSocket.Server({ host: '127.0.0.1', port: 0, perMessageDeflate: false }, () => {
  const ws = new WebSocket(`ws://127.0.0.1:${wss.address().port}`, { perMessageDeflate: false });
  let warm = 200, lat = [], start, cpu0, last, deadline;
  const send = () => { last = process.hrtime.bigint(); ws.send(payload); };
  ws.on('open', send);
  ws.on('message', () => {
    const now = process.hrtime.bigint();
    if (warm > 0) { warm--; if (!warm) { start = now; cpu0 = process.cpuUsage(); deadline = now + BigInt(Math.round(Number(seconds) * 1e9)); } return send(); }
    lat.push(Number(now - last) / 1e9);
    if (now < deadline) return send();
    const cpu = process.cpuUsage(cpu0), elapsed = Number(now - start) / 1e9, count = lat.length;
    lat.sort((a, b) => a - b);
    console.log(JSON.stringify({ count, seconds: +elapsed.toFixed(3), per_second: +(count / elapsed).toFixed(1),
      p50_ms: +(pct(lat, 0.5) * 1000).toFixed(3), p99_ms: +(pct(lat, 0.99) * 1000).toFixed(3),
      cpu_us_per_message: +((cpu.user + cpu.system) / count).toFixed(1), client: 'raw node ws' }));
    process.exit(0);
  });
});
wss.on('connection', (s) => s.on('message', (m) => s.send(m)));
