"""Lua scripts: every multi-key trial transition runs as one atomic script.

Conventions: time comes from the Redis server (``TIME``) so every process agrees
on lease deadlines; each script returns ``{status, snapshot}`` where snapshot is
the trial hash (HGETALL) after the script ran. A transition that must be
published bumps ``version`` and appends itself to the trial's own outbox (hash
``trial:<id>:outbox``: version -> the event's kind, time and trial snapshot) and
enters the trial in the outbox zset in the same script. Every event stays there
until its publisher acknowledges that version, so a transition that follows an
unpublished one never replaces it: ``TrialStore.outbox_due`` finds them all, in
version order, and the relay re-publishes them.

Status values: OK (changed), REPEAT (idempotent repeat, nothing changed),
NOT_FOUND, STALE (attempt fenced), BUSY (another live attempt), STATE (wrong
state for this call), CONFLICT (completed with a different value), BUDGET,
STOPPED (PauseTrial on a trial whose latest decision is STOP), and for
STORE_DECISION: KEPT (a stronger decision stands), UNKNOWN, RESUMED (a PROMOTE
made a PAUSED trial RESUMABLE).

CREATE_TRIALS and CLAIM_RESUMABLE touch trial keys they only learn while running
(the next sequence numbers, the popped queue entries); they receive the key root
instead, and every script derives a trial's outbox key from its trial key
(``Keys.trial_outbox``). That is fine on one Redis server; Redis Cluster would need hash tags.
"""

from __future__ import annotations

from ladder.v1 import events_pb2, trial_pb2

_CONSTANTS = {
    "SUGGESTED": trial_pb2.SUGGESTED,
    "RUNNING": trial_pb2.RUNNING,
    "RESUMABLE": trial_pb2.RESUMABLE,
    "COMPLETED": trial_pb2.COMPLETED,
    "PRUNED": trial_pb2.PRUNED,
    "FAILED": trial_pb2.FAILED,
    "PAUSED": trial_pb2.PAUSED,
    "EV_SUGGESTED": events_pb2.TRIAL_SUGGESTED,
    "EV_STARTED": events_pb2.TRIAL_STARTED,
    "EV_CHECKPOINTED": events_pb2.TRIAL_CHECKPOINTED,
    "EV_COMPLETED": events_pb2.TRIAL_COMPLETED,
    "EV_PRUNED": events_pb2.TRIAL_PRUNED,
    "EV_FAILED": events_pb2.TRIAL_FAILED,
    "EV_LEASE_EXPIRED": events_pb2.TRIAL_LEASE_EXPIRED,
    "EV_PAUSED": events_pb2.TRIAL_PAUSED,
    "EV_PROMOTED": events_pb2.TRIAL_PROMOTED,
    "CONTINUE": events_pb2.CONTINUE,
    "STOP": events_pb2.STOP,
    "PROMOTE": events_pb2.PROMOTE,
    "PAUSE": events_pb2.PAUSE,
}

_HEADER = (
    "\n".join(f"local {name} = {value}" for name, value in _CONSTANTS.items())
    + """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function field(key, name)
  local v = redis.call('HGET', key, name)
  if v == false then return '' end
  return v
end
local function num(key, name)
  return tonumber(field(key, name)) or 0
end
local function terminal(state)
  return state == COMPLETED or state == PRUNED or state == FAILED
end
-- The trial's outbox (see Keys.trial_outbox) once this script recorded an event.
local marked = false
-- Record a transition whose TrialEvent must be published: the event keeps the
-- trial as it is now (all but the immutable proto), so a re-publish after later
-- transitions still says what this one did. Mark last, after every change.
local function mark(key, outbox, trial_id, kind, reason, now)
  local v = redis.call('HINCRBY', key, 'version', 1)
  redis.call('HSET', key, 'reason', reason)
  local flat = redis.call('HGETALL', key)
  local snapshot = {}
  for i = 1, #flat, 2 do
    if flat[i] ~= 'proto' then snapshot[flat[i]] = flat[i + 1] end
  end
  marked = key .. ':outbox'
  redis.call('HSET', marked, v, cjson.encode({kind = kind, ms = now, trial = snapshot}))
  -- NX: the score stays the time of the oldest unacknowledged event.
  redis.call('ZADD', outbox, 'NX', now, trial_id)
end
-- The trial after the script; with the pending events when it recorded one, so
-- the caller publishes the earlier unacknowledged ones first.
local function reply(status, key)
  if marked then
    return {status, redis.call('HGETALL', key), redis.call('HGETALL', marked)}
  end
  return {status, redis.call('HGETALL', key)}
end
-- The attempt holds the trial until until_ms: the hash and the lease zset the
-- sweeper reads always agree.
local function hold(t, leases, trial_id, until_ms)
  redis.call('HSET', t, 'lease_until', until_ms)
  redis.call('ZADD', leases, until_ms, trial_id)
end
-- Within one rung a later verdict may only strengthen an earlier one:
-- CONTINUE < PAUSE < PROMOTE < STOP (a PROMOTE lifts a PAUSE, never the reverse).
local function strength(action)
  if action == PAUSE then return 1 end
  if action == PROMOTE then return 2 end
  if action == STOP then return 3 end
  return 0
end
"""
)


def _script(body: str) -> str:
    return _HEADER + body


# Fencing preamble shared by calls an attempt makes while it should hold the
# lease: a repeat of the call that ended the attempt is REPEAT; any other call on
# a terminal trial is STATE; a call from an attempt that is not the current
# RUNNING one is STALE.
_FENCE = """
local t, outbox = KEYS[1], KEYS[2]
local attempt, signature = ARGV[1], ARGV[2]
if redis.call('EXISTS', t) == 0 then return {'NOT_FOUND', {}} end
local state = num(t, 'state')
if signature ~= '' and field(t, 'closed') == signature then return reply('REPEAT', t) end
if terminal(state) then return reply('STATE', t) end
if field(t, 'attempt') ~= attempt or state ~= RUNNING then return reply('STALE', t) end
local now = now_ms()
local trial_id = field(t, 'id')
"""

# KEYS: trial, outbox, attempts, leases, resumable, pending
# ARGV: attempt, worker, lease_ms, hostname, environment
START = _script("""
local t, outbox, attempts = KEYS[1], KEYS[2], KEYS[3]
local leases, queue, pending = KEYS[4], KEYS[5], KEYS[6]
local attempt, worker, lease_ms = ARGV[1], ARGV[2], tonumber(ARGV[3])
if redis.call('EXISTS', t) == 0 then return {'NOT_FOUND', {}} end
local state = num(t, 'state')
local current = field(t, 'attempt')
local now = now_ms()
local trial_id = field(t, 'id')
if state == RUNNING and current == attempt then
  -- A retried StartTrial: same answer, lease refreshed, nothing published.
  hold(t, leases, trial_id, now + lease_ms)
  return reply('REPEAT', t)
end
if terminal(state) or state == PAUSED then return reply('STATE', t) end
if redis.call('HEXISTS', attempts, attempt) == 1 then return reply('STALE', t) end
if state == RUNNING then return reply('BUSY', t) end
local n = redis.call('HINCRBY', t, 'attempt_no', 1)
redis.call('HSET', attempts, attempt, n)
redis.call('HSET', t, 'state', RUNNING, 'attempt', attempt, 'worker', worker,
  'lease_until', now + lease_ms, 'hostname', ARGV[4], 'environment', ARGV[5], 'closed', '')
redis.call('ZADD', leases, now + lease_ms, trial_id)
redis.call('ZREM', queue, trial_id)
redis.call('SADD', pending, trial_id)
local reason = 'attempt ' .. n
if state == RESUMABLE then reason = reason .. ' resumes the trial' end
mark(t, outbox, trial_id, EV_STARTED, reason, now)
return reply('OK', t)
""")

# KEYS: trial, outbox, leases   ARGV: attempt, '', step, lease_ms
HEARTBEAT = _script(
    _FENCE
    + """
hold(t, KEYS[3], trial_id, now + tonumber(ARGV[4]))
if ARGV[3] ~= '' then redis.call('HSET', t, 'last_step', ARGV[3]) end
return reply('OK', t)
"""
)

# KEYS: trial, outbox, leases   ARGV: attempt, '', uri, step, lease_ms
CHECKPOINT = _script(
    _FENCE
    + """
hold(t, KEYS[3], trial_id, now + tonumber(ARGV[5]))
if field(t, 'ckpt_uri') == ARGV[3] and field(t, 'ckpt_step') == ARGV[4] then
  return reply('REPEAT', t)
end
redis.call('HSET', t, 'ckpt_uri', ARGV[3], 'ckpt_step', ARGV[4])
mark(t, outbox, trial_id, EV_CHECKPOINTED, 'checkpoint at step ' .. ARGV[4], now)
return reply('OK', t)
"""
)

# KEYS: trial, outbox, leases, pending, study   ARGV: attempt, signature, value, step
COMPLETE = _script(
    """
local t = KEYS[1]
if redis.call('EXISTS', t) == 1 and num(t, 'state') == COMPLETED
   and field(t, 'closed') ~= ARGV[2] then
  return reply('CONFLICT', t)
end
"""
    + _FENCE
    + """
local leases, pending, study = KEYS[3], KEYS[4], KEYS[5]
redis.call('HSET', t, 'state', COMPLETED, 'final', ARGV[3], 'lease_until', 0, 'closed', ARGV[2])
if ARGV[4] ~= '' then redis.call('HSET', t, 'last_step', ARGV[4]) end
redis.call('ZREM', leases, trial_id)
redis.call('SREM', pending, trial_id)
redis.call('HINCRBY', study, 'completed', 1)
mark(t, outbox, trial_id, EV_COMPLETED, 'completed with value ' .. ARGV[3], now)
return reply('OK', t)
"""
)

# KEYS: trial, outbox, leases, pending   ARGV: attempt, signature, step, last_value
PRUNE = _script(
    _FENCE
    + """
local leases, pending = KEYS[3], KEYS[4]
redis.call('HSET', t, 'state', PRUNED, 'lease_until', 0, 'closed', ARGV[2], 'last_value', ARGV[4])
if ARGV[3] ~= '' then redis.call('HSET', t, 'last_step', ARGV[3]) end
redis.call('ZREM', leases, trial_id)
redis.call('SREM', pending, trial_id)
local reason = 'pruned'
if ARGV[3] ~= '' then reason = reason .. ' at step ' .. ARGV[3] end
mark(t, outbox, trial_id, EV_PRUNED, reason, now)
return reply('OK', t)
"""
)

# KEYS: trial, outbox, leases, pending, resumable, paused, decision
# ARGV: attempt, signature, step, rung
# ASHA promotion form: the attempt obeyed a PAUSE and checkpointed. The trial waits
# PAUSED (no lease, not pending) at the rung of the latest PAUSE; when the PROMOTE for
# that rung is already stored (it overtook the worker) it is RESUMABLE at once instead.
PAUSE_TRIAL = _script(
    _FENCE
    + """
local leases, pending, queue, paused, d = KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local rung = tonumber(ARGV[4])
local decided = tonumber(redis.call('HGET', d, 'action'))
local decided_rung = tonumber(redis.call('HGET', d, 'rung')) or -1
if decided == STOP then return reply('STOPPED', t) end
if decided == PAUSE and decided_rung > rung then rung = decided_rung end
redis.call('HSET', t, 'lease_until', 0, 'closed', ARGV[2])
if ARGV[3] ~= '' then redis.call('HSET', t, 'last_step', ARGV[3]) end
redis.call('ZREM', leases, trial_id)
if decided == PROMOTE and decided_rung >= rung then
  redis.call('HSET', t, 'state', RESUMABLE)
  redis.call('ZADD', queue, now, trial_id)
  mark(t, outbox, trial_id, EV_PROMOTED, 'paused at rung ' .. rung
    .. ' but already promoted: resumable at once', now)
  return reply('OK', t)
end
redis.call('HSET', t, 'state', PAUSED, 'paused_rung', rung)
redis.call('SREM', pending, trial_id)
redis.call('ZADD', paused, now, trial_id)
mark(t, outbox, trial_id, EV_PAUSED, 'paused at rung ' .. rung .. ' (step ' .. ARGV[3]
  .. ') until promoted', now)
return reply('OK', t)
"""
)

# KEYS: trial, outbox, leases, pending, resumable
# ARGV: attempt, signature, reason, retryable (0/1), max_attempts
FAIL = _script(
    _FENCE
    + """
local leases, pending, queue = KEYS[3], KEYS[4], KEYS[5]
local n = num(t, 'attempt_no')
local retry = ARGV[4] == '1' and n < tonumber(ARGV[5])
redis.call('HSET', t, 'lease_until', 0, 'closed', ARGV[2])
redis.call('ZREM', leases, trial_id)
local reason
if retry then
  redis.call('HSET', t, 'state', RESUMABLE)
  redis.call('ZADD', queue, now, trial_id)
  reason = 'attempt ' .. n .. ' failed (retryable, ' .. n .. ' of ' .. ARGV[5]
    .. ' attempts used): '
else
  redis.call('HSET', t, 'state', FAILED)
  redis.call('SREM', pending, trial_id)
  if ARGV[4] == '1' then
    reason = 'attempt ' .. n .. ' failed; all ' .. ARGV[5] .. ' attempts used: '
  else
    reason = 'attempt ' .. n .. ' failed (not retryable): '
  end
end
mark(t, outbox, trial_id, EV_FAILED, reason .. ARGV[3], now)
return reply('OK', t)
"""
)

# KEYS: trial, outbox, leases, resumable   ARGV: trial id
# A lease (RUNNING) or a hand-out claim (SUGGESTED / RESUMABLE never started)
# ran out: the trial becomes RESUMABLE and is queued for the next Suggest.
EXPIRE = _script("""
local t, outbox, leases, queue = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local trial_id = ARGV[1]
local now = now_ms()
local deadline = tonumber(redis.call('ZSCORE', leases, trial_id))
if deadline == nil or deadline > now then return {'SKIP', {}} end
redis.call('ZREM', leases, trial_id)
if redis.call('EXISTS', t) == 0 then return {'SKIP', {}} end
local state = num(t, 'state')
if terminal(state) then return {'SKIP', {}} end
local reason
if state == RUNNING then
  reason = 'lease of attempt ' .. field(t, 'attempt') .. ' (worker ' .. field(t, 'worker')
    .. ') expired'
else
  reason = 'handed out but not started before the claim expired'
end
redis.call('HSET', t, 'state', RESUMABLE, 'lease_until', 0)
redis.call('ZADD', queue, now, trial_id)
mark(t, outbox, trial_id, EV_LEASE_EXPIRED, reason, now)
return reply('OK', t)
""")

# KEYS: study, pending, leases, outbox
# ARGV: trial key root, study id, max_trials, claim_ms, algorithm, proto...
CREATE_TRIALS = _script("""
local study, pending, leases, outbox = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local root, sid, max_trials, claim_ms = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
if redis.call('EXISTS', study) == 0 then return {'NOT_FOUND', 0, 0} end
local suggested = num(study, 'suggested')
local n = #ARGV - 5
if max_trials > 0 then n = math.min(n, max_trials - suggested) end
if n <= 0 then return {'BUDGET', suggested, 0} end
local first = redis.call('HINCRBY', study, 'suggested', n) - n + 1
local now = now_ms()
for i = 1, n do
  local trial_id = sid .. '-t' .. (first + i - 1)
  local t = root .. trial_id
  redis.call('HSET', t, 'id', trial_id, 'study', sid, 'proto', ARGV[5 + i],
    'state', SUGGESTED, 'attempt_no', 0, 'algorithm', ARGV[5])
  redis.call('SADD', pending, trial_id)
  redis.call('ZADD', leases, now + claim_ms, trial_id)
  mark(t, outbox, trial_id, EV_SUGGESTED, 'suggested by ' .. ARGV[5], now)
end
return {'OK', first, n, now}
""")

# KEYS: resumable, leases   ARGV: trial key root, count, claim_ms
# Pops queued trials that are still RESUMABLE (entries for trials started or
# finished meanwhile are dropped) and gives each a claim deadline.
CLAIM_RESUMABLE = _script("""
local queue, leases = KEYS[1], KEYS[2]
local root, count, claim_ms = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_ms()
local out = {}
while #out < count do
  local popped = redis.call('ZPOPMIN', queue)
  if #popped == 0 then break end
  local trial_id = popped[1]
  local t = root .. trial_id
  if num(t, 'state') == RESUMABLE then
    redis.call('ZADD', leases, now + claim_ms, trial_id)
    table.insert(out, redis.call('HGETALL', t))
  end
end
return out
""")

# KEYS: study, studies   ARGV: study id, Study proto, created ms
CREATE_STUDY = _script("""
local existing = redis.call('HGET', KEYS[1], 'study')
if existing then return {'EXISTS', existing} end
redis.call('HSET', KEYS[1], 'study', ARGV[2], 'suggested', 0, 'completed', 0)
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return {'OK', ARGV[2]}
""")

# KEYS: trial, decision, outbox, resumable, paused, pending
# ARGV: action, Decision proto, rung
# Keeps the trial's latest verdict. A STOP is final; otherwise a decision about a lower
# rung than the stored one, or a weaker one about the same rung (see ``strength``), is
# KEPT out, so a replayed or reordered decision changes nothing. The same action about
# the same rung is a REPEAT even when its bytes differ: early-stop decides a crossing
# again after a crash (same board, same verdict, a later ts_ms). A PROMOTE for the rung
# a PAUSED trial waits at makes it RESUMABLE (queued for Suggest) and is announced.
STORE_DECISION = _script("""
local t, d, outbox, queue, paused, pending = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
if redis.call('EXISTS', t) == 0 then return {'UNKNOWN', {}} end
local current = tonumber(redis.call('HGET', d, 'action'))
local current_rung = tonumber(redis.call('HGET', d, 'rung'))
local action, rung = tonumber(ARGV[1]), tonumber(ARGV[3])
if current == STOP and action ~= STOP then return {'KEPT', {}} end
if current == action and current_rung == rung then return {'REPEAT', {}} end
if current ~= nil and current_rung ~= nil and action ~= STOP then
  if rung < current_rung or (rung == current_rung and strength(action) < strength(current)) then
    return {'KEPT', {}}
  end
end
redis.call('HSET', d, 'action', action, 'proto', ARGV[2], 'rung', rung)
if action == PROMOTE and num(t, 'state') == PAUSED and num(t, 'paused_rung') == rung then
  local now = now_ms()
  local trial_id = field(t, 'id')
  redis.call('HSET', t, 'state', RESUMABLE)
  redis.call('HDEL', t, 'paused_rung')
  redis.call('ZREM', paused, trial_id)
  redis.call('SADD', pending, trial_id)
  redis.call('ZADD', queue, now, trial_id)
  mark(t, outbox, trial_id, EV_PROMOTED, 'promoted at rung ' .. rung
    .. ': resumable from step ' .. field(t, 'ckpt_step'), now)
  return reply('RESUMED', t)
end
return {'OK', {}}
""")

# KEYS: trial, outbox   ARGV: trial id, version
# Forgets one published event; the trial leaves the outbox zset with its last
# pending event, else its score becomes the time of the oldest one left (the relay
# waits for that one, not for the event just acknowledged).
ACK_OUTBOX = _script("""
local box, outbox, trial_id = KEYS[1] .. ':outbox', KEYS[2], ARGV[1]
redis.call('HDEL', box, ARGV[2])
local left = redis.call('HKEYS', box)
if #left == 0 then
  redis.call('ZREM', outbox, trial_id)
  return 0
end
local oldest = left[1]
for _, v in ipairs(left) do
  if tonumber(v) < tonumber(oldest) then oldest = v end
end
local ms = cjson.decode(redis.call('HGET', box, oldest)).ms
redis.call('ZADD', outbox, 'XX', ms, trial_id)
return #left
""")

# The scripts TrialStore registers (CREATE_STUDY belongs to the study store).
TRIAL_SCRIPTS = (
    "START",
    "HEARTBEAT",
    "CHECKPOINT",
    "COMPLETE",
    "PRUNE",
    "FAIL",
    "PAUSE_TRIAL",
    "EXPIRE",
    "CREATE_TRIALS",
    "CLAIM_RESUMABLE",
    "STORE_DECISION",
    "ACK_OUTBOX",
)
