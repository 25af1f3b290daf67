-- Rotates one refresh token in one atomic step.
-- KEYS[1]: the presented token's record; KEYS[2]: the record of its successor.
-- ARGV[1]: the family key prefix; ARGV[2]: the TTL in milliseconds; ARGV[3]: the session
-- key prefix; ARGV[4]: now, in milliseconds; ARGV[5]: the key prefix of each person's
-- session list.
-- Returns {outcome, user_id}, outcome one of 'rotated', 'reused', 'invalid'.
local record = redis.call('HMGET', KEYS[1], 'user', 'family', 'state')
local user, family, state = record[1], record[2], record[3]
if not user or not family then
  -- Unknown or expired.
  return {'invalid', ''}
end

local family_key = ARGV[1] .. family
if redis.call('GET', family_key) ~= 'active' then
  -- Revoked (logout or an earlier reuse), or expired.
  return {'invalid', user}
end

if state ~= 'active' then
  -- Presented again after it was rotated: someone else holds a copy. Revoke the whole
  -- family, so the successor stops working too. The marker outlives every token of the
  -- family: none was issued more than one TTL ago.
  redis.call('SET', family_key, 'revoked', 'PX', ARGV[2])
  return {'reused', user}
end

-- HSET keeps the old record's TTL: it stays, marked rotated, until it would have expired,
-- so a reuse is detected for as long as the token could have been used.
redis.call('HSET', KEYS[1], 'state', 'rotated')
redis.call('HSET', KEYS[2], 'user', user, 'family', family, 'state', 'active')
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('PEXPIRE', family_key, ARGV[2])
local session_key = ARGV[3] .. family
if redis.call('EXISTS', session_key) == 1 then
  redis.call('HSET', session_key, 'last_used', ARGV[4])
  redis.call('PEXPIRE', session_key, ARGV[2])
  redis.call('PEXPIRE', ARGV[5] .. user, ARGV[2])
end
return {'rotated', user}
