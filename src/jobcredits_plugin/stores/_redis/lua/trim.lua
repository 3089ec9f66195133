-- trim: delete journal entries every reader is done with.
--
-- KEYS: the journal stream, the cursors hash. ARGV: the highest seq to
-- delete ('' : no bound), the time cutoff ('' : no bound), the most entries
-- to delete.
--
-- Deletes journal entries from the start of the stream, in order, while their
-- seq is at most ARGV[1] ('' : no bound) and at most every cursor's position
-- (the cursors hash, KEYS[2]), and their t is below ARGV[2] ('' : no bound);
-- stops at the first entry that is too new, and after ARGV[3] entries, so one
-- call never blocks the server for long. Answers how many went. Its one write
-- is the XTRIM at the end.

jc_arity(2, 3)
local stream, curs = KEYS[1], KEYS[2]
local cap = nil
if ARGV[1] ~= '' then cap = jc_int(ARGV[1], 'through', 0, JC_MAX) end
for _, v in ipairs(redis.call('HVALS', curs)) do
  local n = tonumber(v)
  if n ~= nil and (cap == nil or n < cap) then cap = n end
end
local cutoff = nil
if ARGV[2] ~= '' then cutoff = jc_num(ARGV[2], 'cutoff') end
local bound = jc_int(ARGV[3], 'batch', 1, 1000000)
local start = '-'
local last = nil
local count = 0
while count < bound do
  local want = math.min(1000, bound - count)
  local chunk = redis.call('XRANGE', stream, start, '+', 'COUNT', want)
  local stop = false
  for _, e in ipairs(chunk) do
    local id = e[1]
    local seq = tonumber(string.sub(id, string.find(id, '-', 1, true) + 1))
    if cap ~= nil and seq > cap then
      stop = true
      break
    end
    if cutoff ~= nil then
      local f, t = e[2], nil
      for i = 1, #f, 2 do
        if f[i] == 't' then t = tonumber(f[i + 1]) end
      end
      if t == nil or t >= cutoff then
        stop = true
        break
      end
    end
    last = seq
    count = count + 1
  end
  if stop or #chunk < want then break end
  start = '(' .. chunk[#chunk][1]
end
if count == 0 then return 0 end
return redis.call('XTRIM', stream, 'MINID', '0-' .. string.format('%d', last + 1))
