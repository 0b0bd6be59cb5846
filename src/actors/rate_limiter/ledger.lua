-- One call of a rate-limit lease holder on one client's bucket: `Ledger::serve` of
-- src/domain/rate_lease.rs, step for step, in microseconds of Redis's own clock (one
-- clock for every replica). Read the bound and why it holds there.
--
-- KEYS[1]  the bucket: a hash of `tat`, `issued` and one `g:<id>` = "<holder> <tokens> <expires>"
--          per grant on lease.
-- ARGV     interval_us, burst, holder, settle_grant ('' for none), settle_spent,
--          decide (1: decide one request), want, ttl_us, max_grants, max_tokens
-- Returns  {allowed, grant_id ('' for none), grant_tokens, ttl_us, tat_ahead_us,
--           outstanding, retry_after_us}
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local holder = ARGV[3]
local settle_grant = ARGV[4]
local settle_spent = tonumber(ARGV[5])
local decide = ARGV[6] == '1'
local want = tonumber(ARGV[7])
local ttl = tonumber(ARGV[8])
local max_grants = tonumber(ARGV[9])
local max_tokens = tonumber(ARGV[10])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local capacity = burst * interval

local tat, issued = 0, 0
local grants = {}
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  local field, value = fields[i], fields[i + 1]
  if field == 'tat' then
    tat = tonumber(value)
  elseif field == 'issued' then
    issued = tonumber(value)
  else
    local who, tokens, expires = string.match(value, '^(%S+) (%d+) (%d+)$')
    table.insert(grants, {string.sub(field, 3), who, tonumber(tokens), tonumber(expires)})
  end
end
-- Grant ids only grow, also across a hash that expired and came back. Numbers are
-- written with %d: Lua's own conversion would give 1.7e+15.
if issued < now then issued = now end

-- Grants whose lease ended count as fully spent at their expiry, in expiry order.
table.sort(grants, function(a, b) return a[4] < b[4] end)
local live = {}
for _, grant in ipairs(grants) do
  if grant[4] <= now then
    tat = math.max(tat, grant[4]) + grant[3] * interval
    redis.call('HDEL', KEYS[1], 'g:' .. grant[1])
  else
    table.insert(live, grant)
  end
end
grants = live

local function outstanding()
  local total = 0
  for _, grant in ipairs(grants) do total = total + grant[3] end
  return total
end

-- Tokens out on lease are debt that does not refill.
local function available()
  local debt = math.max(tat - now, 0) + outstanding() * interval
  return math.floor(math.max(capacity - debt, 0) / interval)
end

-- The holder gives a grant back: what it spent becomes debt from now, the rest is free.
if settle_grant ~= '' then
  for i, grant in ipairs(grants) do
    if grant[1] == settle_grant and grant[2] == holder then
      tat = math.max(tat, now) + math.min(settle_spent, grant[3]) * interval
      table.remove(grants, i)
      redis.call('HDEL', KEYS[1], 'g:' .. settle_grant)
      break
    end
  end
end

local allowed = 0
if decide and available() >= 1 then
  allowed = 1
  tat = math.max(tat, now) + interval
end

-- A lease of at most half of what is available.
local grant_id, grant_tokens = '', 0
if (allowed == 1 or not decide) and #grants < max_grants then
  local tokens = math.min(math.floor(available() / 2), want, max_tokens)
  if tokens >= 1 then
    issued = issued + 1
    grant_id, grant_tokens = string.format('%d', issued), tokens
    table.insert(grants, {grant_id, holder, tokens, now + ttl})
    redis.call('HSET', KEYS[1], 'g:' .. grant_id, string.format('%s %d %d', holder, tokens, now + ttl))
  end
end

-- When one request could pass again: the sooner of the tat's decay (if what is on lease
-- leaves room for one) and every grant having expired and counted as spent.
local leased = outstanding() * interval
local last = now
for _, grant in ipairs(grants) do last = math.max(last, grant[4]) end
local retry = 0
if math.max(tat - now, 0) + leased + interval > capacity then
  retry = math.max(math.max(tat, last) + leased + interval - capacity - now, 0)
  local room = capacity - leased - interval
  if room >= 0 then retry = math.min(retry, math.max(tat - now - room, 0)) end
end

-- Kept while it holds debt or grants, and not much longer.
local horizon = math.max(tat, last) + leased - now
if horizon > 0 or #grants > 0 then
  redis.call('HSET', KEYS[1], 'tat', string.format('%d', tat), 'issued', string.format('%d', issued))
  redis.call('PEXPIRE', KEYS[1], string.format('%d', math.ceil(math.max(horizon, 0) / 1000) + 60000))
else
  redis.call('DEL', KEYS[1])
end
return {allowed, grant_id, grant_tokens, ttl, math.max(tat - now, 0), outstanding(), retry}
