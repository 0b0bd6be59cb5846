-- Appended after a generated `products = {...}` and `tokens = {...}` (bench/orders.sh).
-- Each request: the next user, a fresh Idempotency-Key, one item of the next product.
counter = 0
errors5xx = 0
local threads = {}

function setup(thread)
    table.insert(threads, thread)
    thread:set("tid", #threads)
end

function request()
    counter = counter + 1
    local token = tokens[(counter % #tokens) + 1]
    local product = products[(counter % #products) + 1]
    local headers = {
        ["Content-Type"] = "application/json",
        ["Authorization"] = "Bearer " .. token,
        ["Idempotency-Key"] = "bench-" .. tostring(tid) .. "-" .. tostring(counter),
    }
    return wrk.format("POST", nil, headers, '{"items":[{"product_id":"' .. product .. '","quantity":1}]}')
end

function response(status, headers, body)
    if status >= 500 then
        errors5xx = errors5xx + 1
    end
end

function done(summary, latency, requests)
    -- wrk's own "Non-2xx" line covers 4xx too; 5xx are what the target forbids.
    local total = 0
    for _, thread in ipairs(threads) do
        total = total + thread:get("errors5xx")
    end
    io.write(string.format("5xx responses: %d\n", total))
end
