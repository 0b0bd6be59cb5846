#!/usr/bin/env python3
"""PostgreSQL outage under load: how the database breaker behaves (issue 9).

Starts a private PostgreSQL cluster (initdb/pg_ctl as the postgres user, as the tests
do) and the storefront binary on it, runs ~100 req/s of mixed load (uncached product
lists, cached product reads, product writes) from 10 threads, stops PostgreSQL for
DOWN seconds, starts it again, and reports:
  - latency of database routes once the breaker is open (p50/p99/max),
  - how long /readyz took to turn 503 after the database went away,
  - how long after PostgreSQL accepted connections again the first write succeeded,
    and when /readyz passed again,
  - whether every acknowledged write is still there.
Run as root from the repository root:  python3 bench/outage.py [path/to/storefront]
Nothing here is a test assertion; the figures go to the README by hand.
"""
import http.client, json, os, shutil, socket, subprocess, sys, tempfile, threading, time

BIN = sys.argv[1] if len(sys.argv) > 1 else "target/debug/storefront"
PG = "/usr/lib/postgresql/15/bin"
WARM, DOWN, AFTER = 8.0, 10.0, 8.0
THREADS, PERIOD = 10, 0.1  # 10 threads × one request per 100 ms ≈ 100 req/s


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_postgres(*args):
    return subprocess.run(["runuser", "-u", "postgres", "--", *args], check=True, capture_output=True)


def server_histogram(conn):
    """Cumulative latency buckets of the database route /api/v1/products (list and create)."""
    buckets = {}
    for line in conn.req("GET", "/metrics")[1].decode().splitlines():
        if line.startswith("storefront_http_request_duration_seconds_bucket{") and 'route="/api/v1/products"' in line:
            le = line.split('le="')[1].split('"')[0]
            buckets[le] = buckets.get(le, 0) + float(line.rsplit(" ", 1)[1])
    return buckets


def bucket_quantile(before, after, q):
    total = after.get("+Inf", 0) - before.get("+Inf", 0)
    bounds = sorted((float(le), le) for le in after if le != "+Inf")
    for value, le in bounds:
        if after[le] - before.get(le, 0) >= q * total:
            return f"{value * 1000:g} ms", int(total)
    return "+Inf", int(total)


def pct(values, q):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


class Conn:
    def __init__(self, port, token=None):
        self.port, self.token, self.c = port, token, None

    def req(self, method, path, body=None):
        headers = {"content-type": "application/json"}
        if self.token:
            headers["authorization"] = f"Bearer {self.token}"
        for _ in range(2):
            try:
                if self.c is None:
                    self.c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                self.c.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
                r = self.c.getresponse()
                data = r.read()
                return r.status, data
            except (http.client.HTTPException, OSError):
                self.c = None
        return 0, b""


def run(port, env):
    probe = Conn(port)
    for _ in range(200):
        if probe.req("GET", "/readyz")[0] == 200:
            break
        time.sleep(0.05)
    subprocess.run([BIN, "user", "create", "--email", "ops@example.com", "--password", "a long secret",
                    "--role", "admin"], env=env, check=True, capture_output=True)
    status, body = probe.req("POST", "/api/v1/auth/login", {"email": "ops@example.com", "password": "a long secret"})
    token = json.loads(body)["access_token"]
    admin = Conn(port, token)
    product = json.loads(admin.req("POST", "/api/v1/products", {"name": "Seed", "price_cents": 1, "stock": 1})[1])["id"]

    samples, acked, lock = [], [], threading.Lock()
    stop_at = {"t": None}
    running = threading.Event()
    running.set()

    def worker(n):
        conn = Conn(port, token)
        i = 0
        next_at = time.monotonic() + n * PERIOD / THREADS
        while running.is_set():
            kind = ("list", "read", "write", "list", "read")[i % 5]
            i += 1
            t0 = time.monotonic()
            if kind == "list":
                status, _ = conn.req("GET", "/api/v1/products?per_page=5")
            elif kind == "read":
                status, _ = conn.req("GET", f"/api/v1/products/{product}")
            else:
                status, body = conn.req("POST", "/api/v1/products", {"name": f"p{n}-{i}", "price_cents": 1, "stock": 1})
                if status == 201:
                    with lock:
                        acked.append(json.loads(body)["id"])
            t1 = time.monotonic()
            with lock:
                samples.append((t0, t1 - t0, status, kind))
            next_at += PERIOD
            time.sleep(max(0.0, next_at - time.monotonic()))

    ready_log = []

    def watch_readiness():
        conn = Conn(port)
        while running.is_set():
            status, body = conn.req("GET", "/readyz")
            try:
                breaker = json.loads(body)["checks"]["database:breaker"][0]["observedValue"]
            except Exception:
                breaker = "?"
            ready_log.append((time.monotonic(), status, breaker))
            time.sleep(0.01)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(THREADS)]
    threads.append(threading.Thread(target=watch_readiness))
    for t in threads:
        t.start()
    time.sleep(WARM)
    t_stop = time.monotonic()
    as_postgres(f"{PG}/pg_ctl", "-w", "-m", "fast", "-D", DATA["dir"], "stop")
    t_stopped = time.monotonic()
    while not any(e[0] >= t_stop and e[2] == "open" for e in list(ready_log)):
        time.sleep(0.01)
    # Requests that began before the breaker opened finish within DB_CONNECT_TIMEOUT_MS;
    # the server-side window starts after them.
    time.sleep(0.6)
    open_metrics = server_histogram(probe)
    time.sleep(max(0.0, t_stop + DOWN - time.monotonic()))
    closing_metrics = server_histogram(probe)
    as_postgres(f"{PG}/pg_ctl", "-w", "-D", DATA["dir"], "-o", DATA["opts"], "-l", DATA["log"], "start")
    t_back = time.monotonic()  # pg_ctl -w returns once PostgreSQL accepts connections
    time.sleep(AFTER)
    running.clear()
    for t in threads:
        t.join()

    first = lambda pred: next((entry for entry in ready_log if pred(entry)), None)
    not_ready = first(lambda e: e[0] >= t_stop and e[1] == 503)
    opened = first(lambda e: e[0] >= t_stop and e[2] == "open")
    ready_again = first(lambda e: e[0] >= t_back and e[1] == 200)
    closed_again = first(lambda e: e[0] >= t_back and e[2] == "closed")
    db_kinds = ("list", "write")
    once_open = [d for (t0, d, s, k) in samples if k in db_kinds and opened and opened[0] <= t0 < t_back]
    whole = [d for (t0, d, s, k) in samples if k in db_kinds and t_stop <= t0 < t_back]
    statuses = {}
    for (t0, d, s, k) in samples:
        if k in db_kinds and opened and opened[0] <= t0 < t_back:
            statuses[s] = statuses.get(s, 0) + 1
    first_write = next((t0 + d for (t0, d, s, k) in sorted(samples) if k == "write" and t0 >= t_back and s == 201), None)
    duration = samples[-1][0] - samples[0][0]
    lost = [pid for pid in acked if admin.req("GET", f"/api/v1/products/{pid}")[0] != 200]

    ms = lambda s: f"{s * 1000:.1f} ms"
    print(f"load: {len(samples)} requests in {duration:.1f} s ({len(samples) / duration:.0f} req/s), {THREADS} threads")
    print(f"pg_ctl stop took {ms(t_stopped - t_stop)}")
    print(f"/readyz 503 after {ms(not_ready[0] - t_stop) if not_ready else 'never'} (from pg_ctl stop being called)")
    print(f"breaker open after {ms(opened[0] - t_stop) if opened else 'never'}")
    print(f"database routes once open: n={len(once_open)} p50 {ms(pct(once_open, .5))} p99 {ms(pct(once_open, .99))} "
          f"max {ms(max(once_open)) if once_open else '-'} statuses {statuses}")
    server_p99 = bucket_quantile(open_metrics, closing_metrics, 0.99)
    print(f"server-side (storefront_http_request_duration_seconds, route /api/v1/products, from 0.6 s after opening): "
          f"n={server_p99[1]} p99 <= {server_p99[0]}")
    print(f"database routes over the whole outage: n={len(whole)} p50 {ms(pct(whole, .5))} p99 {ms(pct(whole, .99))} "
          f"max {ms(max(whole)) if whole else '-'}")
    print(f"first write after PostgreSQL accepted connections: {ms(first_write - t_back) if first_write else 'never'}")
    print(f"/readyz 200 again after {ms(ready_again[0] - t_back) if ready_again else 'never'}, "
          f"breaker closed after {ms(closed_again[0] - t_back) if closed_again else 'never'}")
    print(f"acknowledged writes: {len(acked)}, lost: {len(lost)}")


# The private cluster's paths, shared with run() for the stop and start in the middle.
DATA = {}


def main():
    work = tempfile.mkdtemp(prefix="storefront-outage-", dir="/tmp")
    subprocess.run(["chown", "-R", "postgres:postgres", work], check=True)
    pg_port, port = free_port(), free_port()
    DATA.update(dir=os.path.join(work, "data"), log=os.path.join(work, "log"),
                opts=f"-p {pg_port} -k {work} -c listen_addresses=127.0.0.1")
    as_postgres(f"{PG}/initdb", "-A", "trust", "-U", "postgres", "-D", DATA["dir"])
    as_postgres(f"{PG}/pg_ctl", "-w", "-D", DATA["dir"], "-o", DATA["opts"], "-l", DATA["log"], "start")
    env = dict(os.environ, DATABASE_URL=f"postgres://postgres@127.0.0.1:{pg_port}/postgres",
               BIND_ADDR=f"127.0.0.1:{port}", JWT_SECRET="x" * 40, RATE_LIMIT_RPS="100000",
               RATE_LIMIT_BURST="100000", AUTH_RATE_LIMIT_PER_MINUTE="100000", RUST_LOG="error")
    server = subprocess.Popen([BIN, "serve"], env=env, stderr=subprocess.DEVNULL)
    try:
        run(port, env)
    finally:
        server.terminate()
        server.wait()
        subprocess.run(["runuser", "-u", "postgres", "--", f"{PG}/pg_ctl", "-m", "immediate", "-D",
                        DATA["dir"], "stop"], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
