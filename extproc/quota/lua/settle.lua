-- Settlement, once per request (idempotent): true up token rates and budgets to what was
-- really used, and release the concurrency lease.
--
-- KEYS[1]  settled marker for this decision; KEYS[2], KEYS[3] the tenant's open admissions and
--          their settlement facts (admit.lua; the decision's entry is removed); KEYS[4..] the
--          request's limit keys
-- ARGV[1]  now in ms, or '' for Redis TIME;  ARGV[2] lease id;  ARGV[3] marker TTL ms
-- ARGV[4]  this settlement's nonce: a retry of the same settlement (its reply was lost to a
--          timeout) is told it settled, without applying anything twice
-- then 4 values per limit: kind, a, b, c
--   gcra         a=period_ms b=limit c=cost_delta   (real minus reserved; may be negative)
--   budget       a=cost_delta b=period id the admission charged (a later period is left alone)
--   concurrency  (release the lease)
-- Returns 1 when settled now (or by this same settlement before), 0 when another settlement
-- of this decision came first.

-- Whichever settlement comes, the admission is no longer open for the sweeper.
if redis.call('ZREM', KEYS[2], ARGV[2]) == 1 then redis.call('HDEL', KEYS[3], ARGV[2]) end
if redis.call('SET', KEYS[1], ARGV[4], 'NX', 'PX', tonumber(ARGV[3])) == false then
  if redis.call('GET', KEYS[1]) == ARGV[4] then return 1 end
  return 0
end

local function now_ms()
  if ARGV[1] ~= '' then return tonumber(ARGV[1]) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local now = now_ms()
local lease = ARGV[2]
for i = 4, #KEYS do
  local base = 4 + (i - 4) * 4
  local kind, a, b, c = ARGV[base + 1], ARGV[base + 2], ARGV[base + 3], ARGV[base + 4]
  local key = KEYS[i]
  if kind == 'gcra' then
    local delta = tonumber(c)
    local st = redis.call('HMGET', key, 'd', 't')
    if delta ~= 0 and st[1] then
      local debt = math.max(0, tonumber(st[1]) - (now - tonumber(st[2])))
      debt = math.max(0, debt + delta * tonumber(a) / tonumber(b))
      redis.call('HSET', key, 'd', debt, 't', now)
      redis.call('PEXPIRE', key, math.ceil(debt) + 1000)
    end
  elseif kind == 'budget' then
    local delta = tonumber(a)
    if delta ~= 0 and tonumber(redis.call('HGET', key, 'p')) == tonumber(b) then
      redis.call('HINCRBY', key, 'u', delta)
    end
  elseif kind == 'concurrency' then
    redis.call('ZREM', key, lease)
  end
end
return 1
