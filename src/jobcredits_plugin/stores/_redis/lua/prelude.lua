-- The prelude: prepended to every script (see _scripts.py), so that each
-- script is one self-contained text with these helpers in front of its own
-- code. Its names are declared to luacheck in .luacheckrc.
--
-- Record hash fields: the ones the scripts read or change, each on its own
-- (a account, c charge_id, st state, ea expires_at, lu lease_until, u uses,
-- d debited), and x, the fields only Python reads, packed by Python as one
-- JSON array [scope, job_id, tier, backend, cost, charged_at] that the scripts
-- store as they got it. Fewer fields and arguments are most of what makes a
-- charge cheap: Redis's own work per field and redis-py's per argument.
-- Numbers are kept as the strings Python wrote; Lua only parses them to
-- compare.
--
-- The journal is one stream (a key of every script that changes the books,
-- passed only when the journal is on), written by the very script that makes
-- the change, so the entry and the change commit together. An entry's
-- fields: k kind, a account, c charge id (the grant id for a grant), x the
-- record's packed x field (for a grant [null, null, null, null, amount asked,
-- null]), d what the change did to the stored balance, b the stored balance
-- after it, t the operation's now. Its id is 0-<seq>: "XADD key 0-*" (Redis
-- >= 7.0) numbers entries 0-1, 0-2, ... and a stream trimmed to empty keeps
-- its last id, so seq never goes back. Balances are integers that Lua holds
-- as doubles: '%d' prints them as integers (tostring would print 1e+15). A
-- script that journals first checks the server is 7.0 or newer, before it
-- writes anything: a Lua script is not rolled back when a command fails
-- half-way, so an XADD refused by an older server after the change would
-- leave the change without its entry.
--
-- Every script that writes validates everything it will use (its arguments,
-- and the stored fields and balances it will write from) with these helpers
-- *before its first write*: Redis does not roll a script back when a command
-- fails half-way, so a command that can fail after a write would leave a
-- change without its record, journal entry or hook (a claim whose PEXPIRE
-- was refused after HSET, ZADD and DECRBY once debited a balance and answered
-- "unavailable"). The Python side only ever sends values in range (the ledger
-- and the constructor bound them), so a failed check is a bug, reported as an
-- error reply naming the value, with nothing written. Numbers must be spelled
-- the way Redis's own INCRBY/PEXPIRE/ZADD parse them: Lua's tonumber alone
-- would also take "nan", "inf", "0x10" and " 5 ", which Redis refuses later.

local JC_MAX = 9007199254740991
local JC_I64 = 9223372036854775807
local JC_MS = 1000000000000
local function jc_fail(what, v)
  error({err = 'jobcredits: bad ' .. what .. ': ' .. tostring(v)})
end
local function jc_num(v, what)
  if type(v) ~= 'string' or #v > 40 or not string.find(v, '^%-?%d[%d%.eE%+%-]*$') then
    jc_fail(what, v)
  end
  local n = tonumber(v)
  if n == nil or n ~= n or n == math.huge or n == -math.huge then jc_fail(what, v) end
  return n
end
local function jc_int(v, what, lo, hi)
  if type(v) ~= 'string' or #v > 20 or not (v == '0' or string.find(v, '^%-?[1-9]%d*$')) then
    jc_fail(what, v)
  end
  local n = tonumber(v)
  if n < lo or n > hi then jc_fail(what, v) end
  return n
end
local function jc_flag(v, what, allowed)
  if type(v) ~= 'string' or not string.find(allowed, v, 1, true) or #v ~= 1 then
    jc_fail(what, v)
  end
  return v
end
local function jc_str(v, what)
  if type(v) ~= 'string' then jc_fail(what, v) end
  return v
end
local function jc_arity(nk, na)
  if #KEYS < nk or #ARGV < na then jc_fail('number of keys/arguments', #KEYS .. '/' .. #ARGV) end
end
local function jc_credit_ok(b, add, what)
  if b + add >= JC_I64 then jc_fail(what .. ' (the balance would overflow)', add) end
end
-- A retry marker: nil, or the JSON array the script kept in it, whose first
-- element has the type `first`, and whose record elements (at `from` and on,
-- each a flat HGETALL list) are lists of strings.
local function jc_kept(mark, first, from, to)
  local kept = redis.call('GET', mark)
  if not kept then return nil end
  local ok, m = pcall(cjson.decode, kept)
  if not ok or type(m) ~= 'table' or type(m[1]) ~= first then jc_fail('retry marker', kept) end
  if to == nil then to = #m end
  for i = from, to do
    local raw = m[i]
    if type(raw) ~= 'table' or #raw % 2 ~= 0 then jc_fail('retry marker', kept) end
    for _, v in ipairs(raw) do
      if type(v) ~= 'string' then jc_fail('retry marker', kept) end
    end
  end
  return m
end
-- The operation's now, as a number and as the string every stored time and
-- journal entry is written with: the caller's (v, a repr of a Python float)
-- or, when the caller sends 'T' (server_clock=True), the server's own clock,
-- read with TIME inside this very script, so the decision and its writes use
-- one time that every host sharing the server shares. TIME is a
-- non-deterministic command: Redis 5+ replicates a script's effects, not
-- the script, which makes it safe before writes (older servers must be told).
-- The string is the exact microseconds ("1765000000.012345"), which Lua and
-- Python parse to the same double.
local function jc_now(v)
  if v ~= 'T' then return jc_num(v, 'now'), v end
  if (redis.REDIS_VERSION_NUM or 0) < 0x050000 and redis.replicate_commands then
    redis.replicate_commands()
  end
  local t = redis.call('TIME')
  local s = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
  return tonumber(s), s
end
-- A time the script computed, spelled so that Python reads back the very
-- double (17 significant digits round-trip any double).
local function jc_time(x)
  return string.format('%.17g', x)
end
