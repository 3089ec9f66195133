-- merge (Redis Cluster): number the slot streams' entries into one journal.
--
-- On a cluster each change's entry goes to its slot's own stream (P:{S}:journal,
-- S a tag that hashes to the account's slot), the journal stream the write
-- scripts get, so the entry still commits with the change. Readers number
-- them: a merge pass reads the slot streams past their marks and hands the
-- entries, in the order it chose, to this script, which runs in the merged
-- journal's slot (P:{journal}) and appends each entry a slot stream has not
-- merged yet to the merged stream (XADD 0-*: the entry's seq) and moves that
-- stream's mark (KEYS[2], stream -> the last slot seq merged). Several readers
-- may merge at once: each entry is appended once, by the first pass whose
-- script gets it, and a slot's entries stay in their stream's order, because a
-- stream's entries arrive in order and the marks only grow.
--
-- KEYS: the merged stream, the marks hash. ARGV: groups of 9 (stream, slot
-- seq, then the entry's k a c x d b t). Answers {appended, stream1, mark1,
-- ...}, the mark of every stream in the batch as it stands after the script:
-- the caller trims those slot streams up to them (what is merged is kept in
-- the merged stream) and reads them from there next time.

jc_arity(2, 0)
if #ARGV % 9 ~= 0 then jc_fail('merge arguments', #ARGV) end
if (redis.REDIS_VERSION_NUM or 0) < 0x070000 then
  return redis.error_reply('the jobcredits journal needs Redis 7.0 or newer (or journal=false)')
end
local marks = {}
local streams = {}
local moved = {}
local take = {}
for i = 1, #ARGV, 9 do
  local s = jc_str(ARGV[i], 'slot stream')
  local seq = jc_int(ARGV[i + 1], 'slot seq', 1, JC_MAX)
  for j = i + 2, i + 8 do jc_str(ARGV[j], 'entry field') end
  jc_num(ARGV[i + 8], 'entry time')
  local m = marks[s]
  if m == nil then
    m = jc_int(redis.call('HGET', KEYS[2], s) or '0', 'stored mark', 0, JC_MAX)
    streams[#streams + 1] = s
  end
  if seq > m then
    take[#take + 1] = i
    m = seq
    moved[s] = true
  end
  marks[s] = m
end
-- Everything is checked: from here on, the writes.
for _, i in ipairs(take) do
  redis.call('XADD', KEYS[1], '0-*', 'k', ARGV[i + 2], 'a', ARGV[i + 3], 'c', ARGV[i + 4],
             'x', ARGV[i + 5], 'd', ARGV[i + 6], 'b', ARGV[i + 7], 't', ARGV[i + 8])
end
local out = {#take}
for _, s in ipairs(streams) do
  local m = string.format('%d', marks[s])
  if moved[s] then redis.call('HSET', KEYS[2], s, m) end
  out[#out + 1] = s
  out[#out + 1] = m
end
return out
