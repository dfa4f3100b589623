package registry

import "github.com/valkey-io/valkey-go"

// Every script touches exactly one key so the design works unchanged on
// Valkey Cluster.

// claimScript adds ARGV[1] to the destination set only if the set is still
// empty. It returns {"claimed", ARGV[1]}, {"found", members...}, or
// {"toomany", size} for a set over ARGV[2] members. Concurrent claims from
// any number of coordinators therefore leave exactly one member; claiming
// a new destination costs three commands in all (EVALSHA, SCARD, SADD).
var claimScript = valkey.NewLuaScript(`
local n = redis.call('SCARD', KEYS[1])
if n == 0 then
  redis.call('SADD', KEYS[1], ARGV[1])
  return {'claimed', ARGV[1]}
end
if n > tonumber(ARGV[2]) then
  return {'toomany', tostring(n)}
end
local m = redis.call('SMEMBERS', KEYS[1])
table.insert(m, 1, 'found')
return m
`)

// boundedSetScript returns a set (a destination, P:members), or its size alone (an
// integer) when that exceeds ARGV[1], so an oversized set costs one small
// reply instead of megabytes.
var boundedSetScript = valkey.NewLuaScriptReadOnly(`
local n = redis.call('SCARD', KEYS[1])
if n > tonumber(ARGV[1]) then
  return n
end
return redis.call('SMEMBERS', KEYS[1])
`)

// reassignScript removes the dead ids ARGV[2..] and, if that leaves the set
// empty, adds ARGV[1]; it returns the resulting set. A second coordinator
// racing on the same orphan removes nothing more and adds nothing.
var reassignScript = valkey.NewLuaScript(`
for i = 2, #ARGV do
  redis.call('SREM', KEYS[1], ARGV[i])
end
if redis.call('SCARD', KEYS[1]) == 0 then
  redis.call('SADD', KEYS[1], ARGV[1])
end
return redis.call('SMEMBERS', KEYS[1])
`)

// heartbeatSrc refreshes a live member record: load and TTL. It returns
// 0 without writing anything if the record is gone, so the member can
// re-assert its bindings before it becomes live again.
const heartbeatSrc = `
if redis.call('HEXISTS', KEYS[1], 'address') == 0 then
  return 0
end
redis.call('HSET', KEYS[1], 'load', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
`

// registerSrc writes a member record and its TTL in one step (KEYS[1] =
// P:member:<id>; ARGV = address, load, TTL ms, then extra field/value
// pairs: the Go Member's capabilities and drain state), so a record never
// exists without expiry. It is sent as EVAL in the registration pipeline.
const registerSrc = `
redis.call('HSET', KEYS[1], 'address', ARGV[1], 'load', ARGV[2], unpack(ARGV, 4))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
`

// restoreLockSrc re-creates a lock record only if it is missing, so a
// heartbeat's recovery never clobbers a newer record of the same lock.
// It is sent as EVAL inside the recovery pipeline, which is rare.
const restoreLockSrc = `
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
if tonumber(ARGV[1]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return 1
`

// bindScript adds ARGV[1] to the destination set only if the set is empty
// or already holds it (create routes: never a second owner). Returns 1 if
// the member holds the destination afterwards, 0 if another did.
var bindScript = valkey.NewLuaScript(`
if redis.call('SCARD', KEYS[1]) == 0 or redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then
  redis.call('SADD', KEYS[1], ARGV[1])
  return 1
end
return 0
`)
