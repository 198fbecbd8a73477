-- Auth guard: a per-source limit on FAILED authentications, in Envoy, in front of the sidecar
-- (envoy/README.md "Auth guard"). A flood of forged tokens costs the sidecar a gRPC call and a
-- signature check each; past MAX_FAILS 401s from one source address in a WINDOW_S-second window,
-- that source's requests are marked (x-extproc-auth-penalty: 1) and the local_ratelimit filter
-- after this one lets them through at one per second per source, answering the rest 429 itself.
-- Tokens the sidecar has already accepted (an answer it decided, x-extproc-decision-id, that is
-- neither a 401 nor a 5xx) are known-good and never marked, so a valid tenant behind the same
-- address keeps working.
--
-- Lua state is per Envoy worker thread (and per listener), so each worker counts on its own:
-- a source gets up to MAX_FAILS failures per window per worker before it is marked.
-- MAX_FAILS and WINDOW_S are set by the line `extproc envoy-config` (or the Helm chart) puts
-- before this file.

local MAX_SOURCES, MAX_GOOD = 10000, 10000   -- bounded tables: cleared when full
local PENALTY = "x-extproc-auth-penalty"     -- request header read by local_ratelimit
local LIMITED = "x-extproc-auth-limited"     -- local_ratelimit puts it on its own 429s
local NS = "extproc.auth_guard"              -- dynamic metadata: the token's key, request -> response

local window, fails, nsources = -1, {}, 0    -- this window's failures per source
local good, ngood = {}, 0                    -- keys of tokens the sidecar accepted

-- "1.2.3.4:5555", "[::1]:5555" -> the address without its port
local function source(info)
  local address = info:downstreamRemoteAddress()
  return address:match("^(.+):%d+$") or address
end

local function roll()
  local w = math.floor(os.time() / WINDOW_S)
  if w ~= window then window, fails, nsources = w, {}, 0 end
end

function envoy_on_request(handle)
  local headers = handle:headers()
  headers:remove(PENALTY)                    -- never the client's
  local key
  local authorization = headers:get("authorization")
  if authorization then
    local token = authorization:match("^[Bb][Ee][Aa][Rr][Ee][Rr]%s+(%S+)")
    if token then
      key = token:sub(-43)                   -- the signature's tail names the token
      handle:streamInfo():dynamicMetadata():set(NS, "k", key)
    end
  end
  roll()
  local n = fails[source(handle:streamInfo())]
  if n and n >= MAX_FAILS and not (key and good[key]) then headers:add(PENALTY, "1") end
end

function envoy_on_response(handle)
  local headers = handle:headers()
  if headers:get(LIMITED) then headers:remove(LIMITED) return end  -- our own 429 proves nothing
  local info = handle:streamInfo()
  local meta = info:dynamicMetadata():get(NS)
  local key = meta and meta["k"]
  local status = headers:get(":status") or ""
  if status == "401" then
    roll()
    local src = source(info)
    local n = fails[src]
    if n == nil then
      if nsources >= MAX_SOURCES then fails, nsources = {}, 0 end
      nsources, n = nsources + 1, 0
    end
    fails[src] = n + 1
    if key and good[key] then good[key], ngood = nil, ngood - 1 end  -- expired or revoked now
  elseif key and not good[key] and status:sub(1, 1) ~= "5"            -- 5xx: the token was not judged
      and headers:get("x-extproc-decision-id") then                   -- Envoy's own replies prove nothing
    if ngood >= MAX_GOOD then good, ngood = {}, 0 end
    good[key], ngood = true, ngood + 1
  end
end
