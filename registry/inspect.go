package registry

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/valkey-io/valkey-go"
)

// MemberInfo is what operators see of a member; read straight from Valkey.
type MemberInfo struct {
	ID, Address string
	Live        bool
	// Down: the record names an address a down mark says failed (SPEC §8.1).
	Down bool
	Load int64
	// TTL left on the record; negative when it has none.
	TTL time.Duration
}

// LockInfo is a lock record and the state of its owner.
type LockInfo struct {
	Fields map[string]string
	TTL    time.Duration // negative when the lock has no lease
	Owner  MemberInfo
}

// ListMembers returns every id in the members set with its record state.
func (r *Registry) ListMembers(ctx context.Context) ([]MemberInfo, error) {
	ids, err := r.readSet(ctx, r.keys.members())
	if err != nil {
		return nil, err
	}
	return r.describeMembers(ctx, ids)
}

// DescribeDestination returns the members of a destination's set.
func (r *Registry) DescribeDestination(ctx context.Context, destID string) ([]MemberInfo, error) {
	if err := ValidateID(destID); err != nil {
		return nil, err
	}
	ids, err := r.readSet(ctx, r.keys.dest(destID))
	if err != nil {
		return nil, err
	}
	if len(ids) == 0 {
		return nil, fmt.Errorf("%w: %q", ErrNotFound, destID)
	}
	return r.describeMembers(ctx, ids)
}

// DescribeLock returns a lock record and its owner.
func (r *Registry) DescribeLock(ctx context.Context, lockID string) (LockInfo, error) {
	if err := ValidateID(lockID); err != nil {
		return LockInfo{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, r.opt.Timeout)
	defer cancel()
	key := r.keys.lock(lockID)
	res := r.client.DoMulti(ctx, r.client.B().Hgetall().Key(key).Build(), r.client.B().Pttl().Key(key).Build())
	fields, err := res[0].AsStrMap()
	if err = r.valkeyErr(err); err != nil {
		return LockInfo{}, err
	}
	if len(fields) == 0 {
		return LockInfo{}, fmt.Errorf("%w: %q", ErrLockNotFound, lockID)
	}
	pttl, _ := res[1].AsInt64()
	info := LockInfo{Fields: fields, TTL: time.Duration(pttl) * time.Millisecond}
	if pod := fields[lockFieldPod]; pod != "" {
		owners, err := r.describeMembers(ctx, []string{pod})
		if err != nil {
			return LockInfo{}, err
		}
		info.Owner = owners[0]
	}
	return info, nil
}

func (r *Registry) describeMembers(ctx context.Context, ids []string) ([]MemberInfo, error) {
	ids = slices.Clone(ids)
	slices.Sort(ids)
	ctx, cancel := context.WithTimeout(ctx, r.opt.Timeout)
	defer cancel()
	cmds := make([]valkey.Completed, 0, 3*len(ids))
	for _, id := range ids {
		cmds = append(cmds, readMember(r.client.B(), r.keys.member(id)), r.client.B().Pttl().Key(r.keys.member(id)).Build(),
			r.client.B().Get().Key(r.keys.down(id)).Build())
	}
	res := r.client.DoMulti(ctx, cmds...)
	out := make([]MemberInfo, len(ids))
	for i, id := range ids {
		out[i].ID = id
		fields, err := recordFields(res[3*i])
		if err = r.valkeyErr(err); err != nil {
			return nil, fmt.Errorf("member %q: %w", id, err)
		}
		pttl, _ := res[3*i+1].AsInt64()
		mark, err := r.markOf(res[3*i+2])
		if err != nil {
			return nil, fmt.Errorf("member %q: %w", id, err)
		}
		out[i].Address = fields["address"]
		out[i].Down = isDown(fields["address"], mark)
		out[i].Live = fields["address"] != "" && !out[i].Down
		out[i].Load, _ = strconv.ParseInt(fields["load"], 10, 64)
		out[i].TTL = time.Duration(pttl) * time.Millisecond
	}
	return out, nil
}
