-- Admission: check every limit of one request and, only if all enforced ones pass,
-- consume them all. One call per request; every key carries the tenant's hash tag.
--
-- KEYS[1]  the tenant's open admissions (sorted set: decision id -> when the sweeper may settle it)
-- KEYS[2]  their settlement facts (hash: decision id -> what the sweeper settles and records)
-- KEYS[2+i]  the i-th limit's key
-- ARGV[1]  now in ms, or '' to use Redis TIME (one clock for every sidecar replica)
-- ARGV[2]  lease id (the decision id)
-- ARGV[3]  deadline in Redis-clock ms, or '': a call that reaches Redis later (it was paused,
--          the sidecar gave up and answered by its failure mode) must not consume anything
-- ARGV[4]  ms after which an admission whose end never reached settlement is swept, or '':
--          nothing is registered (settlement.sweeper, settle.lua removes the entry)
-- ARGV[5]  the settlement facts to register (opaque to this script)
-- then 6 values per limit: kind, enforce ('1'|'0'), a, b, c, d
--   gcra         a=period_ms b=limit c=burst d=cost          (request and token rates)
--   budget       a=limit b=cost c='day'|'month' d=utc_offset_s (calendar budgets)
--   concurrency  a=limit b=lease_ttl_ms                       (in-flight requests)
-- Returns {first_blocking_index (0 = admitted), now_ms,
--          then per limit: allowed, remaining, retry_ms, reset_ms, used, period_id}
--          first_blocking_index is -1 when the deadline had passed (nothing consumed).
--          When several limits refuse, the one that admits again last is reported.
--          (period_id: the budget period charged, 0 for other kinds; settlement needs it)

local function now_ms()
  if ARGV[1] ~= '' then return tonumber(ARGV[1]) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Howard Hinnant's civil calendar algorithms (proleptic Gregorian).
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = (m + 9) % 12
  local doy = math.floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

local function civil_from_days(z)
  z = z + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
    - math.floor(doe / 146096)) / 365)
  local y = yoe + era * 400
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local m = mp < 10 and mp + 3 or mp - 9
  if m <= 2 then y = y + 1 end
  return y, m
end

-- The calendar period containing `now` in the tenant's time zone: id and end (ms).
local function period(kind, now, offset_s)
  local day = math.floor((math.floor(now / 1000) + offset_s) / 86400)
  if kind == 'day' then
    return day, ((day + 1) * 86400 - offset_s) * 1000
  end
  local y, m = civil_from_days(day)
  local ny, nm = y, m + 1
  if nm > 12 then ny, nm = y + 1, 1 end
  return y * 12 + m, (days_from_civil(ny, nm, 1) * 86400 - offset_s) * 1000
end

local now = now_ms()
local lease = ARGV[2]
if ARGV[3] ~= '' and now > tonumber(ARGV[3]) then return {-1, now} end
local EPS = 1e-6   -- timestamps near 1.8e12 ms: float rounding must not cost a request
local out = {0, now}
local apply = {}
local blocking = 0

local worst_retry = -2
local LIMITS = #KEYS - 2
for i = 1, LIMITS do
  local base = 5 + (i - 1) * 6
  local kind, enforce = ARGV[base + 1], ARGV[base + 2] == '1'
  local a, b, c, d = ARGV[base + 3], ARGV[base + 4], ARGV[base + 5], ARGV[base + 6]
  local key = KEYS[2 + i]
  local allowed, remaining, retry, reset, used, pid = 0, 0, 0, 0, 0, 0

  if kind == 'gcra' then
    local period_ms, limit, burst, cost = tonumber(a), tonumber(b), tonumber(c), tonumber(d)
    -- GCRA kept as "debt" (theoretical arrival time minus now, in ms) and when it was
    -- written: small numbers keep their fractions exactly through Redis's string
    -- conversion, where an absolute TAT near 1.8e12 ms would lose them.
    local t = period_ms / limit          -- emission interval: one unit every t ms
    local tolerance = burst * t
    local st = redis.call('HMGET', key, 'd', 't')
    local debt = (tonumber(st[1]) or 0) - (now - (tonumber(st[2]) or now))
    if debt < 0 then debt = 0 end
    local new_debt = debt + cost * t
    used = math.ceil(debt / t - EPS)
    if new_debt <= tolerance + EPS then
      allowed = 1
      remaining = math.floor((tolerance - new_debt) / t + EPS)
      reset = math.ceil(new_debt)
      apply[i] = {'gcra', new_debt}
    else
      remaining = math.max(0, math.floor((tolerance - debt) / t + EPS))
      retry = math.ceil(new_debt - tolerance - EPS)
      if cost > burst then retry = -1 end   -- can never fit: larger than the burst
      reset = math.ceil(debt)
    end
  elseif kind == 'budget' then
    local limit, cost = tonumber(a), tonumber(b)
    local pend
    pid, pend = period(c, now, tonumber(d))
    local stored = redis.call('HMGET', key, 'p', 'u')
    if tonumber(stored[1]) == pid then used = tonumber(stored[2]) or 0 end
    reset = pend - now
    if used + cost <= limit then
      allowed = 1
      remaining = limit - used - cost
      apply[i] = {'budget', pid, used + cost, pend}
    else
      remaining = math.max(0, limit - used)
      retry = reset
      if cost > limit then retry = -1 end   -- larger than the whole budget: never fits
    end
  elseif kind == 'concurrency' then
    local limit, ttl = tonumber(a), tonumber(b)
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now)   -- leases of crashed sidecars expire
    used = redis.call('ZCARD', key)
    if used < limit then
      allowed = 1
      remaining = limit - used - 1
      apply[i] = {'lease', now + ttl, ttl}
    else
      retry = 1000   -- a slot frees when any in-flight request ends
    end
  else
    return redis.error_reply('unknown limit kind ' .. tostring(kind))
  end

  if allowed == 0 and enforce then
    -- Report the limit that admits again last (-1: never) so retry-after is true.
    local r = retry < 0 and math.huge or retry
    if blocking == 0 or r > worst_retry then blocking = i; worst_retry = r end
  end
  out[#out + 1] = allowed
  out[#out + 1] = remaining
  out[#out + 1] = retry
  out[#out + 1] = reset
  out[#out + 1] = used
  out[#out + 1] = pid
end

if blocking == 0 then
  for i = 1, LIMITS do
    local p = apply[i]
    if p then
      local key = KEYS[2 + i]
      if p[1] == 'gcra' then
        redis.call('HSET', key, 'd', p[2], 't', now)
        redis.call('PEXPIRE', key, math.ceil(p[2]) + 1000)
      elseif p[1] == 'budget' then
        redis.call('HSET', key, 'p', p[2], 'u', p[3])
        redis.call('PEXPIRE', key, math.ceil(p[4] - now) + 86400000)
      else
        redis.call('ZADD', key, p[2], lease)
        redis.call('PEXPIRE', key, p[3])
      end
    end
  end
  if ARGV[4] ~= '' then
    -- Registered with what it consumed: if its end never reaches settlement (a killed worker,
    -- a lost access-log batch), the sweeper settles it from these facts after ARGV[4] ms.
    local due = now + tonumber(ARGV[4])
    redis.call('ZADD', KEYS[1], due, lease)
    redis.call('HSET', KEYS[2], lease, ARGV[5])
    -- The tenant's two keys outlive every entry in them (refreshed at most every half-life).
    local keep = tonumber(ARGV[4]) * 4 + 3600000
    if redis.call('PTTL', KEYS[1]) < keep / 2 then
      redis.call('PEXPIRE', KEYS[1], keep)
      redis.call('PEXPIRE', KEYS[2], keep)
    end
  end
end
out[1] = blocking
return out
