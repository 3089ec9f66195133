-- snapshot: every record of one due-set (one account slot), read in one step.
--
-- KEYS: the due-set. ARGV: nothing, or 'T' on the server's clock. Answers
-- {raw1, raw2, ...} (flat HGETALL lists), or {now, raw1, ...}.

local members = redis.call('ZRANGE', KEYS[1], 0, -1)
local out = {}
-- ARGV[1] = 'T' (server_clock): the server's now first, {now, raw1, ...}
if ARGV[1] == 'T' then
  local _
  _, out[1] = jc_now('T')
end
for _, job in ipairs(members) do
  local raw = redis.call('HGETALL', job)
  if #raw > 0 then out[#out + 1] = raw end
end
return out
