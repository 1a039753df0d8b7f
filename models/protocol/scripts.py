"""The Lua scripts of the job protocol: each makes one step atomic and one round trip (see `Bus`)."""

from __future__ import annotations

# Refresh the idle time of the entries this consumer still owns; return the ones it no longer owns (another
# worker took them over, or they were acked).  Checking ownership matters: a plain XCLAIM would steal a job
# back from the worker that took it over after this one stalled, and two workers would run it.
HEARTBEAT = """
local lost, mine = {}, {}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then table.insert(mine, ARGV[i]) else table.insert(lost, ARGV[i]) end
end
if #mine > 0 then
  local args = {'XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0}
  for _, id in ipairs(mine) do table.insert(args, id) end
  table.insert(args, 'JUSTID')
  redis.call(unpack(args))
end
return lost
"""

# The 1-based position of job ARGV[2] among the entries not yet delivered to group ARGV[1], or false;
# with ARGV[2] empty, how many entries wait (at most ARGV[3]).
QUEUE_POSITION = """
local last = '0-0'
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local name, delivered
  for i = 1, #g, 2 do
    if g[i] == 'name' then name = g[i + 1] elseif g[i] == 'last-delivered-id' then delivered = g[i + 1] end
  end
  if name == ARGV[1] then last = delivered end
end
local entries = redis.call('XRANGE', KEYS[1], '(' .. last, '+', 'COUNT', tonumber(ARGV[3]))
if ARGV[2] == '' then return #entries end
for pos, e in ipairs(entries) do
  local f = e[2]
  for i = 1, #f, 2 do
    if f[i] == 'id' then
      if f[i + 1] == ARGV[2] then return pos end
      break
    end
  end
end
return false
"""

# XAUTOCLAIM in JUSTID form (so the cursor survives and entries deleted from the stream are visible by id on
# Redis 6.2, which otherwise returns them as nils and keeps them pending forever), then read the entries;
# entries trimmed away while pending are acked here.  Returns {cursor, {{id, fields}...}, {gone ids}}.
AUTOCLAIM = """
local res = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], 'COUNT', ARGV[5], 'JUSTID')
local out, gone = {}, {}
for _, id in ipairs(res[2]) do
  local e = redis.call('XRANGE', KEYS[1], id, id)
  if e[1] then table.insert(out, e[1]) else redis.call('XACK', KEYS[1], ARGV[1], id); table.insert(gone, id) end
end
return {res[1], out, gone}
"""


# A worker starting a job: count the attempt, see whether it was cancelled before it started and, on a first
# attempt, announce it (the `status` event) — one round trip instead of three.  A retried attempt (> 1) writes
# nothing here: the worker first checks whether the previous attempt already finished or failed too often.
# KEYS: attempts, cancel, events.  ARGV: attempts TTL, reply TTL, status data (JSON), reply MAXLEN.
# Returns {attempt, cancelled (0/1), announced (0/1)}.
START = """
local attempt = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[1])
local cancelled = redis.call('EXISTS', KEYS[2])
if attempt > 1 then return {attempt, cancelled, 0} end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', 'type', 'status', 'attempt', tostring(attempt),
           'data', ARGV[3])
redis.call('EXPIRE', KEYS[3], ARGV[2])
return {attempt, cancelled, 1}
"""

# The last events of an attempt and the XACK of its job in one round trip, in this order: an error in any
# XADD (out of memory, say) aborts the script before the XACK, so a job is never acked without its final
# event — the same promise as a separate XACK after the write, one round trip cheaper.
# KEYS: events, jobs.  ARGV: reply TTL, reply MAXLEN, group ('' = no ack), entry id, then type/attempt/data
# triples.  Returns the stream ids written.
FINISH = """
local ids = {}
for i = 5, #ARGV, 3 do
  table.insert(ids, redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'type', ARGV[i], 'attempt', ARGV[i + 1],
                               'data', ARGV[i + 2]))
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
if ARGV[3] ~= '' then redis.call('XACK', KEYS[2], ARGV[3], ARGV[4]) end
return ids
"""
