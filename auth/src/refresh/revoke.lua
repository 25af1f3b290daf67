-- Revokes the family of one refresh token (logout). Idempotent.
-- KEYS[1]: the token's record. ARGV[1]: the family key prefix; ARGV[2]: the TTL in ms.
-- Returns 1 when a family was revoked, 0 for an unknown or expired token.
local family = redis.call('HGET', KEYS[1], 'family')
if not family then
  return 0
end
-- The marker outlives every token of the family: none was issued more than one TTL ago.
redis.call('SET', ARGV[1] .. family, 'revoked', 'PX', ARGV[2])
return 1
