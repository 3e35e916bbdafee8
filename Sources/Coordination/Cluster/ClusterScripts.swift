/// The Lua scripts of the cluster protocol. Every script judges time by Redis'
/// own `TIME` or key expiry, never by a node's clock.
///
/// Keys, under the prefix (default `herald:`):
/// - `partitions`: P, set when the cluster is created, and again by every beat while it is
///   missing (Redis lost it), so that a node with another P still cannot join.
/// - `members` (hash node → metadata JSON), `deadlines` (zset node → deadline, ms of Redis time),
///   `membership` (version, bumped on every join and leave).
/// - `alive:<owner>`: the owner's liveness, with a short PX TTL; `<owner>` is `<node>#<incarnation>`.
/// - `lease:<p>` = `<owner>|<epoch>`: valid only while `alive:<owner>` exists; `epoch:<p>` its fencing counter.
/// - `leader` = `<node>|<epoch>` with a PX TTL, `leader-epoch` its counter.
/// - `assignment` (JSON: membership version, members, owner index per partition), `assignment-epoch`.
/// - channel `events`: `membership`, `assignment`, `released`.
enum ClusterScripts {
    /// One beat: refresh membership and the alive key (which keeps every lease of the
    /// owner), expire dead members, take or keep the leader lease, and report the
    /// versions a node compares. O(1) commands however many partitions the node holds.
    ///
    /// ARGV: prefix, node, owner, member deadline ms, alive TTL ms, leader TTL ms, metadata JSON,
    /// the partition count.
    /// Returns: { intact (1: the alive key was ours already), leader value, membership version, assignment epoch }.
    static let beat = RedisScript(
        #"""
        local prefix, node, owner = ARGV[1], ARGV[2], ARGV[3]
        redis.call('SET', prefix .. 'partitions', ARGV[8], 'NX')
        local t = redis.call('TIME')
        local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
        local changed = false
        if redis.call('ZADD', prefix .. 'deadlines', now + tonumber(ARGV[4]), node) == 1 then
          changed = true
        end
        local meta = redis.call('HGET', prefix .. 'members', node)
        if meta ~= ARGV[7] then
          redis.call('HSET', prefix .. 'members', node, ARGV[7])
          changed = true
        end
        local dead = redis.call('ZRANGEBYSCORE', prefix .. 'deadlines', '-inf', now)
        for _, member in ipairs(dead) do
          redis.call('ZREM', prefix .. 'deadlines', member)
          redis.call('HDEL', prefix .. 'members', member)
          changed = true
        end
        if changed then
          redis.call('INCR', prefix .. 'membership')
          redis.call('PUBLISH', prefix .. 'events', 'membership')
        end
        local intact = 0
        if redis.call('GET', prefix .. 'alive:' .. owner) then
          intact = 1
          redis.call('PEXPIRE', prefix .. 'alive:' .. owner, ARGV[5])
        else
          redis.call('SET', prefix .. 'alive:' .. owner, node, 'PX', ARGV[5])
        end
        local leader = redis.call('GET', prefix .. 'leader')
        if not leader then
          leader = node .. '|' .. redis.call('INCR', prefix .. 'leader-epoch')
          redis.call('SET', prefix .. 'leader', leader, 'PX', ARGV[6])
        elseif string.sub(leader, 1, #node + 1) == node .. '|' then
          redis.call('PEXPIRE', prefix .. 'leader', ARGV[6])
        end
        return { intact, leader, tonumber(redis.call('GET', prefix .. 'membership') or '0'),
                 tonumber(redis.call('GET', prefix .. 'assignment-epoch') or '0') }
        """#)

    /// Takes leases that are free or whose holder is no longer alive; a lease the
    /// caller already holds is returned as it is. Refuses everything if the caller's
    /// own alive key is gone (it would hold leases nobody renews).
    ///
    /// ARGV: prefix, owner, partitions... Returns the epoch per partition (0: held by a live owner).
    static let acquire = RedisScript(
        #"""
        local prefix, owner = ARGV[1], ARGV[2]
        local result = {}
        if not redis.call('GET', prefix .. 'alive:' .. owner) then
          for i = 3, #ARGV do result[#result + 1] = 0 end
          return result
        end
        for i = 3, #ARGV do
          local p = ARGV[i]
          local current = redis.call('GET', prefix .. 'lease:' .. p)
          local epoch = 0
          if current then
            local holder, held = string.match(current, '^(.*)|(%d+)$')
            if holder == owner then
              epoch = tonumber(held)
            elseif not redis.call('GET', prefix .. 'alive:' .. holder) then
              current = nil
            end
          end
          if not current then
            epoch = redis.call('INCR', prefix .. 'epoch:' .. p)
            redis.call('SET', prefix .. 'lease:' .. p, owner .. '|' .. epoch)
          end
          result[#result + 1] = epoch
        end
        return result
        """#)

    /// Compare-and-delete: releases the leases still held by owner with those epochs.
    ///
    /// ARGV: prefix, owner, then partition, epoch pairs. Returns how many were released.
    static let release = RedisScript(
        #"""
        local prefix, owner = ARGV[1], ARGV[2]
        local released = 0
        for i = 3, #ARGV, 2 do
          local key = prefix .. 'lease:' .. ARGV[i]
          if redis.call('GET', key) == owner .. '|' .. ARGV[i + 1] then
            redis.call('DEL', key)
            released = released + 1
          end
        end
        if released > 0 then redis.call('PUBLISH', prefix .. 'events', 'released') end
        return released
        """#)

    /// Leaves the group: membership entry, alive key and leader lease (if held) go.
    ///
    /// ARGV: prefix, node, owner.
    static let leave = RedisScript(
        #"""
        local prefix, node, owner = ARGV[1], ARGV[2], ARGV[3]
        redis.call('DEL', prefix .. 'alive:' .. owner)
        local removed = redis.call('ZREM', prefix .. 'deadlines', node)
        redis.call('HDEL', prefix .. 'members', node)
        local leader = redis.call('GET', prefix .. 'leader')
        if leader and string.sub(leader, 1, #node + 1) == node .. '|' then redis.call('DEL', prefix .. 'leader') end
        if removed == 1 then
          redis.call('INCR', prefix .. 'membership')
          redis.call('PUBLISH', prefix .. 'events', 'membership')
        end
        return removed
        """#)

    /// Removes members whose process is gone (seen by the leader: no Redis connection
    /// of theirs is left), if the leader lease is still the caller's.
    ///
    /// ARGV: prefix, leader value, nodes... Returns how many were removed.
    static let evict = RedisScript(
        #"""
        local prefix = ARGV[1]
        if redis.call('GET', prefix .. 'leader') ~= ARGV[2] then return -1 end
        local removed = 0
        for i = 3, #ARGV do
          removed = removed + redis.call('ZREM', prefix .. 'deadlines', ARGV[i])
          redis.call('HDEL', prefix .. 'members', ARGV[i])
        end
        if removed > 0 then
          redis.call('INCR', prefix .. 'membership')
          redis.call('PUBLISH', prefix .. 'events', 'membership')
        end
        return removed
        """#)

    /// Writes a new assignment if the leader lease is still the caller's (fencing).
    ///
    /// ARGV: prefix, leader value, assignment JSON. Returns the new epoch, or 0 when not leader.
    static let writeAssignment = RedisScript(
        #"""
        local prefix = ARGV[1]
        if redis.call('GET', prefix .. 'leader') ~= ARGV[2] then return 0 end
        redis.call('SET', prefix .. 'assignment', ARGV[3])
        local epoch = redis.call('INCR', prefix .. 'assignment-epoch')
        redis.call('PUBLISH', prefix .. 'events', 'assignment')
        return epoch
        """#)
}
