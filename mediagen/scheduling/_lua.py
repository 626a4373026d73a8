"""The scheduler's Lua scripts: each runs atomically in Redis, in one round trip.

The layout they share (prefix `mediagen:sched:`, see `mediagen.scheduling.queues`):

- `q:<level>:<model>`  zset  job -> its turn (virtual time); level 2 high, 1 normal, 0 low
- `active:<level>`     set   models with jobs queued at that level
- `clock:<level>`      str   the turn of the last job started at that level
- `last:<level>`       hash  key -> the turn of its last queued job
- `weights`            hash  key -> weight (its latest, written by every enqueue and by
                             `mediagen keys set-weight`)
- `jobs`               hash  job -> "<level><model>": where a queued job waits
- `lent`               set   jobs started by another job's start message, whose own message
                             then starts the next in turn
- `held:<pool>`        zset  job -> lease expiry (ms): the jobs holding one of the pool's slots
- `holds`              hash  job -> its pool
- `down:<pool>`        str   (TTL) set while a pool is to get no work
- `paused`             set   paused models

A spec (`ARGV`, JSON) says, per model, its pools `[[pool, slots], ...]` and the lease of a
hold in ms; a model without pools has no limit of its own (the workers are its limit).
"""

from __future__ import annotations

PREFIX = "mediagen:sched:"

_COMMON = """
local P = '%(prefix)s'
local JOBS, LENT, HOLDS, PAUSED = P..'jobs', P..'lent', P..'holds', P..'paused'
local function qkey(level, model) return P..'q:'..level..':'..model end

-- The pool of `model` with the most free slots (expired leases dropped first); '' for a model
-- without a limit; nil when every pool is full or set aside.
local function free_pool(spec, model, now)
  local s = spec[model]
  if s == nil or s.p == nil or #s.p == 0 then return '' end
  local best, most = nil, 0
  for _, pool in ipairs(s.p) do
    local held = P..'held:'..pool[1]
    redis.call('ZREMRANGEBYSCORE', held, '-inf', now)
    if redis.call('EXISTS', P..'down:'..pool[1]) == 0 then
      local left = tonumber(pool[2]) - redis.call('ZCARD', held)
      if left > most then best, most = pool[1], left end
    end
  end
  return best
end

local function free_slots(spec, model, now)
  local s = spec[model]
  if s == nil or s.p == nil or #s.p == 0 then return -1 end
  local free = 0
  for _, pool in ipairs(s.p) do
    local held = P..'held:'..pool[1]
    redis.call('ZREMRANGEBYSCORE', held, '-inf', now)
    if redis.call('EXISTS', P..'down:'..pool[1]) == 0 then
      local left = tonumber(pool[2]) - redis.call('ZCARD', held)
      if left > 0 then free = free + left end
    end
  end
  return free
end

local function hold(spec, model, job, pool, now)
  if pool ~= '' then
    redis.call('ZADD', P..'held:'..pool, now + tonumber(spec[model].l), job)
    redis.call('HSET', HOLDS, job, pool)
  end
end

local function unqueue(job)
  local where = redis.call('HGET', JOBS, job)
  if where then
    redis.call('ZREM', qkey(string.sub(where, 1, 1), string.sub(where, 2)), job)
    redis.call('HDEL', JOBS, job)
  end
  return where
end
"""

# ARGV: (job, level, model, key, weight) per job; weight 0: the key's stored one (else 1).
# A job already queued or holding a slot keeps its place.
ENQUEUE = (
    _COMMON
    + """
for i = 1, #ARGV, 5 do
  local job, level, model, key = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local weight = tonumber(ARGV[i + 4])
  if redis.call('HEXISTS', JOBS, job) == 0 and redis.call('HEXISTS', HOLDS, job) == 0 then
    if weight > 0 then
      redis.call('HSET', P..'weights', key, weight)
    else
      weight = tonumber(redis.call('HGET', P..'weights', key) or '1')
    end
    local clock = tonumber(redis.call('GET', P..'clock:'..level) or '0')
    local last = tonumber(redis.call('HGET', P..'last:'..level, key) or '0')
    local turn = math.max(clock, last) + 1 / weight
    redis.call('HSET', P..'last:'..level, key, string.format('%%.17g', turn))
    redis.call('ZADD', qkey(level, model), string.format('%%.17g', turn), job)
    redis.call('HSET', JOBS, job, level..model)
    redis.call('SADD', P..'active:'..level, model)
  end
end
return 0
"""
)

# ARGV: the job a start message names, now (ms), the spec.
# Returns {'picked', job, pool}: the job whose turn it is among the models with a free slot
# (most urgent level first, then the lowest turn), now holding a slot of `pool` ('' without a
# limit); {'self'}: the message's job is not queued (a retry, a lost entry; the caller decides);
# {'none'}: every queued job waits for a slot or a paused model.
PICK = (
    _COMMON
    + """
local token, now, spec = ARGV[1], tonumber(ARGV[2]), cjson.decode(ARGV[3])
if redis.call('SREM', LENT, token) == 0 and redis.call('HEXISTS', JOBS, token) == 0 then
  return {'self'}
end
for level = 2, 0, -1 do
  local active = P..'active:'..level
  local best, best_turn, best_model, best_pool = nil, nil, nil, nil
  for _, model in ipairs(redis.call('SMEMBERS', active)) do
    local q = qkey(level, model)
    local head = redis.call('ZRANGE', q, 0, 0, 'WITHSCORES')
    if #head == 0 then
      redis.call('SREM', active, model)
    elseif redis.call('SISMEMBER', PAUSED, model) == 0 then
      local turn = tonumber(head[2])
      if best_turn == nil or turn < best_turn then
        local pool = free_pool(spec, model, now)
        if pool then best, best_turn, best_model, best_pool = head[1], turn, model, pool end
      end
    end
  end
  if best then
    redis.call('ZREM', qkey(level, best_model), best)
    redis.call('HDEL', JOBS, best)
    local clock = P..'clock:'..level
    if best_turn > tonumber(redis.call('GET', clock) or '0') then
      redis.call('SET', clock, string.format('%%.17g', best_turn))
    end
    hold(spec, best_model, best, best_pool, now)
    if best ~= token then redis.call('SADD', LENT, best) end
    return {'picked', best, best_pool}
  end
end
return {'none'}
"""
)

# ARGV: job, now (ms), level, model, the spec. For a job that is not queued (a retry, a start
# taken over, an entry Redis lost): {'held', pool} (its slot, kept or new; '' without a limit)
# or {'waits'}: no free slot (or its model is paused), so it waits first in line.
ACQUIRE = (
    _COMMON
    + """
local job, now, level, model = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local spec = cjson.decode(ARGV[5])
local had = redis.call('HGET', HOLDS, job)
if had then
  local s = spec[model]
  if s and s.p then
    for _, pool in ipairs(s.p) do
      if pool[1] == had then
        hold(spec, model, job, had, now)
        return {'held', had}
      end
    end
  end
  redis.call('ZREM', P..'held:'..had, job)
  redis.call('HDEL', HOLDS, job)
end
local paused = redis.call('SISMEMBER', PAUSED, model) == 1
local pool = nil
if not paused then pool = free_pool(spec, model, now) end
if pool then
  unqueue(job)  -- (queued meanwhile: its own message starts it all the same)
  hold(spec, model, job, pool, now)
  return {'held', pool}
end
if redis.call('HEXISTS', JOBS, job) == 0 then
  local q = qkey(level, model)
  local head = redis.call('ZRANGE', q, 0, 0, 'WITHSCORES')
  local first = tonumber(redis.call('GET', P..'clock:'..level) or '0')
  if #head > 0 and tonumber(head[2]) < first then first = tonumber(head[2]) end
  redis.call('ZADD', q, string.format('%%.17g', first - 1), job)
  redis.call('HSET', JOBS, job, level..model)
  redis.call('SADD', P..'active:'..level, model)
end
return {'waits'}
"""
)

# ARGV: job ('' for none), now (ms), model, the spec. Frees the job's slot (and its place in a
# queue, if it still had one); returns the jobs of `model` first in turn that fit in its free
# slots now, as {job, level, ...}, so their start is sent (none for a model without a limit, or
# a paused one).
RELEASE = (
    _COMMON
    + """
local job, now, model, spec = ARGV[1], tonumber(ARGV[2]), ARGV[3], cjson.decode(ARGV[4])
if job ~= '' then
  local pool = redis.call('HGET', HOLDS, job)
  if pool then
    redis.call('ZREM', P..'held:'..pool, job)
    redis.call('HDEL', HOLDS, job)
  end
  unqueue(job)
end
if redis.call('SISMEMBER', PAUSED, model) == 1 then return {} end
local free = free_slots(spec, model, now)
if free <= 0 then return {} end
local heads = {}
for level = 2, 0, -1 do
  if free <= 0 then break end
  local found = redis.call('ZRANGE', qkey(level, model), 0, free - 1)
  for _, id in ipairs(found) do
    heads[#heads + 1] = id
    heads[#heads + 1] = tostring(level)
  end
  free = free - #found
end
return heads
"""
)

# ARGV: jobs that left the queue (started elsewhere, canceled, failed, deleted).
REMOVE = (
    _COMMON
    + """
for _, job in ipairs(ARGV) do unqueue(job) end
return 0
"""
)

# ARGV: job. {position, paused}: how many jobs of its model start before it in turn as things
# stand (higher levels, then lower turns), and whether its model is paused; {0, 0} for a job
# that took a slot and is being started; {-1, 0} if it is neither.
POSITION = (
    _COMMON
    + """
local where = redis.call('HGET', JOBS, ARGV[1])
if not where then
  -- Its turn came (it holds a slot) and its start is under way: none is ahead of it.
  if redis.call('HEXISTS', HOLDS, ARGV[1]) == 1 then return {0, 0} end
  return {-1, 0}
end
local level, model = tonumber(string.sub(where, 1, 1)), string.sub(where, 2)
local ahead = redis.call('ZRANK', qkey(level, model), ARGV[1]) or 0
for l = level + 1, 2 do ahead = ahead + redis.call('ZCARD', qkey(l, model)) end
return {ahead, redis.call('SISMEMBER', PAUSED, model)}
"""
)

# ARGV: model. Every job queued for it, with its level ({job, level, ...}): what a resume starts.
QUEUED = (
    _COMMON
    + """
local out = {}
for level = 2, 0, -1 do
  for _, id in ipairs(redis.call('ZRANGE', qkey(level, ARGV[1]), 0, -1)) do
    out[#out + 1] = id
    out[#out + 1] = tostring(level)
  end
end
return out
"""
)


def _render(script: str) -> str:
    return script % {"prefix": PREFIX}


ENQUEUE, PICK, ACQUIRE, RELEASE, REMOVE, POSITION, QUEUED = (
    _render(s) for s in (ENQUEUE, PICK, ACQUIRE, RELEASE, REMOVE, POSITION, QUEUED)
)
