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
STOPPED (PauseTrial on a trial whose latest decision is STOP), RACE (FailTrial, an
expiry or a stall: the trial's counts it was computed from changed; compute again),
STALLED (a heartbeat found the attempt stalled: the caller ends it with STALL, which
answers STALLED once it did), TIMED_OUT (a heartbeat found the attempt out of running
time and ended it), and for
STORE_DECISION: KEPT (a stronger decision stands), UNKNOWN, RESUMED (a PROMOTE
made a PAUSED trial RESUMABLE).

CREATE_TRIALS and CLAIM_RESUMABLE touch trial keys they only learn while running
(the next sequence numbers, the popped queue entries); they receive the key root
instead, and every script derives a trial's outbox key from its trial key
(``Keys.trial_outbox``). That is fine on one Redis server; Redis Cluster would need hash tags.

What a failure, an interruption or a timeout does to a trial is never decided here: the
caller computes it with ``ladder.state.attempts`` (``ladder.failures``' rules) from the
counts it read and passes the outcome; a script checks the counts are unchanged
(``counts_seen``) and writes it.
"""

from __future__ import annotations

from ladder.state.attempts import COUNT_FIELDS
from ladder.v1 import events_pb2, study_pb2, trial_pb2

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
    "TIMEOUT": trial_pb2.TIMEOUT,
    "END_COMPLETED": trial_pb2.ATTEMPT_COMPLETED,
    "END_PRUNED": trial_pb2.ATTEMPT_PRUNED,
    "END_PAUSED": trial_pb2.ATTEMPT_PAUSED,
    "END_LEASE_EXPIRED": trial_pb2.ATTEMPT_LEASE_EXPIRED,
    "END_STALLED": trial_pb2.ATTEMPT_STALLED,
    "END_TIMED_OUT": trial_pb2.ATTEMPT_TIMED_OUT,
    "STUDY_ACTIVE": study_pb2.STUDY_ACTIVE,
    "STUDY_PAUSED": study_pb2.STUDY_PAUSED,
    "STUDY_CANCELLED": study_pb2.STUDY_CANCELLED,
    "STUDY_COMPLETED": study_pb2.STUDY_COMPLETED,
}

# The trial hash fields of ladder.state.attempts.Counts, as a Lua list.
_COUNTS = ", ".join(f"'{name}'" for name in COUNT_FIELDS)

_HEADER = (
    "\n".join(f"local {name} = {value}" for name, value in _CONSTANTS.items())
    + f"\nlocal COUNTS = {{{_COUNTS}}}"
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
-- A study's lifecycle state (ladder.lifecycle; ACTIVE until it first changed).
local function study_state(study)
  return tonumber(redis.call('HGET', study, 'state')) or STUDY_ACTIVE
end
-- A study limit UpdateStudy stored in the study hash ('max_trials', 'max_parallel'),
-- else the config's (``given``).
local function limit(study, name, given)
  return tonumber(redis.call('HGET', study, name)) or tonumber(given)
end
-- The study's trials handed out and neither ended nor handed back (SUGGESTED or
-- RUNNING): its unfinished trials less those queued to resume.
local function in_flight(pending, queue)
  return redis.call('SCARD', pending) - redis.call('ZCARD', queue)
end
-- A tenant's quota ``name`` (ladder.quotas; its JSON record in {root}tenants): 0 when
-- the study has no tenant (authentication off), the tenant is gone or sets none.
local function quota(root, tenant, name)
  if tenant == '' then return 0 end
  local record = redis.call('HGET', root .. 'tenants', tenant)
  if not record then return 0 end
  return tonumber(cjson.decode(record)[name]) or 0
end
-- The trials a tenant has out (SUGGESTED or RUNNING) across its studies, summed from
-- each study's in_flight in the calling script: exact by construction (no counter to
-- drift when a trial ends, expires, resumes or its process is killed). Returns {room
-- left, out, max_trials_running}, or nil when the tenant has no such quota. Hook for
-- max_gpus_in_use: weigh each trial by its GPUs here once trials declare resources.
local function tenant_room(root, tenant)
  local max = quota(root, tenant, 'max_trials_running')
  if max <= 0 then return nil end
  local out = 0
  for _, sid in ipairs(redis.call('SMEMBERS', root .. 'tenant:' .. tenant .. ':studies')) do
    out = out + in_flight(root .. 'study:' .. sid .. ':pending', root .. 'study:' .. sid
      .. ':resumable')
  end
  return {max - out, out, max}
end
-- Resources a trial holds from RequestWork's assignment until its attempt ends
-- (ladder.state.holds): node, tenant and amounts (g GPUs; c, m: CPU cores and memory GB
-- in thousandths) in the trial hash as hold_*, summed per tenant (sched:tenant:<t>) and
-- per node (sched:node:<n>, its trials in sched:node:<n>:trials). ``h`` is the hold
-- RequestWork asks for (JSON: node, g, c, m, the node's capacity cap_g / cap_c / cap_m,
-- p priority, s spot 1/0, sp the study's stable_for_promoted 1/0).
local RESOURCES = {'g', 'c', 'm'}
local function sched_key(root, kind, name)
  return root .. 'sched:' .. kind .. ':' .. name
end
-- nil when the hold fits the tenant's max_gpus and the node's capacity, else the refusal:
-- {GPUS, held, max_gpus, tenant} or {NODE, held, capacity, resource}.
local function refuse_hold(root, tenant, h)
  local max = quota(root, tenant, 'max_gpus')
  if max > 0 and h.g > 0 then
    local held = tonumber(redis.call('HGET', sched_key(root, 'tenant', tenant), 'g')) or 0
    if held + h.g > max then return {'GPUS', held, max, tenant} end
  end
  local node = sched_key(root, 'node', h.node)
  for _, r in ipairs(RESOURCES) do
    local held = tonumber(redis.call('HGET', node, r)) or 0
    if held + h[r] > h['cap_' .. r] then return {'NODE', held, h['cap_' .. r], r} end
  end
  return nil
end
local function take(t, root, tenant, h)
  redis.call('HSET', t, 'hold_node', h.node, 'hold_tenant', tenant, 'hold_g', h.g,
    'hold_c', h.c, 'hold_m', h.m, 'hold_p', h.p, 'hold_s', h.s, 'hold_sp', h.sp or 0)
  for _, r in ipairs(RESOURCES) do
    redis.call('HINCRBY', sched_key(root, 'tenant', tenant), r, h[r])
    redis.call('HINCRBY', sched_key(root, 'node', h.node), r, h[r])
  end
  redis.call('SADD', sched_key(root, 'node', h.node) .. ':trials', field(t, 'id'))
end
-- The trial's attempt (or its claim) ended: what it held is free again, and a pending
-- preemption of it is moot. Idempotent (nothing held: nothing done).
local function release(t)
  local node = field(t, 'hold_node')
  if node == '' then return end
  local id = field(t, 'id')
  local root = string.sub(t, 1, #t - #id - 6)
  local tenant = field(t, 'hold_tenant')
  for _, r in ipairs(RESOURCES) do
    -- Never "-0": HINCRBY refuses it, and a script that errors half-way stays half done.
    local v = num(t, 'hold_' .. r)
    if v ~= 0 then
      redis.call('HINCRBY', sched_key(root, 'tenant', tenant), r, -v)
      redis.call('HINCRBY', sched_key(root, 'node', node), r, -v)
    end
  end
  redis.call('SREM', sched_key(root, 'node', node) .. ':trials', id)
  redis.call('HDEL', t, 'hold_node', 'hold_tenant', 'hold_g', 'hold_c', 'hold_m', 'hold_p',
    'hold_s', 'hold_sp', 'preempt')
end
-- The study hash of a trial (its key is {root}trial:<id>, the study's {root}study:<sid>).
local function study_of(t)
  local id = field(t, 'id')
  return string.sub(t, 1, #t - #id - 6) .. 'study:' .. field(t, 'study')
end
-- The trial's outbox (see Keys.trial_outbox) once this script recorded an event.
local marked = false
-- Record a transition whose TrialEvent must be published: the event keeps the
-- trial as it is now (all but the immutable proto), so a re-publish after later
-- transitions still says what this one did. Mark last, after every change. ``ended``
-- is the attempt the event ends ('' for none; ``last_end`` then says how).
local function mark(key, outbox, trial_id, kind, reason, now, ended)
  local v = redis.call('HINCRBY', key, 'version', 1)
  redis.call('HSET', key, 'reason', reason, 'ended', ended)
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
-- The trial's counts (ladder.state.attempts.Counts, in COUNTS order) are in ARGV from
-- ``from``: as the caller read them, then as it computed them after this transition.
-- Are they still what it read (else RACE: it computes again)?
local function counts_seen(t, from)
  for i, name in ipairs(COUNTS) do
    if field(t, name) ~= ARGV[from + i - 1] then return false end
  end
  return true
end
local function write_counts(t, from)
  for i, name in ipairs(COUNTS) do
    redis.call('HSET', t, name, ARGV[from + #COUNTS + i - 1])
  end
end
-- The running attempt ended: its running time adds up into run_ms (the trial's and its
-- study's: max_trial_hours; times its trials' GPUs, max_gpu_hours), the
-- study has one running attempt less (``running``, ``running_since``: the sum of their
-- start times, so its running attempts' time is running * now - running_since), the
-- trial has no running-time deadline until its next start, and the resources it held
-- are released (every way an attempt ends comes through here).
local function stop_clock(t, trial_id, deadlines, now)
  release(t)
  local started = tonumber(field(t, 'attempt_ms'))
  if started ~= nil then
    local study = study_of(t)
    redis.call('HINCRBY', t, 'run_ms', math.max(0, now - started))
    redis.call('HINCRBY', study, 'run_ms', math.max(0, now - started))
    redis.call('HINCRBY', study, 'running', -1)
    redis.call('HINCRBY', study, 'running_since', -started)
  end
  redis.call('HSET', t, 'attempt_ms', '', 'deadline', '')
  redis.call('ZREM', deadlines, trial_id)
end
-- The running attempt ended and the trial leaves every queue and set of unfinished
-- trials (it is final).
local function finish(t, trial_id, leases, deadlines, pending, now)
  stop_clock(t, trial_id, deadlines, now)
  redis.call('HSET', t, 'lease_until', 0)
  redis.call('ZREM', leases, trial_id)
  redis.call('SREM', pending, trial_id)
end
-- The running attempt used up the trial's running time (max_trial_seconds over all its
-- attempts) and ends TIMED_OUT. What that does is TIMEOUT's disposition in
-- ladder.failures: ``counts`` ('1'/'0') and ``final`` ('1': FAILED, '0': RESUMABLE).
local function time_out(t, outbox, trial_id, now, counts, final, k)
  local attempt = field(t, 'attempt')
  if counts == '1' then redis.call('HINCRBY', t, 'failures', 1) end
  redis.call('HSET', t, 'failure_kind', TIMEOUT, 'last_end', END_TIMED_OUT, 'lease_until', 0)
  redis.call('ZREM', k.leases, trial_id)
  if final == '1' then
    redis.call('HSET', t, 'state', FAILED)
    finish(t, trial_id, k.leases, k.deadlines, k.pending, now)
  else
    stop_clock(t, trial_id, k.deadlines, now)
    redis.call('HSET', t, 'state', RESUMABLE)
    redis.call('ZADD', k.queue, now, trial_id)
  end
  mark(t, outbox, trial_id, EV_FAILED, string.format(
    'timed out: %.1f s of running time over %d attempts, over max_trial_seconds '
    .. '(%d failures used)', num(t, 'run_ms') / 1000, num(t, 'attempt_no'),
    num(t, 'failures')), now, attempt)
end
-- The running attempt ended without a failure of its own (its lease expired, it
-- stalled): an interruption, whose outcome the caller computed
-- (ladder.state.attempts.interrupt_outcome; ARGV from ``from``: the counts seen and
-- after, final '1'/'0', how the reason ends). The trial is RESUMABLE, or FAILED when
-- interrupted more than max_interruptions times.
local function interrupt(t, outbox, trial_id, now, k, how, reason, from)
  local after = from + 2 * #COUNTS
  local attempt = field(t, 'attempt')
  write_counts(t, from)
  reason = reason .. '; ' .. ARGV[after + 1]
  redis.call('HSET', t, 'last_end', how, 'lease_until', 0)
  redis.call('ZREM', k.leases, trial_id)
  if ARGV[after] == '1' then
    redis.call('HSET', t, 'state', FAILED)
    finish(t, trial_id, k.leases, k.deadlines, k.pending, now)
    mark(t, outbox, trial_id, EV_FAILED, reason, now, attempt)
  else
    stop_clock(t, trial_id, k.deadlines, now)
    redis.call('HSET', t, 'state', RESUMABLE)
    redis.call('ZADD', k.queue, now, trial_id)
    mark(t, outbox, trial_id, EV_LEASE_EXPIRED, reason, now, attempt)
  end
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

# KEYS: trial, outbox, attempts, leases, resumable, pending, deadlines
# ARGV: attempt, worker, lease_ms, hostname, environment, max_trial_ms (0: no limit)
# Every start sets the attempt's running-time deadline (what max_trial_ms leaves after
# the trial's earlier attempts ran run_ms) and restarts the progress watchdog (a
# resumed attempt redoes steps up to where the last one got).
START = _script("""
local t, outbox, attempts = KEYS[1], KEYS[2], KEYS[3]
local leases, queue, pending, deadlines = KEYS[4], KEYS[5], KEYS[6], KEYS[7]
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
  'lease_until', now + lease_ms, 'hostname', ARGV[4], 'environment', ARGV[5], 'closed', '',
  'progress_ms', now, 'progress_step', '', 'attempt_ms', now)
if field(t, 'first_ms') == '' then redis.call('HSET', t, 'first_ms', now) end
redis.call('HINCRBY', study_of(t), 'running', 1)
redis.call('HINCRBY', study_of(t), 'running_since', now)
local max_ms = tonumber(ARGV[6]) or 0
if max_ms > 0 then
  local deadline = now + math.max(0, max_ms - num(t, 'run_ms'))
  redis.call('HSET', t, 'deadline', deadline)
  redis.call('ZADD', deadlines, deadline, trial_id)
end
redis.call('ZADD', leases, now + lease_ms, trial_id)
redis.call('ZREM', queue, trial_id)
redis.call('SADD', pending, trial_id)
local reason = 'attempt ' .. n
if state == RESUMABLE then reason = reason .. ' resumes the trial' end
mark(t, outbox, trial_id, EV_STARTED, reason, now, '')
return reply('OK', t)
""")

# Progress of the current attempt: a step beyond the furthest it reported restarts the
# watchdog (``progress_ms``).
_ADVANCE = """
local function advance(t, step, now)
  if step == '' then return end
  local furthest = tonumber(field(t, 'progress_step'))
  if furthest == nil or tonumber(step) > furthest then
    redis.call('HSET', t, 'progress_step', step, 'progress_ms', now)
  end
end
"""

# KEYS: trial, outbox, leases, resumable, pending, deadlines
# ARGV: attempt, '', step, lease_ms, stall_ms (0: watchdog off), TIMEOUT's disposition:
#       counts (1/0), final (1/0)
# Renews the lease unless the attempt ran out of running time (TIMED_OUT: see
# ``time_out``) or made no progress for stall_ms (STALLED, nothing changed: the caller
# computes the interruption's outcome and ends the attempt with STALL).
HEARTBEAT = _script(
    _FENCE
    + _ADVANCE
    + """
local leases = KEYS[3]
local deadline = tonumber(field(t, 'deadline'))
if deadline ~= nil and now >= deadline then
  time_out(t, outbox, trial_id, now, ARGV[6], ARGV[7], {leases = leases, deadlines = KEYS[6],
    pending = KEYS[5], queue = KEYS[4]})
  return reply('TIMED_OUT', t)
end
if ARGV[3] ~= '' then redis.call('HSET', t, 'last_step', ARGV[3]) end
advance(t, ARGV[3], now)
local stall_ms = tonumber(ARGV[5])
if stall_ms > 0 and now - num(t, 'progress_ms') >= stall_ms then return reply('STALLED', t) end
hold(t, leases, trial_id, now + tonumber(ARGV[4]))
return reply('OK', t)
"""
)

# KEYS: trial, outbox, leases, resumable, pending, deadlines
# ARGV: attempt, '', stall_ms, lease_ms, counts seen..., counts after..., final (1/0),
#       how the reason ends
# The attempt a heartbeat found stalled loses its lease (an interruption, never a
# failure: see ``interrupt``), announced with TRIAL_LEASE_EXPIRED (TRIAL_FAILED past
# max_interruptions). If it progressed meanwhile, the lease is renewed instead (OK).
STALL = _script(
    _FENCE
    + """
local stall_ms = tonumber(ARGV[3])
local still_ms = now - num(t, 'progress_ms')
if still_ms < stall_ms then
  hold(t, KEYS[3], trial_id, now + tonumber(ARGV[4]))
  return reply('OK', t)
end
if not counts_seen(t, 5) then return reply('RACE', t) end
local at = field(t, 'progress_step')
if at == '' then at = 'none reported' end
interrupt(t, outbox, trial_id, now,
  {leases = KEYS[3], queue = KEYS[4], pending = KEYS[5], deadlines = KEYS[6]}, END_STALLED,
  string.format('stalled: attempt %s made no step progress for %.1f s '
    .. '(stall_timeout_seconds %g; furthest step %s)', attempt, still_ms / 1000,
    stall_ms / 1000, at), 5)
return reply('STALLED', t)
"""
)

# KEYS: trial, outbox, leases
# ARGV: attempt, '', uri, step, lease_ms, save_seconds, train_seconds
# The overhead seconds add up over the trial's attempts (a repeated report adds none).
CHECKPOINT = _script(
    _FENCE
    + _ADVANCE
    + """
hold(t, KEYS[3], trial_id, now + tonumber(ARGV[5]))
if field(t, 'ckpt_uri') == ARGV[3] and field(t, 'ckpt_step') == ARGV[4] then
  return reply('REPEAT', t)
end
redis.call('HSET', t, 'ckpt_uri', ARGV[3], 'ckpt_step', ARGV[4])
redis.call('HINCRBYFLOAT', t, 'ckpt_s', ARGV[6])
redis.call('HINCRBYFLOAT', t, 'train_s', ARGV[7])
advance(t, ARGV[4], now)
mark(t, outbox, trial_id, EV_CHECKPOINTED, 'checkpoint at step ' .. ARGV[4], now, '')
return reply('OK', t)
"""
)

# KEYS: trial, outbox, leases, pending, study, deadlines   ARGV: attempt, signature, value, step
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
redis.call('HSET', t, 'state', COMPLETED, 'final', ARGV[3], 'closed', ARGV[2],
  'last_end', END_COMPLETED)
if ARGV[4] ~= '' then redis.call('HSET', t, 'last_step', ARGV[4]) end
finish(t, trial_id, leases, KEYS[6], pending, now)
redis.call('HINCRBY', study, 'completed', 1)
mark(t, outbox, trial_id, EV_COMPLETED, 'completed with value ' .. ARGV[3], now, attempt)
return reply('OK', t)
"""
)

# KEYS: trial, outbox, leases, pending, deadlines   ARGV: attempt, signature, step, last_value
PRUNE = _script(
    _FENCE
    + """
local leases, pending = KEYS[3], KEYS[4]
redis.call('HSET', t, 'state', PRUNED, 'closed', ARGV[2], 'last_value', ARGV[4],
  'last_end', END_PRUNED)
if ARGV[3] ~= '' then redis.call('HSET', t, 'last_step', ARGV[3]) end
finish(t, trial_id, leases, KEYS[5], pending, now)
local reason = 'pruned'
if ARGV[3] ~= '' then reason = reason .. ' at step ' .. ARGV[3] end
-- StopTrial, or the study's stop / cancel, stored why (STOP_TRIAL).
local why = field(t, 'stop_reason')
if why ~= '' then reason = reason .. ': stopped: ' .. why end
mark(t, outbox, trial_id, EV_PRUNED, reason, now, attempt)
return reply('OK', t)
"""
)

# KEYS: trial, outbox, leases, pending, resumable, paused, decision, deadlines, study
# ARGV: attempt, signature, step, rung
# The attempt obeyed a PAUSE and checkpointed. The trial waits PAUSED (no lease, not
# pending). While its study is PAUSED and the scheduler did not pause it, it is *held*:
# it waits for the study to resume (RELEASE_HELD). Otherwise (ASHA promotion form) it
# waits at the rung of the latest PAUSE; when the PROMOTE for that rung is already
# stored (it overtook the worker) it is RESUMABLE at once instead.
PAUSE_TRIAL = _script(
    _FENCE
    + """
local leases, pending, queue, paused, d = KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local rung = tonumber(ARGV[4])
local decided = tonumber(redis.call('HGET', d, 'action'))
local decided_rung = tonumber(redis.call('HGET', d, 'rung')) or -1
if decided == STOP then return reply('STOPPED', t) end
local by_scheduler = decided == PAUSE and decided_rung >= rung
local preempted = field(t, 'preempt') == '1'
if decided == PAUSE and decided_rung > rung then rung = decided_rung end
redis.call('HSET', t, 'lease_until', 0, 'closed', ARGV[2], 'last_end', END_PAUSED)
if ARGV[3] ~= '' then redis.call('HSET', t, 'last_step', ARGV[3]) end
redis.call('ZREM', leases, trial_id)
stop_clock(t, trial_id, KEYS[8], now)
redis.call('HDEL', t, 'held')
if study_state(KEYS[9]) == STUDY_PAUSED and not by_scheduler then
  redis.call('HSET', t, 'state', PAUSED, 'paused_rung', rung, 'held', '1')
  redis.call('SREM', pending, trial_id)
  redis.call('ZADD', paused, now, trial_id)
  mark(t, outbox, trial_id, EV_PAUSED, 'paused with its study (step ' .. ARGV[3]
    .. ') until the study resumes', now, attempt)
  return reply('OK', t)
end
if preempted and not by_scheduler then
  -- Preempted by RequestWork (priority or fair-share reclaim): resumable at once, handed out
  -- again before any new trial of its study when capacity frees.
  redis.call('HSET', t, 'state', RESUMABLE)
  redis.call('ZADD', queue, now, trial_id)
  mark(t, outbox, trial_id, EV_PAUSED, 'preempted by the scheduler for a higher-priority'
    .. ' study or an under-served tenant (step ' .. ARGV[3] .. '): resumable', now, attempt)
  return reply('OK', t)
end
if decided == PROMOTE and decided_rung >= rung then
  redis.call('HSET', t, 'state', RESUMABLE, 'promoted', '1')
  redis.call('ZADD', queue, now, trial_id)
  mark(t, outbox, trial_id, EV_PROMOTED, 'paused at rung ' .. rung
    .. ' but already promoted: resumable at once', now, attempt)
  return reply('OK', t)
end
redis.call('HSET', t, 'state', PAUSED, 'paused_rung', rung)
redis.call('SREM', pending, trial_id)
redis.call('ZADD', paused, now, trial_id)
mark(t, outbox, trial_id, EV_PAUSED, 'paused at rung ' .. rung .. ' (step ' .. ARGV[3]
  .. ') until promoted', now, attempt)
return reply('OK', t)
"""
)

# KEYS: trial, outbox, leases, pending, resumable, deadlines
# ARGV: attempt, signature, final (1/0), attempt end, reason, counts seen..., counts after...
# What the failure does is ladder.state.attempts.fail_outcome's, computed from the
# counts the caller read: RACE when they changed meanwhile.
FAIL = _script(
    _FENCE
    + """
local leases, pending, queue = KEYS[3], KEYS[4], KEYS[5]
if not counts_seen(t, 6) then return reply('RACE', t) end
write_counts(t, 6)
redis.call('HSET', t, 'closed', ARGV[2], 'last_end', ARGV[4])
if ARGV[3] == '1' then
  redis.call('HSET', t, 'state', FAILED)
  finish(t, trial_id, leases, KEYS[6], pending, now)
else
  stop_clock(t, trial_id, KEYS[6], now)
  redis.call('HSET', t, 'state', RESUMABLE, 'lease_until', 0)
  redis.call('ZREM', leases, trial_id)
  redis.call('ZADD', queue, now, trial_id)
end
mark(t, outbox, trial_id, EV_FAILED, ARGV[5], now, attempt)
return reply('OK', t)
"""
)

# KEYS: trial, outbox, leases, resumable, pending, deadlines
# ARGV: trial id, then for a RUNNING trial: counts seen..., counts after..., final (1/0),
#       how the reason ends
# A lease (RUNNING) or a hand-out claim (SUGGESTED / RESUMABLE never started) ran out:
# the trial becomes RESUMABLE and is queued for the next Suggest. An expired lease is an
# interruption (see ``interrupt``) whose outcome the caller computed for a RUNNING
# trial (RACE when it was not RUNNING then, or its counts changed).
EXPIRE = _script("""
local t, outbox, leases, queue = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local trial_id = ARGV[1]
local now = now_ms()
local deadline = tonumber(redis.call('ZSCORE', leases, trial_id))
if deadline == nil or deadline > now then return {'SKIP', {}} end
local state = num(t, 'state')
if redis.call('EXISTS', t) == 0 or terminal(state) then
  redis.call('ZREM', leases, trial_id)
  return {'SKIP', {}}
end
if state == RUNNING then
  if not counts_seen(t, 2) then return {'RACE', {}} end
  interrupt(t, outbox, trial_id, now,
    {leases = leases, queue = queue, pending = KEYS[5], deadlines = KEYS[6]},
    END_LEASE_EXPIRED, 'lease of attempt ' .. field(t, 'attempt') .. ' (worker '
    .. field(t, 'worker') .. ') expired', 2)
  return reply('OK', t)
end
redis.call('ZREM', leases, trial_id)
release(t)
redis.call('HSET', t, 'state', RESUMABLE, 'lease_until', 0)
redis.call('ZADD', queue, now, trial_id)
mark(t, outbox, trial_id, EV_LEASE_EXPIRED,
  'handed out but not started before the claim expired', now, '')
return reply('OK', t)
""")

# KEYS: trial, outbox, deadlines, leases, resumable, pending
# ARGV: trial id, TIMEOUT's disposition: counts (1/0), final (1/0)
# The running attempt's deadline passed (the sweeper's check; a heartbeat checks too).
TIME_OUT = _script("""
local t, outbox, deadlines = KEYS[1], KEYS[2], KEYS[3]
local trial_id = ARGV[1]
local now = now_ms()
local deadline = tonumber(redis.call('ZSCORE', deadlines, trial_id))
if deadline == nil or deadline > now then return {'SKIP', {}} end
if redis.call('EXISTS', t) == 0 or num(t, 'state') ~= RUNNING then
  redis.call('ZREM', deadlines, trial_id)
  return {'SKIP', {}}
end
time_out(t, outbox, trial_id, now, ARGV[2], ARGV[3], {leases = KEYS[4],
  deadlines = deadlines, queue = KEYS[5], pending = KEYS[6]})
return reply('OK', t)
""")

# KEYS: last sweep, leases   ARGV: lease_ms, trial key root
# A sweeper pass starts and records itself. When the previous pass (by any evaluate
# process) is more than a lease ago, evaluate was away (killed, stopped, cut off from
# Redis) and no worker could renew its lease meanwhile: every lease or claim that runs
# out within a lease is extended to now + lease before anything expires, so a worker
# that heartbeats within it keeps its trial. Returns {ms since the previous pass (-1:
# none), leases extended}.
SWEEP_GRACE = _script("""
local last_sweep, leases = KEYS[1], KEYS[2]
local lease_ms, root = tonumber(ARGV[1]), ARGV[2]
local now = now_ms()
local last = tonumber(redis.call('GET', last_sweep))
redis.call('SET', last_sweep, now)
if last == nil then return {-1, 0} end
if now - last <= lease_ms then return {now - last, 0} end
local until_ms = now + lease_ms
local due = redis.call('ZRANGEBYSCORE', leases, '-inf', '(' .. until_ms)
for _, trial_id in ipairs(due) do
  redis.call('ZADD', leases, until_ms, trial_id)
  local t = root .. trial_id
  if num(t, 'state') == RUNNING then redis.call('HSET', t, 'lease_until', until_ms) end
end
return {now - last, #due}
""")

# KEYS: study, pending, leases, outbox, resumable
# ARGV: key root, study id, max_trials, claim_ms, algorithm, max_parallel, hold (JSON,
# '' for none), proto...
# The limits are the study's live ones when UpdateStudy changed them. Returns {OK,
# first sequence number, count, ms} or {BUDGET, suggested, 0}, {STATE, study state, 0}
# (not ACTIVE), {PARALLEL, in flight, max_parallel}, {TENANT, out, max_trials_running,
# tenant} (the study's tenant has its quota of trials out: ``tenant_room``). With a
# hold (RequestWork: one trial), the trial holds those resources on the node, or the
# hold's refusal (``refuse_hold``: GPUS, NODE) and nothing is created.
CREATE_TRIALS = _script("""
local study, pending, leases, outbox = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local root, sid, claim_ms = ARGV[1], ARGV[2], tonumber(ARGV[4])
if redis.call('EXISTS', study) == 0 then return {'NOT_FOUND', 0, 0} end
local max_trials = limit(study, 'max_trials', ARGV[3])
local max_parallel = limit(study, 'max_parallel', ARGV[6])
local suggested = num(study, 'suggested')
local n = #ARGV - 7
local hold = nil
if ARGV[7] ~= '' then
  hold = cjson.decode(ARGV[7])
  n = math.min(n, 1)
end
if max_trials > 0 then n = math.min(n, max_trials - suggested) end
if n <= 0 then return {'BUDGET', suggested, 0} end
if study_state(study) ~= STUDY_ACTIVE then return {'STATE', study_state(study), 0} end
if max_parallel > 0 then
  local out = in_flight(pending, KEYS[5])
  n = math.min(n, max_parallel - out)
  if n <= 0 then return {'PARALLEL', out, max_parallel} end
end
local tenant = field(study, 'tenant')
local room = tenant_room(root, tenant)
if room then
  n = math.min(n, room[1])
  if n <= 0 then return {'TENANT', room[2], room[3], tenant} end
end
if hold then
  local refused = refuse_hold(root, tenant, hold)
  if refused then return refused end
end
local first = redis.call('HINCRBY', study, 'suggested', n) - n + 1
local now = now_ms()
for i = 1, n do
  local trial_id = sid .. '-t' .. (first + i - 1)
  local t = root .. 'trial:' .. trial_id
  redis.call('HSET', t, 'id', trial_id, 'study', sid, 'proto', ARGV[7 + i],
    'state', SUGGESTED, 'attempt_no', 0, 'algorithm', ARGV[5], 'failures', 0,
    'failure_kind', 0)
  if hold then take(t, root, tenant, hold) end
  redis.call('SADD', pending, trial_id)
  redis.call('ZADD', leases, now + claim_ms, trial_id)
  mark(t, outbox, trial_id, EV_SUGGESTED, 'suggested by ' .. ARGV[5], now, '')
end
return {'OK', first, n, now}
""")

# KEYS: resumable, leases, pending, study   ARGV: key root, count, claim_ms,
# max_parallel (the config's; the live one when UpdateStudy changed it), hold (JSON, ''
# for none: see CREATE_TRIALS)
# Pops queued trials that are still RESUMABLE (entries for trials started or
# finished meanwhile are dropped) and gives each a claim deadline; none while the
# study is PAUSED or CANCELLED, and no more than max_parallel_trials and the tenant's
# max_trials_running (``tenant_room``) leave room for. With a hold: at most one, and
# none when the hold is refused (``refuse_hold``); on a spot node (hold.s) for a study
# with stable_for_promoted (hold.sp) a promoted trial is passed over (it stays queued).
CLAIM_RESUMABLE = _script("""
local queue, leases, study = KEYS[1], KEYS[2], KEYS[4]
local root, count, claim_ms = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local state = study_state(study)
if state == STUDY_PAUSED or state == STUDY_CANCELLED then return {} end
local max_parallel = limit(study, 'max_parallel', ARGV[4])
if max_parallel > 0 then count = math.min(count, max_parallel - in_flight(KEYS[3], queue)) end
local tenant = field(study, 'tenant')
local room = tenant_room(root, tenant)
if room then count = math.min(count, room[1]) end
local hold = nil
if (ARGV[5] or '') ~= '' then
  hold = cjson.decode(ARGV[5])
  count = math.min(count, 1)
  if count > 0 and refuse_hold(root, tenant, hold) then return {} end
end
local now = now_ms()
local out = {}
local passed = {}
local stable_only = hold and hold.s == 1 and hold.sp == 1
while #out < count do
  local popped = redis.call('ZPOPMIN', queue)
  if #popped == 0 then break end
  local trial_id = popped[1]
  local t = root .. 'trial:' .. trial_id
  if num(t, 'state') == RESUMABLE then
    if stable_only and field(t, 'promoted') == '1' then
      table.insert(passed, popped)
    else
      redis.call('ZADD', leases, now + claim_ms, trial_id)
      if hold then take(t, root, tenant, hold) end
      table.insert(out, redis.call('HGETALL', t))
    end
  end
end
for _, entry in ipairs(passed) do redis.call('ZADD', queue, entry[2], entry[1]) end
return out
""")

# KEYS: study   ARGV: key root
# Read only: the study's tenant's {room left, out, max_trials_running, tenant}, {} when it
# has no such quota. Suggest's cheap pre-check (StudyStore.gate), so a tenant at its
# quota burns no sampler draws; CREATE_TRIALS enforces it.
TENANT_ROOM = _script("""
local tenant = field(KEYS[1], 'tenant')
local room = tenant_room(ARGV[1], tenant)
if not room then return {} end
return {room[1], room[2], room[3], tenant}
""")

# KEYS: study, studies, tenant's studies   ARGV: study id, Study proto, created ms,
# tenant ('' with authentication off), key root
# A tenant with a max_studies quota (ladder.quotas) may hold that many live studies
# (neither COMPLETED nor CANCELLED): {QUOTA, live, max_studies} beyond it. The study
# hash keeps its tenant and creation time beside the proto for the other scripts.
CREATE_STUDY = _script("""
local existing = redis.call('HGET', KEYS[1], 'study')
if existing then return {'EXISTS', existing} end
local tenant, root = ARGV[4], ARGV[5]
local max = quota(root, tenant, 'max_studies')
if max > 0 then
  local live = 0
  for _, sid in ipairs(redis.call('SMEMBERS', KEYS[3])) do
    local state = study_state(root .. 'study:' .. sid)
    if state ~= STUDY_COMPLETED and state ~= STUDY_CANCELLED then live = live + 1 end
  end
  if live >= max then return {'QUOTA', live, max} end
end
if tenant ~= '' then redis.call('SADD', KEYS[3], ARGV[1]) end
redis.call('HSET', KEYS[1], 'study', ARGV[2], 'suggested', 0, 'completed', 0,
  'tenant', tenant, 'created_ms', ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return {'OK', ARGV[2]}
""")

# KEYS: study   ARGV: target StudyState, state when none is stored, reason, allowed
# states...
# A study's lifecycle state (``ladder.lifecycle``) lives in the hash's ``state`` field,
# beside the Study proto it overrides, with why it changed (``reason``: Study.state_reason).
# Returns {OK | SAME | REFUSED | NOT_FOUND, state before}.
SET_STUDY_STATE = _script("""
if redis.call('EXISTS', KEYS[1]) == 0 then return {'NOT_FOUND', 0} end
local current = tonumber(redis.call('HGET', KEYS[1], 'state') or ARGV[2])
local target = tonumber(ARGV[1])
if current == target then return {'SAME', current} end
for i = 4, #ARGV do
  if tonumber(ARGV[i]) == current then
    redis.call('HSET', KEYS[1], 'state', target, 'reason', ARGV[3])
    return {'OK', current}
  end
end
return {'REFUSED', current}
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
  redis.call('HSET', t, 'state', RESUMABLE, 'promoted', '1')
  redis.call('HDEL', t, 'paused_rung')
  redis.call('ZREM', paused, trial_id)
  redis.call('SADD', pending, trial_id)
  redis.call('ZADD', queue, now, trial_id)
  mark(t, outbox, trial_id, EV_PROMOTED, 'promoted at rung ' .. rung
    .. ': resumable from step ' .. field(t, 'ckpt_step'), now, '')
  return reply('RESUMED', t)
end
return {'OK', {}}
""")

# KEYS: trial, outbox, leases, pending, resumable, paused, decision, deadlines
# ARGV: reason, Decision proto (a STOP)
# An operator (StopTrial) or the study's stop / cancel stops the trial, saying why
# (``stop_reason``; the first reason stays). A RUNNING trial keeps running until its
# next heartbeat answers the stored STOP and PruneTrial ends it (OK, no event yet); any
# other unfinished trial is PRUNED at once. STATE for a trial that ended otherwise,
# REPEAT for one this stop already ended.
STOP_TRIAL = _script("""
local t, outbox, leases, pending, queue, paused, d = KEYS[1], KEYS[2], KEYS[3], KEYS[4],
  KEYS[5], KEYS[6], KEYS[7]
if redis.call('EXISTS', t) == 0 then return {'NOT_FOUND', {}} end
local state = num(t, 'state')
if terminal(state) then
  if field(t, 'stop_reason') ~= '' then return reply('REPEAT', t) end
  return reply('STATE', t)
end
if field(t, 'stop_reason') == '' then redis.call('HSET', t, 'stop_reason', ARGV[1]) end
local rung = tonumber(redis.call('HGET', d, 'rung')) or 0
redis.call('HSET', d, 'action', STOP, 'proto', ARGV[2], 'rung', rung)
if state == RUNNING then return reply('OK', t) end
local now = now_ms()
local trial_id = field(t, 'id')
redis.call('HSET', t, 'state', PRUNED, 'closed', 'stop')
redis.call('HDEL', t, 'held', 'paused_rung')
finish(t, trial_id, leases, KEYS[8], pending, now)
redis.call('ZREM', queue, trial_id)
redis.call('ZREM', paused, trial_id)
mark(t, outbox, trial_id, EV_PRUNED, 'stopped: ' .. field(t, 'stop_reason'), now, '')
return reply('OK', t)
""")

# KEYS: trial, outbox, resumable, paused, pending   ARGV: reason
# The study left PAUSED: a trial its pause held (PAUSED with ``held``) is RESUMABLE
# again, queued for Suggest, announced as promoted. SKIP for any other trial.
RELEASE_HELD = _script("""
local t, outbox, queue, paused, pending = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
if num(t, 'state') ~= PAUSED or field(t, 'held') ~= '1' then return {'SKIP', {}} end
local now = now_ms()
local trial_id = field(t, 'id')
redis.call('HSET', t, 'state', RESUMABLE)
redis.call('HDEL', t, 'held', 'paused_rung')
redis.call('ZREM', paused, trial_id)
redis.call('SADD', pending, trial_id)
redis.call('ZADD', queue, now, trial_id)
mark(t, outbox, trial_id, EV_PROMOTED, ARGV[1] .. ': resumable from step '
  .. field(t, 'ckpt_step'), now, '')
return reply('OK', t)
""")

# KEYS: study   ARGV: set max_trials (1/0), max_trials, set max_parallel (1/0),
# max_parallel, set max_wall (1/0), max_wall_clock_seconds, set max_hours (1/0),
# max_trial_hours, set max_gpu_hours (1/0), max_gpu_hours, states that refuse...
# UpdateStudy's change of the live limits, checked against the trials handed out in
# the same step: {OK | NOT_FOUND | REFUSED (state) | BELOW (suggested), study state or
# suggested}. The values themselves are checked before (ladder.lifecycle.check_update).
UPDATE_LIMITS = _script("""
local study = KEYS[1]
if redis.call('EXISTS', study) == 0 then return {'NOT_FOUND', 0} end
local state = study_state(study)
for i = 11, #ARGV do
  if tonumber(ARGV[i]) == state then return {'REFUSED', state} end
end
local suggested = num(study, 'suggested')
local max_trials = tonumber(ARGV[2])
if ARGV[1] == '1' and max_trials > 0 and max_trials < suggested then
  return {'BELOW', suggested}
end
if ARGV[1] == '1' then redis.call('HSET', study, 'max_trials', max_trials) end
if ARGV[3] == '1' then redis.call('HSET', study, 'max_parallel', ARGV[4]) end
if ARGV[5] == '1' then redis.call('HSET', study, 'max_wall', ARGV[6]) end
if ARGV[7] == '1' then redis.call('HSET', study, 'max_hours', ARGV[8]) end
if ARGV[9] == '1' then redis.call('HSET', study, 'max_gpu_hours', ARGV[10]) end
return {'OK', suggested}
""")

# KEYS: trial   ARGV: node id
# RequestWork's preemption plan picked this trial: while it still holds resources on
# that node, its heartbeats answer PAUSE (``preempt``) and PAUSE_TRIAL makes it
# RESUMABLE. {OK} or {SKIP} (it ended or moved meanwhile).
PREEMPT = _script("""
local t = KEYS[1]
if field(t, 'hold_node') ~= ARGV[1] or terminal(num(t, 'state')) then return {'SKIP'} end
redis.call('HSET', t, 'preempt', '1')
return {'OK'}
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
    "STALL",
    "CHECKPOINT",
    "COMPLETE",
    "PRUNE",
    "FAIL",
    "PAUSE_TRIAL",
    "EXPIRE",
    "TIME_OUT",
    "SWEEP_GRACE",
    "CREATE_TRIALS",
    "CLAIM_RESUMABLE",
    "STORE_DECISION",
    "ACK_OUTBOX",
    "STOP_TRIAL",
    "RELEASE_HELD",
)
