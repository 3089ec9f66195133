-- lookup, on the server's clock (server_clock=True): {now, the job's
-- HGETALL}, read together, so the record is judged live or not by the time
-- the server read it. (On the ledger's clock a lookup is a plain HGETALL.)
--
-- KEYS: the job.

local _, nows = jc_now('T')
return {nows, redis.call('HGETALL', KEYS[1])}
