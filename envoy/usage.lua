-- Response usage reader: an Envoy Lua HTTP filter (LuaJIT inside Envoy) that reads the usage a
-- model provider reports, from JSON and SSE response bodies as they pass, and puts it in the
-- request's dynamic metadata for the access log (and the gRPC Access Log Service) to carry at
-- the end of the request (envoy/README.md "Usage accounting"). The semantics are those of the
-- Python readers it replaced (tests/sse_reference.py, extproc/domain/usage.py), which its tests
-- (tests/e2e/test_usage_lua.py) compare it with, without a gRPC round trip per chunk.
--
-- It never holds a chunk back: handle:bodyChunks() runs this coroutine on each chunk as Envoy
-- passes it on (never handle:body(), which buffers). Only 2xx responses are read, by their
-- content-type: text/event-stream (SSE), application/json or */*+json (JSON, up to MAX_JSON
-- bytes, decoded at the end). Anything else is only followed to its end.
--
-- Dynamic metadata, namespace extproc.usage (numbers as numbers):
--   status       the response status (every response)
--   read         "sse" | "json": the body is read
--   prompt, completion, cached (cache reads), cache_write (Anthropic cache_creation_input_tokens),
--   reasoning    the usage the provider reported
--   reported     1 once the provider's usage was seen (absent otherwise)
--   completed    1 once the stream's terminal event ([DONE], response.completed/incomplete/failed,
--                message_stop) or the whole JSON body was seen
--   text_ascii, text_other  bytes of generated text seen in the deltas (decoded), ASCII and not
--   events       SSE events with data seen
--   end          1 once the end of the response body passed this filter (every response)
-- A client or upstream may go away mid-stream (this coroutine is then never resumed again), so
-- the metadata is kept current: usage as soon as it is seen, the counters once per chunk.
--
-- Where each API puts its usage:
--   OpenAI chat/completions SSE: choices[].delta.content / choices[].text are text; a chunk with
--     "usage" (prompt_tokens, completion_tokens, *_details) is the usage; data: [DONE] completes.
--   OpenAI Responses SSE: response.output_text.delta's "delta" is text; response.completed /
--     .incomplete / .failed complete and carry response.usage (input_tokens, output_tokens, ...).
--   Anthropic Messages SSE: message_start's message.usage (input, cache reads/writes), text in
--     content_block_delta's delta.text, the cumulative usage.output_tokens in message_delta,
--     message_stop completes.
--   JSON bodies: the top-level "usage" of any of these APIs (and of OpenAI embeddings).

local NS = "extproc.usage"
local MAX_EVENT = 1048576      -- an SSE event larger than this is skipped (its bytes still pass)
local MAX_JSON = 1048576       -- a JSON body larger than this is not decoded
local MAX_DEPTH = 512          -- JSON nesting
local MAX_TOKENS = 9007199254740992  -- 2^53: larger counts are garbage, not usage

local byte, sub, find, char = string.byte, string.sub, string.find, string.char
local concat = table.concat
local floor, huge = math.floor, math.huge
local type, tonumber, setmetatable, getmetatable = type, tonumber, setmetatable, getmetatable

---------------------------------------------------------------------------------------------
-- JSON: a recursive-descent parser (RFC 8259, plus NaN/Infinity/-Infinity and a leading UTF-8
-- BOM, which Python's json.loads also accepts). The whole text is validated (grammar, escapes,
-- UTF-8, control characters), but only the parts a `spec` asks for are built:
--   spec nil    the value is checked and skipped (nothing is built)
--   spec true   the value is built whole
--   spec table  objects: only the members whose key (decoded) is in the spec, each with its own
--               spec; arrays: each item with spec[ITEMS]; scalars are built.
-- Objects are tables with metatable OBJECT, arrays with metatable ARRAY (items 1..n and n);
-- null is nil (an absent member, as Python's dict.get sees it); numbers with a fraction or an
-- exponent, NaN/Infinity, and integers beyond +-2^53 are {value} with metatable INEXACT, so an
-- integer is always a plain Lua number.
---------------------------------------------------------------------------------------------

local OBJECT, ARRAY, INEXACT = {}, {}, {}
local ITEMS = {}

-- The text being parsed and the position in it (nothing yields while parsing). A malformed text
-- sets BAD and moves P past any end, so every loop stops at once and the result is dropped.
-- (No pcall/error: LuaJIT cannot compile a trace that returns into a pcall frame, "NYI: return
-- to lower frame", and the decoder would then run interpreted, several times slower.)
local S, P, BAD = "", 1, false
local PAST = 2 ^ 30

local function fail()
  BAD, P = true, PAST
  return nil
end

local function skip_ws()
  local c = byte(S, P)
  while c == 32 or c == 10 or c == 13 or c == 9 do
    P = P + 1
    c = byte(S, P)
  end
  return c
end

local ESCAPES = {[34] = '"', [92] = "\\", [47] = "/", [98] = "\b", [102] = "\f", [110] = "\n",
                 [114] = "\r", [116] = "\t"}

-- Note: no Lua pattern with a character class ("[...]") is used on the body: LuaJIT does not
-- compile them, and they cost some 20 ns a byte, where a string.byte loop costs about 1.

local function hex(c)
  if c then
    if c >= 48 and c <= 57 then return c - 48 end
    if c >= 97 and c <= 102 then return c - 87 end
    if c >= 65 and c <= 70 then return c - 55 end
  end
  fail()
  return 0
end

local function hex4(p)
  local a, b, c, d = byte(S, p, p + 3)
  return hex(a) * 4096 + hex(b) * 256 + hex(c) * 16 + hex(d)
end

-- Past the UTF-8 sequence whose lead byte c (>= 0x80) is at p, if it is well formed as Python's
-- json.loads(bytes) decodes it (decode("utf-8", "surrogatepass")): no overlong forms, nothing
-- past U+10FFFF, no truncated sequence; encoded surrogates (ED A0..BF ..) are let through.
local function utf8_next(p, c)
  local c1 = byte(S, p + 1) or 0
  if c < 0xC2 then return fail() end
  if c < 0xE0 then
    if c1 < 0x80 or c1 > 0xBF then return fail() end
    return p + 2
  end
  local c2 = byte(S, p + 2) or 0
  if c2 < 0x80 or c2 > 0xBF then return fail() end
  if c < 0xF0 then
    if c1 < (c == 0xE0 and 0xA0 or 0x80) or c1 > 0xBF then return fail() end
    return p + 3
  end
  local c3 = byte(S, p + 3) or 0
  if c > 0xF4 or c3 < 0x80 or c3 > 0xBF then return fail() end
  if c1 < (c == 0xF0 and 0x90 or 0x80) or c1 > (c == 0xF4 and 0x8F or 0xBF) then return fail() end
  return p + 4
end

-- The string at P (its opening quote) checked (escapes, control bytes, UTF-8): the position of
-- its closing quote, and whether it has escapes; nil if it is malformed.
local function scan_string()
  local p, escaped = P + 1, false
  while true do
    local c = byte(S, p)
    if c == 34 then return p, escaped end
    if c == 92 then
      escaped = true
      local e = byte(S, p + 1)
      if e == 117 then
        hex4(p + 2)
        if BAD then return nil end
        p = p + 6
      elseif ESCAPES[e] then
        p = p + 2
      else
        return fail()
      end
    elseif c == nil or c < 32 then
      return fail()
    elseif c < 128 then
      p = p + 1
    else
      p = utf8_next(p, c)
      if not p then return nil end
    end
  end
end

-- A code point as UTF-8. Lone surrogates (which Python keeps) take their 3-byte form, so they
-- count as 3 non-ASCII bytes, as Python's encode("utf-8", "surrogatepass") counts them.
local function utf8_char(cp)
  if cp < 0x80 then return char(cp) end
  if cp < 0x800 then return char(0xC0 + floor(cp / 64), 0x80 + cp % 64) end
  if cp < 0x10000 then
    return char(0xE0 + floor(cp / 4096), 0x80 + floor(cp / 64) % 64, 0x80 + cp % 64)
  end
  return char(0xF0 + floor(cp / 262144), 0x80 + floor(cp / 4096) % 64, 0x80 + floor(cp / 64) % 64,
              0x80 + cp % 64)
end

-- The escapes of a checked string (its content from p to q - 1) decoded.
local function unescape(p, q)
  local buf, nb, e = {}, 0, p
  while true do
    while e < q and byte(S, e) ~= 92 do e = e + 1 end
    if e > p then
      nb = nb + 1
      buf[nb] = sub(S, p, e - 1)
    end
    if e >= q then return concat(buf, "", 1, nb) end
    local r = ESCAPES[byte(S, e + 1)]
    if r then
      p = e + 2
    else                                   -- \uXXXX, and a surrogate pair as one character
      local cp = hex4(e + 2)
      p = e + 6
      if cp >= 0xD800 and cp <= 0xDBFF and byte(S, p) == 92 and byte(S, p + 1) == 117 then
        local lo = hex4(p + 2)
        if lo >= 0xDC00 and lo <= 0xDFFF then
          cp = 0x10000 + (cp - 0xD800) * 1024 + (lo - 0xDC00)
          p = p + 6
        end
      end
      r = utf8_char(cp)
    end
    nb = nb + 1
    buf[nb] = r
    e = p
  end
end

-- The string at P, decoded.
local function string_value()
  local q, escaped = scan_string()
  if not q then return nil end
  local p = P + 1
  P = q + 1
  if not escaped then return sub(S, p, q - 1) end
  return unescape(p, q)
end

-- The string at P, checked and skipped.
local function string_skip()
  local q = scan_string()
  if q then P = q + 1 end
end

local function digits(p)                   -- past a run of at least one digit at p
  local c = byte(S, p)
  if not c or c < 48 or c > 57 then return fail() end
  repeat
    p = p + 1
    c = byte(S, p)
  until not c or c < 48 or c > 57
  return p, c
end

local function number(build)
  local start, p = P, P
  local c = byte(S, p)
  if c == 45 then
    p = p + 1
    c = byte(S, p)
    if c == 73 then                        -- -Infinity
      if sub(S, p, p + 7) ~= "Infinity" then return fail() end
      P = p + 8
      return build and setmetatable({-huge}, INEXACT) or nil
    end
  end
  if c == 48 then
    p = p + 1
    c = byte(S, p)
  else
    p, c = digits(p)
    if not p then return nil end
  end
  local exact = true
  if c == 46 then
    p, c = digits(p + 1)
    if not p then return nil end
    exact = false
  end
  if c == 101 or c == 69 then
    p = p + 1
    c = byte(S, p)
    if c == 43 or c == 45 then p = p + 1 end
    p, c = digits(p)
    if not p then return nil end
    exact = false
  end
  P = p
  if not build then return nil end
  local text = sub(S, start, p - 1)
  local v = tonumber(text)
  if exact then
    if p - start > 15 and (v >= MAX_TOKENS or v <= -MAX_TOKENS)
        and text ~= "9007199254740992" and text ~= "-9007199254740992" then
      return setmetatable({v}, INEXACT)    -- beyond 2^53: not exactly representable
    end
    if v == 0 then return 0 end            -- "-0"
    return v
  end
  return setmetatable({v}, INEXACT)
end

local function literal(word, v)
  if sub(S, P, P + #word - 1) ~= word then return fail() end
  P = P + #word
  return v
end

local value

local function object(spec, depth)
  if depth > MAX_DEPTH then return fail() end
  P = P + 1
  local t = spec and setmetatable({}, OBJECT) or nil
  local c = skip_ws()
  if c == 125 then
    P = P + 1
    return t
  end
  while true do
    if c ~= 34 then return fail() end
    local key, member
    if spec == true then
      key = string_value()
      member = true
    elseif spec then
      key = string_value()
      if key then member = spec[key] end
    else
      string_skip()
    end
    if skip_ws() ~= 58 then return fail() end
    P = P + 1
    skip_ws()
    local v = value(member, depth)
    if member then t[key] = v end
    c = skip_ws()
    if c == 44 then
      P = P + 1
      c = skip_ws()
    elseif c == 125 then
      P = P + 1
      return t
    else
      return fail()
    end
  end
end

local function array(spec, depth)
  if depth > MAX_DEPTH then return fail() end
  P = P + 1
  local t, item
  if spec then
    t = setmetatable({n = 0}, ARRAY)
    if spec == true then item = true else item = spec[ITEMS] end
  end
  local c = skip_ws()
  if c == 93 then
    P = P + 1
    return t
  end
  local n = 0
  while true do
    n = n + 1
    local v = value(item, depth)
    if t then t[n] = v end
    c = skip_ws()
    if c == 44 then
      P = P + 1
      skip_ws()
    elseif c == 93 then
      P = P + 1
      if t then t.n = n end
      return t
    else
      return fail()
    end
  end
end

value = function(spec, depth)
  local c = byte(S, P)
  if c == 34 then
    if spec then return string_value() end
    string_skip()
    return nil
  elseif c == 123 then
    return object(spec, depth + 1)
  elseif c == 91 then
    return array(spec, depth + 1)
  elseif c == 45 or (c and c >= 48 and c <= 57) then
    return number(spec)
  elseif c == 116 then
    return literal("true", true)
  elseif c == 102 then
    return literal("false", false)
  elseif c == 110 then
    return literal("null", nil)
  elseif c == 78 then
    return literal("NaN", spec and setmetatable({0 / 0}, INEXACT) or nil)
  elseif c == 73 then
    return literal("Infinity", spec and setmetatable({huge}, INEXACT) or nil)
  end
  return fail()
end

-- The JSON text decoded as `spec` asks, or nil when it is not JSON.
local function decode(text, spec)
  local start = 1
  if byte(text, 1) == 0xEF and sub(text, 1, 3) == "\239\187\191" then start = 4 end
  -- Non-ASCII bytes are checked as UTF-8 in strings; anywhere else they are a syntax error.
  S, P, BAD = text, start, false
  skip_ws()
  local v = value(spec, 0)
  if skip_ws() ~= nil then BAD = true end -- extra data
  S = ""
  if BAD then return nil end
  return v
end

---------------------------------------------------------------------------------------------
-- Usage (extproc/domain/usage.py): usage objects are {prompt, completion, cached, reasoning,
-- cache_write}.
---------------------------------------------------------------------------------------------

local function is_object(v) return type(v) == "table" and getmetatable(v) == OBJECT end

-- A token count: a non-negative integer up to 2^53 (not a boolean, not a float), else nil.
local function tokens(v)
  if type(v) == "number" and v >= 0 and v <= MAX_TOKENS and v == floor(v) then return v end
  return nil
end

local function detail(usage, section, field)
  local d = usage[section]
  if is_object(d) then return tokens(d[field]) or 0 end
  return 0
end

local function usage_from_object(u)
  if not is_object(u) then return nil end
  local prompt = tokens(u.prompt_tokens)
  if prompt then                           -- OpenAI chat/completions/embeddings
    local completion = tokens(u.completion_tokens)
    if not completion then                 -- embeddings: only prompt (and total)
      local total = tokens(u.total_tokens)
      completion = total and total > prompt and total - prompt or 0
    end
    return {prompt, completion, detail(u, "prompt_tokens_details", "cached_tokens"),
            detail(u, "completion_tokens_details", "reasoning_tokens"), 0}
  end
  local input, output = tokens(u.input_tokens), tokens(u.output_tokens)
  if not input or not output then return nil end
  local cached = tokens(u.cache_read_input_tokens)               -- Anthropic
  if not cached then cached = detail(u, "input_tokens_details", "cached_tokens") end  -- Responses
  return {input, output, cached, detail(u, "output_tokens_details", "reasoning_tokens"),
          tokens(u.cache_creation_input_tokens) or 0}
end

-- Text seen, counted from a decoded string: ASCII bytes and the other (UTF-8) bytes.
local function count_text(st, text)
  if type(text) ~= "string" then return end
  local n, other = #text, 0
  for i = 1, n do
    if byte(text, i) >= 128 then other = other + 1 end
  end
  st.ascii = st.ascii + n - other
  st.other = st.other + other
end

---------------------------------------------------------------------------------------------
-- SSE (as tests/sse_reference.py reads it)
---------------------------------------------------------------------------------------------

-- What an SSE event's JSON is decoded for (everything else is checked and skipped).
local SSE_SPEC = {
  type = true,
  choices = {[ITEMS] = {delta = {content = true}, text = true}},   -- OpenAI chat/completions
  usage = true,
  delta = true,                            -- Responses (a string), Anthropic (an object)
  response = {usage = true},               -- Responses
  message = {usage = true},                -- Anthropic
}
local JSON_SPEC = {usage = true}           -- a whole JSON body: only its top-level usage

-- A usage value seen (nil: none): kept in the state, and the metadata marked for an update.
local function keep(st, key, value)
  if value ~= nil then
    st[key] = value
    st.dirty = true
  end
end

local function read_event(st, doc)
  local kind = doc.type
  if kind == nil then                      -- OpenAI chat/completions chunk
    local choices = doc.choices
    if type(choices) == "table" and getmetatable(choices) == ARRAY then
      for k = 1, choices.n do
        local choice = choices[k]
        if is_object(choice) then
          local delta = choice.delta
          if is_object(delta) then count_text(st, delta.content) end
          count_text(st, choice.text)      -- completions
        end
      end
    end
    keep(st, "usage", usage_from_object(doc.usage))
    return
  end
  if type(kind) ~= "string" then return end
  if sub(kind, 1, 9) == "response." then   -- Responses API
    if kind == "response.output_text.delta" then
      count_text(st, doc.delta)
    elseif kind == "response.completed" or kind == "response.incomplete" or kind == "response.failed" then
      st.completed = true
      local response = doc.response
      if is_object(response) then keep(st, "usage", usage_from_object(response.usage)) end
    end
    return
  end
  if kind == "message_start" then          -- Anthropic
    local message = doc.message
    if is_object(message) then
      -- tests/sse_reference.py replaces the input usage even with None; here a later message_start without
      -- a usage keeps the one seen (the metadata already carries it).
      keep(st, "input", usage_from_object(message.usage))
    end
  elseif kind == "content_block_delta" then
    local delta = doc.delta
    if is_object(delta) then count_text(st, delta.text) end
  elseif kind == "message_delta" then
    local u = doc.usage
    if is_object(u) then keep(st, "output", tokens(u.output_tokens)) end
  elseif kind == "message_stop" then
    st.completed = true
  end
end

-- One event's raw text (between blank lines): its data lines joined by "\n".
local function on_event(st, raw)
  local payload
  local nl, cr = find(raw, "\n", 1, true), find(raw, "\r", 1, true)
  if not nl and not cr then                -- one line: the common case
    if byte(raw, 1) ~= 100 or sub(raw, 1, 5) ~= "data:" then return end
    payload = sub(raw, byte(raw, 6) == 32 and 7 or 6)
  else
    local data, nd = nil, 0
    local p, n = 1, #raw
    while p <= n do
      if nl and nl < p then nl = find(raw, "\n", p, true) end
      if cr and cr < p then cr = find(raw, "\r", p, true) end
      local q = nl
      if cr and (not q or cr < q) then q = cr end
      local last = q and q - 1 or n
      if byte(raw, p) == 100 and sub(raw, p, p + 4) == "data:" then
        data = data or {}
        nd = nd + 1
        data[nd] = sub(raw, byte(raw, p + 5) == 32 and p + 6 or p + 5, last)
      end
      if not q then break end
      if q == cr and byte(raw, q + 1) == 10 then p = q + 2 else p = q + 1 end
    end
    if nd == 0 then return end             -- comments (": keep-alive"), bare event:/id: lines
    payload = nd == 1 and data[1] or concat(data, "\n", 1, nd)
  end
  st.events = st.events + 1
  if payload == "[DONE]" then
    st.completed = true
    return
  end
  local doc = decode(payload, SSE_SPEC)
  if is_object(doc) then read_event(st, doc) end
end

-- A chunk of the stream. Events end at a blank line ("\n\n", "\r\n\r\n" or "\r\r", the first
-- that matches from the left); chunks split them anywhere. Only the unfinished event is kept
-- between chunks, as a list of pieces (joined once, when it ends), with `edge`, its last 3 bytes
-- (a separator may start there).
local function sse_feed(st, s)
  local edge = st.edge
  local buf, off = s, 0
  if edge ~= "" then
    buf = edge .. s
    off = #edge
  end
  local n = #buf
  local start, pos, first = 1, 1, true
  local nl, cr = find(buf, "\n", 1, true), find(buf, "\r", 1, true)   -- the next of each
  while true do
    if nl and nl < pos then nl = find(buf, "\n", pos, true) end
    if cr and cr < pos then cr = find(buf, "\r", pos, true) end
    local i = nl
    if cr and (not i or cr < i) then i = cr end
    if not i then break end
    local stop
    local d = byte(buf, i + 1)
    if d == nil then break end             -- may be a separator: wait for more
    if i == nl then
      if d == 10 then stop = i + 1 end
    elseif d == 13 then
      stop = i + 1
    elseif d == 10 then
      local e, f = byte(buf, i + 2, i + 3)
      if e == nil or (e == 13 and f == nil) then break end
      if e == 13 and f == 10 then stop = i + 3 end
    end
    if stop then
      if first then                        -- the event that was pending before this chunk
        first = false
        local size = st.plen + (i - 1 - off)
        if not st.skipping and size <= MAX_EVENT then
          local raw
          if st.nparts == 0 then
            raw = sub(buf, off + 1, i - 1)
          else
            local pending = concat(st.parts, "", 1, st.nparts)
            if i > off then
              raw = pending .. sub(buf, off + 1, i - 1)
            else                           -- the separator started in the edge
              raw = sub(pending, 1, #pending - (off - i + 1))
            end
          end
          on_event(st, raw)
        end
        st.skipping = false
      elseif i - start <= MAX_EVENT then
        on_event(st, sub(buf, start, i - 1))
      end
      start, pos = stop + 1, stop + 1
    else
      pos = i + 1
    end
  end
  local parts = st.parts
  if first then                            -- no event ended: the whole chunk is pending
    if not st.skipping then
      st.nparts = st.nparts + 1
      parts[st.nparts] = s
      st.plen = st.plen + #s
    end
    edge = n > 3 and sub(buf, n - 2) or buf
  else
    for k = 1, st.nparts do parts[k] = nil end
    if start <= n then
      local rest = sub(buf, start)
      parts[1] = rest
      st.nparts, st.plen = 1, #rest
      edge = #rest > 3 and sub(rest, -3) or rest
    else
      st.nparts, st.plen = 0, 0
      edge = ""
    end
  end
  st.edge = edge
  if st.plen > MAX_EVENT then              -- an absurd event: skip to its end
    for k = 1, st.nparts do parts[k] = nil end
    st.nparts, st.plen = 0, 0
    st.skipping = true
  end
end

-- The end of the stream: a last event without its blank line is read too.
local function sse_finish(st)
  if st.nparts > 0 and not st.skipping then
    local raw = concat(st.parts, "", 1, st.nparts)
    for k = 1, st.nparts do st.parts[k] = nil end
    st.nparts, st.plen = 0, 0
    on_event(st, raw)
  end
end

---------------------------------------------------------------------------------------------
-- Metadata
---------------------------------------------------------------------------------------------

-- The usage to report: as reported, or Anthropic's input usage with the last output count.
local function effective(st)
  if st.usage then return st.usage end
  local input = st.input
  if not input then return nil end
  local out = st.output
  if not out or out == 0 then out = input[2] end
  return {input[1], out, input[3], 0, input[5]}
end

local USAGE_KEYS = {"prompt", "completion", "cached", "reasoning", "cache_write"}

-- Sets what changed since the last call (each key once at most). Envoy marks its wrappers
-- (streamInfo(), dynamicMetadata()) dead when the coroutine yields, so the metadata map is
-- fetched again after each chunk, and only when there is something to set.
local function publish(st, handle)
  local pub, meta = st.pub, nil
  if st.events ~= pub.events then
    pub.events = st.events
    meta = handle:streamInfo():dynamicMetadata()
    meta:set(NS, "events", st.events)
  end
  if st.ascii ~= pub.ascii then
    pub.ascii = st.ascii
    meta = meta or handle:streamInfo():dynamicMetadata()
    meta:set(NS, "text_ascii", st.ascii)
  end
  if st.other ~= pub.other then
    pub.other = st.other
    meta = meta or handle:streamInfo():dynamicMetadata()
    meta:set(NS, "text_other", st.other)
  end
  if st.dirty then
    st.dirty = false
    local u = effective(st)
    if u then
      meta = meta or handle:streamInfo():dynamicMetadata()
      for k = 1, 5 do
        if pub[k] ~= u[k] then
          pub[k] = u[k]
          meta:set(NS, USAGE_KEYS[k], u[k])
        end
      end
      if not pub.reported then
        pub.reported = true
        meta:set(NS, "reported", 1)
      end
    end
  end
  if st.completed and not pub.completed then
    pub.completed = true
    meta = meta or handle:streamInfo():dynamicMetadata()
    meta:set(NS, "completed", 1)
  end
end

local function body_kind(content_type)
  if not content_type then return nil end
  local media = content_type:match("^%s*([^;%s]+)")
  if not media then return nil end
  media = media:lower()
  if media == "text/event-stream" then return "sse" end
  if media == "application/json" or sub(media, -5) == "+json" then return "json" end
  return nil
end

function envoy_on_response(handle)
  local headers = handle:headers()
  local meta = handle:streamInfo():dynamicMetadata()
  local status = tonumber(headers:get(":status") or "")
  if status then meta:set(NS, "status", status) end
  local kind
  if status and status >= 200 and status < 300 then kind = body_kind(headers:get("content-type")) end
  if not kind then
    for _ in handle:bodyChunks() do end    -- not read: only followed to its end
    handle:streamInfo():dynamicMetadata():set(NS, "end", 1)
    return
  end
  meta:set(NS, "read", kind)
  local st = {pub = {}, events = 0, ascii = 0, other = 0, completed = false, dirty = false,
              usage = nil, input = nil, output = nil,
              parts = {}, nparts = 0, plen = 0, edge = "", skipping = false}
  if kind == "sse" then
    for chunk in handle:bodyChunks() do
      local n = chunk:length()
      if n > 0 then
        sse_feed(st, chunk:getBytes(0, n))
        publish(st, handle)
      end
    end
    sse_finish(st)
  else
    st.pub = {events = 0, ascii = 0, other = 0}   -- a JSON body has no events or deltas
    local parts, nparts, size = st.parts, 0, 0
    for chunk in handle:bodyChunks() do
      local n = chunk:length()
      if n > 0 and size <= MAX_JSON then
        size = size + n
        if size <= MAX_JSON then
          nparts = nparts + 1
          parts[nparts] = chunk:getBytes(0, n)
        else
          parts, nparts = {}, 0            -- too large to read: let it pass
        end
      end
    end
    if nparts > 0 then
      local doc = decode(concat(parts, "", 1, nparts), JSON_SPEC)
      if is_object(doc) then
        st.usage = usage_from_object(doc.usage)
        st.dirty = st.usage ~= nil
      end
    end
    st.completed = true
  end
  publish(st, handle)
  handle:streamInfo():dynamicMetadata():set(NS, "end", 1)
end
