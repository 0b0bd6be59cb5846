#!/usr/bin/env bash
# Server CPU per request (perf stat task-clock of the server / requests served) for each
# binary given, under wrk -t2 -c64 for 10 s on the cached GET (or /bare for examples/bare).
# Less sensitive to a busy machine than req/s. Ports CPU_PORT_BASE+1 and up (default 18441).
# Usage: bench/cpu_per_request.sh BINARY...   (needs perf, wrk, curl, python3)
set -u
port=${CPU_PORT_BASE:-18440}
for bin in "$@"; do
  d=$(mktemp -d /tmp/hp-cpu.XXXX); port=$((port+1)); addr=127.0.0.1:$port
  E=(env -i PATH=$PATH DATABASE_URL=sqlite://$d/p.db BIND_ADDR=$addr RUST_LOG=warn RATE_LIMIT_RPS=1000000 RATE_LIMIT_BURST=1000000 JWT_SECRET=storefront-bench-jwt-secret-0123456789ab)
  if [[ $bin == *bare ]]; then
    $bin $addr > $d/log 2>&1 & p=$!; sleep 0.5; url=http://$addr/bare
  else
    printf 'pw-12345678\n' | "${E[@]}" $bin user create --email a@example.com --role admin --password-stdin >/dev/null 2>&1
    "${E[@]}" $bin serve > $d/log 2>&1 & p=$!
    for i in $(seq 100); do curl -fs -o /dev/null http://$addr/readyz && break; sleep 0.05; done
    T=$(curl -s -H 'content-type: application/json' -d '{"email":"a@example.com","password":"pw-12345678"}' http://$addr/api/v1/auth/login | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
    P=$(curl -s -H 'content-type: application/json' -H "Authorization: Bearer $T" -d '{"name":"Bench widget","description":"A product for benchmarking","price_cents":1999,"stock":100}' http://$addr/api/v1/products | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
    url=http://$addr/api/v1/products/$P
  fi
  wrk -t2 -c64 -d2s $url >/dev/null
  perf stat -x, -e task-clock -p $p -o $d/stat -- sleep 10 >/dev/null 2>&1 &
  sp=$!
  wrk -t2 -c64 -d10s $url > $d/wrk
  wait $sp
  req=$(awk '/requests in/ {print $1}' $d/wrk); rps=$(awk '/Requests\/sec/ {print $2}' $d/wrk)
  ms=$(awk -F, '/task-clock/ {print $1}' $d/stat)
  python3 -c "import sys; print(f'{sys.argv[1]:50s} rps {float(sys.argv[2]):9.0f}  cpu/req {float(sys.argv[3])*1000/float(sys.argv[4]):6.2f} us  cpus {float(sys.argv[3])/10000:.2f}')" "$bin" "$rps" "$ms" "$req"
  kill $p; wait $p 2>/dev/null; rm -rf $d
done
echo "load: $(uptime | sed 's/.*load/load/')"
