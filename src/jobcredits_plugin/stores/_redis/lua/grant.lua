-- grant: add credits to an account (or take them, never below zero).
--
-- KEYS: the balance, the grant's marker, the stream (when the journal is on).
-- ARGV: amount, journal flag, the marker's life in ms ('' : no grant id, no
-- marker), account, grant id, x, now. The marker, "<amount> <balance after>
-- <now>", is the grant id's memory (Store.grant): a grant repeated with the
-- same id while the marker lives (GRANT_ID_RETENTION, by the ledger's clock;
-- the key's PX is the same span of server time) writes nothing and answers
-- {'replay', the balance the first one answered}, or {'conflict', the first
-- amount} when it asks for another amount. That covers both redis-py's own
-- re-send of a grant whose answer was lost and the caller's retry with its
-- grant_id. A marker of an older version ('1', from the 60 s markers) answers
-- {'replay', current balance}. A grant that adds credits and would take the
-- balance past MAX_CREDITS writes nothing and answers {'cap', balance}; the
-- others answer {'ok', balance}. Everything is checked before the first write.

jc_arity(2, 7)
local amount = jc_int(ARGV[1], 'amount', -JC_MAX, JC_MAX)
local jr = jc_flag(ARGV[2], 'journal flag', '01')
local life = 0
if ARGV[3] ~= '' then life = jc_int(ARGV[3], 'marker life', 1, JC_MS) end
local now, nows = jc_now(ARGV[7])
if jr == '1' then
  jc_arity(3, 7)
  if (redis.REDIS_VERSION_NUM or 0) < 0x070000 then
    return redis.error_reply('the jobcredits journal needs Redis 7.0 or newer (or journal=false)')
  end
end
local stored = redis.call('GET', KEYS[1]) or '0'
if life > 0 then
  local memo = redis.call('GET', KEYS[2])
  if memo then
    local m_amount, m_balance, m_at = string.match(memo, '^(%-?%d+) (%-?%d+) (%S+)$')
    if m_amount == nil then return {'replay', stored} end
    if now < jc_num(m_at, 'stored grant time') + life / 1000 then
      if m_amount ~= ARGV[1] then return {'conflict', m_amount} end
      return {'replay', m_balance}
    end
  end
end
local before = jc_int(stored, 'stored balance', -JC_I64, JC_I64)
if amount > 0 and before + amount > JC_MAX then return {'cap', stored} end
-- Everything is checked: from here on, the writes.
local d = ARGV[1]
if before + amount < 0 then
  -- a grant never takes a balance below zero: it moves it by -before
  redis.call('SET', KEYS[1], '0')
  if before == 0 then
    d = '0'
  elseif string.sub(stored, 1, 1) == '-' then
    d = string.sub(stored, 2)
  else
    d = '-' .. stored
  end
elseif amount ~= 0 then
  redis.call('INCRBY', KEYS[1], ARGV[1])
end
local after = redis.call('GET', KEYS[1]) or '0'
if life > 0 then
  redis.call('SET', KEYS[2], ARGV[1] .. ' ' .. after .. ' ' .. nows, 'PX', ARGV[3])
end
if jr == '1' then
  redis.call('XADD', KEYS[3], '0-*', 'k', 'grant', 'a', ARGV[4], 'c', ARGV[5], 'x', ARGV[6],
             'd', d, 'b', after, 't', nows)
end
return {'ok', after}
