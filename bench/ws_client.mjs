// An independent live-updates client for bench/ws.sh: the same scenario as
// examples/ws_load.rs, written against Node's own WebSocket (undici) and fetch, so a load
// generator tuned alongside the server cannot flatter it.
//
//   node --experimental-websocket bench/ws_client.mjs --url http://127.0.0.1:18100 \
//        --token ADMIN_JWT --product ID --subscribers 10000 --rate 5 --seconds 20
//
// Prints one JSON line: deliveries, expected deliveries, subscribers short of events,
// and the delivery latency (receipt minus the event's `at`) p50/p99/max in ms.

const args = Object.fromEntries(
  process.argv.slice(2).reduce((pairs, word, index, all) => {
    if (word.startsWith('--')) pairs.push([word.slice(2), all[index + 1]]);
    return pairs;
  }, []),
);
const url = args.url;
const subscribers = Number(args.subscribers ?? 1000);
const rate = Number(args.rate ?? 5);
const seconds = Number(args.seconds ?? 20);
const wsUrl = `${url.replace('http://', 'ws://')}/api/v1/ws`;

const latencies = [];
const counts = new Array(subscribers).fill(0);

function subscribe(index) {
  return new Promise((resolve, reject) => {
    const socket = new WebSocket(wsUrl);
    socket.onopen = () => socket.send(JSON.stringify({ op: 'subscribe', topics: ['products'] }));
    socket.onerror = (event) => reject(new Error(`subscriber ${index}: ${event.message ?? 'error'}`));
    socket.onmessage = (message) => {
      const received = Date.now();
      const data = JSON.parse(message.data);
      if (data.type === 'subscribed') resolve(socket);
      else if (data.type === 'event') {
        counts[index] += 1;
        latencies.push(received - Date.parse(data.at));
      }
    };
  });
}

async function connectAll() {
  const sockets = [];
  for (let start = 0; start < subscribers; start += 200) {
    const wave = [];
    for (let index = start; index < Math.min(start + 200, subscribers); index += 1) wave.push(subscribe(index));
    sockets.push(...(await Promise.all(wave)));
  }
  return sockets;
}

const percentile = (sorted, p) => (sorted.length ? sorted[Math.round((p / 100) * (sorted.length - 1))] : 0);

const sockets = await connectAll();
process.stderr.write(`${sockets.length} subscribers connected\n`);
const total = Math.floor(rate * seconds);
let failed = 0;
for (let stock = 0; stock < total; stock += 1) {
  const started = Date.now();
  const response = await fetch(`${url}/api/v1/products/${args.product}`, {
    method: 'PATCH',
    headers: { authorization: `Bearer ${args.token}`, 'content-type': 'application/json' },
    body: JSON.stringify({ stock }),
  }).catch(() => null);
  if (!response || !response.ok) failed += 1;
  const wait = 1000 / rate - (Date.now() - started);
  if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
}
await new Promise((resolve) => setTimeout(resolve, 2000));
const expected = total - failed;
latencies.sort((a, b) => a - b);
console.log(
  JSON.stringify({
    client: 'node',
    subscribers,
    events_written: expected,
    deliveries: latencies.length,
    deliveries_expected: expected * subscribers,
    subscribers_short: counts.filter((count) => count < expected).length,
    p50_ms: percentile(latencies, 50),
    p99_ms: percentile(latencies, 99),
    max_ms: latencies.at(-1) ?? 0,
  }),
);
for (const socket of sockets) socket.close();
process.exit(0);
