-- Publish a new routing table version, atomically, as a whole.
-- KEYS[1] version (integer)   KEYS[2] tables (hash: version -> record JSON)
-- KEYS[3] log (list of versions, newest first)   KEYS[4] epoch (id of this store's history)
-- ARGV[1] expected current version: "" any, "absent" only if none yet (seed), else a number
-- ARGV[2] metadata JSON object (author, reason, digest, ...)   ARGV[3] table JSON document
-- ARGV[4] versions to keep   ARGV[5] pub/sub channel   ARGV[6] epoch to use if none yet
-- Returns {status, version, epoch}: status 1 published, 0 exists (seed), -1 version conflict.
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local expected = ARGV[1]
if expected == 'absent' then
  if current > 0 then return {0, current, redis.call('GET', KEYS[4]) or ''} end
elseif expected ~= '' and tonumber(expected) ~= current then
  return {-1, current, redis.call('GET', KEYS[4]) or ''}
end
redis.call('SET', KEYS[4], ARGV[6], 'NX')
local epoch = redis.call('GET', KEYS[4])
local version = current + 1
local t = redis.call('TIME')
-- Built by concatenation: cjson would turn an empty JSON list into an object.
local record = '{"version":' .. version .. ',"epoch":"' .. epoch .. '","created_at":'
  .. t[1] .. '.' .. string.format('%06d', tonumber(t[2])) .. ',"previous":' .. current
  .. ',"meta":' .. ARGV[2] .. ',"table":' .. ARGV[3] .. '}'
redis.call('HSET', KEYS[2], version, record)
redis.call('SET', KEYS[1], version)
redis.call('LPUSH', KEYS[3], version)
local keep = tonumber(ARGV[4])
while redis.call('LLEN', KEYS[3]) > keep do
  redis.call('HDEL', KEYS[2], redis.call('RPOP', KEYS[3]))
end
redis.call('PUBLISH', ARGV[5], version)
return {1, version, epoch}
